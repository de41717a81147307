"""Drift of the served features and scores against the model's training reference.

The reference is the model manifest's ``reference_distributions`` (written by
`kestrel_training.manifest`): per feature, the decile ``cuts`` and the training share of
each bin (``proportions``), a percentile grid (``quantiles``: 100 values at the quantile
levels (i + 0.5) / 100) and the number of ``rows`` it summarises; the same for the
model's ``score`` on its held-out test week.

For each feature and for the score, two measures (the statistics come from a
`DriftStatistics` implementation, scipy on Lambda):

- PSI (population stability index) over the reference bins: ``sum((a - e) * ln(a / e))``
  with e the reference share and a the window share of each bin. Conventional thresholds
  (credit scoring, Siddiqi 2006): below 0.1 stable, 0.1 to 0.2 ``watch``, above 0.2
  ``drift``. PSI is blind inside a bin: a feature whose deciles collapse on one value
  (a count that is almost always 1, a risk that is almost always 0) has one or two bins.
- Two-sample Kolmogorov-Smirnov: D, the largest gap between the window's and the
  reference's cumulative distributions, and its p-value with the reference's real size
  (Smirnov's asymptotic distribution, as scipy's ks_2samp computes it). With thousands of
  rows a window gets p < 0.01 for gaps of a percent or two that matter to nobody (and a
  new population of customers differs from the training one by a few percent anyway), so
  KS flags ``drift`` only with a minimum effect size as well: p < 0.01 and D >= 0.10, that
  is, some threshold on the feature now passes 10 percentage points more, or fewer, of the
  traffic. KS has no ``watch`` level: below D = 0.10 it reports, PSI judges. Ties (counts,
  flags) make the p-value conservative, never the opposite.

A feature's status is the worse of the two. A window with fewer than ``min_rows`` rows is
``unknown``, and so is a calendar feature whose cycle the window does not cover (the share
of weekend transactions in a 24-hour window is 0 or 1 whatever happens). The overall status
is the worst status judged (``unknown`` when nothing could be judged); ``drifted`` lists
the features, then ``score``, whose status is ``drift``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kestrel.events import iso_ms
from kestrel.features import DAY_MS, FEATURE_NAMES

SCORE = "score"
# Calendar features and the cycle a window must cover for their share to mean anything.
CALENDAR_CYCLES_MS: dict[str, int] = {"TX_DURING_WEEKEND": 7 * DAY_MS, "TX_DURING_NIGHT": DAY_MS}


class Status(StrEnum):
    """A drift verdict, from best to worst; ``unknown`` when it could not be judged."""

    OK = "ok"
    WATCH = "watch"
    DRIFT = "drift"
    UNKNOWN = "unknown"


_SEVERITY = {Status.OK: 0, Status.WATCH: 1, Status.DRIFT: 2}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where PSI and KS flag (see the module docstring for why these values)."""

    psi_watch: float = 0.1
    psi_drift: float = 0.2
    ks_alpha: float = 0.01
    ks_drift_d: float = 0.10
    min_rows: int = 500

    def as_dict(self) -> dict[str, float | int]:
        """The thresholds as JSON."""
        return asdict(self)


class DriftStatistics(Protocol):
    """The statistics of a drift check (an adapter: the domain imports no scipy).

    `psi` compares bin shares; `ks` compares a sample with a reference given as a
    quantile grid, its p-value computed for a reference of `reference_rows` rows.
    """

    def psi(self, expected: Sequence[float], observed: Sequence[float]) -> float:
        """The PSI of `observed` bin shares against `expected` ones (same bins, each sums to 1).

        Args:
            expected: The reference share of each bin.
            observed: The window's share of each bin.
        """
        ...

    def ks(
        self, sample: npt.NDArray[np.float64], grid: Sequence[float], reference_rows: int
    ) -> tuple[float, float]:
        """Two-sample KS statistic D and two-sided p-value of `sample` against the reference.

        Args:
            sample: The window's values.
            grid: The reference's quantiles at evenly spaced levels (sorted).
            reference_rows: How many rows the reference summarises (for the p-value).
        """
        ...


@dataclass(frozen=True, slots=True)
class Distribution:
    """One feature's (or the score's) reference: decile bins, percentile grid, size."""

    cuts: tuple[float, ...]
    proportions: tuple[float, ...]
    quantiles: tuple[float, ...]
    rows: int

    @classmethod
    def parse(cls, raw: Mapping[str, Any], rows: int) -> Distribution:
        """Read one entry of ``reference_distributions``; raise ValueError when malformed."""
        cuts = tuple(float(c) for c in raw["cuts"])
        proportions = tuple(float(p) for p in raw["proportions"])
        quantiles = tuple(float(q) for q in raw.get("quantiles", ()))
        if len(proportions) != len(cuts) + 1:
            raise ValueError("proportions must have one bin more than cuts")
        if list(quantiles) != sorted(quantiles):
            raise ValueError("quantiles must be sorted")
        return cls(cuts, proportions, quantiles, int(raw.get("rows", rows)))


@dataclass(frozen=True, slots=True)
class Reference:
    """The manifest's reference distributions for the features and the score."""

    model_version: str
    feature_set_hash: str
    features: dict[str, Distribution]
    score: Distribution | None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Reference:
        """Parse a model manifest; raise ValueError when its reference is missing or malformed."""
        try:
            raw = manifest["reference_distributions"]
            rows = int(raw.get("rows", 0))
            features = {
                name: Distribution.parse(raw["features"][name], rows) for name in FEATURE_NAMES
            }
            score = raw.get(SCORE)
            return cls(
                model_version=str(manifest["model_version"]),
                feature_set_hash=str(manifest["feature_set_hash"]),
                features=features,
                score=Distribution.parse(score, int(score.get("rows", 0))) if score else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"the manifest has no usable reference_distributions: {exc!r}"
            ) from None


@dataclass(frozen=True)
class ScoredWindow:
    """What `kestrel.monitoring_ports.DriftWindowSource.read` returns.

    `features` holds one row per transaction (FEATURE_NAMES columns); `scores` the scores
    of the rows the reference's model version scored; `skipped` the rows computed with
    another feature set; `objects_read` / `objects_total` how much of the log was read.
    """

    start_ms: int
    end_ms: int
    features: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    skipped: int = 0
    objects_read: int = 0
    objects_total: int = 0

    @property
    def rows(self) -> int:
        """Transactions in the window (as read)."""
        return int(self.features.shape[0])


@dataclass(frozen=True, slots=True)
class Comparison:
    """One feature (or the score) in the window against its reference."""

    status: Status
    rows: int
    psi: float | None = None
    ks_stat: float | None = None
    ks_p: float | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The comparison as JSON (``note`` only when there is one)."""
        out: dict[str, Any] = {
            "psi": _round(self.psi),
            "ks_stat": _round(self.ks_stat),
            "ks_p": None if self.ks_p is None else float(f"{self.ks_p:.4g}"),
            "status": self.status.value,
            "rows": self.rows,
        }
        if self.note:
            out["note"] = self.note
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def bin_shares(values: npt.NDArray[np.float64], cuts: Sequence[float]) -> npt.NDArray[np.float64]:
    """The share of `values` in each reference bin (bin = searchsorted(cuts, v, 'right'))."""
    bins = np.searchsorted(np.asarray(cuts, dtype=np.float64), values, side="right")
    counts = np.bincount(bins, minlength=len(cuts) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def judge(
    psi: float | None, ks_stat: float | None, ks_p: float | None, limits: Thresholds
) -> Status:
    """PSI's verdict, made ``drift`` when KS is significant with a large enough gap."""
    significant = ks_stat is not None and ks_p is not None and ks_p < limits.ks_alpha
    if significant and ks_stat is not None and ks_stat >= limits.ks_drift_d:
        return Status.DRIFT
    if psi is not None and psi > limits.psi_drift:
        return Status.DRIFT
    if psi is not None and psi > limits.psi_watch:
        return Status.WATCH
    return Status.OK


def compare(
    values: npt.NDArray[np.float64],
    reference: Distribution | None,
    statistics: DriftStatistics,
    limits: Thresholds,
    unjudged: str | None = None,
) -> Comparison:
    """PSI and KS of `values` against `reference`, and the verdict (or why there is none)."""
    values = np.asarray(values, dtype=np.float64)
    rows = len(values)
    if reference is None:
        return Comparison(Status.UNKNOWN, rows, note="no reference in the model manifest")
    if rows == 0:
        return Comparison(Status.UNKNOWN, 0, note="no rows in the window")
    psi = statistics.psi(reference.proportions, bin_shares(values, reference.cuts).tolist())
    ks_stat = ks_p = None
    if reference.quantiles:
        ks_stat, ks_p = statistics.ks(values, reference.quantiles, reference.rows)
    if rows < limits.min_rows:
        unjudged = f"{rows} rows, fewer than the {limits.min_rows} needed"
    if unjudged:
        return Comparison(Status.UNKNOWN, rows, psi, ks_stat, ks_p, unjudged)
    note = None if reference.quantiles else "no quantile grid in the manifest: PSI only"
    return Comparison(judge(psi, ks_stat, ks_p, limits), rows, psi, ks_stat, ks_p, note)


@dataclass(frozen=True)
class DriftReport:
    """The result of one drift check (`as_dict` is the JSON the status key and reports hold)."""

    status: Status
    checked_at_ms: int
    window: ScoredWindow
    model_version: str
    features: dict[str, Comparison]
    score: Comparison
    limits: Thresholds = field(default_factory=Thresholds)

    @property
    def drifted(self) -> list[str]:
        """Features, then ``score``, whose status is ``drift``."""
        items = [*self.features.items(), (SCORE, self.score)]
        return [name for name, c in items if c.status is Status.DRIFT]

    @property
    def watched(self) -> list[str]:
        """Features, then ``score``, whose status is ``watch``."""
        items = [*self.features.items(), (SCORE, self.score)]
        return [name for name, c in items if c.status is Status.WATCH]

    @property
    def psi_max(self) -> float | None:
        """The largest PSI among the judged features and score (None when none was judged)."""
        judged = (*self.features.values(), self.score)
        values = [c.psi for c in judged if c.psi is not None and c.status is not Status.UNKNOWN]
        return max(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON (the contract in docs/drift.md)."""
        window = self.window
        return {
            "status": self.status.value,
            "checked_at": iso_ms(self.checked_at_ms),
            "window": {
                "from": iso_ms(window.start_ms),
                "to": iso_ms(window.end_ms),
                "rows": window.rows,
                "score_rows": len(window.scores),
                "skipped_rows": window.skipped,
                "objects_read": window.objects_read,
                "objects_total": window.objects_total,
            },
            "model_version": self.model_version,
            "features": {name: c.as_dict() for name, c in self.features.items()},
            "score": self.score.as_dict(),
            "drifted": self.drifted,
            "watch": self.watched,
            "psi_max": _round(self.psi_max),
            "thresholds": self.limits.as_dict(),
        }


def overall(comparisons: Sequence[Comparison]) -> Status:
    """The worst judged status, or ``unknown`` when nothing could be judged."""
    judged = [c.status for c in comparisons if c.status is not Status.UNKNOWN]
    if not judged:
        return Status.UNKNOWN
    return max(judged, key=_SEVERITY.__getitem__)


def check(
    window: ScoredWindow,
    reference: Reference,
    statistics: DriftStatistics,
    checked_at_ms: int,
    limits: Thresholds | None = None,
) -> DriftReport:
    """Compare every feature and the score of `window` with `reference`."""
    limits = limits or Thresholds()
    span_ms = window.end_ms - window.start_ms
    features: dict[str, Comparison] = {}
    for column, name in enumerate(FEATURE_NAMES):
        cycle = CALENDAR_CYCLES_MS.get(name)
        unjudged = None
        if cycle is not None and span_ms < cycle:
            unjudged = f"the window covers less than the feature's {cycle // DAY_MS}-day cycle"
        values = window.features[:, column] if window.rows else np.zeros(0)
        features[name] = compare(values, reference.features.get(name), statistics, limits, unjudged)
    score = compare(window.scores, reference.score, statistics, limits)
    status = overall([*features.values(), score])
    if window.rows < limits.min_rows:
        status = Status.UNKNOWN
    return DriftReport(
        status, checked_at_ms, window, reference.model_version, features, score, limits
    )
