"""`make demo` streams after a simulated history it backfills, and scores the window fairly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kestrel.features import DAY_MS
from kestrel_local.demo_input import simulated_input
from kestrel_local.demo_report import DemoSummary, known_cards, summary_table


def test_simulated_input_streams_after_the_history_and_feeds_its_later_labels() -> None:
    data = simulated_input(3000, rate=1000.0, seed=7, history_days=3)
    assert data.stream_start_ms == data.start_ms + 3 * DAY_MS
    assert len(data.transactions) == 3000
    assert data.transactions["event_time"].min() >= data.stream_start_ms
    assert data.simulation is not None
    history = data.simulation.transactions
    assert (history["event_time"] < data.stream_start_ms).sum() > 20_000  # three busy days
    last = int(data.transactions["event_time"].iloc[-1])
    assert data.labels["label_time"].between(data.stream_start_ms, last).all()
    assert data.fraud_labels is not None and data.fraud_labels["is_fraud"].all()
    assert (data.fraud_labels["label_time"] <= last).all()
    assert np.all(np.diff(data.label_due_s) >= 0)


def test_simulated_input_without_history_streams_from_the_first_day() -> None:
    data = simulated_input(2000, rate=1000.0, seed=7)
    assert data.stream_start_ms == data.start_ms and data.history_days == 0
    assert data.transactions["event_time"].iloc[0] < data.start_ms + DAY_MS
    sent = set(data.transactions["transaction_id"])
    assert data.labels["transaction_id"].isin(sent).all()


def test_known_cards_are_those_with_a_fraud_labelled_before_the_day() -> None:
    t0 = 1_525_132_800_000
    tx = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2", "C3"],
            "event_time": [t0 + 5, t0 + DAY_MS + 5, t0 + DAY_MS + 9, t0 + 2 * DAY_MS],
        }
    )
    labels = pd.DataFrame(
        {"customer_id": ["C1", "C2"], "label_time": [t0 + 10, t0 + DAY_MS + 1], "is_fraud": True}
    )
    # C1's label came during day 0: known from day 1. C2's during day 1: known from day 2.
    assert known_cards(tx, labels).tolist() == [False, True, False, False]
    assert known_cards(tx, None).tolist() == [False] * 4


def test_summary_says_what_was_backfilled_and_sets_the_window_beside_the_test_set() -> None:
    summary = DemoSummary(
        backfill="30 days before the stream (2018-04-01 to 2018-05-01): 291,902 transactions",
        average_precision=0.735,
        unknown_cards_ap=0.674,
        test_set_ap=0.688,
    )
    table = summary_table(summary)
    assert "History backfilled" in table and "291,902 transactions" in table
    assert "AP 0.674" in table and "model's test set: AP 0.688" in table
    assert "none: the store started empty" in summary_table(DemoSummary())
