"""Stream telemetry: per-second figures written by the stream paths, windows read by the API.

Write side: `transaction_figures` and `label_figures` turn one batch's `BatchOutcome` into
`BatchFigures`: counters (records applied, duplicates, poison, failed, decisions by type,
labels and frauds), a log-scale histogram of freshness (handler time minus the record's
Kinesis ``approximateArrivalTimestamp``), a histogram of scores and the freshness maximum.
A `kestrel.monitoring_ports.TelemetrySink` adds them to the bucket of their second and to all-time
totals. With a challenger set, a batch also adds ``shadow_scored`` (transactions the
challenger scored), ``shadow_errors`` (batches it failed on) and its own score histogram
(``shadow_score:<bin>``), and names its version. Read side: a
`kestrel.monitoring_ports.TelemetrySource` gives a window's figures summed
(`TelemetryWindow`: what `combine` makes of its per-second buckets, and each second's
events), and `summarize` turns them into a `TelemetrySnapshot` (rates, freshness
percentiles estimated from the histogram, decisions, fraud rate, score distribution),
whose `to_dict` is the ``GET /v1/telemetry`` body.

Telemetry counts attempts, not events: it is **not** exactly once. A batch that is retried
(a crash, a partial failure) is counted again, so duplicates and retries show up here while
the feature store still applies each event once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.events import iso_ms
from kestrel.monitoring_ports import DriftStatusReader, QueueDepths, TelemetrySource

if TYPE_CHECKING:
    from kestrel.batch_outcome import BatchOutcome

MAX_WINDOW_S = 3600  # the longest window a snapshot reads
BUCKET_TTL_S = MAX_WINDOW_S + 300  # how long a per-second bucket is kept
RATE_SPAN_S = 5  # the "current" rate: the mean over this many complete seconds
FRESHNESS_STEPS = 4  # freshness bins per doubling (each bin is 19% wide)
FRESHNESS_BINS = 1 + 22 * FRESHNESS_STEPS  # [0, 1) ms, then up to 2^22 ms (70 min), then more
SCORE_BINS = 20  # equal bins on [0, 1]
DECISION_TYPES = ("approve", "review", "decline")
COUNTERS = (
    "applied", "duplicates", "poison", "failed", "batches", "batch_errors", "labels", "frauds",
)  # fmt: skip
SHADOW_COUNTERS = ("shadow_scored", "shadow_errors")
FRESHNESS_MAX = "freshness_max_ms"
DRIFT_UNKNOWN: dict[str, Any] = {"status": "unknown"}
DLQ_ROLES = ("poison", "on_failure")


def decision_field(decision: str) -> str:
    """The counter of one decision type, e.g. ``decision:approve``."""
    return f"decision:{decision.lower()}"


def freshness_edges() -> list[float]:
    """Bin edges of the freshness histogram in ms (the last bin has no upper edge: inf)."""
    return [0.0] + [2.0 ** (i / FRESHNESS_STEPS) for i in range(FRESHNESS_BINS - 1)] + [math.inf]


def score_edges() -> list[float]:
    """Bin edges of the score histogram (`SCORE_BINS` equal bins on [0, 1])."""
    return [round(i / SCORE_BINS, 6) for i in range(SCORE_BINS + 1)]


_FRESHNESS_EDGES = tuple(freshness_edges())  # fixed: computed once, read per snapshot
_SCORE_EDGES = tuple(score_edges())


def freshness_bins(lags_ms: Sequence[float]) -> dict[int, int]:
    """How many lags fall in each freshness bin (bins with none left out)."""
    if not lags_ms:
        return {}
    lags = np.array(lags_ms, dtype=np.float64)
    below = lags < 1.0
    index = (np.log2(np.maximum(lags, 1.0)) * FRESHNESS_STEPS).astype(np.int64) + 1
    index[below] = 0
    return _nonzero(np.bincount(np.minimum(index, FRESHNESS_BINS - 1)))


def score_bins(scores: Sequence[float]) -> dict[int, int]:
    """How many scores fall in each score bin (a score of 1 is in the last bin)."""
    if not scores:
        return {}
    index = np.floor(np.asarray(scores, dtype=np.float64) * SCORE_BINS).astype(np.int64)
    return _nonzero(np.bincount(np.clip(index, 0, SCORE_BINS - 1)))


def _nonzero(counts: Any) -> dict[int, int]:
    found = np.flatnonzero(counts)
    return dict(zip(found.tolist(), counts[found].tolist(), strict=True))


@dataclass(frozen=True, slots=True)
class BatchFigures:
    """What one attempt at one batch adds to the telemetry.

    Attributes:
        second: The epoch second the batch was handled in (its bucket).
        counters: Added to the second's bucket and to the all-time totals.
        histograms: Added to the second's bucket only (``freshness:<bin>``, ``score:<bin>``).
        maxima: Kept in the second's bucket as the largest value seen.
        model_version: The model that scored the batch (None: no scoring in this batch).
        shadow_model_version: The challenger that shadow-scored it (None: no challenger).
    """

    second: int
    counters: dict[str, int]
    histograms: dict[str, int] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)
    model_version: str | None = None
    shadow_model_version: str | None = None


def events_of(figures: Mapping[str, float]) -> int:
    """A second's (or a batch's) events: records applied plus duplicates."""
    return int(figures.get("applied", 0) + figures.get("duplicates", 0))


def combine(buckets: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The figures of disjoint buckets as one: every field summed, the maxima the largest."""
    summed: dict[str, float] = {}
    for bucket in buckets:
        for name, value in bucket.items():
            if name == FRESHNESS_MAX:
                summed[name] = max(summed.get(name, value), value)
            else:
                summed[name] = summed.get(name, 0.0) + value
    return summed


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """What the stream wrote over a window of seconds.

    Attributes:
        figures: `combine` of the window's per-second buckets (counters and histograms
            summed, ``freshness_max_ms`` the largest; fields with nothing left out).
        events: Each second's events (`events_of`), oldest first.
    """

    figures: dict[str, float]
    events: tuple[int, ...]


def transaction_figures(outcome: BatchOutcome, now_s: float) -> BatchFigures:
    """The figures of one transaction batch."""
    counters = {
        "applied": outcome.applied,
        "duplicates": outcome.duplicates,
        "poison": outcome.poisoned,
        "failed": len(outcome.failures),
        "batches": 1,
    }
    for decision, count in outcome.decisions.items():
        counters[decision_field(decision)] = count
    histograms = {f"freshness:{i}": n for i, n in freshness_bins(outcome.arrival_lag_ms).items()}
    histograms |= {f"score:{i}": n for i, n in score_bins(outcome.scores).items()}
    maxima = {FRESHNESS_MAX: max(outcome.arrival_lag_ms)} if outcome.arrival_lag_ms else {}
    shadow = outcome.shadow
    if shadow is not None:
        if shadow.error is None:
            counters["shadow_scored"] = len(shadow.scores)
            histograms |= {f"shadow_score:{i}": n for i, n in score_bins(shadow.scores).items()}
        else:
            counters["shadow_errors"] = 1
    return BatchFigures(
        int(now_s), counters, histograms, maxima, outcome.model_version,
        shadow.model_version if shadow is not None else None,
    )  # fmt: skip


def label_figures(outcome: BatchOutcome, now_s: float) -> BatchFigures:
    """The figures of one label batch."""
    counters = {
        "labels": outcome.labels,
        "frauds": outcome.frauds,
        "poison": outcome.poisoned,
        "failed": len(outcome.failures),
        "batches": 1,
    }
    return BatchFigures(int(now_s), counters)


def error_figures(now_s: float) -> BatchFigures:
    """The figures of a batch that failed as a whole (it is retried)."""
    return BatchFigures(int(now_s), {"batch_errors": 1, "batches": 1})


def histogram_quantile(
    counts: Sequence[float], edges: Sequence[float], q: float, maximum: float | None = None
) -> float | None:
    """The q-quantile estimated from a histogram (linear within a bin), None when empty.

    The open last bin ends at `maximum`; the estimate never exceeds `maximum` when given.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count <= 0 or seen + count < rank:
            seen += count
            continue
        low, high = edges[i], edges[i + 1]
        if math.isinf(high):
            high = maximum if maximum is not None and maximum > low else low
        value = low + (high - low) * max(0.0, rank - seen) / count
        return min(value, maximum) if maximum is not None else value
    return maximum


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """The stream's figures over a window of seconds, and the state around it."""

    window_s: int
    generated_at_ms: int
    start_s: int
    events: tuple[int, ...]
    counts: dict[str, int]
    totals: dict[str, int]
    freshness: tuple[int, ...]
    freshness_max_ms: float | None
    scores: tuple[int, ...]
    model_version: str | None
    last_batch_ms: int | None
    dlq: dict[str, int | None]
    drift: dict[str, Any]
    shadow_model_version: str | None = None
    shadow_counts: dict[str, int] = field(default_factory=dict)
    shadow_scores: tuple[int, ...] = ()

    @property
    def events_per_s(self) -> float:
        """The current rate: the mean over the last `RATE_SPAN_S` complete seconds."""
        complete = self.events[:-1][-RATE_SPAN_S:]
        return sum(complete) / len(complete) if complete else float(sum(self.events))

    @property
    def mean_events_per_s(self) -> float:
        """The mean rate over the whole window."""
        return sum(self.events) / self.window_s

    def freshness_ms(self, q: float) -> float | None:
        """The q-quantile of freshness over the window (None: no event)."""
        return histogram_quantile(self.freshness, _FRESHNESS_EDGES, q, self.freshness_max_ms)

    @property
    def decisions(self) -> dict[str, int]:
        """Decisions made in the window, by type."""
        return _decisions(self.counts)

    @property
    def fraud_rate(self) -> float | None:
        """Frauds per label received in the window (None: no label)."""
        labels = self.counts.get("labels", 0)
        return self.counts.get("frauds", 0) / labels if labels else None

    def events_per_s_dict(self) -> dict[str, Any]:
        """The ``events_per_s`` object of ``GET /v1/telemetry``: current, mean, series."""
        return {"current": round(self.events_per_s, 3), "mean": round(self.mean_events_per_s, 3),
                "start_s": self.start_s, "series": list(self.events)}  # fmt: skip

    def freshness_dict(self) -> dict[str, Any]:
        """The ``freshness_ms`` object of ``GET /v1/telemetry``: p50, p99, max, count."""
        return {"p50": _round(self.freshness_ms(0.5)), "p99": _round(self.freshness_ms(0.99)),
                "max": _round(self.freshness_max_ms), "count": sum(self.freshness)}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of ``GET /v1/telemetry`` (see the OpenAPI document)."""
        return {
            "window_s": self.window_s,
            "generated_at": iso_ms(self.generated_at_ms),
            "events_per_s": self.events_per_s_dict(),
            "freshness_ms": self.freshness_dict(),
            "decisions": self.decisions,
            "fraud_rate": _round(self.fraud_rate, 6),
            "labels": self.counts.get("labels", 0),
            "score_histogram": {"edges": list(_SCORE_EDGES), "counts": list(self.scores)},
            "counts": _counts(self.counts),
            "totals": _counts(self.totals),
            "dlq": dict(self.dlq),
            "model_version": self.model_version,
            "last_batch_at": None if self.last_batch_ms is None else iso_ms(self.last_batch_ms),
            "drift": dict(self.drift),
            "shadow": {
                "model_version": self.shadow_model_version,
                **{name: self.shadow_counts.get(name, 0) for name in SHADOW_COUNTERS},
                "score_histogram": {
                    "edges": list(_SCORE_EDGES),
                    "counts": list(self.shadow_scores or (0,) * SCORE_BINS),
                },
            },
        }


def _decisions(values: Mapping[str, int]) -> dict[str, int]:
    return {d: values.get(decision_field(d), 0) for d in DECISION_TYPES}


def _counts(values: Mapping[str, int]) -> dict[str, Any]:
    """Counters as the API shows them: events (applied + duplicates), each counter, decisions."""
    shown: dict[str, Any] = {"events": values.get("applied", 0) + values.get("duplicates", 0)}
    shown |= {name: values.get(name, 0) for name in COUNTERS}
    shown["decisions"] = _decisions(values)
    return shown


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarize(
    window: TelemetryWindow,
    totals: Mapping[str, str],
    start_s: int,
    now_ms: int,
    dlq: Mapping[str, int | None],
    drift: Mapping[str, Any] | None,
) -> TelemetrySnapshot:
    """The snapshot of a window that starts at `start_s`, and the all-time totals."""
    summed = window.figures
    counter_names = (*COUNTERS, *map(decision_field, DECISION_TYPES))
    last = totals.get("last_batch_ms")
    return TelemetrySnapshot(
        window_s=len(window.events),
        generated_at_ms=now_ms,
        start_s=start_s,
        events=window.events,
        counts={name: int(summed.get(name, 0)) for name in counter_names},
        totals={name: int(totals.get(name, 0)) for name in counter_names},
        freshness=tuple(int(summed.get(f"freshness:{i}", 0)) for i in range(FRESHNESS_BINS)),
        freshness_max_ms=summed.get(FRESHNESS_MAX),
        scores=tuple(int(summed.get(f"score:{i}", 0)) for i in range(SCORE_BINS)),
        model_version=totals.get("model_version") or None,
        last_batch_ms=int(last) if last else None,
        dlq=dict(dlq),
        drift=dict(drift if drift and isinstance(drift.get("status"), str) else DRIFT_UNKNOWN),
        shadow_model_version=totals.get("shadow_model_version") or None,
        shadow_counts={name: int(summed.get(name, 0)) for name in SHADOW_COUNTERS},
        shadow_scores=tuple(int(summed.get(f"shadow_score:{i}", 0)) for i in range(SCORE_BINS)),
    )


class CachedDepths:
    """A `QueueDepths` read at most once per `max_age_s` (a polling dashboard costs little)."""

    def __init__(
        self,
        depths: QueueDepths,
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._depths, self._max_age_s, self._clock = depths, max_age_s, clock
        self._cached: dict[str, int | None] | None = None
        self._read_at = 0.0

    def depths(self) -> dict[str, int | None]:
        """The last reading if younger than `max_age_s`, else a new one."""
        now = self._clock()
        if self._cached is None or now - self._read_at >= self._max_age_s:
            self._cached, self._read_at = self._depths.depths(), now
        return dict(self._cached)


class TelemetryUnavailable(RuntimeError):
    """The telemetry store could not be read (the message says why)."""


class TelemetryService:
    """Snapshots of the stream's telemetry, with the dead-letter depths and the drift status."""

    def __init__(
        self,
        source: TelemetrySource,
        depths: QueueDepths | None = None,
        drift: DriftStatusReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source, self._depths, self._drift, self._clock = source, depths, drift, clock

    def snapshot(self, window_s: int = 60) -> TelemetrySnapshot:
        """The last `window_s` seconds (1..MAX_WINDOW_S, the current second last)."""
        if not 1 <= window_s <= MAX_WINDOW_S:
            raise ValueError(f"window must be 1-{MAX_WINDOW_S} seconds (got {window_s})")
        now = self._clock()
        last_s = int(now)
        start_s = last_s - window_s + 1
        try:
            window, totals = self._source.read(start_s, last_s)
            drift = self._drift.latest() if self._drift is not None else None
        except Exception as exc:  # any store failure: unavailable
            raise TelemetryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        dlq: dict[str, int | None] = dict.fromkeys(DLQ_ROLES)
        if self._depths is not None:
            dlq |= self._depths.depths()
        return summarize(window, totals, start_s, int(now * 1000), dlq, drift)
