"""Online/offline parity: replay simulated events through the real path and compare features.

The path is the one production uses: producer → Kinesis (the local endpoint) → the local
Lambda runtime running TransactionsFunction and LabelsFunction from template.yaml → Redis.
Each transaction's online feature vector is read back from the S3 event log, where the
handler logs it, and compared with `offline_features` over the same events.

Labels obey the point-in-time rule of `kestrel.features`: a label counts for transactions
of days after it arrived. The replay therefore sends, day by day, the labels known before
the day and waits until they are applied, then the day's transactions.

    python -m kestrel_training.parity --events 100000
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pandas as pd
import redis

from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.features import DAY_MS, FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.esm_common import MappingStats
from kestrel_local.provision import bind
from kestrel_local.runtime import LocalRuntime
from kestrel_training.avro_encoding import avro_encoders
from kestrel_training.offline_features import offline_features
from kestrel_training.producer import produce
from kestrel_training.simulator import SimulatorConfig, simulate

ROOT = Path(__file__).resolve().parents[2]
PARITY_DB = 15
RELATIVE_TOLERANCE = 1e-9
# The figure names DESIGN.md lists, per mode: events compared, mismatches.
FIGURES = {
    "fraud": ("parity.events", "parity.mismatches"),
    "clickstream": ("clickstream.parity_events", "clickstream.parity_mismatches"),
}


@dataclass
class ParityReport:
    """What a parity run compared and found."""

    events: int = 0
    labels: int = 0
    compared: int = 0
    missing_online: int = 0
    mismatches: int = 0
    mismatches_by_feature: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    feature_set_hash: str = FEATURE_SET_HASH


def _parity_redis_url(url: str) -> str:
    """The same Redis, database 15: the replay starts from an empty store."""
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path=f"/{PARITY_DB}"))


def simulated_events(
    events: int, seed: int, customers: int = 5000, terminals: int = 10000
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first `events` transactions of a simulation (at least 9 days), and their labels."""
    days = max(9, math.ceil(events / (1.8 * customers)) + 1)
    sim = simulate(
        SimulatorConfig(n_customers=customers, n_terminals=terminals, n_days=days, seed=seed)
    )
    tx = sim.transactions.head(events).reset_index(drop=True)
    labels = sim.labels[sim.labels["transaction_id"].isin(set(tx["transaction_id"]))]
    return tx, labels.reset_index(drop=True)


def _wait(done: Callable[[], bool], what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"parity: timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def _reached(stats: MappingStats, target: int) -> Callable[[], bool]:
    return lambda: stats.succeeded >= target


def replay(
    tx: pd.DataFrame, labels: pd.DataFrame, settings: LocalSettings, log: Callable[[str], None]
) -> tuple[dict[str, list[float]], int]:
    """Send the events through the local stack; return the logged features and labels sent."""
    clients = AwsClients(settings.endpoint)
    redis_url = _parity_redis_url(settings.redis)
    redis.Redis.from_url(redis_url).flushdb()
    stack = f"parity{uuid.uuid4().hex[:8]}"
    app, _ = bind(ROOT / "template.yaml", clients, stack, {"RedisUrl": redis_url}, create=True)
    tx_stream = app.stack.physical["TransactionsStream"].ref
    label_stream = app.stack.physical["LabelsStream"].ref
    runtime = LocalRuntime(
        app,
        clients,
        settings,
        only=["TransactionsFunction", "LabelsFunction"],
        log_dir=Path(settings.run_dir) / "logs" / stack,
    )
    tx_mapping, label_mapping = runtime.kinesis
    kinesis = clients.client("kinesis")
    # The streams' real wire format: Avro in Glue Schema Registry framing.
    encoders = avro_encoders(GlueSchemaRegistry(clients.client("glue"), stack))
    runtime.start()
    labels_sent = 0
    try:
        ordered_labels = labels.sort_values("label_time", kind="stable")
        days = tx.groupby(tx["event_time"] // DAY_MS, sort=True)
        sent = 0
        for number, (day, day_tx) in enumerate(days, start=1):
            known = ordered_labels[ordered_labels["label_time"] < day * DAY_MS]
            new_labels = known.iloc[labels_sent:]
            if len(new_labels):
                produce(
                    new_labels.to_dict("records"),
                    label_stream,
                    client=kinesis,
                    encoder=encoders["labels"],
                )
                labels_sent += len(new_labels)
                _wait(_reached(label_mapping.stats, labels_sent), "labels to apply")
            produce(
                day_tx.to_dict("records"),
                tx_stream,
                client=kinesis,
                encoder=encoders["transactions"],
            )
            sent += len(day_tx)
            _wait(_reached(tx_mapping.stats, sent), "transactions to apply")
            log(f"parity: day {number}: {sent:,} transactions, {labels_sent:,} labels applied")
    finally:
        runtime.stop()
    bucket = app.stack.physical["EventLogBucket"].ref
    return read_logged_features(clients, bucket), labels_sent


def read_logged_features(clients: AwsClients, bucket: str) -> dict[str, list[float]]:
    """transaction_id → logged feature vector, from the S3 event log (duplicates must agree)."""
    s3 = clients.client("s3")
    features: dict[str, list[float]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="events/transactions/"
    ):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for line in gzip.decompress(body).splitlines():
                row = json.loads(line)
                vector = row["features"]
                previous = features.setdefault(row["transaction_id"], vector)
                if previous != vector:
                    raise AssertionError(f"{row['transaction_id']}: logged twice, differently")
    return features


def compare(online: dict[str, list[float]], offline: pd.DataFrame, report: ParityReport) -> None:
    """Count every feature value that differs (counts exactly, amounts within 1e-9 relative)."""
    by_feature: Counter[str] = Counter()
    for row in offline.itertuples(index=False):
        got = online.get(row.transaction_id)
        if got is None:
            report.missing_online += 1
            continue
        report.compared += 1
        for name, a, b in zip(FEATURE_NAMES, got, tuple(row)[1:], strict=True):
            if not math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0):
                by_feature[name] += 1
                if len(report.examples) < 10:
                    report.examples.append(
                        {
                            "transaction_id": row.transaction_id,
                            "feature": name,
                            "online": a,
                            "offline": b,
                        }
                    )
    report.mismatches = sum(by_feature.values()) + report.missing_online
    report.mismatches_by_feature = dict(by_feature)


def run(
    events: int,
    seed: int,
    settings: LocalSettings,
    log: Callable[[str], None] = print,
    customers: int = 5000,
    terminals: int = 10000,
) -> ParityReport:
    """Simulate, replay through the local stack, compute offline, compare."""
    started = time.monotonic()
    tx, labels = simulated_events(events, seed, customers, terminals)
    days = tx["event_time"].max() // DAY_MS - tx["event_time"].min() // DAY_MS + 1
    frauds = int(labels["is_fraud"].sum())
    log(f"parity: {len(tx):,} transactions over {days} days, {frauds:,} fraud labels")
    online, labels_sent = replay(tx, labels, settings, log)
    applied_labels = labels.sort_values("label_time", kind="stable").head(labels_sent)
    offline = offline_features(tx, applied_labels)
    report = ParityReport(events=len(tx), labels=labels_sent)
    compare(online, offline, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run parity, print the summary, write bench/results/parity-*.json.

    ``--mode fraud`` (the default) replays transactions and labels; ``--mode clickstream``
    replays clicks through ClickstreamFunction (`kestrel_training.click_parity`) and writes
    ``clickstream.parity_*`` figures to bench/results/parity-clickstream-*.json.
    """
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.parity")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--mode", choices=("fraud", "clickstream"), default="fraud")
    args = parser.parse_args(argv)
    settings = LocalSettings.from_env()

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    report: ParityReport
    if args.mode == "clickstream":
        from kestrel_training import click_parity

        report = click_parity.run(args.events, args.seed, settings, log=say)
        benchmark, names = "parity-clickstream", FIGURES["clickstream"]
    else:
        report = run(args.events, args.seed, settings, log=say)
        benchmark, names = "parity", FIGURES["fraud"]
    sys.path.insert(0, str(ROOT))
    from bench.results_io import write_result

    path = write_result(
        benchmark,
        {
            "events": args.events,
            "seed": args.seed,
            "mode": args.mode,
            "feature_set_hash": report.feature_set_hash,
            "relative_tolerance": RELATIVE_TOLERANCE,
        },
        {
            names[0]: (report.compared, "count"),
            names[1]: (report.mismatches, "count"),
        },
    )
    print(json.dumps(report.__dict__, indent=2))
    print(
        f"parity ({args.mode}): {report.compared:,} events compared, {report.mismatches} "
        f"mismatches ({report.seconds}s); results in {path}"
    )
    return 0 if report.mismatches == 0 and report.compared == report.events else 1


if __name__ == "__main__":
    sys.exit(main())
