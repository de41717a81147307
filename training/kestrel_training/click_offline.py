"""Offline, point-in-time clickstream features: the aggregates of `kestrel.click_features`.

Same definitions as the online store (`kestrel.adapters.redis_clicks`), computed with
numpy and pandas from a whole event frame at once: events in (user, time, event id) order,
windows by binary search over each user's times and prefix sums, sessions by cumulative
counts of first occurrences. An event id that appears twice counts once (its first row).
`click_feature_vector` (shared) turns the aggregates into the values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kestrel.click_features import (
    CART_DELTA,
    CLICK_FEATURE_NAMES,
    MONTH_MS,
    VIEW_KINDS,
    VIEW_WINDOWS,
    ClickAggregates,
    SessionAggregates,
    click_feature_vector,
)
from kestrel.features import cents

CLICK_COLUMNS = [
    "event_id",
    "user_id",
    "session_id",
    "event_type",
    "product_id",
    "category",
    "price",
    "event_time",
]
Ints = np.ndarray[tuple[int, ...], np.dtype[np.int64]]


def _windowed(t: Ints, flags: Ints, width: int) -> Ints:
    """Per row of one user (time order): the sum of `flags` over rows with time > t - width
    up to and including the row."""
    prefix = np.concatenate(([0], np.cumsum(flags)))
    first = np.searchsorted(t, t - width, side="right")
    return prefix[np.arange(len(t)) + 1] - prefix[first]


def click_aggregates(events: pd.DataFrame) -> tuple[pd.DataFrame, list[ClickAggregates]]:
    """The events once each (first row of an id) in (user, time, id) order, and their
    aggregates in that order."""
    frame = events[CLICK_COLUMNS].drop_duplicates("event_id", keep="first")
    frame = frame.sort_values(["user_id", "event_time", "event_id"], kind="stable")
    frame = frame.reset_index(drop=True)
    n = len(frame)
    kinds = frame["event_type"].to_numpy()
    times = frame["event_time"].to_numpy(dtype=np.int64)
    is_view = np.isin(kinds, list(VIEW_KINDS)).astype(np.int64)
    is_pview = (kinds == "product_view").astype(np.int64)
    is_buy = (kinds == "purchase").astype(np.int64)
    prices = frame["price"].to_numpy(dtype=float)
    price_cents = np.array([cents(p) if p == p else 0 for p in prices], dtype=np.int64)
    nw = len(VIEW_WINDOWS)
    views = np.zeros((n, nw), dtype=np.int64)
    pviews = np.zeros((n, nw + 1), dtype=np.int64)
    price_30 = np.zeros(n, dtype=np.int64)
    buys_30 = np.zeros(n, dtype=np.int64)
    last_buy = np.full(n, -1, dtype=np.int64)
    users = frame["user_id"].to_numpy()
    bounds = np.flatnonzero(users[1:] != users[:-1]) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        t = times[lo:hi]
        for w, (_, width) in enumerate(VIEW_WINDOWS):
            views[lo:hi, w] = _windowed(t, is_view[lo:hi], width)
            pviews[lo:hi, w] = _windowed(t, is_pview[lo:hi], width)
        pviews[lo:hi, nw] = _windowed(t, is_pview[lo:hi], MONTH_MS)
        price_30[lo:hi] = _windowed(t, price_cents[lo:hi] * is_pview[lo:hi], MONTH_MS)
        buys_30[lo:hi] = _windowed(t, is_buy[lo:hi], MONTH_MS)
        # The last purchase strictly before each row: a running max of purchase times, shifted.
        bought = np.where(is_buy[lo:hi] == 1, t, -1)
        before = np.r_[-1, np.maximum.accumulate(bought)[:-1]]
        last_buy[lo:hi] = np.where((before >= 0) & (before > t - MONTH_MS), before, -1)
    session = frame.groupby(["user_id", "session_id"], sort=False)
    s_events = session.cumcount().to_numpy() + 1
    s_start = session["event_time"].cummin().to_numpy()
    delta = frame["event_type"].map(CART_DELTA).fillna(0).astype(np.int64)
    s_cart = delta.groupby([frame["user_id"], frame["session_id"]], sort=False).cumsum()
    s_products = _distinct_so_far(frame, "product_id")
    s_categories = _distinct_so_far(frame, "category")
    aggregates = [
        ClickAggregates(
            views=tuple(int(v) for v in views[i]),
            product_views=tuple(int(v) for v in pviews[i]),
            price_cents_30d=int(price_30[i]),
            purchases_30d=int(buys_30[i]),
            last_purchase_ms=int(last_buy[i]) if last_buy[i] >= 0 else None,
            session=SessionAggregates(
                events=int(s_events[i]),
                products=int(s_products[i]),
                categories=int(s_categories[i]),
                cart_net=int(s_cart.iloc[i]),
                start_ms=int(s_start[i]),
            ),
        )
        for i in range(n)
    ]
    return frame, aggregates


def _distinct_so_far(frame: pd.DataFrame, column: str) -> Ints:
    """Per row: the distinct non-null values of `column` in its session up to the row."""
    named = frame[column].notna()
    first = named & ~frame.duplicated(["user_id", "session_id", column], keep="first")
    counts = first.astype(np.int64).groupby([frame["user_id"], frame["session_id"]]).cumsum()
    result: Ints = counts.to_numpy(dtype=np.int64)
    return result


def click_offline_features(events: pd.DataFrame) -> pd.DataFrame:
    """The feature table (event_id, then CLICK_FEATURE_NAMES) of every distinct event."""
    frame, aggregates = click_aggregates(events)
    prices = frame["price"].to_numpy(dtype=float)
    rows = [
        click_feature_vector(kind, float(price) if price == price else None, int(time), agg)
        for kind, price, time, agg in zip(
            frame["event_type"], prices, frame["event_time"], aggregates, strict=True
        )
    ]
    table = pd.DataFrame(rows, columns=list(CLICK_FEATURE_NAMES))
    table.insert(0, "event_id", frame["event_id"].to_numpy())
    return table
