"""The local stack's batch side yields the CPU to the API and Redis (`run_below_serving`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel_local.processes import BATCH_NICE

CHILD = (
    "import os, pathlib\n"
    "from kestrel_local.processes import run_below_serving\n"
    "run_below_serving()\n"
    "group = pathlib.Path('/proc/self/autogroup')\n"
    "words = group.read_text().split() if group.exists() else []\n"
    "print(os.nice(0), words[-1] if words else '-')\n"
)
AUTOGROUPS = Path("/proc/self/autogroup").exists()


def _own_group_nice() -> str:
    """This process's autogroup nice; '-' for the root group, whose file reads empty."""
    words = Path("/proc/self/autogroup").read_text().split()
    return words[-1] if words else "-"


def _child(new_session: bool) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True, text=True, check=True, start_new_session=new_session,
    )  # fmt: skip
    nice, group = out.stdout.split()
    return int(nice), group


def test_run_below_serving_raises_the_nice_of_a_process_and_of_the_session_it_leads() -> None:
    nice, group = _child(new_session=True)
    assert nice == max(BATCH_NICE, os.nice(0))
    if AUTOGROUPS:
        assert group == str(BATCH_NICE)


@pytest.mark.skipif(not AUTOGROUPS, reason="the kernel has no scheduling autogroups")
def test_run_below_serving_leaves_a_session_it_does_not_lead_as_it_was() -> None:
    before = _own_group_nice()
    nice, group = _child(new_session=False)
    assert nice == max(BATCH_NICE, os.nice(0))
    assert group == before
    assert _own_group_nice() == before
