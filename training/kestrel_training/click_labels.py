"""The propensity label and the point-in-time training table of the clickstream.

Label (`purchase_labels`), for an event of user u at time t (epoch ms):

    1  if u has a ``purchase`` event at a time p with  t < p <= t + LABEL_HORIZON_MS
    0  otherwise

Strictly after: a purchase at the event's own millisecond (the event itself when it is a
purchase, or another one in the same millisecond) does not count; one exactly 30 minutes
later does. Any session of the user counts, not only the event's. Event ids are counted
once (the first row of an id), as the features count them.

A label is only known once its window has passed: rows with t + LABEL_HORIZON_MS after
`observed_until_ms` (the end of what the log or simulation covers) are censored and
dropped, never labelled 0.

Point in time (`click_dataset`): each row's features are `click_offline_features`, which
see only the user's events up to the row in (time, event id) order, the same values the
stream computes; the label is the only column that looks ahead. The time split
(`time_split`) keeps a training row only when its whole label window closes before the
first test day, so no training label is read from the test period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kestrel.click_features import CLICK_FEATURE_NAMES
from kestrel.features import DAY_MS, MINUTE_MS
from kestrel_training.click_offline import click_offline_features

LABEL_HORIZON_MS = 30 * MINUTE_MS
TARGET = "purchased_30min"
CEILING = "true_probability"
ID_COLUMNS = ["event_id", "user_id", "session_id", "event_type", "event_time"]


def purchase_labels(events: pd.DataFrame, horizon_ms: int = LABEL_HORIZON_MS) -> pd.DataFrame:
    """event_id, user_id, event_time and the label of every distinct event (rule above)."""
    frame = events[["event_id", "user_id", "event_type", "event_time"]]
    frame = frame.drop_duplicates("event_id", keep="first").reset_index(drop=True)
    times = frame["event_time"].to_numpy(dtype=np.int64)
    labels = np.zeros(len(frame), dtype=np.int8)
    buys = frame[frame["event_type"] == "purchase"]
    buy_times = {
        user: np.sort(group.to_numpy(dtype=np.int64))
        for user, group in buys.groupby("user_id", sort=False)["event_time"]
    }
    for user, rows in frame.groupby("user_id", sort=False).indices.items():
        bought = buy_times.get(user)
        if bought is None:
            continue
        t = times[rows]
        # The first purchase strictly after t; the label is whether it falls in the window.
        nxt = np.searchsorted(bought, t, side="right")
        has = nxt < len(bought)
        first = np.where(has, bought[np.minimum(nxt, len(bought) - 1)], 0)
        labels[rows] = (has & (first <= t + horizon_ms)).astype(np.int8)
    out = frame[["event_id", "user_id", "event_time"]].copy()
    out[TARGET] = labels
    return out


def click_dataset(
    events: pd.DataFrame,
    observed_until_ms: int,
    sessions: pd.DataFrame | None = None,
    horizon_ms: int = LABEL_HORIZON_MS,
) -> pd.DataFrame:
    """Point-in-time rows: ids, CLICK_FEATURE_NAMES, the label, and (from `sessions`) the
    simulator's true purchase probability; censored rows dropped; (time, id) order."""
    features = click_offline_features(events)
    ids = events[ID_COLUMNS].drop_duplicates("event_id", keep="first")
    labels = purchase_labels(events, horizon_ms)[["event_id", TARGET]]
    table = ids.merge(features, on="event_id", validate="one_to_one")
    table = table.merge(labels, on="event_id", validate="one_to_one")
    if sessions is not None:
        truth = sessions[["session_id", "purchase_probability"]].rename(
            columns={"purchase_probability": CEILING}
        )
        table = table.merge(truth, on="session_id", how="left", validate="many_to_one")
    table = table[table["event_time"] + horizon_ms <= observed_until_ms]
    table = table.sort_values(["event_time", "event_id"], kind="stable").reset_index(drop=True)
    table["day"] = (table["event_time"] // DAY_MS).astype(np.int64)
    return table


@dataclass(frozen=True)
class TimeSplit:
    """Train on the days before `test_start_ms`, test on the rows from it on."""

    test_start_ms: int
    horizon_ms: int = LABEL_HORIZON_MS

    def describe(self) -> dict[str, str]:
        """The split's boundaries as ISO-8601 UTC strings."""
        start = pd.Timestamp(self.test_start_ms, unit="ms", tz="UTC")
        last = pd.Timestamp(self.test_start_ms - self.horizon_ms, unit="ms", tz="UTC")
        return {
            "train_rows_until": last.isoformat(),
            "test_start": start.isoformat(),
        }


def time_split(table: pd.DataFrame, split: TimeSplit) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): train rows whose label window closes by the test start, test rows
    from the test start on."""
    times = table["event_time"]
    train = table[times + split.horizon_ms <= split.test_start_ms]
    test = table[times >= split.test_start_ms]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def feature_matrix(table: pd.DataFrame) -> np.ndarray:
    """The float32 feature matrix in CLICK_FEATURE_NAMES order."""
    return np.ascontiguousarray(table[list(CLICK_FEATURE_NAMES)].to_numpy(dtype=np.float32))
