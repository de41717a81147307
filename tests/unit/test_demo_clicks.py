"""The demo's clickstream: its progress part, the warning when clicks fall behind, and the
summary rows of both families."""

from __future__ import annotations

import math

from kestrel_local.demo_api_load import ApiLoad
from kestrel_local.demo_clicks import (
    ClickSummary,
    Lag,
    progress_part,
    second_pacer,
    summary_rows,
    tenths,
)
from kestrel_local.demo_report import DemoSummary, summary_table


def snap(p50_ms: float | None, current: float) -> dict[str, object]:
    """A telemetry answer whose clickstream part has this freshness p50 and rate."""
    return {
        "freshness_ms": {"p50": 100.0, "p99": 200.0},
        "events_per_s": {"current": 2000.0},
        "clickstream": {
            "freshness_ms": {"p50": p50_ms, "p99": None if p50_ms is None else p50_ms * 2},
            "events_per_s": {"current": current},
        },
    }


def test_click_lag_warns_once_after_two_late_snapshots_in_a_row() -> None:
    lag = Lag(rate=500)
    assert lag.check(snap(300, 500)) is None
    assert lag.check(snap(2500, 380)) is None  # one late line may be a hiccup
    warning = lag.check(snap(3900, 350))
    assert warning is not None
    assert "3,900 ms" in warning and "350 clicks/s of 500 produced" in warning
    assert "make demo CLICK_RATE=" in warning
    assert lag.check(snap(5000, 340)) is None  # said once
    assert lag.fell_behind


def test_click_lag_stays_quiet_while_clicks_keep_up_or_none_are_measured() -> None:
    lag = Lag(rate=500)
    for p50 in (120, 2500, 140, None, 2600, None, 2700):  # never two late polls in a row
        assert lag.check(snap(p50, 500)) is None
    assert lag.check({"freshness_ms": {"p50": 9000}}) is None  # transactions' lag is not clicks'
    assert not lag.fell_behind


def test_progress_part_shows_clicks_per_second_and_freshness() -> None:
    assert progress_part(snap(87.4, 498.6)) == " | clicks 499/s p50 87 ms p99 175 ms"
    assert progress_part(snap(None, 0)) == " | clicks 0/s p50 - ms p99 - ms"
    assert progress_part({"events_per_s": {"current": 5}}) == ""


def test_tenths_merge_the_twenty_telemetry_bins() -> None:
    assert tenths([1, 2, 3, 4] + [0] * 15 + [7]) == [3, 7, 0, 0, 0, 0, 0, 0, 0, 7]
    assert tenths([]) == [0] * 10


def test_summary_reports_both_families() -> None:
    clicks = ClickSummary(
        rate=500, sent=60_000, processed=60_000, users=1_900, freshness_p50_ms=90.0,
        freshness_p99_ms=420.0, histogram=[50, 30, 10, 5, 5, 0, 0, 0, 0, 0],
        deciles=[0.01 * i for i in range(1, 10)], users_scored=1_900, model_version="2",
        api_requests=1_200, api_errors=0, api_p50_ms=2.5, api_p99_ms=30.25,
    )  # fmt: skip
    table = summary_table(DemoSummary(events_sent=10, events_decided=10, rate=2000, clicks=clicks))
    assert "Events streamed / decided" in table and "yes, at 2,000 events/s" in table
    assert "Clicks streamed / processed       | 60,000 / 60,000 (1,900 users)" in table
    assert "yes, at 500 clicks/s" in table
    assert "90 ms / 420 ms (arrival to propensity stored)" in table
    assert "0.0-0.1 50.0%, 0.1-0.2 30.0%, 0.2-0.3 10.0%" in table and "(100 scored)" in table
    assert "p10..p90 0.010 0.020" in table and "(1,900 users)" in table
    assert "2.50 ms / 30.25 ms over 1,200 requests, 0 errors" in table
    assert "Propensity model" in table


def test_summary_says_when_clicks_fell_behind_and_leaves_clicks_out_without_them() -> None:
    behind = dict(summary_rows(ClickSummary(rate=900, fell_behind=True)))
    assert behind["Clicks kept up with the stream"].startswith("no: propensities lagged")
    assert behind["Propensity, every click"] == "none scored"
    assert math.isnan(ClickSummary().freshness_p50_ms)
    assert "Clicks" not in summary_table(DemoSummary(events_sent=10, events_decided=10))


def test_api_load_without_records_sends_nothing() -> None:
    # make demo CLICK_RATE=0: no clicks, so no /v1/propensity load (it once divided by zero).
    load = ApiLoad(port=1, key="k", records=[], rate=0.0, path="/v1/propensity")
    load.start()
    load.stop()
    assert load.latencies_ms == [] and load.errors == 0
    idle = ApiLoad(port=1, key="k", records=[], rate=10.0, path="/v1/propensity")
    idle.start()
    assert not idle.running()
    idle.stop()


def test_second_pacer_puts_each_seconds_clicks_together() -> None:
    pace = second_pacer(200.0)
    due = [pace(i, {}) for i in (0, 1, 199, 200, 399, 400, 1234)]
    assert due == [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 6.0]
    assert [second_pacer(0.5)(i, {}) for i in range(3)] == [0.0, 2.0, 4.0]
