"""What a model carries to the scorers: decision thresholds and reference distributions.

Decision thresholds are chosen on validation scores (the prequential validation folds of
the chosen candidate, never the test week):

- ``review``: the (1 - REVIEW_ALERT_RATE) quantile of the validation scores, so about 1%
  of transactions score at or above it;
- ``decline``: the (1 - DECLINE_ALERT_RATE) quantile, about 0.2% of transactions;
- the rule: DECLINE when score >= decline, else REVIEW when score >= review, else APPROVE.
  When a quantile falls on a run of equal scores, the alert rate can be lower; the rates
  actually met on validation are stored beside the thresholds.

Reference distributions, for drift checks (`kestrel.drift`), are computed on the training
rows: per feature the cut points are the distinct 10%..90% quantiles, taken as observed
values (so at most 10 bins, fewer for discrete features); bin i holds the values x with
``searchsorted(cuts, x, side="right") == i`` (bin 0 is below the first cut, the last bin
at or above the last cut), and ``proportions[i]`` is the share of training rows in bin i
(what PSI compares). ``quantiles`` is a percentile grid for the KS test: the observed
values at the levels (i + 0.5) / 100, i = 0..99, rounded to 7 significant digits; its
empirical CDF is within 0.005 of the training rows' (plus the rounding). The model's score
gets the same three, computed on its scores of the held-out test week (the training rows'
own scores are overfit), under ``reference_distributions["score"]`` with its ``rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

REVIEW_ALERT_RATE = 0.01
DECLINE_ALERT_RATE = 0.002
N_BINS = 10
THRESHOLD_RULE = (
    "DECLINE if score >= decline; REVIEW if score >= review; else APPROVE. review = "
    f"{1 - REVIEW_ALERT_RATE:.3f} quantile and decline = {1 - DECLINE_ALERT_RATE:.3f} quantile "
    "of validation scores (alert rates ~1% and ~0.2%)"
)
BIN_RULE = (
    "bin = searchsorted(cuts, value, side='right'); cuts = distinct training quantiles "
    "(observed values) at 10%..90%; proportions = share of training rows per bin"
)
GRID_SIZE = 100
GRID_RULE = (
    f"quantiles = observed values at levels (i + 0.5) / {GRID_SIZE}, i = 0..{GRID_SIZE - 1} "
    "(inverted CDF), 7 significant digits: the KS reference"
)
SCORE_SOURCE = "the model's scores of the held-out test week"


def decision_thresholds(validation_scores: np.ndarray) -> dict[str, Any]:
    """Review / decline thresholds from validation scores, with the alert rates they give."""
    scores = np.asarray(validation_scores, dtype=np.float64)
    if not len(scores):
        raise ValueError("decision thresholds need validation scores")
    review = float(np.quantile(scores, 1 - REVIEW_ALERT_RATE))
    decline = max(float(np.quantile(scores, 1 - DECLINE_ALERT_RATE)), review)
    return {
        "approve_below": review,
        "review": review,
        "decline": decline,
        "review_alert_rate_validation": float(np.mean(scores >= review)),
        "decline_alert_rate_validation": float(np.mean(scores >= decline)),
        "validation_rows": len(scores),
        "rule": THRESHOLD_RULE,
    }


def distribution(values: np.ndarray, n_bins: int = N_BINS) -> dict[str, Any]:
    """Decile cuts, bin shares and the percentile grid of one column (rules above)."""
    values = np.asarray(values, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    grid_levels = (np.arange(GRID_SIZE) + 0.5) / GRID_SIZE
    if len(values):
        cuts = np.unique(np.quantile(values, levels, method="lower"))
        grid = np.quantile(values, grid_levels, method="inverted_cdf")
    else:
        cuts, grid = np.zeros(0), np.zeros(0)
    counts = np.bincount(np.searchsorted(cuts, values, side="right"), minlength=len(cuts) + 1)
    return {
        "cuts": [float(c) for c in cuts],
        "proportions": [float(c) / max(len(values), 1) for c in counts],
        "quantiles": [float(f"{q:.7g}") for q in grid],
    }


def reference_distributions(
    frame: pd.DataFrame,
    names: Sequence[str],
    n_bins: int = N_BINS,
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per feature (and for `scores`, when given): cuts, bin shares and percentile grid."""
    out: dict[str, Any] = {
        "rule": BIN_RULE,
        "grid_rule": GRID_RULE,
        "rows": len(frame),
        "features": {name: distribution(frame[name].to_numpy(), n_bins) for name in names},
    }
    if scores is not None:
        out["score"] = {
            **distribution(np.asarray(scores), n_bins),
            "rows": len(scores),
            "source": SCORE_SOURCE,
        }
    return out
