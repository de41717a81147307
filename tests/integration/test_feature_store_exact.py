"""The constant-work store is exact out of order: late, same-millisecond and duplicated events.

Each result is checked against a brute-force reference over what the store holds at that
moment (the store's contract: the aggregates as of the event time, over the stored events).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Label, Transaction
from kestrel.features import (
    CUSTOMER_LOOKBACK_MS,
    CUSTOMER_WINDOWS,
    DAY_MS,
    TERMINAL_DELAY_MS,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    cents,
    day_start_ms,
)

START_MS = 1_522_540_800_000  # 2018-04-01T00:00:00Z


@pytest.fixture
def store(feature_store: RedisFeatureStore) -> RedisFeatureStore:
    """The store on standalone Redis and on the cluster (conftest's `feature_store`)."""
    return feature_store


@dataclass
class Reference:
    """What the store holds, and the aggregates it must answer, by brute force."""

    stored: dict[str, Transaction] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def customer(self, tx: Transaction, virtual: bool) -> CustomerAggregates:
        """Customer windows over stored rows (and `tx` itself when `virtual`)."""
        rows = [r for r in self.stored.values() if r.customer_id == tx.customer_id]
        if virtual:
            rows.append(tx)
        key = (tx.event_time_ms, tx.transaction_id)
        upto = [r for r in rows if (r.event_time_ms, r.transaction_id) <= key]
        counts, sums = [], []
        for _, w in CUSTOMER_WINDOWS:
            inside = [r for r in upto if r.event_time_ms > tx.event_time_ms - w]
            counts.append(len(inside))
            sums.append(sum(cents(r.amount) for r in inside))
        before = sorted(
            (r.event_time_ms, r.transaction_id)
            for r in upto
            if r.transaction_id != tx.transaction_id
        )
        previous = before[-1][0] if before else None
        if previous is not None and previous <= tx.event_time_ms - CUSTOMER_LOOKBACK_MS:
            previous = None
        return CustomerAggregates(tuple(counts), tuple(sums), previous)

    def terminal(self, tx: Transaction) -> TerminalAggregates:
        """Terminal windows ending D earlier; frauds labelled before the day began."""
        rows = [r for r in self.stored.values() if r.terminal_id == tx.terminal_id]
        high = tx.event_time_ms - TERMINAL_DELAY_MS
        known_before = day_start_ms(tx.event_time_ms)
        counts, frauds = [], []
        for _, w in TERMINAL_WINDOWS:
            inside = [r for r in rows if high - w < r.event_time_ms <= high]
            counts.append(len(inside))
            frauds.append(
                sum(
                    1
                    for r in inside
                    if self.labels.get(r.transaction_id, known_before) < known_before
                )
            )
        return TerminalAggregates(tuple(counts), tuple(frauds))


def arrivals(seed: int) -> tuple[list[Transaction], list[tuple[int, Label]]]:
    """Events in arrival order: late by up to 3 days, ties at one millisecond, duplicates."""
    rng = random.Random(seed)
    events: list[Transaction] = []
    for n in range(900):
        time = START_MS + rng.randrange(0, 40 * DAY_MS, 60_000)
        if n % 7 == 0 and events:
            time = rng.choice(events).event_time_ms  # same millisecond as another event
        events.append(
            Transaction(
                f"T{rng.randrange(10**6):06d}-{n}",
                f"C{rng.randrange(6)}",
                f"TERM{rng.randrange(4)}",
                round(rng.uniform(0, 500), 2),
                time,
            )
        )
    order = sorted(
        events,
        key=lambda e: e.event_time_ms + (rng.randrange(3 * DAY_MS) if rng.random() < 0.2 else 0),
    )
    stream: list[Transaction] = []
    for i, event in enumerate(order):
        stream.append(event)
        if i % 11 == 0 and i > 30:
            stream.append(order[i - rng.randrange(1, 30)])  # a duplicate after later events
    labels = [
        (
            rng.randrange(len(stream)),
            Label(e.transaction_id, e.customer_id, e.terminal_id, True,
                  e.event_time_ms + rng.choice([-DAY_MS, 0, DAY_MS, 5 * DAY_MS])),
        )
        for e in rng.sample(events, 120)
    ]  # fmt: skip
    return stream, labels


@pytest.mark.parametrize("seed", [5, 6])
def test_feature_store_is_exact_for_late_tied_and_duplicated_events(
    store: RedisFeatureStore, seed: int
) -> None:
    stream, labels = arrivals(seed)
    ref = Reference()
    seen_late = 0
    for position, tx in enumerate(stream):
        for _, label in (lab for lab in labels if lab[0] == position):
            assert store.apply_labels([label]) in ([True], [False])
            ref.labels.setdefault(label.transaction_id, label.label_time_ms)
        newest = max((r.event_time_ms for r in ref.stored.values()), default=0)
        seen_late += tx.event_time_ms < newest
        duplicate = tx.transaction_id in ref.stored
        ref.stored[tx.transaction_id] = tx
        (got,) = store.apply_transactions([tx])
        assert not isinstance(got, Exception)
        assert got.applied is not duplicate, tx
        assert got.customer == ref.customer(tx, virtual=False), (position, tx)
        assert got.terminal == ref.terminal(tx), (position, tx)
    assert seen_late > 100  # the late path is exercised, not only appends
    # Everything stored: each transaction's preview is its exact, final window.
    everything = list(ref.stored.values())
    for tx, preview in zip(everything, store.preview_transactions(everything), strict=True):
        assert not isinstance(preview, Exception)
        assert preview.customer == ref.customer(tx, virtual=False), tx
        assert preview.terminal == ref.terminal(tx), tx
    # Previews of new transactions, past and future, count them as virtual rows.
    probes = [
        Transaction(f"P{i}", f"C{i % 6}", f"TERM{i % 4}", 9.99, START_MS + i * DAY_MS // 2 + 7)
        for i in range(90)
    ]
    for tx, preview in zip(probes, store.preview_transactions(probes), strict=True):
        assert not isinstance(preview, Exception)
        assert preview.customer == ref.customer(tx, virtual=True), tx
        assert preview.terminal == ref.terminal(tx), tx
    # Peeks at moments, past and future, without a transaction.
    for i in range(0, 90, 3):
        at = START_MS + i * DAY_MS // 2 + 11
        peek, _ = store.customer_aggregates(f"C{i % 6}", at)
        probe = Transaction("~", f"C{i % 6}", "-", 0.0, at)
        assert peek == ref.customer(probe, virtual=False), at


def test_feature_store_one_entity_repeated_in_a_batch_is_exact(store: RedisFeatureStore) -> None:
    batch = [
        Transaction(f"R{i:04d}", "C-hot", f"TERM{i % 3}", 1.0 + i, START_MS + (i // 4) * 1000)
        for i in range(600)
    ]
    results = store.apply_transactions(batch)
    ref = Reference()
    for tx, got in zip(batch, results, strict=True):
        ref.stored[tx.transaction_id] = tx
        assert not isinstance(got, Exception)
        assert got.customer == ref.customer(tx, virtual=False)


def test_feature_store_drops_entries_past_retention_and_stays_exact(
    store: RedisFeatureStore,
) -> None:
    every = 4 * 3_600_000
    history = [
        Transaction(f"L{i:04d}", "C-long", "TERM-long", 5.0 + i % 7, START_MS + i * every)
        for i in range(400)
    ]
    ref = Reference()
    for start in range(0, len(history), 50):
        chunk = history[start : start + 50]
        for tx, got in zip(chunk, store.apply_transactions(chunk), strict=True):
            ref.stored[tx.transaction_id] = tx
            assert not isinstance(got, Exception)
            assert got.customer == ref.customer(tx, virtual=False)
            assert got.terminal == ref.terminal(tx)
    late = Transaction("L-late", "C-long", "TERM-long", 3.0, history[-1].event_time_ms - 2 * DAY_MS)
    ref.stored[late.transaction_id] = late
    (got,) = store.apply_transactions([late])
    assert not isinstance(got, Exception)
    assert got.customer == ref.customer(late, virtual=False)
    fields: list[bytes] = store._client.hkeys("kestrel:{c:C-long}:log")  # type: ignore[assignment]
    kept = sum(1 for f in fields if f.isdigit())
    assert kept < 33 * 6 + 64 + 2  # 33 days of 6 a day, plus at most one chunk not yet dropped
    terminal: list[bytes] = store._client.hkeys("kestrel:{t:TERM-long}:log")  # type: ignore[assignment]
    kept_at_terminal = sum(1 for f in terminal if f.isdigit())
    assert kept_at_terminal < 40 * 6 + 64 + 2
    assert sum(1 for f in terminal if f.startswith(b"#")) == kept_at_terminal  # ids dropped too


@pytest.mark.parametrize("moved", [1, 2, 3, 6, 7, 31, 62, 63, 64, 150])
def test_feature_store_window_pointer_walks_any_distance_exactly(
    store: RedisFeatureStore, moved: int
) -> None:
    # A burst of 200 transactions a second apart, then one whose 1-hour window (customer)
    # and delayed 1-day window (terminal) drop exactly `moved` of them: the in-order path
    # walks its pointers in rounds of reads, and past 62 entries it takes the general path.
    customer, terminal = f"C-walk-{moved}", f"TERM-walk-{moved}"
    burst = [
        Transaction(f"W{i:04d}", customer, terminal, 1.0 + i % 13, START_MS + i * 1000)
        for i in range(200)
    ]
    ref = Reference()
    for tx, got in zip(burst, store.apply_transactions(burst), strict=True):
        ref.stored[tx.transaction_id] = tx
        assert not isinstance(got, Exception)
    hour_ms = START_MS + 3_600_000 + moved * 1000 - 500
    hour = Transaction("W-hour", customer, "TERM-other", 2.5, hour_ms)
    day_ms = START_MS + TERMINAL_DELAY_MS + DAY_MS + moved * 1000 - 500
    day = Transaction("W-day", "C-other", terminal, 2.5, day_ms)
    for probe in (hour, day):
        (preview,) = store.preview_transactions([probe])
        assert not isinstance(preview, Exception)
        assert preview.customer == ref.customer(probe, virtual=True), probe
        assert preview.terminal == ref.terminal(probe), probe
        (got,) = store.apply_transactions([probe])
        ref.stored[probe.transaction_id] = probe
        assert not isinstance(got, Exception)
        assert got.customer == ref.customer(probe, virtual=False), probe
        assert got.terminal == ref.terminal(probe), probe
    hour_window = [w for _, w in CUSTOMER_WINDOWS].index(3_600_000)
    assert ref.customer(hour, virtual=False).counts[hour_window] == 200 - moved + 1
