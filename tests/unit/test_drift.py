"""Unit tests for the drift check's domain (`kestrel.drift`) and job (`kestrel.drift_job`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from drift_doubles import (
    END_MS,
    N,
    reference,
    shipped_manifest,
    synthetic_manifest,
    synthetic_rows,
    window_of,
)

from kestrel.adapters.scipy_drift import ScipyDriftStatistics
from kestrel.drift import (
    Reference,
    ScoredWindow,
    Status,
    Thresholds,
    bin_shares,
    check,
    judge,
)
from kestrel.drift_job import DriftJob, render_table, window_end_ms
from kestrel.features import DAY_MS, FEATURE_NAMES, FEATURE_SET_HASH

STATS = ScipyDriftStatistics()
LIMITS = Thresholds()
CALENDAR = {"TX_DURING_WEEKEND", "TX_DURING_NIGHT"}


def test_drift_reference_reads_the_shipped_manifest() -> None:
    manifest = shipped_manifest()
    ref = Reference.from_manifest(manifest)
    assert (ref.model_version, ref.feature_set_hash) == ("1", FEATURE_SET_HASH)
    assert set(ref.features) == set(FEATURE_NAMES)
    for dist in ref.features.values():
        assert len(dist.quantiles) == 100 and dist.rows == 68_536
        assert len(dist.proportions) == len(dist.cuts) + 1
        assert sum(dist.proportions) == pytest.approx(1.0)
    assert ref.score is not None and ref.score.rows == manifest["dataset"]["test"]["rows"]
    assert all(0.0 <= q <= 1.0 for q in ref.score.quantiles)


def test_drift_reference_refuses_a_manifest_without_one() -> None:
    manifest = shipped_manifest()
    del manifest["reference_distributions"]
    with pytest.raises(ValueError, match="reference_distributions"):
        Reference.from_manifest(manifest)


@pytest.mark.parametrize(
    ("psi", "d", "p", "expected"),
    [
        (0.05, 0.02, 0.5, Status.OK),
        (0.10, None, None, Status.OK),  # PSI 0.1 itself is still stable
        (0.15, 0.04, 0.01, Status.WATCH),
        (0.25, 0.05, 0.5, Status.DRIFT),
        (0.05, 0.03, 1e-30, Status.OK),  # a large window: significant but trivial
        (0.05, 0.09, 1e-9, Status.OK),  # just below the minimum effect size
        (0.05, 0.10, 0.009, Status.DRIFT),  # big enough and significant
        (0.05, 0.30, 0.02, Status.OK),  # big but not significant (a small window)
        (0.15, 0.12, 1e-6, Status.DRIFT),
    ],
)
def test_drift_judge_thresholds(
    psi: float, d: float | None, p: float | None, expected: Status
) -> None:
    assert judge(psi, d, p, LIMITS) is expected


def test_drift_bin_shares_use_the_reference_rule() -> None:
    values = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 5.0])
    # bins: below 0 | [0, 1) | [1, 2) | at or above 2
    assert bin_shares(values, [0.0, 1.0, 2.0]).tolist() == pytest.approx(
        [1 / 6, 2 / 6, 1 / 6, 2 / 6]
    )


def test_drift_check_same_distribution_is_ok() -> None:
    report = check(window_of(synthetic_rows(7, 5_000)), reference(), STATS, END_MS)
    assert report.status is Status.OK
    assert report.drifted == [] and report.watched == []
    assert all(c.status is Status.OK for c in report.features.values())


def test_drift_check_flags_inflated_amounts_and_scores() -> None:
    rows = synthetic_rows(7, 5_000, scale=1.5)
    scores = np.random.default_rng(3).random(5_000) ** 0.5  # scores pushed up
    report = check(window_of(rows, scores), reference(), STATS, END_MS)
    inflated = [name for i, name in enumerate(FEATURE_NAMES) if i % 3 == 0]
    assert report.status is Status.DRIFT
    assert report.drifted == [*inflated, "score"]
    for name in inflated:
        c = report.features[name]
        assert c.ks_stat is not None and c.ks_stat >= 0.1 and c.ks_p is not None
        assert c.ks_p < 0.01


def test_drift_check_too_few_rows_is_unknown() -> None:
    report = check(window_of(synthetic_rows(7, 100) * 3), reference(), STATS, END_MS)
    assert report.status is Status.UNKNOWN
    assert all(c.status is Status.UNKNOWN for c in report.features.values())
    assert all(c.psi is not None for c in report.features.values())  # measured, not judged
    assert "fewer than the 500" in str(report.features[FEATURE_NAMES[0]].note)


def test_drift_check_empty_window_is_unknown_and_json_safe() -> None:
    report = check(window_of(np.zeros((0, N)), np.zeros(0)), reference(), STATS, END_MS)
    assert report.status is Status.UNKNOWN
    body = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert body["window"]["rows"] == 0 and body["psi_max"] is None
    assert body["score"] == {
        "psi": None, "ks_stat": None, "ks_p": None, "status": "unknown", "rows": 0,
        "note": "no rows in the window",
    }  # fmt: skip


def test_drift_calendar_features_need_their_whole_cycle() -> None:
    rows = synthetic_rows(7, 5_000)
    columns = [FEATURE_NAMES.index(name) for name in CALENDAR]
    rows[:, columns] = 1.0  # a window at night on a Saturday
    short = check(window_of(rows, span_ms=DAY_MS // 2), reference(), STATS, END_MS)
    assert {short.features[name].status for name in CALENDAR} == {Status.UNKNOWN}
    assert "1-day cycle" in str(short.features["TX_DURING_NIGHT"].note)
    assert short.status is Status.OK  # the rest is judged, and is fine
    weekend_psi = short.features["TX_DURING_WEEKEND"].psi
    assert short.psi_max is not None and weekend_psi is not None
    assert short.psi_max < 0.1 < weekend_psi  # what is not judged stays out of DriftPsiMax
    day = check(window_of(rows, span_ms=DAY_MS), reference(), STATS, END_MS)
    assert "7-day cycle" in str(day.features["TX_DURING_WEEKEND"].note)
    assert day.drifted == ["TX_DURING_NIGHT"] and day.status is Status.DRIFT
    week = check(window_of(rows, span_ms=7 * DAY_MS), reference(), STATS, END_MS)
    assert set(week.drifted) == CALENDAR


def test_drift_manifest_without_grids_or_score_falls_back_to_psi() -> None:
    manifest = synthetic_manifest()
    for dist in manifest["reference_distributions"]["features"].values():
        del dist["quantiles"]
    del manifest["reference_distributions"]["score"]
    report = check(
        window_of(synthetic_rows(7, 5_000)), Reference.from_manifest(manifest), STATS, END_MS
    )
    first = report.features[FEATURE_NAMES[0]]
    assert (first.status, first.ks_stat, first.ks_p) == (Status.OK, None, None)
    assert "PSI only" in str(first.note)
    assert report.score.status is Status.UNKNOWN and report.status is Status.OK


def test_drift_report_json_contract() -> None:
    report = check(window_of(synthetic_rows(7, 5_000, scale=1.5)), reference(), STATS, END_MS)
    body = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert {
        "status",
        "checked_at",
        "window",
        "model_version",
        "features",
        "score",
        "drifted",
    } <= set(body)
    assert body["status"] == "drift"
    assert body["checked_at"] == "2018-08-15T00:00:00.000Z"
    assert body["window"] | {} == {
        "from": "2018-08-08T00:00:00.000Z", "to": "2018-08-15T00:00:00.000Z", "rows": 5_000,
        "score_rows": 5_000, "skipped_rows": 0, "objects_read": 0, "objects_total": 0,
    }  # fmt: skip
    assert list(body["features"]) == list(FEATURE_NAMES)
    for entry in (*body["features"].values(), body["score"]):
        assert {"psi", "ks_stat", "ks_p", "status"} <= set(entry)
        assert entry["status"] in {"ok", "watch", "drift", "unknown"}
    assert body["drifted"] == report.drifted and body["psi_max"] == pytest.approx(
        report.psi_max, abs=1e-6
    )
    assert body["thresholds"]["psi_drift"] == 0.2 and body["thresholds"]["ks_drift_d"] == 0.1


class FixedSource:
    """A DriftWindowSource that returns one window and records what it was asked."""

    def __init__(self, rows: np.ndarray, latest: int | None = END_MS) -> None:
        self.rows, self.latest = rows, latest
        self.calls: list[tuple[int, int, str, str]] = []

    def read(
        self, start_ms: int, end_ms: int, feature_set_hash: str, model_version: str
    ) -> ScoredWindow:
        self.calls.append((start_ms, end_ms, feature_set_hash, model_version))
        scores = np.random.default_rng(2).random(len(self.rows))
        return ScoredWindow(start_ms, end_ms, self.rows, scores, objects_read=3, objects_total=3)

    def latest_event_ms(self) -> int | None:
        return self.latest


class Recorder:
    """A status sink and a report sink."""

    def __init__(self) -> None:
        self.published: list[tuple[dict[str, Any], int | None]] = []
        self.written: list[dict[str, Any]] = []

    def publish(self, status: Mapping[str, Any], ttl_s: int | None = None) -> None:
        self.published.append((dict(status), ttl_s))

    def write(self, report: Mapping[str, Any]) -> str:
        self.written.append(dict(report))
        return f"memory://{len(self.written)}"


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (None, 2_000_000_000_000),
        ("now", 2_000_000_000_000),
        ("latest", END_MS),
        ("2018-08-15T00:00:00Z", END_MS),
        ("2018-08-15T02:00:00+02:00", END_MS),
        ("2018-08-15T00:00:00", END_MS),  # no offset: UTC
        (END_MS, END_MS),
    ],
)
def test_drift_job_window_end(end: str | int | None, expected: int) -> None:
    assert window_end_ms(end, 2_000_000_000_000, FixedSource(np.zeros((0, N)))) == expected


def test_drift_job_window_end_latest_of_an_empty_log_is_now_and_bad_text_fails() -> None:
    assert window_end_ms("latest", 7, FixedSource(np.zeros((0, N)), latest=None)) == 7
    with pytest.raises(ValueError, match="now, latest, or an ISO-8601"):
        window_end_ms("yesterday", 7, FixedSource(np.zeros((0, N))))


def test_drift_job_reads_the_window_and_publishes_the_report() -> None:
    source, sinks = FixedSource(synthetic_rows(7, 2_000)), Recorder()
    job = DriftJob(
        source=source,
        statistics=STATS,
        manifest=synthetic_manifest,
        status=sinks,
        reports=(sinks, sinks),
        window_ms=DAY_MS,
        status_ttl_s=600,
        clock=lambda: END_MS / 1000 + 60,
    )
    report, locations = job.run("latest")
    assert source.calls == [(END_MS - DAY_MS, END_MS, FEATURE_SET_HASH, "1")]
    assert locations == ["memory://1", "memory://2"]
    ((status, ttl),) = sinks.published
    assert ttl == 600 and status == sinks.written[0] == report.as_dict()
    assert status["checked_at"] == "2018-08-15T00:01:00.000Z"
    assert status["status"] == "ok" and status["window"]["objects_read"] == 3


def test_drift_table_lists_every_feature_and_the_verdict() -> None:
    report = check(window_of(synthetic_rows(7, 5_000, scale=1.5)), reference(), STATS, END_MS)
    table = render_table(report)
    lines = table.splitlines()
    assert lines[0].startswith("drift: DRIFT  model 1")
    for name in (*FEATURE_NAMES, "score"):
        assert any(line.startswith(name) for line in lines), name
    assert "drifted: TX_AMOUNT" in lines[-1]
