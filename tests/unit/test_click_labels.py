"""Unit tests for the propensity label and the point-in-time training table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from kestrel_training.click_labels import (
    CEILING,
    LABEL_HORIZON_MS,
    TARGET,
    TimeSplit,
    click_dataset,
    purchase_labels,
    time_split,
)
from kestrel_training.click_offline import click_offline_features
from kestrel_training.click_simulator import ClickSimulatorConfig, simulate_clicks

from kestrel.click_features import CLICK_FEATURE_NAMES
from kestrel.features import DAY_MS

T0 = 1_780_000_000_000


def _click(
    event_id: str, kind: str, t: int, user: str = "U1", session: str = "S1"
) -> dict[str, Any]:
    priced = kind != "page_view"
    return {
        "event_id": event_id,
        "user_id": user,
        "session_id": session,
        "event_type": kind,
        "product_id": "P1" if priced else None,
        "category": "c1" if priced else None,
        "price": 10.0 if priced else None,
        "event_time": t,
    }


def _labels(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = purchase_labels(pd.DataFrame(rows))
    return dict(zip(out["event_id"], out[TARGET].astype(int), strict=True))


def test_purchase_labels_window_is_strictly_after_and_closed_at_30_minutes() -> None:
    h = LABEL_HORIZON_MS
    cases = {  # user: (the event's offset from T0, the purchase's offset, expected label)
        "same_ms": (0, 0, 0),  # a purchase in the event's own millisecond is not after it
        "one_ms_later": (0, 1, 1),
        "exactly_30min": (0, h, 1),
        "one_ms_past_30min": (0, h + 1, 0),
        "before": (1000, 0, 0),  # a purchase before the event does not count
    }
    rows = []
    for user, (event, buy, _) in cases.items():
        rows.append(_click(f"{user}-view", "product_view", T0 + event, user=user))
        rows.append(_click(f"{user}-buy", "purchase", T0 + buy, user=user))
    labels = _labels(rows)
    for user, (_, _, want) in cases.items():
        assert labels[f"{user}-view"] == want, user


def test_purchase_labels_a_purchase_never_labels_itself() -> None:
    labels = _labels(
        [
            _click("buy0", "purchase", T0),
            _click("buy1", "purchase", T0 + 1000),  # a second item, one second later
            _click("buy2", "purchase", T0 + 1000 + LABEL_HORIZON_MS + 1),
        ]
    )
    assert labels == {"buy0": 1, "buy1": 0, "buy2": 0}


def test_purchase_labels_count_only_the_same_user_in_any_session() -> None:
    labels = _labels(
        [
            _click("a_view", "page_view", T0, user="A", session="A1"),
            _click("b_buy", "purchase", T0 + 60_000, user="B", session="B1"),
            _click("a_other_session_buy", "purchase", T0 + 120_000, user="A", session="A2"),
            _click("b_view", "page_view", T0 + 200_000, user="B", session="B1"),
        ]
    )
    assert labels == {"a_view": 1, "b_buy": 0, "a_other_session_buy": 0, "b_view": 0}


def test_purchase_labels_count_an_event_id_once() -> None:
    rows = [
        _click("v", "page_view", T0),
        _click("b", "purchase", T0 + 1000),
        _click("b", "purchase", T0 - 5000),  # a later copy of the same id: ignored
    ]
    out = purchase_labels(pd.DataFrame(rows))
    assert list(out["event_id"]) == ["v", "b"]
    assert dict(zip(out["event_id"], out[TARGET], strict=True)) == {"v": 1, "b": 0}


def test_click_dataset_drops_rows_whose_label_window_is_not_observed() -> None:
    rows = [_click(f"e{i}", "page_view", T0 + i * 60_000) for i in range(40)]
    until = T0 + 35 * 60_000
    table = click_dataset(pd.DataFrame(rows), observed_until_ms=until)
    assert table["event_time"].max() + LABEL_HORIZON_MS <= until
    assert list(table["event_id"]) == [f"e{i}" for i in range(6)]


@pytest.fixture(scope="module")
def small_sim() -> Any:
    return simulate_clicks(ClickSimulatorConfig(n_users=60, n_days=3, seed=11))


def test_click_dataset_features_never_see_events_after_the_row(small_sim: Any) -> None:
    events = small_sim.events
    end = small_sim.config.start_ms + 3 * DAY_MS
    table = click_dataset(events, end, small_sim.sessions).set_index("event_id")
    assert table[CEILING].notna().all()
    rng = np.random.default_rng(3)
    picks = rng.choice(len(events), size=25, replace=False)
    for index in picks:
        row = events.iloc[index]
        if row["event_id"] not in table.index:
            continue  # censored: its label window runs past the end
        # Everything at or before the row in (time, id) order, and nothing after it.
        key = list(zip(events["event_time"], events["event_id"], strict=True))
        past = events[[k <= (row["event_time"], row["event_id"]) for k in key]]
        alone = click_offline_features(past).set_index("event_id").loc[row["event_id"]]
        got = table.loc[row["event_id"], list(CLICK_FEATURE_NAMES)].to_numpy(dtype=float)
        np.testing.assert_allclose(got, alone.to_numpy(dtype=float), rtol=0, atol=0)


def test_time_split_closes_training_label_windows_before_the_test_days(small_sim: Any) -> None:
    end = small_sim.config.start_ms + 3 * DAY_MS
    table = click_dataset(small_sim.events, end, small_sim.sessions)
    split = TimeSplit(end - DAY_MS)
    train, test = time_split(table, split)
    assert len(train) and len(test)
    assert (train["event_time"] + LABEL_HORIZON_MS <= split.test_start_ms).all()
    assert (test["event_time"] >= split.test_start_ms).all()
    # Rows in the 30 minutes before the test start are in neither set.
    gap = table[
        (table["event_time"] < split.test_start_ms)
        & (table["event_time"] + LABEL_HORIZON_MS > split.test_start_ms)
    ]
    assert len(train) + len(test) + len(gap) == len(table)
    assert set(train["event_id"]).isdisjoint(test["event_id"])
