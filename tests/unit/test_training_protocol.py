"""Unit tests for the Handbook protocol: split dates, known cards, CP@k (hand-computed)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from kestrel_training.datasets import day_number
from kestrel_training.protocol import (
    BOOK_TABLE,
    Split,
    card_precision_at_k,
    comparison_table,
    evaluate,
    known_compromised_cards,
    prequential_splits,
    required_days,
    selection_folds,
    train_test,
    validation_split,
)


def frame(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """Rows of (ISO day, card, label, score) as a test frame (score in its own column)."""
    return pd.DataFrame(
        {
            "day": [day_number(d) for d, _, _, _ in rows],
            "customer_id": [c for _, c, _, _ in rows],
            "is_fraud": [y for _, _, y, _ in rows],
            "score": [s for _, _, _, s in rows],
        }
    )


def test_split_default_dates_are_the_books() -> None:
    assert Split().describe() == {
        "train_start": "2018-07-25",
        "train_end": "2018-07-31",
        "test_start": "2018-08-08",
        "test_end": "2018-08-14",
    }


def test_validation_split_moves_back_delay_plus_test_days() -> None:
    assert validation_split(Split()).describe() == {
        "train_start": "2018-07-11",
        "train_end": "2018-07-17",
        "test_start": "2018-07-25",
        "test_end": "2018-07-31",
    }


def test_prequential_folds_shift_back_seven_days_each() -> None:
    starts = [f.train_start for f in selection_folds(Split(), 4)]
    assert starts == ["2018-07-11", "2018-07-04", "2018-06-27", "2018-06-20"]
    assert [f.train_start for f in prequential_splits(Split(), 2)] == ["2018-07-25", "2018-07-18"]


def test_required_days_cover_all_folds_and_the_test_week() -> None:
    assert required_days([Split(), *selection_folds(Split(), 4)]) == ("2018-06-20", "2018-08-14")


def test_card_precision_at_k_groups_by_card_and_removes_detected_cards() -> None:
    data = frame(
        [
            # day 1: cards by max score A .9 (fraud), B .8, C .7 (fraud) -> top 2 = A, B: 1/2
            ("2018-08-08", "A", 0, 0.9),
            ("2018-08-08", "A", 1, 0.1),
            ("2018-08-08", "B", 0, 0.8),
            ("2018-08-08", "C", 1, 0.7),
            # day 2: A (detected on day 1) is removed -> top 2 = B, C, both fraud: 2/2
            ("2018-08-09", "A", 0, 0.95),
            ("2018-08-09", "B", 1, 0.6),
            ("2018-08-09", "C", 1, 0.5),
            ("2018-08-09", "D", 0, 0.4),
        ]
    )
    mean, per_day = card_precision_at_k(data, data["score"].to_numpy(), k=2)
    assert per_day == [0.5, 1.0]
    assert mean == pytest.approx(0.75)


def test_card_precision_at_k_divides_by_k_when_fewer_cards() -> None:
    data = frame([("2018-08-08", "A", 1, 0.3)])
    assert card_precision_at_k(data, data["score"].to_numpy(), k=4) == (0.25, [0.25])


def test_card_precision_at_k_breaks_score_ties_by_card_id() -> None:
    data = frame([("2018-08-08", "B", 1, 0.5), ("2018-08-08", "A", 0, 0.5)])
    assert card_precision_at_k(data, data["score"].to_numpy(), k=1)[1] == [0.0]


def known_card_fixture() -> tuple[Split, pd.DataFrame]:
    """Train 07-25..26, delay 07-27, test 07-28..29; frauds of X (07-24), Y, Z, W."""
    split = Split(train_start="2018-07-25", train_days=2, delay_days=1, test_days=2)
    data = frame(
        [
            ("2018-07-24", "X", 1, 0.0),  # before the training start: not known (book)
            ("2018-07-25", "V", 0, 0.0),
            ("2018-07-26", "Y", 1, 0.0),  # known from test day 07-28 (07-28 - 1 - 1)
            ("2018-07-27", "Z", 1, 0.0),  # known from test day 07-29
            ("2018-07-28", "W", 1, 0.0),  # on a test day: never known during the test
            *[("2018-07-28", card, 0, 0.0) for card in "XYZWV"],
            *[("2018-07-29", card, 0, 0.0) for card in "XYZWV"],
        ]
    )
    return split, data


def test_known_compromised_cards_are_frauds_up_to_test_day_minus_delay_minus_one() -> None:
    split, data = known_card_fixture()
    assert known_compromised_cards(data, split, day_number("2018-07-28")) == {"Y"}
    assert known_compromised_cards(data, split, day_number("2018-07-29")) == {"Y", "Z"}


def test_train_test_removes_known_cards_from_each_test_day() -> None:
    split, data = known_card_fixture()
    train, test = train_test(data, split)
    assert sorted(train["customer_id"]) == ["V", "Y"]
    by_day = test.groupby("day")["customer_id"].apply(lambda s: "".join(sorted(s))).to_dict()
    assert by_day == {day_number("2018-07-28"): "VWWXZ", day_number("2018-07-29"): "VWX"}


def test_evaluate_gives_perfect_figures_for_a_perfect_ranking() -> None:
    data = frame([("2018-08-08", f"C{i}", int(i < 3), float(i < 3)) for i in range(10)])
    metrics = evaluate(data, data["score"].to_numpy(), k=3)
    assert (metrics.auc_roc, metrics.average_precision, metrics.card_precision_100) == (1, 1, 1)


def test_evaluate_is_nan_where_only_one_class() -> None:
    data = frame([("2018-08-08", "A", 0, 0.2), ("2018-08-08", "B", 0, 0.1)])
    metrics = evaluate(data, data["score"].to_numpy())
    assert math.isnan(metrics.auc_roc) and math.isnan(metrics.average_precision)
    assert metrics.card_precision_100 == 0.0


def test_comparison_table_prints_the_books_figures_beside_ours() -> None:
    data = frame([("2018-08-08", "A", 1, 0.9), ("2018-08-08", "B", 0, 0.1)])
    text = comparison_table([("mine", evaluate(data, np.array([0.9, 0.1])))])
    assert BOOK_TABLE[0][1:] == (0.871, 0.606, 0.291)
    assert "0.871   0.606   0.291" in text and "0.869   0.687   0.303" in text
    assert "ours: mine" in text and ">=0.70" in text
