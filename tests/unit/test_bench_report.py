"""Unit tests for the suite's report: rows, ceilings, ratios, the table, derived figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.results_io import RESULTS_DIR_ENV, cpu_vendor, machine_class, write_result
from bench.suite_env import derived_figures
from bench.suite_report import fmt, markdown, ratios, rows


def figures(**values: float) -> dict[str, dict[str, Any]]:
    return {name.replace("__", "."): {"value": v, "unit": "x"} for name, v in values.items()}


def run_doc(**values: float) -> dict[str, Any]:
    return {
        "figures": figures(**values),
        "machine": {"cores": 2, "cpu": "AMD EPYC"},
        "machine_class": "2c-amd",
        "commit": "abc",
        "stamp": "20260101T000000Z",
        "params": {"size": "full", "notes": ["warm-ups excluded"], "wall_seconds": 900},
    }


FULL = dict(
    e2e__sustained_events_per_s=2500.0,
    e2e__lost=0,
    e2e__errors=0,
    e2e__freshness_p99_ms=900.0,
    engine__events_per_s=3000.0,
    engine__failed=0,
    engine__duplicates=0,
    emulator__put_records_per_s_at_1m=20000.0,
    emulator__get_records_per_s_at_1m=26000.0,
    ref__redis_evalsha_feature_script_per_s=6000.0,
    api__http_p95_ms=0.8,
    api__http_p99_ms=1.2,
    api__errors=0,
)


def by_name(doc: dict[str, Any]) -> dict[str, Any]:
    return {r.name: r for r in rows(doc)}


def test_e2e_ceiling_is_the_lowest_of_emulator_and_engine() -> None:
    row = by_name(run_doc(**FULL))["e2e.sustained_events_per_s"]
    assert row.ceiling == ("engine.events_per_s", 3000.0)
    assert row.ratio == pytest.approx(2500 / 3000, abs=1e-4)
    assert row.target == (">=", 10_000) and row.met is False
    assert row.claim == "8,000 events/s"
    assert row.health == {"e2e.lost": 0.0, "e2e.errors": 0.0}


def test_e2e_ceiling_falls_to_the_emulator_when_it_binds() -> None:
    doc = run_doc(**{**FULL, "emulator__get_records_per_s_at_1m": 1200.0})
    assert by_name(doc)["e2e.sustained_events_per_s"].ceiling == (
        "emulator.get_records_per_s_at_1m",
        1200.0,
    )


def test_engine_ceiling_is_redis_running_the_feature_scripts() -> None:
    row = by_name(run_doc(**FULL))["engine.events_per_s"]
    assert row.ceiling == ("ref.redis_evalsha_feature_script_per_s", 6000.0)
    assert row.ratio == 0.5


def test_latency_targets_are_upper_bounds() -> None:
    rows_ = by_name(run_doc(**FULL))
    assert rows_["api.http_p99_ms"].met is False
    assert rows_["e2e.freshness_p99_ms"].met is False
    assert by_name(run_doc(api__http_p99_ms=0.9))["api.http_p99_ms"].met is True
    assert rows_["api.http_p95_ms"].claim == "p95 120 ms"


def test_emulator_figures_at_another_fill_level_are_found_by_prefix() -> None:
    doc = run_doc(emulator__put_records_per_s_at_873500=15000.0)
    assert "emulator.put_records_per_s_at_873500" in by_name(doc)


def test_missing_figures_make_no_row_and_no_ratio() -> None:
    doc = run_doc(e2e__sustained_events_per_s=100.0)
    row = by_name(doc)["e2e.sustained_events_per_s"]
    assert row.ceiling is None and row.ratio is None
    assert ratios(doc) == {}
    assert "engine.events_per_s" not in by_name(doc)


def test_ratios_lists_every_figure_with_a_ceiling() -> None:
    out = ratios(run_doc(**FULL))
    assert set(out) == {"e2e.sustained_events_per_s", "engine.events_per_s"}
    assert out["engine.events_per_s"]["ceiling_value"] == 6000.0


def test_markdown_table_has_every_column_and_the_loss_next_to_throughput() -> None:
    text = markdown(run_doc(**FULL))
    assert (
        "| Figure | Kestrel | Target (DESIGN.md) | Ceiling, same run | Ratio to ceiling "
        "| Earlier project claimed | Loss / errors |"
    ) in text
    line = next(x for x in text.splitlines() if x.startswith("| `e2e.sustained_events_per_s`"))
    assert "2,500 x" in line and ">= 10,000 (MISSED)" in line and "0.833" in line
    assert "8,000 events/s" in line and "lost 0, errors 0" in line
    assert "- warm-ups excluded" in text


def test_markdown_lists_parts_and_e2e_steps() -> None:
    doc = run_doc(**FULL)
    doc["params"]["parts"] = {
        "e2e": {"seconds": 600, "budget_s": 1080, "exit_code": 0, "error": ""}
    }
    doc["params"]["e2e"] = {
        "steps": [
            {
                "label": "warm-up",
                "judged": False,
                "target_rate": 300,
                "achieved_rate": 300,
                "events": 3000,
                "backlog_start": 10,
                "backlog_end": 12,
                "backlog_max": 300,
                "slope_records_per_s": 0.5,
                "drain_s": 0.4,
                "lost": 0,
                "errors": 0,
                "retries": 0,
                "passed": True,
                "reasons": [],
            },
            {
                "label": "probe 1",
                "target_rate": 4000,
                "achieved_rate": 3990,
                "events": 120000,
                "backlog_start": 900,
                "backlog_end": 30000,
                "backlog_max": 31000,
                "slope_records_per_s": 1200.0,
                "drain_s": 12.0,
                "lost": 0,
                "errors": 0,
                "retries": 0,
                "passed": False,
                "reasons": ["backlog grew 1,200 records/s (> 5% of rate)"],
                "cpu": {
                    "cores_by_process": {"emulator": 0.9, "redis-server": 0.5},
                    "cores_total": 1.4,
                },
            },
        ]
    }
    text = markdown(doc)
    assert "| e2e | 600 | 1,080 | 0 | — |" in text
    assert "not judged (warm-up)" in text
    assert "fail: backlog grew 1,200 records/s" in text
    assert "emulator 0.90, redis-server 0.50" in text


def test_fmt_numbers() -> None:
    assert fmt(None) == "—"
    assert fmt(12345.0) == "12,345"
    assert fmt(0.2756) == "0.276"
    assert fmt(13.37) == "13.37"
    assert fmt(1234.5) == "1,234"


def test_derived_figures_from_parts_params() -> None:
    engine = {
        "best_batch": 500,
        "redis_cpu_us_per_event": {"100": 250.0, "500": 200.0},
        "outcomes": {"applied": 10, "duplicates": 0, "failed": 1},
    }
    out = derived_figures(engine, {"fill_level": 1_000_000})
    assert out["ref.redis_engine_cpu_ceiling_events_per_s"]["value"] == 5000.0
    assert out["engine.failed"]["value"] == 1 and out["engine.duplicates"]["value"] == 0
    assert out["emulator.fill_level"]["value"] == 1_000_000
    assert derived_figures(None, None) == {}


def test_machine_class_names_cores_and_vendor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n")
    assert cpu_vendor(info) == "intel"
    info.write_text("vendor_id\t: AuthenticAMD\n")
    assert cpu_vendor(info) == "amd"
    assert machine_class(2, "amd") == "2c-amd"


def test_write_result_follows_the_suite_results_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    path = write_result("demo", {"a": 1}, {"demo.x": (1.5, "s")})
    assert path.parent == tmp_path
    doc = json.loads(path.read_text())
    assert doc["figures"] == {"demo.x": {"value": 1.5, "unit": "s"}}


def test_markdown_says_when_freshness_was_measured_below_the_asked_rate() -> None:
    doc = run_doc(**FULL, e2e__freshness_rate_events_per_s=846.0)
    doc["params"]["e2e"] = {
        "config": {"freshness_rate": 5000.0},
        "freshness_batching_wait_max_ms": 1000.0,
    }
    text = markdown(doc)
    assert "Freshness was measured at 846 events/s (the sustained rate: 5,000/s was not" in text
    assert "up to 1,000 ms in its lane" in text


def test_shipped_model_cold_p99_has_the_model_latency_budget() -> None:
    doc = run_doc(model__single_row_p50_us=9.0, model__single_row_cold_p99_us=390.0)
    rows_ = by_name(doc)
    assert rows_["model.single_row_cold_p99_us"].target == ("<=", 150.0)
    assert rows_["model.single_row_cold_p99_us"].met is False
    assert rows_["model.single_row_p50_us"].target is None
    assert by_name(run_doc(model__single_row_cold_p99_us=120.0))["model.single_row_cold_p99_us"].met
