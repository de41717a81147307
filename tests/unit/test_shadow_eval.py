"""Unit tests for the champion/challenger comparison: exact resampled metrics, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from kestrel_training.protocol import card_precision_at_k, evaluate
from kestrel_training.shadow_eval import (
    BETTER,
    NOT_BETTER,
    NOT_ENOUGH,
    WeightedMetrics,
    compare,
    live_frame,
)
from sklearn.metrics import average_precision_score

from kestrel.features import DAY_MS

DAY0 = 17_800 * DAY_MS


def logged(n: int, cards: int, days: int, seed: int, fraud_rate: float = 0.05) -> pd.DataFrame:
    """Rows as the event log holds them, with both models' scores (challenger is sharper)."""
    rng = np.random.default_rng(seed)
    fraud = (rng.random(n) < fraud_rate).astype(int)
    return pd.DataFrame(
        {
            "transaction_id": [f"T-{i}" for i in range(n)],
            "customer_id": [f"C-{c}" for c in rng.integers(0, cards, n)],
            "event_time": DAY0 + rng.integers(0, days * DAY_MS, n),
            "is_fraud": fraud,
            # Rounded, so equal scores (ties) occur, as with a forest's discrete scores.
            "score": np.round(0.5 * fraud + rng.random(n), 2),
            "shadow_score": np.round(0.9 * fraud + rng.random(n), 2),
        }
    )


def metrics_of(frame: pd.DataFrame, column: str, k: int) -> tuple[WeightedMetrics, np.ndarray]:
    data = live_frame(frame)
    ids, cards = np.unique(data["customer_id"].to_numpy(), return_inverse=True)
    metric = WeightedMetrics(
        frame[column].to_numpy(np.float64), data["is_fraud"].to_numpy(np.int64),
        cards.astype(np.int64), data["day"].to_numpy(np.int64), k,
    )  # fmt: skip
    return metric, ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_give_the_protocols_own_figures(seed: int) -> None:
    frame = logged(3000, 150, 5, seed)
    metric, ids = metrics_of(frame, "score", 20)
    ones = np.ones(len(ids), dtype=np.int64)
    expected = evaluate(live_frame(frame), frame["score"].to_numpy(), 20)
    assert metric.average_precision(ones) == pytest.approx(expected.average_precision, abs=1e-12)
    assert metric.card_precision(ones) == pytest.approx(expected.card_precision_100, abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_resample_weights_equal_the_protocol_on_duplicated_cards(seed: int) -> None:
    frame = logged(1500, 80, 4, seed, fraud_rate=0.1)
    metric, ids = metrics_of(frame, "shadow_score", 10)
    rng = np.random.default_rng(seed)
    weights = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
    assert (weights == 0).any() and (weights > 1).any()
    # The same resample spelled out: a card drawn m times becomes m cards with its rows.
    copies = []
    for card, m in zip(ids, weights, strict=True):
        rows = frame[frame["customer_id"] == card]
        copies += [rows.assign(customer_id=f"{card}#{j}") for j in range(m)]
    spelled = pd.concat(copies, ignore_index=True)
    data = live_frame(spelled)
    scores = spelled["shadow_score"].to_numpy()
    ap = average_precision_score(data["is_fraud"], scores)
    cp, _ = card_precision_at_k(data, scores, 10)
    assert metric.average_precision(weights.astype(np.int64)) == pytest.approx(ap, abs=1e-12)
    assert metric.card_precision(weights.astype(np.int64)) == pytest.approx(cp, abs=1e-12)


def test_a_sharper_challenger_is_better_with_intervals_that_hold_the_figures() -> None:
    result = compare(logged(6000, 400, 6, 7), "1", "2", resamples=200, seed=0, min_frauds=50)
    assert result.verdict == BETTER, result.reason
    for figures in (result.champion, result.challenger):
        for interval in (figures.average_precision, figures.card_precision_100):
            assert interval.low <= interval.value <= interval.high
    assert result.ap_difference.low > 0
    assert result.challenger.average_precision.value > result.champion.average_precision.value
    assert (result.rows, result.days, result.cards) == (6000, 6, 400)
    assert result.as_dict()["challenger"]["version"] == "2"


def test_a_blunter_challenger_is_not_better() -> None:
    frame = logged(6000, 400, 6, 8)
    swapped = frame.assign(score=frame["shadow_score"], shadow_score=frame["score"])
    result = compare(swapped, "1", "2", resamples=200, seed=0)
    assert result.verdict == NOT_BETTER and result.ap_difference.high < 0


def test_the_same_model_twice_is_not_better() -> None:
    frame = logged(3000, 200, 3, 9)
    result = compare(frame.assign(shadow_score=frame["score"]), "1", "1b", resamples=100)
    assert result.verdict == NOT_BETTER
    assert result.ap_difference == type(result.ap_difference)(0.0, 0.0, 0.0)


def test_too_few_frauds_or_no_rows_is_not_enough_labelled_data() -> None:
    few = compare(logged(400, 50, 2, 10, fraud_rate=0.02), "1", "2", resamples=50, min_frauds=50)
    assert few.verdict == NOT_ENOUGH and "fewer than the 50" in few.reason
    empty = compare(logged(0, 1, 1, 0), "1", "2", resamples=10)
    assert empty.verdict == NOT_ENOUGH and empty.rows == 0
    assert math.isnan(empty.champion.average_precision.value)
    assert empty.as_dict()["champion"]["average_precision"]["value"] is None


def test_the_bootstrap_is_seeded() -> None:
    frame = logged(2000, 150, 3, 11)
    one, two = (compare(frame, "1", "2", resamples=60, seed=5) for _ in range(2))
    assert one == two
    other = compare(frame, "1", "2", resamples=60, seed=6)
    assert other.ap_difference.low != one.ap_difference.low
