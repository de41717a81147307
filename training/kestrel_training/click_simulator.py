"""A seeded, deterministic clickstream simulator with a known purchase probability per session.

Users belong to one of four behavioural segments (`SEGMENTS`): *browsers* view a lot and
rarely buy, *intent buyers* view little and often buy, *cart abandoners* fill carts and
mostly leave, *returning buyers* come back often and buy more the more they bought lately.
Each user has one to three favourite categories; products belong to categories, and a
product's price is log-normal around its category's price level.

A user's sessions start after exponential gaps (the segment's mean), never within
`SESSION_GAP_S` of the previous session's last event. A session opens with a page view,
then goes on with page and product views, cart adds and removes, each after a log-normal
gap (median `EVENT_GAP_MEDIAN_S`). Before its first event each session draws its *true
purchase probability* (`sessions.purchase_probability`): a logistic function of the
segment, the user's taste for buying, the session's planned length and, for returning
buyers, their purchases of the last 30 days. The events before the purchase depend on that
probability, never on whether the session then buys; a buying session ends with one
purchase per item in its cart (adding one first if the cart is empty). The probability is
the ground truth a model's quality is judged against.

Everything is drawn from one `numpy.random.SeedSequence(config.seed)`: the catalogue and
the users from their own streams, each user's sessions from that user's own stream, so the
same seed gives identical frames. ``python -m kestrel_training.click_simulator --out DIR``
writes ``events.parquet`` and ``sessions.parquet``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SESSION_GAP_S = 1_800
EVENT_GAP_MEDIAN_S = 25.0
PURCHASE_LOOKBACK_MS = 30 * 86_400_000
EVENT_COLUMNS = (
    "event_id",
    "user_id",
    "session_id",
    "event_type",
    "product_id",
    "category",
    "price",
    "event_time",
)
SESSION_COLUMNS = (
    "session_id",
    "user_id",
    "segment",
    "start_time",
    "events",
    "purchase_probability",
    "purchased",
)


@dataclass(frozen=True)
class Segment:
    """How one behavioural segment browses and buys."""

    name: str
    share: float
    sessions_per_day: float
    mean_views: float  # views after the landing page (Poisson mean)
    product_view_share: float
    add_rate: float  # P(add to cart) after a product view
    remove_rate: float  # P(remove an item) after an add
    base_logit: float  # purchase logit before session and user effects


SEGMENTS: tuple[Segment, ...] = (
    Segment("browser", 0.40, 1.2, 9.0, 0.55, 0.04, 0.30, -4.0),
    Segment("intent_buyer", 0.20, 0.5, 4.0, 0.85, 0.35, 0.10, -0.6),
    Segment("cart_abandoner", 0.25, 0.8, 6.0, 0.75, 0.45, 0.40, -2.8),
    Segment("returning_buyer", 0.15, 0.9, 5.0, 0.80, 0.25, 0.15, -2.0),
)


@dataclass(frozen=True)
class ClickSimulatorConfig:
    """Parameters of one clickstream simulation."""

    n_users: int = 2000
    n_days: int = 14
    n_products: int = 600
    n_categories: int = 24
    start_date: str = "2026-06-01"
    seed: int = 0

    @property
    def start_ms(self) -> int:
        """Midnight UTC of `start_date` in epoch milliseconds."""
        return int(pd.Timestamp(self.start_date, tz="UTC").value // 1_000_000)


@dataclass
class ClickSimulation:
    """The simulator's frames: events in (event_time, event_id) order, sessions, products."""

    config: ClickSimulatorConfig
    events: pd.DataFrame
    sessions: pd.DataFrame
    products: pd.DataFrame


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _catalogue(config: ClickSimulatorConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Products with their category and price (log-normal around the category's level)."""
    level = rng.lognormal(mean=3.3, sigma=0.8, size=config.n_categories)
    category = rng.integers(0, config.n_categories, size=config.n_products)
    price = np.round(level[category] * rng.lognormal(0.0, 0.35, size=config.n_products), 2)
    return pd.DataFrame(
        {
            "product_id": [f"P{i:05d}" for i in range(config.n_products)],
            "category": [f"cat{c:03d}" for c in category],
            "price": np.maximum(price, 0.5),
        }
    )


class _User:
    """One user's state while their sessions are drawn."""

    def __init__(self, index: int, segment: Segment, rng: np.random.Generator, cats: int) -> None:
        self.user_id = f"U{index:06d}"
        self.segment = segment
        self.rng = rng
        self.taste = float(rng.normal(0.0, 0.6))
        self.favourites = rng.choice(cats, size=int(rng.integers(1, 4)), replace=False)
        self.purchases: list[int] = []


@dataclass(frozen=True)
class _Catalogue:
    """The products as plain lists (fast to index per event) and per category."""

    ids: list[str]
    categories: list[str]
    prices: list[float]
    by_category: list[np.ndarray[Any, np.dtype[np.int64]]]


def _session(
    user: _User, number: int, start_ms: int, shop: _Catalogue, rows: list[tuple[Any, ...]]
) -> tuple[int, tuple[Any, ...]]:
    """Draw one session's events into `rows`; return its last event time and its row."""
    rng, seg = user.rng, user.segment
    session_id = f"{user.user_id}-S{number:04d}"
    views = int(rng.poisson(seg.mean_views))
    recent = sum(1 for t in user.purchases if t > start_ms - PURCHASE_LOOKBACK_MS)
    logit = seg.base_logit + user.taste + 0.08 * min(views, 15)
    if seg.name == "returning_buyer":
        logit += 0.6 * min(recent, 4)
    p = _sigmoid(logit)
    t = start_ms
    cart: list[int] = []
    events: list[tuple[str, int | None]] = [("page_view", None)]
    for _ in range(views):
        if rng.random() < seg.product_view_share:
            if rng.random() < 0.7:
                pool = shop.by_category[int(user.favourites[rng.integers(0, len(user.favourites))])]
            else:
                pool = shop.by_category[int(rng.integers(0, len(shop.by_category)))]
            if len(pool):
                product = int(pool[rng.integers(0, len(pool))])
            else:
                product = int(rng.integers(0, len(shop.ids)))
            events.append(("product_view", product))
            # Cart behaviour follows the planned probability, never the outcome.
            if rng.random() < seg.add_rate * (0.5 + p):
                events.append(("add_to_cart", product))
                cart.append(product)
                if rng.random() < seg.remove_rate:
                    events.append(("remove_from_cart", cart.pop(int(rng.integers(0, len(cart))))))
        else:
            events.append(("page_view", None))
    purchased = bool(rng.random() < p)
    if purchased:
        if not cart:
            viewed = [prod for kind, prod in events if kind == "product_view" and prod is not None]
            pick = viewed[-1] if viewed else int(rng.integers(0, len(shop.ids)))
            events.append(("add_to_cart", pick))
            cart.append(pick)
        events += [("purchase", product) for product in cart]
    gaps = rng.lognormal(math.log(EVENT_GAP_MEDIAN_S), 0.9, size=len(events))
    for index, (kind, item) in enumerate(events):
        if index:
            t += max(1, int(gaps[index] * 1000))
        event_id = f"{session_id}-E{index:03d}"
        if item is None:
            rows.append((event_id, user.user_id, session_id, kind, None, None, None, t))
        else:
            rows.append(
                (event_id, user.user_id, session_id, kind, shop.ids[item],
                 shop.categories[item], shop.prices[item], t)
            )  # fmt: skip
        if kind == "purchase":
            user.purchases.append(t)
    session = (session_id, user.user_id, seg.name, start_ms, len(events), p, purchased)
    return t, session


def simulate_clicks(config: ClickSimulatorConfig | None = None) -> ClickSimulation:
    """Run one simulation (deterministic for a given config)."""
    config = config or ClickSimulatorConfig()
    seeds = np.random.SeedSequence(config.seed).spawn(3)
    catalogue_rng, users_rng = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    products = _catalogue(config, catalogue_rng)
    codes = products["category"].str[3:].astype(int).to_numpy()
    shop = _Catalogue(
        ids=list(products["product_id"]),
        categories=list(products["category"]),
        prices=[float(p) for p in products["price"]],
        by_category=[np.flatnonzero(codes == c) for c in range(config.n_categories)],
    )
    shares = np.array([s.share for s in SEGMENTS])
    segment_of = users_rng.choice(len(SEGMENTS), size=config.n_users, p=shares / shares.sum())
    user_seeds = seeds[2].spawn(config.n_users)
    end_ms = config.start_ms + config.n_days * 86_400_000
    rows: list[tuple[Any, ...]] = []
    sessions: list[tuple[Any, ...]] = []
    for index in range(config.n_users):
        user = _User(
            index,
            SEGMENTS[segment_of[index]],
            np.random.default_rng(user_seeds[index]),
            config.n_categories,
        )
        mean_gap_ms = 86_400_000 / user.segment.sessions_per_day
        t = config.start_ms + int(user.rng.exponential(mean_gap_ms))
        number = 0
        while t < end_ms:
            last, session = _session(user, number, t, shop, rows)
            sessions.append(session)
            number += 1
            t = last + SESSION_GAP_S * 1000 + int(user.rng.exponential(mean_gap_ms))
    events = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    events = events.sort_values(["event_time", "event_id"], kind="stable").reset_index(drop=True)
    return ClickSimulation(
        config=config,
        events=events,
        sessions=pd.DataFrame(sessions, columns=list(SESSION_COLUMNS)),
        products=products,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: simulate and write events.parquet and sessions.parquet to --out."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.click_simulator")
    parser.add_argument("--out", required=True)
    parser.add_argument("--users", type=int, default=ClickSimulatorConfig.n_users)
    parser.add_argument("--days", type=int, default=ClickSimulatorConfig.n_days)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sim = simulate_clicks(
        ClickSimulatorConfig(n_users=args.users, n_days=args.days, seed=args.seed)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sim.events.to_parquet(out / "events.parquet", index=False)
    sim.sessions.to_parquet(out / "sessions.parquet", index=False)
    rate = sim.sessions["purchased"].mean() if len(sim.sessions) else 0.0
    print(f"{len(sim.events):,} events, {len(sim.sessions):,} sessions, {rate:.1%} bought")
    return 0


if __name__ == "__main__":
    sys.exit(main())
