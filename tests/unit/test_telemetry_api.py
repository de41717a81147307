"""Unit tests for GET /v1/telemetry, the stream figures at /metrics and the API's correlation id."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence

import pytest
from api_doubles import AUTH, JSON_AUTH, Api, conforms, serve_api, transaction
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kestrel.adapters.prometheus_telemetry import StreamCollector
from kestrel.batch_outcome import BatchOutcome
from kestrel.events import Transaction
from kestrel.features import TransactionPreview
from kestrel.telemetry import TelemetrySnapshot, label_figures, transaction_figures
from kestrel_local.__main__ import _parser
from kestrel_local.metrics_server import DEFAULT_PORT, serve_metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


def stream_a_little(api: Api) -> None:
    """Two transaction batches and one label batch in the current second."""
    now = time.time()
    for outcome in (
        BatchOutcome(applied=4, duplicates=1, decisions={"APPROVE": 4, "REVIEW": 1},
                     arrival_lag_ms=[20.0, 30.0, 40.0, 50.0, 400.0], scores=[0.1] * 4 + [0.6],
                     model_version="3"),
        BatchOutcome(applied=2, poisoned=1, decisions={"DECLINE": 2},
                     arrival_lag_ms=[60.0, 70.0], scores=[0.99, 0.98], model_version="3"),
    ):  # fmt: skip
        api.stream.record(transaction_figures(outcome, now))
    api.stream.record(label_figures(BatchOutcome(labels=4, frauds=1), now))


def test_api_telemetry_answers_the_streamed_figures_in_the_documented_shape(api: Api) -> None:
    stream_a_little(api)
    api.drift.status = {"status": "ok", "checked_at": "2026-11-28T09:00:00.000Z"}
    response = api.get("/v1/telemetry?window=30")
    assert response.status_code == 200, response.body
    body = response.json_body
    conforms(body, "Telemetry")
    assert body["window_s"] == 30 and len(body["events_per_s"]["series"]) == 30
    assert sum(body["events_per_s"]["series"]) == 7
    assert body["decisions"] == {"approve": 4, "review": 1, "decline": 2}
    assert body["labels"] == 4 and body["fraud_rate"] == 0.25
    assert body["freshness_ms"]["max"] == 400.0 and body["freshness_ms"]["count"] == 7
    assert 30.0 <= body["freshness_ms"]["p50"] <= 60.0
    assert body["score_histogram"]["counts"][2] == 4 and sum(body["score_histogram"]["counts"]) == 7
    assert body["counts"]["poison"] == 1 and body["totals"]["batches"] == 3
    assert body["dlq"] == {"poison": 0, "on_failure": None}
    assert body["model_version"] == "3" and body["drift"]["status"] == "ok"


def test_api_telemetry_window_defaults_to_sixty_seconds(api: Api) -> None:
    response = api.get("/v1/telemetry")
    assert response.status_code == 200 and response.json_body["window_s"] == 60
    conforms(response.json_body, "Telemetry")


@pytest.mark.parametrize(
    "query", ["window=0", "window=3601", "window=abc", "window=1.5", "window=-5",
              "window=", "window=" + "9" * 5000, "window=1&window=2", "window=%C2%B2"],
)  # fmt: skip
def test_api_telemetry_refuses_a_bad_window_with_400(api: Api, query: str) -> None:
    response = api.get(f"/v1/telemetry?{query}")
    assert response.status_code == 400, (query, response.body)
    assert response.json_body["field"] == "window"
    assert api.stream.reads == []


def test_api_telemetry_needs_the_key_and_answers_503_when_the_store_is_down(api: Api) -> None:
    assert api.get("/v1/telemetry", headers={}).status_code == 403
    api.stream.down = ConnectionError("refused (double)")
    response = api.get("/v1/telemetry")
    assert response.status_code == 503
    assert response.json_body["error"] == "telemetry_unavailable"
    assert "refused" in response.json_body["problem"]


def scrape(api: Api) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.body.decode())
        for s in family.samples
    }


def test_api_metrics_export_the_stream_figures(api: Api) -> None:
    stream_a_little(api)
    api.drift.status = {"status": "drift"}
    samples = scrape(api)
    assert samples[("kestrel_telemetry_up", ())] == 1.0
    assert samples[("kestrel_stream_records_total", (("outcome", "applied"),))] == 6
    assert samples[("kestrel_stream_records_total", (("outcome", "duplicate"),))] == 1
    assert samples[("kestrel_stream_records_total", (("outcome", "poison"),))] == 1
    assert samples[("kestrel_stream_decisions_total", (("decision", "decline"),))] == 2
    assert samples[("kestrel_labels_total", ())] == 4
    assert samples[("kestrel_labels_fraud_total", ())] == 1
    assert samples[("kestrel_stream_freshness_max_seconds", ())] == 0.4
    assert 0.03 <= samples[("kestrel_stream_freshness_p50_seconds", ())] <= 0.06
    assert samples[("kestrel_dlq_depth", (("queue", "poison"),))] == 0
    assert ("kestrel_dlq_depth", (("queue", "on_failure"),)) not in samples  # unknown
    assert samples[("kestrel_model_info", (("version", "3"),))] == 1
    assert samples[("kestrel_drift_detected", ())] == 1
    assert samples[("kestrel_stream_window_scores", (("upper", "1.00"),))] == 2
    assert samples[("kestrel_telemetry_window_seconds", ())] == 60


def test_api_metrics_still_answer_when_the_telemetry_store_is_down(api: Api) -> None:
    api.stream.down = ConnectionError("refused (double)")
    samples = scrape(api)
    assert samples[("kestrel_telemetry_up", ())] == 0.0
    assert not any(name.startswith("kestrel_stream_") for name, _ in samples)
    assert ("kestrel_api_model_loaded", ()) in samples  # the API's own metrics are there


def test_stream_collector_exports_nothing_unknown_for_an_idle_stream() -> None:
    registry = CollectorRegistry()
    snapshot = TelemetrySnapshot(
        window_s=60, generated_at_ms=0, start_s=0, events=(0,) * 60, counts={}, totals={},
        freshness=(0,), freshness_max_ms=None, scores=(0,) * 20, model_version=None,
        last_batch_ms=None, dlq={"poison": None}, drift={"status": "unknown"},
    )  # fmt: skip
    registry.register(StreamCollector(lambda window: snapshot))
    text = generate_latest(registry).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert "kestrel_stream_events_per_second" in names
    assert not names & {"kestrel_stream_freshness_p99_seconds", "kestrel_dlq_depth",
                        "kestrel_model_info", "kestrel_stream_fraud_rate"}  # fmt: skip


def test_api_score_sets_the_transaction_id_as_correlation_id(api: Api) -> None:
    seen: list[str | None] = []
    lines: list[dict[str, object]] = []
    logger = api.module.logger
    handler = logger.registered_handler
    assert handler in logging.getLogger("kestrel").handlers  # domain lines share it
    preview = api.reader.preview_transactions

    def spying(transactions: Sequence[Transaction]) -> list[TransactionPreview | Exception]:
        seen.append(logger.get_correlation_id())
        record = logging.getLogger("kestrel.serving").makeRecord(
            "kestrel.serving", logging.WARNING, __file__, 1, "probe", (), None
        )
        lines.append(json.loads(handler.format(record)))
        return preview(transactions)

    api.reader.preview_transactions = spying  # type: ignore[method-assign]
    assert api.post("/v1/score", transaction(transaction_id="T-CORR-1")).status_code == 200
    assert seen == ["T-CORR-1"]
    assert lines[0]["correlation_id"] == "T-CORR-1" and lines[0]["message"] == "probe"
    assert logger.get_correlation_id() is None  # reset after the request
    assert api.post("/v1/score/batch", {"transactions": [transaction()]},
                    JSON_AUTH).status_code == 200  # fmt: skip
    assert seen[1] is None
    assert api.get("/health", AUTH).status_code == 200


def test_local_runtime_metrics_default_to_loopback_port_9464_and_refuse_other_hosts() -> None:
    args = _parser().parse_args(["run"])
    assert (args.metrics_port, args.metrics_host) == (DEFAULT_PORT, "127.0.0.1")
    assert DEFAULT_PORT == 9464
    assert _parser().parse_args(["run", "--metrics-port", "0"]).metrics_port == 0
    with pytest.raises(ValueError, match="loopback"):
        serve_metrics(CollectorRegistry(), 0, "0.0.0.0")
