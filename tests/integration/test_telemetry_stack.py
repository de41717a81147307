"""Stream telemetry end to end: real stream functions write it, the API and the runtime show it.

Transactions (some put twice), poison records and labels go through Kestrel's template on
the emulator, run by the local Lambda runtime's worker processes against real Redis. Then
``GET /v1/telemetry`` of the API (its own process) and the runtime's Prometheus ``/metrics``
must show exactly what was streamed: events, duplicates, poison, decisions by type, scores,
labels and fraud rate, the poison queue's depth, the model version and the drift status.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from api_harness import (
    ApiClient,
    ApiServer,
    prometheus_samples,
    provision,
    put_transactions,
    running_api,
    transaction,
)
from esm_harness import wait_until

from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_telemetry import RedisDriftStatus
from kestrel.settings import LocalSettings
from kestrel.telemetry import score_bins
from kestrel_local import metrics_server
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp
from kestrel_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

N_TX, N_DUP, N_POISON, N_LABELS, N_FRAUDS = 120, 20, 2, 10, 3
WINDOW_S = 900


@dataclass
class Streamed:
    """The stack after the stream ran, with the API and the runtime's metrics server."""

    app: LocalApp
    clients: AwsClients
    api: ApiServer
    metrics_url: str
    store: redis.Redis
    runtime: LocalRuntime
    ids: list[str]


def _labels(ids: list[str], now_ms: int) -> list[dict[str, Any]]:
    return [
        {"transaction_id": tid, "customer_id": f"C-TM{i % 9}", "terminal_id": f"TERM-TM{i % 4}",
         "is_fraud": i < N_FRAUDS, "label_time": now_ms}
        for i, tid in enumerate(ids[:N_LABELS])
    ]  # fmt: skip


@pytest.fixture(scope="module")
def streamed(
    emulator_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Streamed]:
    """Redis database 9: flushed, streamed into, flushed again at the end."""
    work = tmp_path_factory.mktemp("telemetry")
    url = redis_url.rsplit("/", 1)[0] + "/9"
    store = redis.Redis.from_url(url)
    store.flushdb()
    app, clients = provision(emulator_endpoint, url, prefix="tm")
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(work / "run"), "AWS_ENDPOINT_URL": emulator_endpoint,
         "KESTREL_POLL_INTERVAL_S": "0.02"}
    )  # fmt: skip
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction", "LabelsFunction"],
        log_dir=work / "logs",
    )  # fmt: skip
    runtime.start()
    server = metrics_server.start(app, clients, url, port=0)
    assert server is not None
    try:
        now_ms = int(time.time() * 1000)
        txs = [
            transaction(f"TM-{n:04d}", f"C-TM{n % 9}", f"TERM-TM{n % 4}", 5.0 + 3 * n,
                        now_ms - 60_000 + n)
            for n in range(N_TX)
        ]  # fmt: skip
        stream = app.stack.physical["TransactionsStream"].ref
        put_transactions(clients, stream, txs + txs[:N_DUP])
        kinesis = clients.client("kinesis")
        poison = [{"Data": b"\xff not json", "PartitionKey": f"P{i}"} for i in range(N_POISON)]
        assert kinesis.put_records(StreamName=stream, Records=poison)["FailedRecordCount"] == 0
        ids = [str(t["transaction_id"]) for t in txs]
        labels = [
            {"Data": json.dumps(label).encode(), "PartitionKey": str(label["customer_id"])}
            for label in _labels(ids, now_ms)
        ]
        labels_stream = app.stack.physical["LabelsStream"].ref
        assert kinesis.put_records(StreamName=labels_stream, Records=labels)[
            "FailedRecordCount"
        ] == 0  # fmt: skip
        by_function = {m.spec.logical_id: m for m in runtime.kinesis}
        expected = {"TransactionsFunction": N_TX + N_DUP + N_POISON, "LabelsFunction": N_LABELS}
        for name, count in expected.items():
            mapping = by_function[name]
            wait_until(
                lambda m=mapping, c=count: m.stats.succeeded >= c,  # type: ignore[misc]
                timeout_s=120, what=f"{count} records handled by {name}",
            )  # fmt: skip
        with running_api(app, emulator_endpoint, url, work / "api") as api:
            yield Streamed(app, clients, api, server.url, store, runtime, ids)
    finally:
        server.stop()
        runtime.stop()
        store.flushdb()
        store.close()


def _scored(s: Streamed) -> list[Any]:
    """The stored decision of every scored record (a duplicate is scored again, the same)."""
    decisions = RedisDecisions(s.store, 3600)
    found = [decisions.decision(tid) for tid in s.ids + s.ids[:N_DUP]]
    assert all(d is not None for d in found)
    return found


def _telemetry(s: Streamed, window: int = WINDOW_S) -> dict[str, Any]:
    client = ApiClient(s.api)
    try:
        reply = client.request("GET", f"/v1/telemetry?window={window}")
    finally:
        client.close()
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


def test_telemetry_api_shows_what_was_streamed(streamed: Streamed) -> None:
    assert all(m.stats.function_errors == 0 for m in streamed.runtime.kinesis)  # no retries
    body = _telemetry(streamed)
    scored = _scored(streamed)
    assert body["window_s"] == WINDOW_S
    counts = body["counts"]
    assert (counts["applied"], counts["duplicates"], counts["poison"]) == (N_TX, N_DUP, N_POISON)
    assert counts["events"] == sum(body["events_per_s"]["series"]) == N_TX + N_DUP
    assert counts["failed"] == 0 and counts["batch_errors"] == 0
    assert body["decisions"] == {
        d: Counter(r.decision.value.lower() for r in scored)[d]
        for d in ("approve", "review", "decline")
    }
    expected_bins = [0] * 20
    for index, n in score_bins([r.score for r in scored]).items():
        expected_bins[index] = n
    assert body["score_histogram"]["counts"] == expected_bins
    freshness = body["freshness_ms"]
    assert freshness["count"] == N_TX + N_DUP
    assert 0 < freshness["p50"] <= freshness["p99"] <= freshness["max"] < 120_000
    assert body["labels"] == N_LABELS and body["fraud_rate"] == N_FRAUDS / N_LABELS
    assert body["model_version"] == scored[0].model_version
    assert body["dlq"] == {"poison": N_POISON, "on_failure": 0}
    assert body["last_batch_at"] is not None and body["totals"]["applied"] == N_TX
    assert body["drift"] == {"status": "unknown"}  # no drift job ran yet


def _runtime_metrics(s: Streamed) -> dict[Any, float]:
    """The local runtime's /metrics samples."""
    with urllib.request.urlopen(s.metrics_url, timeout=10) as reply:
        return prometheus_samples(reply.read().decode())


def test_telemetry_runtime_and_api_metrics_show_the_same_stream(streamed: Streamed) -> None:
    runtime = _runtime_metrics(streamed)
    client = ApiClient(streamed.api)
    try:
        api = prometheus_samples(client.request("GET", "/metrics").body.decode())
    finally:
        client.close()
    scored = _scored(streamed)
    decided = Counter(r.decision.value.lower() for r in scored)
    for samples in (runtime, api):
        assert samples[("kestrel_telemetry_up", ())] == 1.0
        records = {
            dict(labels)["outcome"]: value
            for (name, labels), value in samples.items()
            if name == "kestrel_stream_records_total"
        }
        assert records == {"applied": N_TX, "duplicate": N_DUP, "poison": N_POISON, "failed": 0}
        for decision in ("approve", "review", "decline"):
            key = ("kestrel_stream_decisions_total", (("decision", decision),))
            assert samples[key] == decided[decision]
        assert samples[("kestrel_labels_total", ())] == N_LABELS
        assert samples[("kestrel_labels_fraud_total", ())] == N_FRAUDS
        assert samples[("kestrel_dlq_depth", (("queue", "poison"),))] == N_POISON
        version = scored[0].model_version
        assert samples[("kestrel_model_info", (("version", version),))] == 1.0
        assert samples[("kestrel_dlq_depth", (("queue", "on_failure"),))] == 0
    freshness = runtime[("kestrel_stream_freshness_p99_seconds", ())]
    assert 0 < freshness <= runtime[("kestrel_stream_freshness_max_seconds", ())]


def test_telemetry_shows_the_drift_status_the_drift_job_published(streamed: Streamed) -> None:
    status = {"status": "drift", "checked_at": "2026-11-29T10:00:00.000Z", "model_version": "1"}
    RedisDriftStatus(streamed.store).publish(status, ttl_s=600)
    try:
        assert _telemetry(streamed, 60)["drift"] == status
        samples = _runtime_metrics(streamed)
        assert samples[("kestrel_drift_detected", ())] == 1.0
        assert samples[("kestrel_drift_status", (("status", "drift"),))] == 1.0
    finally:
        streamed.store.delete("kestrel:{drift}:latest")
