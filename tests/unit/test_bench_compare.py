"""Unit tests for the regression check: ratios to same-run ceilings, loss, missing figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.compare import compare, main


def doc(
    sustained: float,
    engine: float,
    lost: float = 0,
    cls: str = "2c-amd",
    put: float = 20000.0,
    redis_events: float = 6000.0,
) -> dict[str, Any]:
    values = {
        "e2e.sustained_events_per_s": sustained,
        "e2e.lost": lost,
        "e2e.errors": 0,
        "engine.events_per_s": engine,
        "emulator.put_records_per_s_at_1m": put,
        "emulator.get_records_per_s_at_1m": 25000.0,
        "ref.redis_evalsha_feature_script_per_s": redis_events,
    }
    figures = {k: {"value": v, "unit": "x"} for k, v in values.items()}
    return {"machine_class": cls, "commit": "c0ffee", "figures": figures}


def verdicts(current: dict[str, Any], baseline: dict[str, Any]) -> dict[str, bool]:
    return {f.name: f.regression for f in compare(current, baseline)}


def test_same_run_is_no_regression() -> None:
    base = doc(2500, 3000)
    assert not any(verdicts(base, base).values())


def test_a_ratio_more_than_20_percent_lower_is_a_regression() -> None:
    out = verdicts(doc(1900, 3000), doc(2500, 3000))  # 0.633 vs 0.833: -24%
    assert out["e2e.sustained_events_per_s"] is True
    assert out["engine.events_per_s"] is False


def test_a_drop_within_20_percent_is_not() -> None:
    assert not verdicts(doc(2100, 3000), doc(2500, 3000))["e2e.sustained_events_per_s"]


def test_absolute_drop_with_its_ceiling_is_not_a_regression() -> None:
    slower_machine = doc(1250, 1500, redis_events=3000.0)  # everything halved, ratios equal
    assert not any(verdicts(slower_machine, doc(2500, 3000)).values())


def test_improvement_is_reported_as_a_positive_change() -> None:
    finding = next(
        f
        for f in compare(doc(3000, 3000), doc(2500, 3000))
        if f.name == "e2e.sustained_events_per_s"
    )
    assert finding.change == pytest.approx(0.2, abs=1e-3) and not finding.regression


def test_any_new_loss_is_a_regression() -> None:
    assert verdicts(doc(2500, 3000, lost=3), doc(2500, 3000))["e2e.lost"] is True


def test_a_compared_figure_missing_from_the_run_is_a_regression() -> None:
    current = doc(2500, 3000)
    del current["figures"]["e2e.sustained_events_per_s"]
    assert verdicts(current, doc(2500, 3000))["e2e.sustained_events_per_s"] is True


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write(tmp_path / "bench-20260101T000000Z.json", doc(2500, 3000))
    baseline = tmp_path / "baseline-2c-amd.json"
    assert main([str(run), "--baseline", str(baseline)]) == 2  # no baseline yet
    assert main([str(run), "--baseline", str(baseline), "--set-baseline"]) == 0
    assert baseline.exists()
    assert main([str(run), "--baseline", str(baseline)]) == 0
    worse = write(tmp_path / "bench-20260102T000000Z.json", doc(1000, 3000))
    assert main([str(worse), "--baseline", str(baseline)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    other = write(tmp_path / "bench-20260103T000000Z.json", doc(2500, 3000, cls="8c-intel"))
    assert main([str(other), "--baseline", str(baseline)]) == 2
