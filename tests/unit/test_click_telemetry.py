"""Unit tests for the clickstream's telemetry: ClickstreamFunction's figures (freshness up to the
propensity stored), the ``clickstream`` part of GET /v1/telemetry, and the propensity
breaker and degraded answers at /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
import redis.exceptions
from api_doubles import Api, conforms, serve_api
from handler_doubles import FakeContext, MemoryEventLog, MemorySink, _event
from prometheus_client.parser import text_string_to_metric_families
from propensity_doubles import click
from telemetry_doubles import MemoryTelemetry
from test_click_propensity import MemoryPropensities, SessionModel, Source, _scorer
from test_clickstream_handler import CLICKS, NOW_S, MemoryClickStore

from kestrel.batch_outcome import BatchOutcome
from kestrel.click_events import parse_click
from kestrel.click_streaming import ClickPath
from kestrel.click_telemetry import click_figures
from kestrel.propensity import Propensity
from kestrel.telemetry import freshness_bins, transaction_figures

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    monkeypatch.setattr(CLICKS.metrics.provider, "namespace", "Kestrel")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


class Clock:
    """A settable clock (epoch seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SlowPropensities(MemoryPropensities):
    """Publishing takes `delay_s` of the clock's time."""

    def __init__(self, clock: Clock, delay_s: float) -> None:
        super().__init__()
        self.clock, self.delay_s = clock, delay_s

    def publish(self, propensities: Sequence[Propensity]) -> None:
        super().publish(propensities)
        self.clock.now += self.delay_s


def test_click_figures_count_the_batch_its_freshness_and_its_propensities() -> None:
    outcome = BatchOutcome(
        applied=3, duplicates=1, poisoned=2, failures={"9": "click store: down"},
        arrival_lag_ms=[10.0, 20.0, 30.0, 900.0], scores=[0.02, 0.04, 0.51, 0.99],
        model_version="2",
    )  # fmt: skip
    figures = click_figures(outcome, 1_795_857_400.7)
    assert figures.second == 1_795_857_400
    assert figures.counters == {
        "applied": 3, "duplicates": 1, "poison": 2, "failed": 1, "batches": 1
    }  # fmt: skip
    assert {k: v for k, v in figures.histograms.items() if k.startswith("score:")} == {
        "score:0": 2, "score:10": 1, "score:19": 1
    }  # fmt: skip
    bins = {f"freshness:{i}": n for i, n in freshness_bins([10.0, 20.0, 30.0, 900.0]).items()}
    assert {k: v for k, v in figures.histograms.items() if k.startswith("freshness:")} == bins
    assert figures.maxima == {"freshness_max_ms": 900.0}
    assert figures.model_version == "2" and figures.shadow_model_version is None


def test_click_path_records_freshness_once_the_propensities_are_stored() -> None:
    event = _event("kinesis-clickstream.json")
    arrivals = [r["kinesis"]["approximateArrivalTimestamp"] for r in event["Records"]]
    clock, telemetry = Clock(NOW_S), MemoryTelemetry()
    sink = SlowPropensities(clock, delay_s=0.75)  # storing the propensities takes 750 ms
    path = ClickPath(
        parse_click, MemoryClickStore(), MemorySink(), MemoryEventLog(), clock,
        scorer=_scorer(Source(SessionModel("4"))), propensities=sink, telemetry=telemetry,
    )  # fmt: skip
    response = CLICKS.lambda_handler(event, FakeContext(), path=path)
    assert response == {"batchItemFailures": []}
    (figures,) = telemetry.recorded
    lags = [(NOW_S + 0.75 - arrival) * 1000.0 for arrival in arrivals]
    assert figures.maxima["freshness_max_ms"] == pytest.approx(max(lags))
    assert figures.counters["applied"] == 3 and figures.model_version == "4"
    assert sum(n for k, n in figures.histograms.items() if k.startswith("score:")) == 3
    assert figures.second == int(NOW_S + 0.75)


def test_click_path_records_a_failed_batch_and_telemetry_never_fails_one() -> None:
    event = _event("kinesis-clickstream.json")
    telemetry = MemoryTelemetry()
    broken = MemoryPropensities(broken=True)
    path = ClickPath(
        parse_click, MemoryClickStore(), MemorySink(), MemoryEventLog(), lambda: NOW_S,
        scorer=_scorer(Source(SessionModel())), propensities=broken, telemetry=telemetry,
    )  # fmt: skip
    with pytest.raises(ConnectionError):
        path.run(event["Records"])
    assert [f.counters for f in telemetry.recorded] == [{"batch_errors": 1, "batches": 1}]
    telemetry.down = ConnectionError("telemetry down (double)")
    working = ClickPath(
        parse_click, MemoryClickStore(), MemorySink(), MemoryEventLog(), lambda: NOW_S,
        telemetry=telemetry,
    )  # fmt: skip
    assert working.run(event["Records"]).applied == 3


def test_api_telemetry_reports_the_clickstream_apart_from_the_transactions(api: Api) -> None:
    now = time.time()
    api.stream.record(transaction_figures(
        BatchOutcome(applied=5, decisions={"APPROVE": 5}, arrival_lag_ms=[40.0] * 5,
                     scores=[0.1] * 5, model_version="3"), now))  # fmt: skip
    for outcome in (
        BatchOutcome(applied=6, duplicates=1, arrival_lag_ms=[100.0] * 6 + [300.0],
                     scores=[0.05] * 4 + [0.62, 0.64, 0.97], model_version="2"),
        BatchOutcome(applied=2, poisoned=1, arrival_lag_ms=[120.0, 130.0],
                     scores=[0.31, 0.33], model_version="2"),
    ):  # fmt: skip
        api.click_stream.record(click_figures(outcome, now))
    response = api.get("/v1/telemetry?window=30")
    assert response.status_code == 200, response.body
    body = response.json_body
    conforms(body, "Telemetry")
    assert sum(body["events_per_s"]["series"]) == 5 and body["model_version"] == "3"
    clicks = body["clickstream"]
    assert (
        sum(clicks["events_per_s"]["series"]) == 9 and len(clicks["events_per_s"]["series"]) == 30
    )
    assert clicks["counts"] == {
        "events": 9, "applied": 8, "duplicates": 1, "poison": 1, "failed": 0, "batches": 2,
        "batch_errors": 0,
    }  # fmt: skip
    assert clicks["totals"]["events"] == 9
    assert clicks["freshness_ms"]["count"] == 9 and clicks["freshness_ms"]["max"] == 300.0
    assert 100.0 <= clicks["freshness_ms"]["p50"] <= 130.0
    counts = clicks["propensity_histogram"]["counts"]
    assert len(counts) == 20 and sum(counts) == 9
    assert counts[1] == 4 and counts[6] == 2 and counts[12] == 2 and counts[19] == 1
    assert clicks["model_version"] == "2" and clicks["last_batch_at"]


def test_api_telemetry_is_503_when_the_clickstream_telemetry_cannot_be_read(api: Api) -> None:
    api.click_stream.down = ConnectionError("refused (double)")
    response = api.get("/v1/telemetry")
    assert response.status_code == 503
    assert response.json_body["error"] == "telemetry_unavailable"


def scrape(api: Api) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.body.decode())
        for s in family.samples
    }


def answers(samples: Samples, degraded: bool) -> float:
    key = ("kestrel_api_propensity_answers_total", (("degraded", str(degraded).lower()),))
    return samples.get(key, 0.0)


def test_api_metrics_show_the_propensity_breaker_and_degraded_answers(api: Api) -> None:
    before = scrape(api)
    assert before[("kestrel_api_propensity_breaker_open", ())] == 0.0
    assert answers(before, True) == answers(before, False) == 0.0
    for _ in range(2):
        assert api.post("/v1/propensity", click()).json_body["degraded"] is False
    api.reader.down = redis.exceptions.ConnectionError("connection refused")
    for _ in range(4):
        assert api.post("/v1/propensity", click()).json_body["degraded"] is True
    samples = scrape(api)
    assert answers(samples, False) == 2.0 and answers(samples, True) == 4.0
    assert samples[("kestrel_api_propensity_breaker_open", ())] == 1.0
    # The fraud path's breaker is its own: no /v1/score failed, so it stays closed.
    assert samples[("kestrel_api_feature_store_breaker_open", ())] == 0.0
