"""The chaos run, small: every good event applied exactly once, every poison record parked.

One implementation, `bench/chaos.py` (``make chaos`` runs it with 100k events): this test
runs the same scenario with 6,000 events on the session's emulator. Redis is killed for
4 s instead of 10, so the runtime's first retry delay is 0.05 s instead of 0.2 s (retries
still run out during the outage and the on-failure queue gets work for the redrive), and
5% of the batches crash instead of 1% (a small run has about 150 batches: at 1%, one run in
five would see no crash at all). Everything else is the full run's: poison records, the
duplicated PutRecords calls, the SIGTERM restart of the runtime process, the redrive of
both queues and every invariant. The full run is `test_chaos_full_run`, marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run_chaos
from bench.chaos_report import ChaosConfig, ChaosReport

pytestmark = pytest.mark.integration

SMALL = ChaosConfig(
    events=6_000,
    seed=11,
    crash_rate=0.05,
    outage_s=4.0,
    retry_backoff_s=0.05,
    drain_timeout_s=120.0,
)


def assert_exactly_once(report: ChaosReport) -> None:
    """Every check of the report holds (the failure message is the whole report)."""
    print(report.table())
    failed = [name for name, ok in report.checks() if not ok]
    assert not failed, f"failed: {failed}\n{report.table()}"


def test_chaos_small_run_applies_every_good_event_once_and_parks_every_poison_record(
    emulator_endpoint: str, tmp_path: Path
) -> None:
    report = run_chaos(SMALL, tmp_path, emulator_endpoint)
    assert_exactly_once(report)
    assert report.lost == 0 and report.applied_twice == 0
    assert report.processed == report.decisions == SMALL.events
    assert report.poisoned == SMALL.poison == 30
    # Each fault really hit the stream.
    assert report.esm["function_errors"] > 0 and report.esm["retries"] > 0
    assert report.on_failure_records > 0, "no batch ran out of retries during the outage"
    assert report.redriven == report.on_failure_records
    assert report.duplicates_suppressed >= report.duplicates - report.duplicates_of_poison


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chaos_full_run(tmp_path: Path) -> None:
    """What ``make chaos`` runs (100k events, its own emulator), without the result file."""
    assert_exactly_once(run_chaos(ChaosConfig(), tmp_path))
