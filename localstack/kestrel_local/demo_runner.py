"""The demo's moving parts: API load, the progress line, the drain, the redrive and the results."""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.adapters.redis_scripts import decision_key
from kestrel_local.aws import AwsClients
from kestrel_local.demo_api_load import ApiLoad, request
from kestrel_local.demo_clicks import Lag, progress_part
from kestrel_local.demo_input import DemoInput
from kestrel_local.demo_report import (
    DemoSummary,
    decision_counts,
    fraud_caught,
    known_cards,
    percentile,
)
from kestrel_local.template import PhysicalResource
from kestrel_ops.backfill import BackfillReport, ProgressLine, StoreFailed, backfill, open_store
from kestrel_ops.backfill_sources import ParquetHistory
from kestrel_ops.redrive import QueueKind, redrive

CHUNK = 5_000


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


def telemetry(port: int, key: str, window_s: float) -> dict[str, Any]:
    """The API's `/v1/telemetry` snapshot over the last `window_s` seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        code, body, _ = request(conn, "GET", f"/v1/telemetry?window={max(1, int(window_s))}", key)
    finally:
        conn.close()
    if code != 200:
        raise DemoError(f"/v1/telemetry answered {code}: {body[:200]!r}")
    loaded: dict[str, Any] = json.loads(body)
    return loaded


class Progress(threading.Thread):
    """Prints one live line every 2 s from the API's telemetry, and says when the stream
    falls behind the producer (decisions lag by over `BEHIND_MS` twice in a row); with
    `clicks`, the clickstream's figures too, and when it falls behind."""

    BEHIND_MS = 2000.0

    def __init__(
        self,
        port: int,
        key: str,
        duration_s: float,
        total: int,
        rate: float = 0.0,
        clicks: Lag | None = None,
    ) -> None:
        super().__init__(daemon=True, name="demo-progress")
        self.port, self.key, self.duration_s, self.total = port, key, duration_s, total
        self.rate, self.clicks = rate, clicks
        self._stop_event = threading.Event()
        self.tty = sys.stdout.isatty()
        self._late_lines = 0
        self.fell_behind = False

    def run(self) -> None:
        """Print until stopped."""
        start = time.monotonic()
        while not self._stop_event.wait(2.0):
            try:
                snap = telemetry(self.port, self.key, 10)
                line = self.line(snap, time.monotonic() - start)
                warnings = [self.behind(snap)]
                if self.clicks is not None:
                    line += progress_part(snap)
                    warnings.append(self.clicks.check(snap))
            except (OSError, http.client.HTTPException, DemoError, ValueError) as exc:
                line, warnings = f"(telemetry unavailable: {exc})", []
            end = "\r" if self.tty else "\n"
            print(f"{line:<140}", end=end, flush=True)
            for warning in filter(None, warnings):
                print(("\n" if self.tty else "") + warning, flush=True)
        if self.tty:
            print()

    def line(self, snap: Mapping[str, Any], elapsed: float) -> str:
        """The progress line for one telemetry snapshot."""
        fresh = snap.get("freshness_ms") or {}
        decisions = snap.get("decisions") or {}
        dlq = snap.get("dlq") or {}
        current = _current_rate(snap)
        return (
            f"[{elapsed:5.0f} s / {self.duration_s:.0f} s] {_num(current)} events/s | "
            f"freshness p50 {_num(fresh.get('p50'))} ms p99 {_num(fresh.get('p99'))} ms | "
            f"approve {_num(decisions.get('approve'))} review {_num(decisions.get('review'))} "
            f"decline {_num(decisions.get('decline'))} (last 10 s) | "
            f"DLQ poison {_num(dlq.get('poison'))} on-failure {_num(dlq.get('on_failure'))} | "
            f"drift {(snap.get('drift') or {}).get('status', 'unknown')}"
        )

    def behind(self, snap: Mapping[str, Any]) -> str | None:
        """A warning when decisions lag the stream by over `BEHIND_MS` twice in a row."""
        p50 = (snap.get("freshness_ms") or {}).get("p50")
        late = isinstance(p50, int | float) and p50 > self.BEHIND_MS
        self._late_lines = self._late_lines + 1 if late else 0
        if self._late_lines != 2:
            return None
        self.fell_behind = True
        current = _current_rate(snap)
        return (
            f"warning: this machine is not keeping up: decisions lag the stream by "
            f"{_num(p50)} ms (p50), deciding {_num(current)} events/s of {self.rate:,.0f} "
            f"produced; a backlog is building. Try a lower rate: make demo RATE=<events/s>"
        )

    def stop(self) -> None:
        """Stop printing."""
        self._stop_event.set()
        self.join(10)


def _current_rate(snap: Mapping[str, Any]) -> Any:
    """The decided events/s of a telemetry snapshot (its ``current``, or the bare number)."""
    rate = snap.get("events_per_s") or {}
    return rate.get("current") if isinstance(rate, Mapping) else rate


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):,.0f}"


def _decisions(store: redis.Redis, ids: Sequence[str]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(0, len(ids), CHUNK):
        pipe = store.pipeline(transaction=False)
        for transaction_id in ids[i : i + CHUNK]:
            pipe.get(decision_key(transaction_id))
        out.extend(pipe.execute())
    return out


def _exist(store: redis.Redis, ids: Sequence[str]) -> list[bool]:
    out: list[bool] = []
    for i in range(0, len(ids), CHUNK):
        pipe = store.pipeline(transaction=False)
        for transaction_id in ids[i : i + CHUNK]:
            pipe.exists(decision_key(transaction_id))
        out.extend(bool(n) for n in pipe.execute())
    return out


def wait_decided(
    store: redis.Redis, ids: Sequence[str], check: Callable[[], None], timeout_s: float
) -> None:
    """Wait until every transaction id has its decision in Redis (DemoError on timeout)."""
    pending = list(ids)
    deadline = time.monotonic() + timeout_s
    while pending:
        check()
        pending = [i for i, found in zip(pending, _exist(store, pending), strict=True) if not found]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{len(pending):,} transactions still have no decision after the wait")
        time.sleep(1.0)


def collect_results(
    summary: DemoSummary,
    data: DemoInput,
    store: redis.Redis,
    api: ApiLoad,
    port: int,
    key: str,
) -> None:
    """Fill the summary: decisions and fraud caught (from Redis), freshness, API latency."""
    ids = data.transactions["transaction_id"].astype(str).tolist()
    decisions = [json.loads(raw) if raw else None for raw in _decisions(store, ids)]
    summary.events_decided = sum(d is not None for d in decisions)
    summary.decisions = decision_counts(decisions)
    summary.frauds = int(data.transactions["is_fraud"].sum())
    scores = [d["score"] if d else None for d in decisions]
    summary.average_precision, summary.card_precision_100 = fraud_caught(
        data.transactions, scores, data.start_ms
    )
    unknown = ~known_cards(data.transactions, data.fraud_labels)
    summary.frauds_unknown_cards = int(data.transactions["is_fraud"][unknown].sum())
    summary.unknown_cards_ap, summary.unknown_cards_cp100 = fraud_caught(
        data.transactions[unknown],
        [s for s, keep in zip(scores, unknown, strict=True) if keep],
        data.start_ms,
    )
    snap = telemetry(port, key, summary.seconds + 5)
    fresh = snap.get("freshness_ms") or {}
    summary.freshness_p50_ms = float(fresh.get("p50", math.nan) or math.nan)
    summary.freshness_p99_ms = float(fresh.get("p99", math.nan) or math.nan)
    summary.api_requests = len(api.latencies_ms) + api.errors
    summary.api_errors = api.errors
    summary.api_p50_ms = percentile(api.latencies_ms, 50)
    summary.api_p99_ms = percentile(api.latencies_ms, 99)
    summary.api_in_handler_p99_ms = percentile(api.in_handler_ms, 99)


def backfill_history(data: DemoInput, redis_url: str, folder: Path) -> BackfillReport:
    """Load the simulated days before the stream into Redis with ``make backfill``'s code:
    the simulation written as Parquet to `folder`, then `kestrel_ops.backfill`."""
    if data.simulation is None or not data.history_days:
        raise DemoError("no simulated history to backfill")
    data.simulation.write(folder)
    source = ParquetHistory(folder)
    start, end = data.start_ms, data.stream_start_ms
    progress = ProgressLine(source.count(start, end), sys.stdout)
    try:
        report = backfill(
            open_store(redis_url, cluster=False), source, start, end, progress=progress
        )
    except (StoreFailed, ValueError) as exc:
        raise DemoError(f"the backfill failed: {exc}") from None
    progress.finish(report)
    return report


def drift_check(template: str, stack_name: str, redis_url: str, report: Path) -> dict[str, Any]:
    """`python -m kestrel_ops drift` over the last 24 h of the demo's event log; its report."""
    command = ["drift", "--template", template, "--stack-name", stack_name]
    done = subprocess.run(
        [sys.executable, "-m", "kestrel_ops", *command, "--report", str(report)],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or not report.is_file():
        raise DemoError(f"the drift check failed ({done.returncode}): {done.stderr[-1000:]}")
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


def redrive_all(
    clients: AwsClients,
    physical: Mapping[str, PhysicalResource],
    stack_name: str,
    streams: Collection[str],
) -> tuple[dict[str, dict[str, int]], int]:
    """Redrive both dead-letter queues onto `streams`; their figures and the poison left."""
    registry = GlueSchemaRegistry(clients.client("glue"), stack_name)
    sqs, kinesis = clients.client("sqs"), clients.client("kinesis")
    figures: dict[str, dict[str, int]] = {}
    queues: tuple[tuple[QueueKind, str], ...] = (
        ("on-failure", "OnFailureQueue"),
        ("poison", "PoisonDLQ"),
    )
    for queue, logical_id in queues:
        url = str(physical[logical_id].ref)
        report = redrive(sqs, kinesis, registry, url, queue, streams=streams)
        figures[queue] = {
            "read": report.messages_read,
            "re-put": report.redriven,
            "still poison": report.still_poison,
            "errors": report.errors,
        }
    depth = sqs.get_queue_attributes(
        QueueUrl=str(physical["PoisonDLQ"].ref),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    parked = int(depth["ApproximateNumberOfMessages"]) + int(
        depth["ApproximateNumberOfMessagesNotVisible"]
    )
    return figures, parked
