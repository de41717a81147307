"""The *Fraud Detection Handbook* evaluation protocol: split, known cards, metrics, folds.

As the book defines it (chapters 3.3, 4 and 5):

- Split: train on 7 days from 2018-07-25 (..07-31), then a 7-day delay period (labels of
  the training week arrive during it), then test on 7 days (2018-08-08..08-14).
- Known compromised cards: for a test day d, a card is known when it had a fraud on a
  day from the training start up to d - delay - 1 (the book's `get_train_test_set`: the
  frauds of the training week, plus those of each delay-period day whose labels are in by
  d). Transactions of known cards are removed from test day d.
- Metrics: AUC ROC and Average Precision over the test transactions, and Card
  Precision@k: for each test day, group the transactions by card taking the max score and
  the max label, take the k cards with the highest scores and count the fraudulent share
  (divided by k, as the book does); the fraudulent cards found in the top k are removed
  from the later days; the result is the mean over the test days. Ties in score are broken
  by card id so the figure is deterministic.
- Prequential validation for model selection: the validation split is the test split
  moved back by delay + test days (training from 2018-07-11); fold i moves it back
  i x 7 more days (4 folds: training from 07-11, 07-04, 06-27, 06-20).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from kestrel_training.datasets import TARGET, day_date, day_number

TOP_K = 100

# The book's published test-set figures (AUC ROC, AP, CP@100).
BOOK_TABLE: tuple[tuple[str, float, float, float], ...] = (
    ("Logistic regression", 0.871, 0.606, 0.291),
    ("Random forest", 0.867, 0.658, 0.287),
    ("XGBoost", 0.862, 0.639, 0.273),
    ("Best after model selection (XGBoost)", 0.869, 0.687, 0.303),
)
TARGET_AP, TARGET_CP100 = 0.70, 0.31


@dataclass(frozen=True)
class Split:
    """A train / delay / test split by whole UTC days."""

    train_start: str = "2018-07-25"
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    @property
    def first_train_day(self) -> int:
        """Day number of the first training day."""
        return day_number(self.train_start)

    @property
    def train_day_numbers(self) -> range:
        """Day numbers of the training days."""
        return range(self.first_train_day, self.first_train_day + self.train_days)

    @property
    def test_day_numbers(self) -> range:
        """Day numbers of the test days."""
        first = self.first_train_day + self.train_days + self.delay_days
        return range(first, first + self.test_days)

    def shifted(self, days: int) -> Split:
        """The same split moved `days` days earlier."""
        start = day_date(self.first_train_day) - timedelta(days=days)
        return replace(self, train_start=start.isoformat())

    def describe(self) -> dict[str, str]:
        """ISO dates of the training and test ranges."""
        train, test = self.train_day_numbers, self.test_day_numbers
        return {
            "train_start": day_date(train[0]).isoformat(),
            "train_end": day_date(train[-1]).isoformat(),
            "test_start": day_date(test[0]).isoformat(),
            "test_end": day_date(test[-1]).isoformat(),
        }


def validation_split(split: Split) -> Split:
    """The book's validation split: `split` moved back by delay + test days."""
    return split.shifted(split.delay_days + split.test_days)


def prequential_splits(split: Split, n_folds: int = 4) -> list[Split]:
    """Prequential folds of `split`: fold i is moved back i x test days."""
    return [split.shifted(i * split.test_days) for i in range(n_folds)]


def selection_folds(split: Split, n_folds: int = 4) -> list[Split]:
    """The folds model selection uses: prequential folds of the validation split."""
    return prequential_splits(validation_split(split), n_folds)


def required_days(splits: Sequence[Split]) -> tuple[str, str]:
    """First and last day (ISO) a dataset must cover to serve all `splits`."""
    first = min(s.first_train_day for s in splits)
    last = max(s.test_day_numbers[-1] for s in splits)
    return day_date(first).isoformat(), day_date(last).isoformat()


def known_compromised_cards(dataset: pd.DataFrame, split: Split, test_day: int) -> set[str]:
    """Cards with a fraud from the training start up to `test_day` - delay - 1."""
    days = dataset["day"].to_numpy()
    window = (days >= split.first_train_day) & (days <= test_day - split.delay_days - 1)
    frauds = dataset.loc[window & (dataset[TARGET].to_numpy() == 1), "customer_id"]
    return set(frauds.astype(str))


def train_test(dataset: pd.DataFrame, split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training rows and the test rows without the known compromised cards of each day."""
    days = dataset["day"].to_numpy()
    train = dataset[np.isin(days, np.asarray(split.train_day_numbers))]
    parts = []
    for test_day in split.test_day_numbers:
        known = known_compromised_cards(dataset, split, test_day)
        rows = dataset[days == test_day]
        parts.append(rows[~rows["customer_id"].astype(str).isin(known)])
    test = pd.concat(parts) if parts else dataset.iloc[:0]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def card_precision_at_k(
    frame: pd.DataFrame, scores: np.ndarray, k: int = TOP_K
) -> tuple[float, list[float]]:
    """Mean CP@k over the days of `frame` (day, customer_id, is_fraud) and the per-day values."""
    data = pd.DataFrame(
        {
            "day": frame["day"].to_numpy(),
            "card": frame["customer_id"].astype(str).to_numpy(),
            "label": frame[TARGET].to_numpy(),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    detected: set[str] = set()
    per_day: list[float] = []
    for _, rows in data.groupby("day", sort=True):
        rows = rows[~rows["card"].isin(detected)]
        cards = rows.groupby("card", sort=True).agg(score=("score", "max"), label=("label", "max"))
        cards = cards.reset_index().sort_values(
            ["score", "card"], ascending=[False, True], kind="stable"
        )
        top = cards.head(k)
        found = top.loc[top["label"] == 1, "card"]
        per_day.append(len(found) / k)
        detected.update(found)
    return (float(np.mean(per_day)) if per_day else math.nan), per_day


@dataclass(frozen=True)
class Metrics:
    """Test-set figures of one model."""

    auc_roc: float
    average_precision: float
    card_precision_100: float
    cp100_per_day: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        """The three headline figures by name."""
        return {
            "auc_roc": self.auc_roc,
            "average_precision": self.average_precision,
            "card_precision_100": self.card_precision_100,
        }


def evaluate(test: pd.DataFrame, scores: np.ndarray, k: int = TOP_K) -> Metrics:
    """AUC ROC, AP and CP@k of `scores` on the test rows (NaN where a metric is undefined)."""
    labels = test[TARGET].to_numpy()
    both = 0 < labels.sum() < len(labels)
    auc = float(roc_auc_score(labels, scores)) if both else math.nan
    ap = float(average_precision_score(labels, scores)) if both else math.nan
    cp, per_day = card_precision_at_k(test, scores, k)
    return Metrics(auc, ap, cp, tuple(per_day))


def comparison_table(ours: Sequence[tuple[str, Metrics]]) -> str:
    """Our figures beside the book's published test-set table, as aligned text."""
    rows = [("Model", "AUC ROC", "AP", "CP@100")]
    rows += [(f"book: {n}", f"{a:.3f}", f"{p:.3f}", f"{c:.3f}") for n, a, p, c in BOOK_TABLE]
    for name, m in ours:
        rows.append(
            (
                f"ours: {name}",
                f"{m.auc_roc:.3f}",
                f"{m.average_precision:.3f}",
                f"{m.card_precision_100:.3f}",
            )
        )
    rows.append(("target", "", f">={TARGET_AP:.2f}", f">={TARGET_CP100:.2f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  {r[1]:>7}  {r[2]:>6}  {r[3]:>6}" for r in rows)
