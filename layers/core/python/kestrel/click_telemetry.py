"""The clickstream's telemetry: each batch's figures, and the ``clickstream`` part of the API's
``GET /v1/telemetry`` body.

The clickstream writes the same per-second buckets as the fraud path (`kestrel.telemetry`,
`kestrel.adapters.redis_telemetry`) under its own keys, so its rates, freshness and
propensity distribution are read and summed the same way. In its buckets ``score:<bin>``
counts the clicks' propensities (20 equal bins on [0, 1]) and freshness is Kinesis arrival
to the propensity stored (`kestrel.click_streaming.ClickPath`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kestrel.events import iso_ms
from kestrel.telemetry import (
    FRESHNESS_MAX,
    BatchFigures,
    TelemetrySnapshot,
    freshness_bins,
    score_bins,
    score_edges,
)

if TYPE_CHECKING:
    from kestrel.batch_outcome import BatchOutcome

CLICK_COUNTERS = ("applied", "duplicates", "poison", "failed", "batches", "batch_errors")


def click_figures(outcome: BatchOutcome, now_s: float) -> BatchFigures:
    """The figures of one clickstream batch: counters, freshness and propensity histograms."""
    counters = {
        "applied": outcome.applied,
        "duplicates": outcome.duplicates,
        "poison": outcome.poisoned,
        "failed": len(outcome.failures),
        "batches": 1,
    }
    histograms = {f"freshness:{i}": n for i, n in freshness_bins(outcome.arrival_lag_ms).items()}
    histograms |= {f"score:{i}": n for i, n in score_bins(outcome.scores).items()}
    maxima = {FRESHNESS_MAX: max(outcome.arrival_lag_ms)} if outcome.arrival_lag_ms else {}
    return BatchFigures(int(now_s), counters, histograms, maxima, outcome.model_version)


def _counts(values: Mapping[str, int]) -> dict[str, int]:
    shown = {"events": values.get("applied", 0) + values.get("duplicates", 0)}
    return shown | {name: values.get(name, 0) for name in CLICK_COUNTERS}


def click_section(snap: TelemetrySnapshot) -> dict[str, Any]:
    """The ``clickstream`` object of ``GET /v1/telemetry`` from a snapshot of its keys."""
    return {
        "events_per_s": snap.events_per_s_dict(),
        "freshness_ms": snap.freshness_dict(),
        "propensity_histogram": {"edges": score_edges(), "counts": list(snap.scores)},
        "counts": _counts(snap.counts),
        "totals": _counts(snap.totals),
        "model_version": snap.model_version,
        "last_batch_at": None if snap.last_batch_ms is None else iso_ms(snap.last_batch_ms),
    }
