"""The demo says so while it runs when the stream falls behind, and its summary says so too."""

from __future__ import annotations

from kestrel_local.demo_report import DemoSummary, summary_table
from kestrel_local.demo_runner import Progress


def snap(p50_ms: float, current: float) -> dict[str, object]:
    """A telemetry snapshot with this freshness p50 and decided rate."""
    return {
        "freshness_ms": {"p50": p50_ms, "p99": p50_ms * 2},
        "events_per_s": {"current": current},
    }


def test_progress_warns_once_after_two_late_snapshots_in_a_row() -> None:
    progress = Progress(port=1, key="k", duration_s=60, total=1000, rate=2000)
    assert progress.behind(snap(300, 2000)) is None
    assert progress.behind(snap(2500, 1500)) is None  # one late line may be a hiccup
    warning = progress.behind(snap(4100, 1480))
    assert warning is not None
    assert "4,100 ms" in warning and "1,480 events/s of 2,000 produced" in warning
    assert "make demo RATE=" in warning
    assert progress.behind(snap(6000, 1400)) is None  # said once, not every 2 s
    assert progress.fell_behind


def test_progress_stays_quiet_while_decisions_keep_up() -> None:
    progress = Progress(port=1, key="k", duration_s=60, total=1000, rate=2000)
    for p50 in (120, 2500, 140, 2600, 150):  # never twice in a row
        assert progress.behind(snap(p50, 2000)) is None
    assert not progress.fell_behind


def test_summary_says_whether_the_stream_kept_up() -> None:
    kept = summary_table(DemoSummary(events_sent=10, events_decided=10, rate=2000))
    assert "Kept up with the stream" in kept and "yes, at 2,000 events/s" in kept
    behind = summary_table(DemoSummary(events_sent=10, events_decided=10, fell_behind=True))
    assert "no: decisions lagged by over 2 s" in behind
