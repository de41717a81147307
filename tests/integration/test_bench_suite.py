"""The benchmark suite, tiny: every part runs end to end and both result files are written.

`bench/suite.py --size tiny` starts its own emulator and redis-server, runs refs,
emulator, engine, backfill, the click engine, API, the propensity API, Feast and e2e with
seconds-long steps and small record counts (the Feast part installs its pinned Feast into
`.venv-feast` on first use, or reports "skipped" when it cannot), and writes
``bench-<UTC>.json`` and ``.md`` into a temporary folder. The figures of a tiny run mean
nothing; this proves the orchestration (``make bench`` runs the same code at full size).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTS = [
    "refs",
    "emulator",
    "engine",
    "backfill",
    "click_engine",
    "api",
    "click_api",
    "feast",
    "e2e",
]


@pytest.mark.timeout(600)  # a first run installs Feast into .venv-feast
def test_suite_tiny_runs_every_part_and_writes_json_and_markdown(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        "bench/suite.py",
        "--size",
        "tiny",
        "--results-dir",
        str(results),
        "--workdir",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    [json_path] = results.glob("bench-*.json")
    [md_path] = results.glob("bench-*.md")
    assert md_path.stem == json_path.stem
    doc = json.loads(json_path.read_text())
    assert doc["benchmark"] == "bench"
    assert {"cores", "cpu", "memory_gb"} <= set(doc["machine"])
    assert doc["params"]["size"] == "tiny"
    parts = doc["params"]["parts"]
    assert list(parts) == PARTS
    assert all(p["exit_code"] == 0 and not p["error"] for p in parts.values()), parts
    figures = doc["figures"]
    for name in (
        "ref.redis_set_per_s",
        "ref.redis_set_pipelined_per_s",
        "ref.redis_hset_per_s",
        "ref.redis_hset_pipelined_per_s",
        "ref.redis_evalsha_feature_script_per_s",
        "ref.onnx_single_row_us",
        "ref.onnx_batch500_per_row_us",
        "engine.events_per_s",
        "backfill.events_per_s",
        "backfill.replay_events_per_s",
        "ratio.backfill_vs_engine",
        "api.http_p99_ms",
        "api.errors",
        "clickstream.engine_events_per_s",
        "clickstream.engine_redis_us_per_event",
        "clickstream.engine_client_us_per_event",
        "clickstream.api_http_p50_ms",
        "clickstream.api_http_p99_ms",
        "clickstream.api_in_handler_p99_ms",
        "clickstream.api_errors",
        "e2e.sustained_events_per_s",
        "e2e.lost",
        "e2e.errors",
        "e2e.freshness_p50_ms",
        "e2e.freshness_p99_ms",
        "e2e.freshness_max_ms",
    ):
        assert name in figures, name
        assert set(figures[name]) == {"value", "unit"}
    assert figures["e2e.lost"]["value"] == 0 and figures["e2e.errors"]["value"] == 0
    assert figures["e2e.sustained_events_per_s"]["value"] > 0
    assert any(n.startswith("emulator.put_records_per_s_at_") for n in figures)
    assert "e2e.sustained_events_per_s" in doc["ratios"]
    text = md_path.read_text()
    assert "| Figure | Kestrel | Target (DESIGN.md) |" in text
    assert "`e2e.sustained_events_per_s`" in text and "## End-to-end steps" in text
    assert "[suite " in done.stderr  # progress lines
