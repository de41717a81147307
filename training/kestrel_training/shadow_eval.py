"""Champion against challenger on the same labelled transactions: AP, CP@100, intervals, verdict.

The figures are the training protocol's own (`kestrel_training.protocol.evaluate`: Average
Precision over the transactions, and card precision top-100 per UTC day with the cards
found removed from later days, as the *Fraud Detection Handbook* defines it), computed on
the live window the stream shadow-scored: every transaction carries both models' scores,
so the comparison is paired. Unlike the book's test week, known compromised cards are not
removed (the live stream scored them too), as in `make demo`'s summary.

Intervals: a bootstrap over cards (customers), `resamples` times (default 1,000, seeded):
each resample draws as many cards as there are, with replacement, and keeps all of a drawn
card's transactions (a card drawn twice counts as two cards), since a card's transactions,
and CP@100's unit, are not independent. Both models are scored on the same resamples, so
the interval of the difference is paired. Each interval is the central `confidence` share
(95%) of the resampled values (percentile method). The resampled AP and CP@100 are exact
weighted forms of the protocol's functions (a card drawn m times weighs m), checked against
them in the unit tests.

Verdict:

- ``not enough labelled data``: fewer than `min_frauds` labelled frauds (default 50), or no
  transaction scored by both models;
- ``challenger better``: the interval of the AP difference (challenger - champion) lies
  above 0, and CP@100 is not clearly worse (the upper end of its difference's interval is
  at least 0);
- ``challenger not better``: otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from kestrel.features import DAY_MS
from kestrel_training.datasets import TARGET
from kestrel_training.protocol import TOP_K, evaluate

BETTER, NOT_BETTER, NOT_ENOUGH = "better", "not_better", "not_enough_data"
VERDICTS = {
    BETTER: "challenger better",
    NOT_BETTER: "challenger not better",
    NOT_ENOUGH: "not enough labelled data",
}
DEFAULT_RESAMPLES, DEFAULT_MIN_FRAUDS, DEFAULT_CONFIDENCE = 1000, 50, 0.95

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Interval:
    """A figure on the window and its bootstrap interval (NaN: undefined, e.g. no fraud)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ModelFigures:
    """One model's AP and CP@100 on the window, with intervals."""

    version: str
    average_precision: Interval
    card_precision_100: Interval


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger on one labelled window, and what that says."""

    champion: ModelFigures
    challenger: ModelFigures
    ap_difference: Interval
    cp100_difference: Interval
    rows: int
    frauds: int
    cards: int
    days: int
    first_day: str | None
    last_day: str | None
    verdict: str
    reason: str
    resamples: int
    seed: int
    confidence: float
    min_frauds: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN as None)."""
        doc: dict[str, Any] = _no_nan(asdict(self))
        return doc


def _no_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class WeightedMetrics:
    """AP and CP@k of one model's scores, for any integer weight per card (a resample).

    With every weight 1 they equal `average_precision_score` and `card_precision_at_k` of
    the protocol; with weight m a card counts as m distinct cards with the same rows.
    """

    def __init__(
        self, scores: FloatArray, labels: IntArray, cards: IntArray, days: IntArray, k: int
    ) -> None:
        self._k = k
        order = np.argsort(-scores, kind="stable")
        ordered = scores[order]
        # Rows by score, highest first; a group is a run of equal scores (one threshold).
        group_of_row = np.concatenate(([0], np.cumsum(np.diff(ordered) != 0)))
        group_last = np.append(np.flatnonzero(np.diff(ordered)), len(ordered) - 1)
        self._cards_by_score = cards[order]
        frauds = np.flatnonzero(labels[order] == 1)
        self._fraud_cards = self._cards_by_score[frauds]
        # The groups holding a fraud (the only thresholds where recall grows), and the
        # index of each fraud's group among them.
        fraud_groups, self._fraud_slot = np.unique(group_of_row[frauds], return_inverse=True)
        self._fraud_group_last = group_last[fraud_groups]
        frame = pd.DataFrame({"day": days, "card": cards, "score": scores, "label": labels})
        per_card = frame.groupby(["day", "card"], sort=True).agg(
            score=("score", "max"), label=("label", "max")
        )
        self._days: list[tuple[IntArray, IntArray]] = []
        for _, group in per_card.reset_index().groupby("day", sort=True):
            # Card indices follow the ids' sorted order, so ties break by card id as in CP@k.
            ranked = group.sort_values(["score", "card"], ascending=[False, True], kind="stable")
            self._days.append(
                (ranked["card"].to_numpy(np.int64), ranked["label"].to_numpy(np.int64))
            )
        self._n_cards = int(cards.max()) + 1 if len(cards) else 0

    def average_precision(self, card_weights: IntArray) -> float:
        """Weighted AP (sklearn's definition with sample weights); NaN without fraud weight.

        AP = sum over thresholds of (recall gain) x precision; recall only grows at the
        thresholds whose group holds a fraud, so only those are computed.
        """
        if not len(self._fraud_cards):
            return math.nan
        fraud_weight = np.bincount(
            self._fraud_slot, weights=card_weights[self._fraud_cards],
            minlength=len(self._fraud_group_last),
        )  # fmt: skip
        positives = fraud_weight.sum()
        if positives <= 0:
            return math.nan
        taken = np.cumsum(card_weights[self._cards_by_score])[self._fraud_group_last]
        true_pos = np.cumsum(fraud_weight)
        precision = np.divide(true_pos, taken, out=np.zeros_like(true_pos), where=taken > 0)
        return float(np.sum(fraud_weight / positives * precision))

    def card_precision(self, card_weights: IntArray) -> float:
        """Weighted CP@k: mean over the days present of the fraudulent share of the top k."""
        detected = np.zeros(self._n_cards, dtype=np.int64)
        per_day: list[float] = []
        for cards, labels in self._days:
            weights = card_weights[cards]
            if not weights.any():
                continue  # no card of this day was drawn: the day is not in the resample
            left = weights - detected[cards]
            before = np.cumsum(left) - left
            taken = np.clip(self._k - before, 0, left)
            found = taken * labels
            per_day.append(float(found.sum()) / self._k)
            detected[cards] += found
        return float(np.mean(per_day)) if per_day else math.nan


def _interval(value: float, samples: FloatArray, confidence: float) -> Interval:
    kept = samples[~np.isnan(samples)]
    if math.isnan(value) or not len(kept):
        return Interval(value, math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(kept, [tail, 100.0 - tail])
    return Interval(value, float(low), float(high))


def live_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The protocol's columns (day, customer_id, is_fraud) from logged rows with event_time."""
    return pd.DataFrame(
        {
            "day": frame["event_time"].to_numpy(np.int64) // DAY_MS,
            "customer_id": frame["customer_id"].astype(str).to_numpy(),
            TARGET: frame[TARGET].astype(np.int64).to_numpy(),
        }
    )


def compare(
    frame: pd.DataFrame,
    champion_version: str,
    challenger_version: str,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    min_frauds: int = DEFAULT_MIN_FRAUDS,
    confidence: float = DEFAULT_CONFIDENCE,
    k: int = TOP_K,
) -> Comparison:
    """Both models on `frame` (event_time, customer_id, is_fraud, score, shadow_score)."""
    data = live_frame(frame)
    scores = {
        "champion": frame["score"].to_numpy(np.float64),
        "challenger": frame["shadow_score"].to_numpy(np.float64),
    }
    labels = data[TARGET].to_numpy(np.int64)
    card_ids, cards = np.unique(data["customer_id"].to_numpy(), return_inverse=True)
    days = data["day"].to_numpy(np.int64)
    point = {name: evaluate(data, s, k) for name, s in scores.items()}
    rng = np.random.default_rng(seed)
    metrics = {
        name: WeightedMetrics(s, labels, cards.astype(np.int64), days, k)
        for name, s in scores.items()
    }
    samples = {f"{n}.{m}": np.full(resamples, np.nan) for n in scores for m in ("ap", "cp")}
    if len(data):
        for r in range(resamples):
            weights = np.bincount(rng.integers(0, len(card_ids), len(card_ids)),
                                  minlength=len(card_ids)).astype(np.int64)  # fmt: skip
            for name, metric in metrics.items():
                samples[f"{name}.ap"][r] = metric.average_precision(weights)
                samples[f"{name}.cp"][r] = metric.card_precision(weights)

    def figures(name: str, version: str) -> ModelFigures:
        m = point[name]
        return ModelFigures(
            version,
            _interval(m.average_precision, samples[f"{name}.ap"], confidence),
            _interval(m.card_precision_100, samples[f"{name}.cp"], confidence),
        )

    def difference(metric: str, attribute: Callable[[Any], float]) -> Interval:
        value = attribute(point["challenger"]) - attribute(point["champion"])
        diffs = samples[f"challenger.{metric}"] - samples[f"champion.{metric}"]
        return _interval(value, diffs, confidence)

    ap_diff = difference("ap", lambda m: m.average_precision)
    cp_diff = difference("cp", lambda m: m.card_precision_100)
    frauds = int(labels.sum())
    verdict, reason = judge(len(data), frauds, ap_diff, cp_diff, min_frauds)
    first = str(pd.Timestamp(int(days.min()) * DAY_MS, unit="ms").date()) if len(days) else None
    last = str(pd.Timestamp(int(days.max()) * DAY_MS, unit="ms").date()) if len(days) else None
    return Comparison(
        champion=figures("champion", champion_version),
        challenger=figures("challenger", challenger_version),
        ap_difference=ap_diff,
        cp100_difference=cp_diff,
        rows=len(data),
        frauds=frauds,
        cards=len(card_ids),
        days=len(np.unique(days)),
        first_day=first,
        last_day=last,
        verdict=verdict,
        reason=reason,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
        min_frauds=min_frauds,
    )


def judge(
    rows: int, frauds: int, ap_diff: Interval, cp_diff: Interval, min_frauds: int
) -> tuple[str, str]:
    """The verdict and why (rules in the module doc)."""
    if rows == 0:
        return NOT_ENOUGH, "no labelled transaction was scored by both models"
    if frauds < min_frauds:
        return NOT_ENOUGH, f"{frauds} labelled frauds, fewer than the {min_frauds} needed"
    if math.isnan(ap_diff.low):
        return NOT_ENOUGH, "AP is undefined on this window"
    if ap_diff.low <= 0:
        return NOT_BETTER, (
            f"the AP difference's interval [{ap_diff.low:+.4f}, {ap_diff.high:+.4f}] is not above 0"
        )
    if not cp_diff.high >= 0:
        return NOT_BETTER, (
            f"AP is higher, but CP@100 is clearly lower (difference's interval "
            f"[{cp_diff.low:+.4f}, {cp_diff.high:+.4f}])"
        )
    return BETTER, (
        f"the AP difference's interval [{ap_diff.low:+.4f}, {ap_diff.high:+.4f}] is above 0 "
        "and CP@100 is not clearly lower"
    )
