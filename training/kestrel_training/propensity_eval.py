"""Quality figures of a purchase-propensity score: AUC, AP, Brier score, calibration deciles.

The calibration table sorts the rows by score and cuts them into `n_bins` groups of equal
size (ties may straddle a cut; the order among equal scores is the rows' order, kept
stable): per group the row count, the score range, the mean score and the observed
purchase rate. A calibrated score has mean score ~ observed rate in every group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


@dataclass(frozen=True)
class CalibrationBin:
    """One group of the calibration table."""

    rows: int
    score_min: float
    score_max: float
    mean_score: float
    observed_rate: float

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready, rounded to 4 decimals."""
        return {
            "rows": self.rows,
            "score_min": round(self.score_min, 4),
            "score_max": round(self.score_max, 4),
            "mean_score": round(self.mean_score, 4),
            "observed_rate": round(self.observed_rate, 4),
        }


@dataclass(frozen=True)
class Quality:
    """The figures of one score on one set of rows."""

    rows: int
    positives: int
    auc: float
    average_precision: float
    brier: float
    calibration: tuple[CalibrationBin, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "rows": self.rows,
            "positives": self.positives,
            "auc": round(self.auc, 4),
            "average_precision": round(self.average_precision, 4),
            "brier": round(self.brier, 5),
            "calibration": [b.as_dict() for b in self.calibration],
        }


def calibration_table(
    labels: np.ndarray, scores: np.ndarray, n_bins: int = 10
) -> tuple[CalibrationBin, ...]:
    """Equal-count score groups, lowest scores first (module docstring)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    return tuple(
        CalibrationBin(
            rows=len(part),
            score_min=float(s[part].min()),
            score_max=float(s[part].max()),
            mean_score=float(s[part].mean()),
            observed_rate=float(y[part].mean()),
        )
        for part in np.array_split(order, n_bins)
        if len(part)
    )


def quality(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> Quality:
    """AUC, AP, Brier score and calibration deciles of `scores` against 0/1 `labels`."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("quality figures need both labels among the rows")
    return Quality(
        rows=len(y),
        positives=int(y.sum()),
        auc=float(roc_auc_score(y, s)),
        average_precision=float(average_precision_score(y, s)),
        brier=float(brier_score_loss(y, s)),
        calibration=calibration_table(y, s, n_bins),
    )


def auc_by_group(
    labels: np.ndarray, scores: np.ndarray, ceiling: np.ndarray, groups: np.ndarray
) -> dict[str, dict[str, float | int]]:
    """Per group (e.g. event type): rows, positive rate, model AUC and ceiling AUC (groups
    with one label only get no AUC)."""
    y, s, c, g = (np.asarray(a) for a in (labels, scores, ceiling, groups))
    out: dict[str, dict[str, float | int]] = {}
    for name in sorted(set(g.tolist())):
        mask = g == name
        row: dict[str, float | int] = {
            "rows": int(mask.sum()),
            "positive_rate": round(float(y[mask].mean()), 4),
        }
        if len(np.unique(y[mask])) == 2:
            row["model_auc"] = round(float(roc_auc_score(y[mask], s[mask])), 4)
            row["ceiling_auc"] = round(float(roc_auc_score(y[mask], c[mask])), 4)
        out[str(name)] = row
    return out


def side_by_side(model: Quality, ceiling: Quality) -> str:
    """A plain-text table: the figures, then the calibration deciles, model beside ceiling."""
    lines = [
        f"{'':28}{'model':>10}{'ceiling':>10}",
        f"{'AUC':28}{model.auc:>10.4f}{ceiling.auc:>10.4f}",
        f"{'average precision':28}{model.average_precision:>10.4f}"
        f"{ceiling.average_precision:>10.4f}",
        f"{'Brier score':28}{model.brier:>10.4f}{ceiling.brier:>10.4f}",
        "calibration deciles: mean score / observed rate (model | ceiling)",
    ]
    for i, (m, c) in enumerate(zip(model.calibration, ceiling.calibration, strict=True)):
        lines.append(
            f"  {i + 1:>2}  {m.mean_score:.3f} / {m.observed_rate:.3f}   |"
            f"   {c.mean_score:.3f} / {c.observed_rate:.3f}"
        )
    return "\n".join(lines)
