"""Unit tests for kestrel.telemetry: bins, percentiles from histograms, windows and rates."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from telemetry_doubles import FixedDepths, MemoryDrift, MemoryTelemetry

from kestrel.batch_outcome import BatchOutcome
from kestrel.telemetry import (
    FRESHNESS_BINS,
    FRESHNESS_MAX,
    SCORE_BINS,
    TelemetryService,
    TelemetryUnavailable,
    TelemetryWindow,
    error_figures,
    freshness_bins,
    freshness_edges,
    histogram_quantile,
    label_figures,
    score_bins,
    score_edges,
    summarize,
    transaction_figures,
)

NOW_S = 1_795_857_312.4  # inside second 1_795_857_312


def test_telemetry_freshness_bins_are_log_scale_with_open_ends() -> None:
    edges = freshness_edges()
    assert len(edges) == FRESHNESS_BINS + 1 and edges[0] == 0.0 and math.isinf(edges[-1])
    lags = [0.0, 0.4, -3.0, 1.0, 1.18, 1.19, 2.0, 1000.0, 1e9]
    bins = freshness_bins(lags)
    assert bins[0] == 3  # below 1 ms (a negative lag is clock skew: counted as 0)
    assert bins[1] == 2 and bins[2] == 1  # [1, 2^0.25), [2^0.25, 2^0.5)
    assert bins[5] == 1  # 2 ms starts the second doubling
    assert bins[FRESHNESS_BINS - 1] == 1  # beyond 2^22 ms: the open last bin
    for lag in (1.0, 2.0, 7.3, 1000.0, 123_456.0):
        (index,) = freshness_bins([lag])
        assert edges[index] <= lag < edges[index + 1]
        assert edges[index + 1] / edges[index] == pytest.approx(2**0.25)


def test_telemetry_score_bins_are_twenty_equal_bins_with_one_in_the_last() -> None:
    assert score_edges() == [i / 20 for i in range(21)]
    assert score_bins([0.0, 0.049, 0.05, 0.51, 0.999, 1.0]) == {0: 2, 1: 1, 10: 1, 19: 2}
    assert score_bins([]) == {}


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_telemetry_percentile_from_histogram_is_within_one_bin_of_the_exact_one(q: float) -> None:
    rng = random.Random(8)
    lags = [rng.lognormvariate(4.0, 1.2) for _ in range(20_000)]
    counts = [0] * FRESHNESS_BINS
    for index, n in freshness_bins(lags).items():
        counts[index] = n
    estimate = histogram_quantile(counts, freshness_edges(), q, max(lags))
    exact = float(np.quantile(lags, q))
    assert estimate is not None
    assert abs(estimate - exact) / exact < 0.19  # one bin is 19% wide


def test_telemetry_percentile_is_none_when_empty_and_never_above_the_maximum() -> None:
    edges = [0.0, 10.0, 20.0, math.inf]
    assert histogram_quantile([0, 0, 0], edges, 0.5) is None
    assert histogram_quantile([0, 4, 0], edges, 0.5) == 15.0  # linear within the bin
    assert histogram_quantile([0, 4, 0], edges, 0.99, maximum=12.0) == 12.0
    assert histogram_quantile([0, 0, 2], edges, 0.99, maximum=45.0) == pytest.approx(44.75)
    assert histogram_quantile([1, 0, 0], edges, 1.0, maximum=3.0) == 3.0


def test_telemetry_transaction_figures_hold_counters_histograms_and_the_maximum() -> None:
    outcome = BatchOutcome(
        failures={"9": "feature store: boom"}, applied=3, duplicates=1, poisoned=2,
        decisions={"APPROVE": 3, "DECLINE": 1}, arrival_lag_ms=[5.0, 5.1, 900.0, 0.5],
        scores=[0.01, 0.02, 0.97, 0.5], model_version="7",
    )  # fmt: skip
    figures = transaction_figures(outcome, NOW_S)
    assert figures.second == 1_795_857_312 and figures.model_version == "7"
    assert figures.counters == {
        "applied": 3, "duplicates": 1, "poison": 2, "failed": 1, "batches": 1,
        "decision:approve": 3, "decision:decline": 1,
    }  # fmt: skip
    assert sum(v for k, v in figures.histograms.items() if k.startswith("freshness:")) == 4
    assert {k: v for k, v in figures.histograms.items() if k.startswith("score:")} == {
        "score:0": 2, "score:10": 1, "score:19": 1,
    }  # fmt: skip
    assert figures.maxima == {FRESHNESS_MAX: 900.0}


def test_telemetry_label_and_error_figures() -> None:
    labels = label_figures(BatchOutcome(labels=5, frauds=2, poisoned=1), NOW_S)
    assert labels.counters == {"labels": 5, "frauds": 2, "poison": 1, "failed": 0, "batches": 1}
    assert labels.histograms == {} and labels.model_version is None
    assert error_figures(NOW_S).counters == {"batch_errors": 1, "batches": 1}


def _stream(seconds: dict[int, BatchOutcome]) -> MemoryTelemetry:
    telemetry = MemoryTelemetry()
    for second, outcome in seconds.items():
        telemetry.record(transaction_figures(outcome, second + 0.5))
    return telemetry


def test_telemetry_snapshot_sums_a_window_and_rates_come_from_complete_seconds() -> None:
    last = int(NOW_S)
    telemetry = _stream(
        {last - s: BatchOutcome(applied=100 * s, duplicates=s, decisions={"APPROVE": 101 * s},
                                arrival_lag_ms=[10.0 * s] * s, scores=[0.5] * s)
         for s in range(1, 8)}
    )  # fmt: skip
    telemetry.record(transaction_figures(BatchOutcome(applied=7), NOW_S))  # the running second
    telemetry.record(label_figures(BatchOutcome(labels=8, frauds=2), NOW_S))
    snap = TelemetryService(telemetry, clock=lambda: NOW_S).snapshot(10)
    assert telemetry.reads == [(last - 9, last)]
    assert snap.start_s == last - 9 and snap.window_s == 10
    assert snap.events == (0, 0, 707, 606, 505, 404, 303, 202, 101, 7)
    assert snap.events_per_s == pytest.approx((505 + 404 + 303 + 202 + 101) / 5)
    assert snap.mean_events_per_s == pytest.approx(sum(snap.events) / 10)
    assert snap.decisions == {"approve": 101 * 28, "review": 0, "decline": 0}
    assert snap.fraud_rate == 0.25 and snap.counts["labels"] == 8
    assert snap.freshness_max_ms == 70.0 and sum(snap.freshness) == 28
    assert snap.freshness_ms(0.99) == 70.0  # capped at the maximum seen
    p50 = snap.freshness_ms(0.5)
    assert p50 is not None and 40.0 <= p50 <= 60.0
    assert snap.scores[10] == 28 and sum(snap.scores) == 28
    assert snap.totals["applied"] == 2807 and snap.totals["batches"] == 9  # 8 + 1 of labels


def test_telemetry_window_leaves_out_older_seconds() -> None:
    last = int(NOW_S)
    telemetry = _stream({last - 61: BatchOutcome(applied=50), last - 2: BatchOutcome(applied=3)})
    snap = TelemetryService(telemetry, clock=lambda: NOW_S).snapshot(60)
    assert sum(snap.events) == 3 and snap.counts["applied"] == 3
    assert snap.totals["applied"] == 53  # the totals are all time
    wide = TelemetryService(telemetry, clock=lambda: NOW_S).snapshot(62)
    assert sum(wide.events) == 53


def test_telemetry_snapshot_of_nothing_is_zeros_and_nulls() -> None:
    body = TelemetryService(MemoryTelemetry(), clock=lambda: NOW_S).snapshot(1).to_dict()
    assert body["window_s"] == 1 and body["events_per_s"]["series"] == [0]
    assert body["events_per_s"]["current"] == 0.0
    assert body["freshness_ms"] == {"p50": None, "p99": None, "max": None, "count": 0}
    assert body["fraud_rate"] is None and body["model_version"] is None
    assert body["dlq"] == {"poison": None, "on_failure": None}
    assert body["drift"] == {"status": "unknown"} and body["last_batch_at"] is None
    assert body["score_histogram"]["counts"] == [0] * SCORE_BINS
    assert body["generated_at"] == "2026-11-28T09:15:12.400Z"


def test_telemetry_snapshot_adds_depths_drift_and_model_version() -> None:
    telemetry = _stream({int(NOW_S): BatchOutcome(applied=1, model_version="4")})
    drift = MemoryDrift({"status": "drift", "checked_at": "2026-11-28T09:00:00.000Z"})
    depths = FixedDepths({"poison": 3})
    body = TelemetryService(telemetry, depths, drift, clock=lambda: NOW_S).snapshot(5).to_dict()
    assert body["dlq"] == {"poison": 3, "on_failure": None}
    assert body["drift"]["status"] == "drift" and body["model_version"] == "4"
    assert body["last_batch_at"] == "2026-11-28T09:15:12.000Z"
    assert body["counts"]["events"] == 1 and body["totals"]["decisions"]["approve"] == 0


@pytest.mark.parametrize("drift", [{"state": "drift"}, {"status": 3}])
def test_telemetry_drift_without_a_string_status_is_unknown(drift: dict[str, object]) -> None:
    snap = summarize(TelemetryWindow({}, (0,)), {}, 0, 0, {}, drift)
    assert snap.drift == {"status": "unknown"}


@pytest.mark.parametrize("window", [0, -1, 3601])
def test_telemetry_refuses_a_window_out_of_range(window: int) -> None:
    with pytest.raises(ValueError, match="window"):
        TelemetryService(MemoryTelemetry(), clock=lambda: NOW_S).snapshot(window)


def test_telemetry_store_failure_is_unavailable() -> None:
    telemetry = MemoryTelemetry()
    telemetry.down = ConnectionError("refused (double)")
    with pytest.raises(TelemetryUnavailable, match="ConnectionError: refused"):
        TelemetryService(telemetry, clock=lambda: NOW_S).snapshot(60)
