"""Unit tests for the clickstream simulator: deterministic, segmented, with a true probability."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from kestrel_training.click_simulator import (
    EVENT_COLUMNS,
    SESSION_GAP_S,
    ClickSimulation,
    ClickSimulatorConfig,
    simulate_clicks,
)

from kestrel.click_events import parse_click

SMALL = ClickSimulatorConfig(n_users=300, n_days=10, seed=5)


@pytest.fixture(scope="module")
def sim() -> ClickSimulation:
    return simulate_clicks(SMALL)


def test_click_simulator_same_seed_gives_identical_frames(sim: ClickSimulation) -> None:
    again = simulate_clicks(SMALL)
    pd.testing.assert_frame_equal(sim.events, again.events)
    pd.testing.assert_frame_equal(sim.sessions, again.sessions)
    other = simulate_clicks(ClickSimulatorConfig(n_users=300, n_days=10, seed=6))
    assert not other.events["event_time"].equals(sim.events["event_time"])


def test_click_simulator_events_are_valid_and_in_time_order(sim: ClickSimulation) -> None:
    events = sim.events
    assert tuple(events.columns) == EVENT_COLUMNS
    assert events["event_id"].is_unique
    order = list(zip(events["event_time"], events["event_id"], strict=True))
    assert order == sorted(order)
    for record in events.sample(500, random_state=1).to_dict("records"):
        doc = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}
        parse_click(json.dumps(doc).encode())  # raises on any invalid field


def test_click_simulator_sessions_are_separated_and_purchases_follow_cart_adds(
    sim: ClickSimulation,
) -> None:
    events = sim.events.sort_values(["user_id", "event_time", "event_id"])
    bounds = events.groupby(["user_id", "session_id"])["event_time"].agg(["min", "max"])
    for _, spans in bounds.sort_values("min").groupby(level="user_id"):
        starts, ends = spans["min"].to_numpy(), spans["max"].to_numpy()
        assert (starts[1:] - ends[:-1] >= SESSION_GAP_S * 1000).all()
    for _, session in events.groupby("session_id"):
        kinds = list(session["event_type"])
        assert kinds[0] == "page_view"
        if "purchase" in kinds:
            assert "add_to_cart" in kinds[: kinds.index("purchase")]
    assert set(sim.sessions["segment"]) == {
        "browser",
        "intent_buyer",
        "cart_abandoner",
        "returning_buyer",
    }


def test_click_simulator_ground_truth_matches_the_outcomes(sim: ClickSimulation) -> None:
    sessions = sim.sessions
    p = sessions["purchase_probability"]
    assert ((p > 0) & (p < 1)).all()
    assert abs(sessions["purchased"].mean() - p.mean()) < 0.02
    by_segment = sessions.groupby("segment")["purchased"].mean()
    assert by_segment["intent_buyer"] > 3 * by_segment["browser"]
    bought = sim.events[sim.events["event_type"] == "purchase"]["session_id"].unique()
    assert set(bought) == set(sessions.loc[sessions["purchased"], "session_id"])
