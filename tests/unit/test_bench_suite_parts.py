"""Unit tests for the suite's part runner: result files collected, budgets enforced (no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.results_io import machine_class
from bench.suite import Part, document, parts, run_part

WRITER = """
import json, os, sys
path = os.path.join(os.environ["OUT"], "demo-20260101T000000Z.json")
doc = {"benchmark": "demo", "params": {"n": 3},
       "figures": {"demo.rate": {"value": 42.0, "unit": "x/s"}}}
open(path, "w").write(json.dumps(doc))
print("[demo] wrote", path)
sys.exit(int(sys.argv[1]))
"""


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OUT": str(tmp_path)}


def test_run_part_collects_the_result_file_it_wrote(tmp_path: Path) -> None:
    result = run_part(Part("demo", ["-c", WRITER, "0"], 30), env(tmp_path), tmp_path)
    assert result.exit_code == 0 and result.error == ""
    assert result.figures == {"demo.rate": {"value": 42.0, "unit": "x/s"}}
    assert result.params == {"n": 3}


def test_run_part_keeps_figures_but_reports_a_failing_exit(tmp_path: Path) -> None:
    result = run_part(Part("demo", ["-c", WRITER, "1"], 30), env(tmp_path), tmp_path)
    assert result.exit_code == 1
    assert "exit code 1" in result.error
    assert "demo.rate" in result.figures


def test_run_part_stops_a_part_past_its_budget(tmp_path: Path) -> None:
    code = "import time; print('working', flush=True); time.sleep(60)"
    result = run_part(Part("slow", ["-c", code], 1.0), env(tmp_path), tmp_path)
    assert "timed out after 1 s" in result.error
    assert result.seconds < 30
    assert result.figures == {}


def test_run_part_without_a_result_file_is_an_error(tmp_path: Path) -> None:
    result = run_part(Part("quiet", ["-c", "pass"], 30), env(tmp_path), tmp_path)
    assert result.exit_code == 0
    assert "no result file" in result.error


def test_parts_cover_every_benchmark_within_budget() -> None:
    for size, limit_s in (("full", 50 * 60), ("medium", 29 * 60), ("tiny", 13 * 60)):
        chosen = parts(size, "redis://127.0.0.1:1", "http://127.0.0.1:2", 1)
        names = ["refs", "emulator", "engine", "backfill", "click_engine", "api", "click_api"]
        names += ["feast", "e2e"]
        assert [p.name for p in chosen] == names
        assert sum(p.budget_s for p in chosen) <= limit_s
    e2e = parts("full", "redis://127.0.0.1:1", "http://127.0.0.1:2", 1)[-1]
    assert "redis://127.0.0.1:1/1" in e2e.argv  # its own database of the suite's Redis


def test_document_merges_figures_and_keeps_part_status(tmp_path: Path) -> None:
    from bench.suite import PartResult

    ok = PartResult("e2e", 10, 5.0, 0, "", {"e2e.lost": {"value": 0, "unit": "count"}}, {"a": 1})
    failed = PartResult("api", 10, 10.0, None, "timed out after 10 s (stopped)")
    doc = document("tiny", [ok, failed], "20260101T000000Z", 15.0)
    assert doc["benchmark"] == "bench" and doc["figures"]["e2e.lost"]["value"] == 0
    assert doc["params"]["parts"]["api"]["error"].startswith("timed out")
    assert doc["params"]["e2e"] == {"a": 1}
    assert {"python", "redis-server", "onnxruntime", "moto", "redis"} <= set(doc["versions"])
    assert doc["machine_class"] == machine_class()
    json.dumps(doc)
