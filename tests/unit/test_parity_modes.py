"""make parity's modes write the figure names DESIGN.md lists (the replay itself is faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kestrel_training import click_parity, parity

from bench.results_io import RESULTS_DIR_ENV


@pytest.mark.parametrize(
    ("mode", "benchmark", "figures"),
    [
        ("fraud", "parity", {"parity.events", "parity.mismatches"}),
        (
            "clickstream",
            "parity-clickstream",
            {"clickstream.parity_events", "clickstream.parity_mismatches"},
        ),
    ],
)
def test_parity_main_writes_each_modes_design_figures(
    mode: str,
    benchmark: str,
    figures: set[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake(events: int, *_: object, **__: object) -> parity.ParityReport:
        return parity.ParityReport(events=events, compared=events)

    monkeypatch.setattr(parity, "run", fake)
    monkeypatch.setattr(click_parity, "run", fake)
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    assert parity.main(["--mode", mode, "--events", "7"]) == 0
    (written,) = tmp_path.glob(f"{benchmark}-*.json")
    document = json.loads(written.read_text())
    assert document["benchmark"] == benchmark and document["params"]["mode"] == mode
    assert set(document["figures"]) == figures
    assert [f["value"] for f in document["figures"].values()] == [7, 0]


def test_parity_mode_defaults_to_fraud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parity, "run", lambda events, *_, **__: parity.ParityReport(events, 0, 0))
    monkeypatch.setattr(click_parity, "run", lambda *_, **__: pytest.fail("not the default"))
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    parity.main(["--events", "3"])
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["parity"]
