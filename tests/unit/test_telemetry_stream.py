"""Unit tests for the stream side of telemetry: what the paths record, EMF, logs, DLQ depths."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics
from handler_doubles import (
    LABELS,
    NOW_S,
    TRANSACTIONS,
    FakeContext,
    MemoryFeatureStore,
    Ports,
    _emf,
    _event,
    _ports,
)
from stream_doubles import shipped_scorer
from telemetry_doubles import MemoryTelemetry

from kestrel.adapters.sqs_queue_depths import SqsQueueDepths
from kestrel.batch_outcome import BatchOutcome
from kestrel.events import parse_label, parse_transaction
from kestrel.stream_batch import dlq_depth_metrics, log_outcome
from kestrel.streaming import LabelPath, TransactionPath
from kestrel.telemetry import CachedDepths


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    for module in (TRANSACTIONS, LABELS):
        monkeypatch.setattr(module.metrics.provider, "namespace", "Kestrel")


def _path(ports: Ports, telemetry: MemoryTelemetry) -> TransactionPath:
    return TransactionPath(
        parse_transaction, ports.store, ports.sink, ports.log, shipped_scorer(),
        [ports.decisions], lambda: NOW_S, telemetry=telemetry,
    )  # fmt: skip


def test_transaction_path_records_one_batch_of_figures() -> None:
    telemetry, ports = MemoryTelemetry(), _ports()
    outcome = _path(ports, telemetry).run(_event("kinesis-transactions.json")["Records"])
    (figures,) = telemetry.recorded
    assert figures.second == int(NOW_S) and figures.model_version == "1"
    assert figures.counters["applied"] == 3 and figures.counters["batches"] == 1
    decided = {k: v for k, v in figures.counters.items() if k.startswith("decision:")}
    assert sum(decided.values()) == 3
    assert sum(v for k, v in figures.histograms.items() if k.startswith("score:")) == 3
    assert sum(v for k, v in figures.histograms.items() if k.startswith("freshness:")) == 3
    assert figures.maxima["freshness_max_ms"] == pytest.approx(10_000, abs=0.01)
    assert outcome.scoring_ms is not None and outcome.scoring_ms > 0
    assert len(outcome.scores) == 3


def test_transaction_path_records_an_error_when_the_batch_fails_as_a_whole() -> None:
    telemetry = MemoryTelemetry()
    path = _path(_ports(store=MemoryFeatureStore(down=True)), telemetry)
    with pytest.raises(ConnectionError):
        path.run(_event("kinesis-transactions.json")["Records"])
    assert [f.counters for f in telemetry.recorded] == [{"batch_errors": 1, "batches": 1}]


def test_transaction_path_is_not_failed_by_telemetry(caplog: pytest.LogCaptureFixture) -> None:
    telemetry, ports = MemoryTelemetry(), _ports()
    telemetry.down = ConnectionError("telemetry refused (double)")
    outcome = _path(ports, telemetry).run(_event("kinesis-transactions.json")["Records"])
    assert outcome.applied == 3 and outcome.failures == {}
    assert len(ports.decisions.published) == 3
    assert "telemetry not recorded: ConnectionError" in caplog.text


def test_label_path_records_labels_and_frauds() -> None:
    telemetry, ports = MemoryTelemetry(), _ports()
    event = _event("kinesis-labels.json")
    path = LabelPath(parse_label, ports.store, ports.sink, ports.log, telemetry=telemetry)
    outcome = path.run(event["Records"])
    frauds = sum(1 for label in ports.log.writes[0].events if label["is_fraud"])
    (figures,) = telemetry.recorded
    assert figures.counters["labels"] == len(event["Records"]) == outcome.labels
    assert figures.counters["frauds"] == frauds == outcome.frauds


def test_transaction_path_logs_each_decision_at_debug_with_its_correlation_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = _event("kinesis-transactions.json")["Records"]
    with caplog.at_level(logging.INFO, logger="kestrel.streaming"):
        _path(_ports(), MemoryTelemetry()).run(records)
    assert not [r for r in caplog.records if r.name == "kestrel.streaming"]  # none at INFO
    with caplog.at_level(logging.DEBUG, logger="kestrel.streaming"):
        _path(_ports(), MemoryTelemetry()).run(records)
    decided = [r for r in caplog.records if r.getMessage() == "transaction decided"]
    ids = [getattr(r, "correlation_id", None) for r in decided]
    assert ids == ["T-000001", "T-000002", "T-000003"]
    assert [getattr(r, "transaction_id", None) for r in decided] == ids


def test_transactions_handler_emits_processed_p99_scoring_latency_and_model_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    TRANSACTIONS.lambda_handler(
        _event("kinesis-transactions.json"), FakeContext(), path=_path(_ports(), MemoryTelemetry())
    )
    out = capsys.readouterr().out
    emf = _emf(out)
    assert emf["TransactionsProcessed"] == 3
    assert emf["FreshnessArrivalP99"] == pytest.approx(10_000, abs=0.01)
    assert emf["ScoringLatency"] > 0
    blob = next(json.loads(x) for x in out.splitlines() if x.startswith('{"_aws"'))
    assert blob["model_version"] == "1"  # metadata, not a dimension


def test_labels_handler_emits_labels_received_and_frauds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ports = _ports()
    path = LabelPath(parse_label, ports.store, ports.sink, ports.log)
    event = _event("kinesis-labels.json")
    LABELS.lambda_handler(event, FakeContext(function_name="kestrel-LabelsFunction"), path=path)
    emf = _emf(capsys.readouterr().out)
    assert emf["LabelsReceived"] == len(event["Records"])
    assert emf["LabelsFrauds"] == sum(1 for x in ports.log.writes[0].events if x["is_fraud"])


def test_dlq_depth_metrics_emit_known_depths_only(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = Metrics(namespace="Kestrel", service="monitor")
    dlq_depth_metrics(metrics, {"poison": 2, "on_failure": None, "other": 9})
    metrics.flush_metrics()
    (blob,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if "_aws" in x]
    names = {m["Name"] for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert names == {"PoisonDLQDepth"} and blob["PoisonDLQDepth"] == [2.0]


def test_log_outcome_warns_only_when_records_must_be_retried(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = Logger(service="kestrel-telemetry-test")
    log_outcome(logger, BatchOutcome(applied=3))
    assert capsys.readouterr().out == ""
    log_outcome(logger, BatchOutcome(failures={"49": "feature store: boom", "50": "x"}))
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["level"] == "WARNING" and line["failed"] == 2
    assert line["sequence_numbers"] == ["49", "50"]


class FakeSqs:
    """The GetQueueAttributes call of a boto3 SQS client."""

    def __init__(self) -> None:
        self.depth: dict[str, Any] = {"good": 4}
        self.calls = 0

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        self.calls += 1
        return {"Attributes": {"ApproximateNumberOfMessages": str(self.depth[QueueUrl])}}


def test_cached_depths_read_sqs_at_most_once_per_max_age() -> None:
    sqs, now = FakeSqs(), [100.0]
    sqs_depths = SqsQueueDepths(sqs, {"poison": "good", "on_failure": ""})  # type: ignore[arg-type]
    depths = CachedDepths(sqs_depths, max_age_s=5.0, clock=lambda: now[0])
    assert depths.depths() == {"poison": 4, "on_failure": None}
    sqs.depth["good"] = 7
    now[0] += 4.9
    assert depths.depths()["poison"] == 4 and sqs.calls == 1  # cached
    now[0] += 0.2
    assert depths.depths()["poison"] == 7 and sqs.calls == 2
