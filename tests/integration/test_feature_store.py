"""The online store gives exactly the offline features, replays included, on Redis and Cluster."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from kestrel_training.offline_features import offline_features
from redis.cluster import RedisCluster

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Label, Transaction
from kestrel.features import DAY_MS, FEATURE_NAMES, feature_vector

START_MS = 1_522_540_800_000  # 2018-04-01T00:00:00Z


@pytest.fixture
def store(feature_store: RedisFeatureStore) -> RedisFeatureStore:
    """The store on standalone Redis and on the cluster (conftest's `feature_store`)."""
    return feature_store


def synthetic(
    seed: int, days: int = 50, customers: int = 40, terminals: int = 15
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions with same-millisecond ties, bursts and frauds; labels with varied delays."""
    rng = random.Random(seed)
    rows = []
    for n in range(days * 60):
        day = rng.randrange(days)
        time = START_MS + day * DAY_MS + rng.randrange(0, DAY_MS, 1000)
        rows.append(
            (
                f"T{n:06d}",
                f"C{rng.randrange(customers):03d}",
                f"TERM{rng.randrange(terminals):03d}",
                round(rng.uniform(0, 300), 2),
                time,
            )
        )
    burst_customer, burst_time = "C000", START_MS + 20 * DAY_MS + 3_600_000
    for k in range(12):  # a burst inside 10 minutes, with ties at the same millisecond
        rows.append(
            (f"B{k:03d}", burst_customer, "TERM001", 12.34 + k, burst_time + (k // 3) * 1000)
        )
    tx = pd.DataFrame(
        rows, columns=["transaction_id", "customer_id", "terminal_id", "amount", "event_time"]
    )
    tx = tx.sort_values(["event_time", "transaction_id"]).reset_index(drop=True)
    fraud = tx.sample(frac=0.15, random_state=seed)
    delays = [
        rng.choice([0, 3_600_000, 2 * DAY_MS, 6 * DAY_MS + 1, 9 * DAY_MS])
        for _ in range(len(fraud))
    ]
    labels = pd.DataFrame(
        {
            "transaction_id": fraud["transaction_id"].to_numpy(),
            "customer_id": fraud["customer_id"].to_numpy(),
            "terminal_id": fraud["terminal_id"].to_numpy(),
            "is_fraud": True,
            "label_time": fraud["event_time"].to_numpy() + np.array(delays, dtype=np.int64),
        }
    )
    return tx, labels


def replay_online(
    store: RedisFeatureStore,
    tx: pd.DataFrame,
    labels: pd.DataFrame,
    duplicate_every: int = 0,
    in_parts: bool = False,
) -> dict[str, tuple[float, ...]]:
    """Apply in time order, labels known before each day first; return first-pass vectors.

    Each day goes in chunks of 17 (`in_parts`: one `apply_transactions_in_parts` call per
    day, its chunks as the parts, the stream's way)."""
    vectors: dict[str, tuple[float, ...]] = {}
    label_rows = labels.sort_values("label_time").itertuples(index=False)
    pending = next(label_rows, None)
    for _, day in tx.groupby(tx["event_time"] // DAY_MS, sort=True):
        day_start = int(day["event_time"].iloc[0]) // DAY_MS * DAY_MS
        batch = []
        while pending is not None and pending.label_time < day_start:
            batch.append(
                Label(
                    pending.transaction_id,
                    pending.customer_id,
                    pending.terminal_id,
                    True,
                    int(pending.label_time),
                )
            )
            pending = next(label_rows, None)
        assert all(r is True or r is False for r in store.apply_labels(batch))
        updates = [
            Transaction(
                r.transaction_id, r.customer_id, r.terminal_id, float(r.amount), int(r.event_time)
            )
            for r in day.itertuples(index=False)
        ]
        chunks = [updates[start : start + 17] for start in range(0, len(updates), 17)]
        if duplicate_every:
            chunks = [chunk + chunk[::duplicate_every] for chunk in chunks]
        if in_parts:
            results = list(store.apply_transactions_in_parts(chunks))
        else:
            results = [store.apply_transactions(chunk) for chunk in chunks]
        for chunk, chunk_results in zip(chunks, results, strict=True):
            for update, applied in zip(chunk, chunk_results, strict=True):
                assert not isinstance(applied, Exception)
                vector = feature_vector(
                    update.amount, update.event_time_ms, applied.customer, applied.terminal
                )
                if update.transaction_id in vectors:
                    assert not applied.applied
                    assert vector == vectors[update.transaction_id]
                else:
                    vectors[update.transaction_id] = vector
    return vectors


def assert_same(online: dict[str, tuple[float, ...]], offline: pd.DataFrame) -> None:
    mismatches = []
    for row in offline.itertuples(index=False):
        expected = tuple(row)[1:]
        got = online[row.transaction_id]
        for name, a, b in zip(FEATURE_NAMES, got, expected, strict=True):
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0):
                mismatches.append((row.transaction_id, name, a, b))
    assert mismatches == []


@pytest.mark.parametrize(("seed", "in_parts"), [(1, False), (2, False), (3, True)])
def test_feature_store_online_equals_offline(
    store: RedisFeatureStore, seed: int, in_parts: bool
) -> None:
    tx, labels = synthetic(seed)
    online = replay_online(store, tx, labels, duplicate_every=5 if in_parts else 0,
                           in_parts=in_parts)  # fmt: skip
    offline = offline_features(tx, labels)
    assert len(online) == len(tx)
    assert_same(online, offline)
    terminal_risk = offline["TERMINAL_ID_RISK_30DAY_WINDOW"]
    assert (terminal_risk > 0).sum() > 50  # the label path is exercised, not only zeros
    assert offline["CUSTOMER_ID_NB_TX_10MIN_WINDOW"].max() >= 10  # the burst is seen


def test_feature_store_replays_return_the_same_vector_and_change_nothing(
    store: RedisFeatureStore,
) -> None:
    tx, labels = synthetic(3, days=20)
    online = replay_online(store, tx, labels, duplicate_every=3)
    assert_same(online, offline_features(tx, labels))


def test_feature_store_label_before_its_transaction_still_counts(
    store: RedisFeatureStore,
) -> None:
    t0 = START_MS
    store.apply_labels([Label("X1", "C9", "TERM9", True, t0 + 1000)])
    (first,) = store.apply_transactions([Transaction("X1", "C9", "TERM9", 10.0, t0)])
    assert not isinstance(first, Exception)
    later = t0 + 7 * DAY_MS + 3_600_000
    (applied,) = store.apply_transactions([Transaction("X2", "C9", "TERM9", 5.0, later)])
    assert not isinstance(applied, Exception)
    assert applied.terminal.counts == (1, 1, 1)
    assert applied.terminal.frauds == (1, 1, 1)


def test_feature_store_records_fraud_labels_once_on_terminal_and_card(
    store: RedisFeatureStore,
) -> None:
    fraud = Label("Y1", "C7", "TERM7", True, START_MS)
    genuine = Label("Y2", "C7", "TERM7", False, START_MS)
    assert store.apply_labels([fraud, genuine]) == [True, False]
    assert store.apply_labels([fraud]) == [False]
    client = store._client
    assert client.hgetall("kestrel:{c:C7}:frauds") == {b"Y1": str(START_MS).encode()}
    assert client.zrange("kestrel:{t:TERM7}:labels", 0, -1, withscores=True) == [
        (b"Y1", float(START_MS))
    ]


def test_feature_store_in_parts_reloads_scripts_lost_while_parts_are_in_flight(
    store: RedisFeatureStore,
) -> None:
    """SCRIPT FLUSH while the next parts are sent ahead: NOSCRIPT -> load -> resend, exact."""
    tx, labels = synthetic(5, days=4)
    labels = labels.iloc[0:0]
    updates = [
        Transaction(
            r.transaction_id, r.customer_id, r.terminal_id, float(r.amount), int(r.event_time)
        )
        for r in tx.itertuples(index=False)
    ]
    parts = [updates[start : start + 40] for start in range(0, len(updates), 40)]
    client = store._client
    nodes = (
        [client.get_redis_connection(n) for n in client.get_primaries()]  # type: ignore[no-untyped-call]
        if isinstance(client, RedisCluster)
        else [client]
    )
    online: dict[str, tuple[float, ...]] = {}
    results = store.apply_transactions_in_parts(parts)
    for k, (part, part_results) in enumerate(zip(parts, results, strict=True)):
        if k == 1:  # part 2 is sent already (or queued, on a cluster); part 3 is not
            for node in nodes:
                node.script_flush()
        for update, applied in zip(part, part_results, strict=True):
            assert not isinstance(applied, Exception) and applied.applied
            online[update.transaction_id] = feature_vector(
                update.amount, update.event_time_ms, applied.customer, applied.terminal
            )
    assert len(parts) > 3 and len(online) == len(tx)
    assert_same(online, offline_features(tx, labels))
    for node in nodes:  # loaded again by the store
        assert all(node.script_exists(store._customer.sha, store._terminal.sha))


def test_feature_store_counts_a_fraud_labelled_during_the_day_from_the_next_day_only(
    store: RedisFeatureStore,
) -> None:
    """Labels applied at their own time, among the transactions (as the streams deliver
    them): a fraud whose label comes during a transaction's day does not count for it yet."""
    tx, labels = synthetic(6)
    stream = sorted(
        [(int(r.event_time), 1, r) for r in tx.itertuples(index=False)]
        + [(int(r.label_time), 0, r) for r in labels.itertuples(index=False)],
        key=lambda e: (e[0], e[1]),
    )
    online: dict[str, tuple[float, ...]] = {}
    late = 0
    for _, is_tx, r in stream:
        if not is_tx:
            label = Label(r.transaction_id, r.customer_id, r.terminal_id, True, int(r.label_time))
            assert store.apply_labels([label]) == [True]
            late += int(r.label_time) % DAY_MS > 0
            continue
        update = Transaction(
            r.transaction_id, r.customer_id, r.terminal_id, float(r.amount), int(r.event_time)
        )
        (applied,) = store.apply_transactions([update])
        assert not isinstance(applied, Exception)
        online[update.transaction_id] = feature_vector(
            update.amount, update.event_time_ms, applied.customer, applied.terminal
        )
    assert late > 50  # labels arrive during days, so later transactions of that day see them
    assert_same(online, offline_features(tx, labels))
