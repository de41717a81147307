"""The clickstream store is exact out of order: late, same-millisecond and duplicated events.

Each result is checked against a brute-force reference over what the store holds at that
moment (the contract of `kestrel.click_features`: the aggregates as of the event, over the
stored events), on a standalone redis-server and on a 3-master cluster.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
import redis
from redis.cluster import RedisCluster

from kestrel.adapters.redis_clicks import RedisClickStore
from kestrel.adapters.redis_scripts import LATE_SLACK_MS
from kestrel.click_events import ClickEvent, ClickType
from kestrel.click_features import (
    MONTH_MS,
    VIEW_WINDOWS,
    ClickAggregates,
    SessionAggregates,
)
from kestrel.features import DAY_MS, cents

START_MS = 1_780_272_000_000  # 2026-06-01T00:00:00Z
VIEWS = {ClickType.PAGE_VIEW, ClickType.PRODUCT_VIEW}
DELTA = {ClickType.ADD_TO_CART: 1, ClickType.REMOVE_FROM_CART: -1}


@pytest.fixture(params=["standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisClickStore]:
    """The store on a standalone redis-server and on a cluster, emptied before and after."""
    client: redis.Redis | RedisCluster
    if request.param == "cluster":
        client = RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    client.flushall()
    yield RedisClickStore(client)
    client.flushall()
    client.close()


@dataclass
class Reference:
    """What the store holds, and the aggregates it must answer, by brute force."""

    stored: dict[str, ClickEvent] = field(default_factory=dict)

    def aggregates(self, e: ClickEvent, virtual: bool) -> ClickAggregates:
        """The aggregates of `e` over the stored events (and `e` itself when `virtual`)."""
        rows = [r for r in self.stored.values() if r.user_id == e.user_id]
        if virtual:
            rows.append(e)
        at = (e.event_time_ms, e.event_id)
        upto = [r for r in rows if (r.event_time_ms, r.event_id) <= at]

        def count(kinds: set[ClickType], width: int) -> int:
            since = e.event_time_ms - width
            return sum(1 for r in upto if r.event_type in kinds and r.event_time_ms > since)

        widths = [w for _, w in VIEW_WINDOWS]
        month = [r for r in upto if r.event_time_ms > e.event_time_ms - MONTH_MS]
        buys = sorted(
            (r.event_time_ms, r.event_id)
            for r in upto
            if r.event_type is ClickType.PURCHASE and r.event_id != e.event_id
        )
        last = buys[-1][0] if buys and buys[-1][0] > e.event_time_ms - MONTH_MS else None
        session = [r for r in upto if r.session_id == e.session_id]
        return ClickAggregates(
            views=tuple(count(VIEWS, w) for w in widths),
            product_views=tuple(count({ClickType.PRODUCT_VIEW}, w) for w in [*widths, MONTH_MS]),
            price_cents_30d=sum(
                cents(r.price or 0.0) for r in month if r.event_type is ClickType.PRODUCT_VIEW
            ),
            purchases_30d=sum(1 for r in month if r.event_type is ClickType.PURCHASE),
            last_purchase_ms=last,
            session=SessionAggregates(
                events=len(session),
                products=len({r.product_id for r in session if r.product_id}),
                categories=len({r.category for r in session if r.category}),
                cart_net=sum(DELTA.get(r.event_type, 0) for r in session),
                start_ms=min(r.event_time_ms for r in session),
            ),
        )


def _event(rng: random.Random, n: int, time: int) -> ClickEvent:
    kind = rng.choice(list(ClickType))
    user = f"U{rng.randrange(4)}"
    session = f"{user}-S{rng.randrange(8)}"
    if kind is ClickType.PAGE_VIEW:
        return ClickEvent(f"E{rng.randrange(10**6):06d}-{n}", user, session, kind, time)
    product = rng.randrange(12)
    return ClickEvent(
        f"E{rng.randrange(10**6):06d}-{n}", user, session, kind, time,
        product_id=f"P{product}", category=f"cat{product % 4}",
        price=round(rng.uniform(0.5, 300), 2),
    )  # fmt: skip


def arrivals(seed: int) -> list[ClickEvent]:
    """Events in arrival order: late by up to 3 days, ties at one millisecond, duplicates."""
    rng = random.Random(seed)
    events: list[ClickEvent] = []
    for n in range(700):
        time = START_MS + rng.randrange(0, 40 * DAY_MS, 7_000)
        if n % 3 == 0 and events:  # near another event: the short windows fill up
            time = rng.choice(events).event_time_ms + rng.choice([0, 0, 1, 60_000, 1_800_000])
        events.append(_event(rng, n, time))
    order = sorted(
        events,
        key=lambda e: e.event_time_ms + (rng.randrange(3 * DAY_MS) if rng.random() < 0.2 else 0),
    )
    stream: list[ClickEvent] = []
    for i, event in enumerate(order):
        stream.append(event)
        if i % 11 == 0 and i > 30:
            stream.append(order[i - rng.randrange(1, 30)])  # a duplicate after later events
    return stream


@pytest.mark.parametrize("seed", [3, 4])
def test_click_store_is_exact_for_late_tied_and_duplicated_events(
    store: RedisClickStore, seed: int
) -> None:
    stream = arrivals(seed)
    ref = Reference()
    late = ties = 0
    for position, event in enumerate(stream):
        mine = [r for r in ref.stored.values() if r.user_id == event.user_id]
        late += any(r.event_time_ms > event.event_time_ms for r in mine)
        ties += any(r.event_time_ms == event.event_time_ms for r in mine)
        duplicate = event.event_id in ref.stored
        ref.stored[event.event_id] = event
        (got,) = store.apply_clicks([event])
        assert not isinstance(got, Exception)
        assert got.applied is not duplicate, event
        assert got.aggregates == ref.aggregates(event, virtual=False), (position, event)
    assert late > 100 and ties > 20  # the late and tie paths run, not only appends
    # Previews are exact back to LATE_SLACK_MS before the user's newest event (retention).
    newest = {e.user_id: e.event_time_ms for e in sorted(stream, key=lambda e: e.event_time_ms)}
    recent = [e for e in ref.stored.values() if e.event_time_ms > newest[e.user_id] - LATE_SLACK_MS]
    assert len(recent) > 50
    for event, preview in zip(recent, store.preview_clicks(recent), strict=True):
        assert not isinstance(preview, Exception)
        assert preview == ref.aggregates(event, virtual=False), event
    rng = random.Random(seed + 100)
    probes = [_event(rng, 10_000 + i, 0) for i in range(80)]
    probes = [
        replace(e, event_time_ms=newest[e.user_id] - LATE_SLACK_MS + i * 3_600_007)
        for i, e in enumerate(probes)
    ]
    for event, preview in zip(probes, store.preview_clicks(probes), strict=True):
        assert not isinstance(preview, Exception)
        assert preview == ref.aggregates(event, virtual=True), event


def test_click_store_one_user_repeated_in_a_batch_is_exact(store: RedisClickStore) -> None:
    rng = random.Random(9)
    batch = [_event(rng, i, START_MS + (i // 3) * 20_000) for i in range(400)]
    batch = [
        ClickEvent(e.event_id, "U-hot", f"S{i // 40}", e.event_type, e.event_time_ms,
                   e.product_id, e.category, e.price)
        for i, e in enumerate(batch)
    ]  # fmt: skip
    ref = Reference()
    for event, got in zip(batch, store.apply_clicks(batch), strict=True):
        ref.stored[event.event_id] = event
        assert not isinstance(got, Exception)
        assert got.applied
        assert got.aggregates == ref.aggregates(event, virtual=False)


def test_click_store_an_event_id_counts_once_even_with_another_time(
    store: RedisClickStore,
) -> None:
    first = ClickEvent("E-1", "U-1", "S-1", ClickType.PURCHASE, START_MS, "P1", "cat1", 10.0)
    moved = ClickEvent("E-1", "U-1", "S-1", ClickType.PURCHASE, START_MS + 5, "P1", "cat1", 10.0)
    (a,) = store.apply_clicks([first])
    (b,) = store.apply_clicks([moved])
    assert not isinstance(a, Exception) and not isinstance(b, Exception)
    assert a.applied and not b.applied
    later = ClickEvent("E-2", "U-1", "S-1", ClickType.PAGE_VIEW, START_MS + 60_000)
    (c,) = store.apply_clicks([later])
    assert not isinstance(c, Exception)
    assert c.aggregates.purchases_30d == 1 and c.aggregates.session.events == 2
    assert c.aggregates.last_purchase_ms == START_MS


def _hgetall_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def test_click_store_replay_in_a_long_session_reads_only_its_own_entry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    store, rng, ref = RedisClickStore(client), random.Random(5), Reference()
    session = [
        replace(_event(rng, i, START_MS + i * 1_000), user_id="U-long", session_id="S-long")
        for i in range(300)
    ]
    for event in session:
        ref.stored[event.event_id] = event
    assert all(not isinstance(r, Exception) for r in store.apply_clicks(session))
    older = session[40:60]  # a retried batch: none of them the session's newest
    client.config_resetstat()
    replies = store.apply_clicks(older)
    assert _hgetall_calls(client) == 0  # answered from each event's own entry
    for event, got in zip(older, replies, strict=True):
        assert not isinstance(got, Exception) and not got.applied
        assert got.aggregates == ref.aggregates(event, virtual=False), event
    # A late event before them changes their answers: the replays count the session again.
    late = replace(_event(rng, 999, START_MS + 45_500), user_id="U-long", session_id="S-long")
    ref.stored[late.event_id] = late
    (applied,) = store.apply_clicks([late])
    assert not isinstance(applied, Exception) and applied.applied
    client.config_resetstat()
    replies = store.apply_clicks(older)
    assert _hgetall_calls(client) == len(older)
    for event, got in zip(older, replies, strict=True):
        assert not isinstance(got, Exception) and not got.applied
        assert got.aggregates == ref.aggregates(event, virtual=False), event
    client.flushall()
    client.close()
