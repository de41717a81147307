"""Unit tests for the Feast benchmark's pure parts: install stamp, driver output, skip, ratios."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from kestrel_training.simulator import SimulatorConfig

from bench import feast as feast_bench
from bench.feast_serve import bodies_for, incomplete
from bench.feast_setup import (
    STAMP,
    DriverError,
    FeastUnavailable,
    connection_string,
    ensure_feast,
    entity_tables,
    feature_refs,
    parse_driver_output,
    tail,
    view_of,
)
from bench.loadgen_stats import RESPONSE, TIMEOUT, LoadResult
from bench.results_io import RESULTS_DIR_ENV
from bench.suite_env import derived_figures, ratio_figures
from bench.suite_report import markdown
from kestrel.features import FEATURE_NAMES


class FakeRunner:
    """Records commands; answers each with the next (code, output), creating the venv's python."""

    def __init__(self, venv: Path, *answers: tuple[int, str]) -> None:
        self.venv, self.answers = venv, list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
        self.calls.append(list(argv))
        code, out = self.answers.pop(0)
        if "venv" in argv and code == 0:
            (self.venv / "bin").mkdir(parents=True)
            (self.venv / "bin" / "python").write_text("")
        return code, out


def test_ensure_feast_installs_once_then_trusts_its_stamp(tmp_path: Path) -> None:
    venv = tmp_path / ".venv-feast"
    run = FakeRunner(venv, (0, ""), (0, ""), (0, "0.67.0\n"))
    python = ensure_feast(venv, "feast[redis]==0.67.0", run)
    assert python == venv / "bin" / "python"
    assert [c[-1] for c in run.calls][1:] == [
        "feast[redis]==0.67.0",
        "import feast; print(feast.__version__)",
    ]
    assert (venv / STAMP).read_text().strip() == "feast[redis]==0.67.0"
    again = FakeRunner(venv)
    assert ensure_feast(venv, "feast[redis]==0.67.0", again) == python
    assert again.calls == []


def test_ensure_feast_reinstalls_when_the_pin_changes(tmp_path: Path) -> None:
    venv = tmp_path / ".venv-feast"
    ensure_feast(venv, "feast[redis]==0.66.0", FakeRunner(venv, (0, ""), (0, ""), (0, "")))
    run = FakeRunner(venv, (0, ""), (0, ""))
    ensure_feast(venv, "feast[redis]==0.67.0", run)
    assert run.calls[0][-1] == "feast[redis]==0.67.0"  # no new venv, pip straight away
    assert (venv / STAMP).read_text().strip() == "feast[redis]==0.67.0"


def test_ensure_feast_reports_pip_failure_as_unavailable(tmp_path: Path) -> None:
    venv = tmp_path / ".venv-feast"
    pip_out = "WARNING: Location 'x' is ignored\nERROR: No matching distribution found for feast\n"
    run = FakeRunner(venv, (0, ""), (1, pip_out))
    with pytest.raises(FeastUnavailable, match="No matching distribution") as caught:
        ensure_feast(venv, "feast[redis]==0.67.0", run)
    assert "is ignored" not in str(caught.value)
    assert not (venv / STAMP).exists()


def test_tail_keeps_the_last_meaningful_lines() -> None:
    text = "\n".join(f"line {i}" for i in range(10)) + "\n\n"
    assert tail(text, 2) == "line 8 | line 9"


def test_parse_driver_output_takes_the_last_result_line() -> None:
    doc = {"read_ns": [1000, 2000], "features": ["customer_features:TX_AMOUNT"]}
    text = "noise\n{not json\n" + json.dumps({"other": 1}) + "\n" + json.dumps(doc) + "\n"
    assert parse_driver_output(text) == doc


def test_parse_driver_output_without_a_result_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="printed no result"):
        parse_driver_output('Traceback ...\n{"read_ns": "not a list"}\n')


def test_connection_string_is_feasts_form_of_a_redis_url() -> None:
    assert connection_string("redis://127.0.0.1:6379/3") == "127.0.0.1:6379,db=3"
    assert connection_string("redis://127.0.0.1:6380") == "127.0.0.1:6380,db=0"
    assert connection_string("redis://user:pw@127.0.0.1:6379/2") == "127.0.0.1:6379,db=2"


def test_every_feature_is_read_for_a_customer_or_a_terminal() -> None:
    terminal = [f for f in FEATURE_NAMES if view_of(f) == "terminal"]
    assert terminal and all(f.startswith("TERMINAL_ID_") for f in terminal)
    views = {
        "customer": {"features": [f for f in FEATURE_NAMES if view_of(f) == "customer"]},
        "terminal": {"features": terminal},
    }
    refs = feature_refs(views)
    assert len(refs) == len(FEATURE_NAMES) and len(set(refs)) == len(refs)
    assert refs[0] == "customer_features:TX_AMOUNT"


def test_entity_tables_hold_every_entity_with_its_features() -> None:
    config = SimulatorConfig(20, 40, 3)
    tables = entity_tables(config, 1_800_000_000_000)
    for name, view in tables.views.items():
        assert view["join_key"] == f"{name}_id"
        assert len(view["ids"]) == len(set(view["ids"])) == len(view["rows"]) > 0
        assert all(i.startswith("bench.") for i in view["ids"])
        assert all(len(row) == len(view["features"]) for row in view["rows"])
        assert all(math.isfinite(v) for row in view["rows"] for v in row)
    customers, terminals = (set(tables.views[v]["ids"]) for v in ("customer", "terminal"))
    assert all(c in customers and t in terminals for c, t in tables.pairs)
    assert len(tables.pairs) == tables.transactions


def test_http_bodies_and_incomplete_responses() -> None:
    (body,) = bodies_for(["customer_features:TX_AMOUNT"], [("bench.c1", "bench.t1")])
    assert json.loads(body)["entities"] == {
        "customer_id": ["bench.c1"],
        "terminal_id": ["bench.t1"],
    }
    result = LoadResult.empty(4)
    good = {"results": [{"statuses": ["PRESENT"]}] * 3}
    missing = {"results": [{"statuses": ["PRESENT"]}, {"statuses": ["NOT_FOUND"]}] * 2}
    for i, doc in enumerate((good, missing, good)):
        result.outcome[i], result.status[i], result.bodies[i] = (
            RESPONSE,
            200,
            json.dumps(doc).encode(),
        )
    result.outcome[3] = TIMEOUT  # counted as an error elsewhere, not as incomplete
    assert incomplete(result, 3) == 1


def test_figures_of_names_the_design_figures() -> None:
    reads = {"p50": 0.3, "p99": 0.4, "max": 2.0}
    http = {"latency_ms": {"p50": 1.2, "p99": 2.0, "max": math.nan}, "errors": 0, "requests": 10}
    figures = feast_bench.figures_of(reads, http)
    assert figures["feast.read_p99_ms"] == (0.4, "ms")
    assert figures["feast.http_p50_ms"] == (1.2, "ms")
    assert "feast.http_max_ms" not in figures  # NaN left out
    assert figures["feast.http_errors"] == (0, "count")


def test_feast_part_is_skipped_with_the_reason_when_feast_cannot_be_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_: object) -> Path:
        raise FeastUnavailable("pip install feast[redis]==0.67.0 failed (exit 1): offline")

    monkeypatch.setattr(feast_bench, "ensure_feast", unavailable)
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    assert feast_bench.main(["--feast-venv", str(tmp_path / "venv")]) == 0
    (path,) = tmp_path.glob("feast-*.json")
    doc = json.loads(path.read_text())
    assert doc["figures"] == {}
    assert "offline" in doc["params"]["skipped"]


def figs(**values: float) -> dict[str, dict[str, float | str]]:
    return {k.replace("_", ".", 1): {"value": v, "unit": "ms"} for k, v in values.items()}


def test_ratio_of_kestrel_feature_read_to_feast_read() -> None:
    figures = figs(api_feature_read_p99_ms=0.2, feast_read_p99_ms=0.5, api_http_p99_ms=1.0)
    out = ratio_figures(figures)
    assert out == {"ratio.feature_read_vs_feast_p99": {"value": 0.4, "unit": "ratio"}}
    both = {**figures, **figs(feast_http_p99_ms=2.0)}
    assert derived_figures(None, None, both)["ratio.score_http_vs_feast_http_p99"]["value"] == 0.5


def test_no_ratio_without_feast_or_with_a_zero_read() -> None:
    assert ratio_figures(figs(api_feature_read_p99_ms=0.2)) == {}
    assert ratio_figures(figs(api_feature_read_p99_ms=0.2, feast_read_p99_ms=0.0)) == {}
    assert derived_figures(None, None) == {}


def test_report_shows_the_ratio_beside_its_target_and_a_skipped_feast() -> None:
    figures = {
        **figs(feast_read_p99_ms=0.5),
        **ratio_figures(figs(api_feature_read_p99_ms=0.2, feast_read_p99_ms=0.5)),
    }
    doc = {"figures": figures, "params": {"parts": {"feast": {"exit_code": 0, "skipped": ""}}}}
    report = markdown(doc)
    assert "| `ratio.feature_read_vs_feast_p99` | 0.4 ratio | <= 0.5 (met) |" in report
    assert "`feast.read_p99_ms`" in report
    skipped = {
        "figures": {},
        "params": {"parts": {"feast": {"exit_code": 0, "skipped": "offline"}}},
    }
    report = markdown(skipped)
    assert "Feast was not measured (the feast part was skipped): offline" in report
    assert "| feast |" in report and "skipped: offline" in report
