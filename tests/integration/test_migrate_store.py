"""migrate-store rebuilds a store written in the layout before entity logs, exactly."""

from __future__ import annotations

import io
import random
from argparse import Namespace

import redis

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Label, Transaction
from kestrel.features import DAY_MS, cents
from kestrel_ops.migrate_store import migrate, run_migrate

START_MS = 1_522_540_800_000


def history(seed: int) -> tuple[list[Transaction], list[Label]]:
    """Forty days of transactions over a few entities, and fraud labels for some."""
    rng = random.Random(seed)
    txs = [
        Transaction(f"M{n:05d}", f"C{rng.randrange(5)}", f"TERM{rng.randrange(4)}",
                    round(rng.uniform(1, 400), 2), START_MS + rng.randrange(0, 40 * DAY_MS, 1000))
        for n in range(700)
    ]  # fmt: skip
    labels = [
        Label(t.transaction_id, t.customer_id, t.terminal_id, True, t.event_time_ms + DAY_MS)
        for t in rng.sample(txs, 60)
    ]
    return txs, labels


def write_old_layout(client: redis.Redis, txs: list[Transaction], labels: list[Label]) -> None:
    """What the store before entity logs kept for these transactions and labels."""
    times = {t.transaction_id: t.event_time_ms for t in txs}
    for t in txs:
        client.zadd(f"kestrel:{{c:{t.customer_id}}}:tx", {t.transaction_id: t.event_time_ms})
        client.hset(f"kestrel:{{c:{t.customer_id}}}:amt", t.transaction_id, cents(t.amount))
        client.zadd(f"kestrel:{{t:{t.terminal_id}}}:tx", {t.transaction_id: t.event_time_ms})
    for label in labels:
        tag = f"kestrel:{{t:{label.terminal_id}}}"
        client.hset(f"{tag}:labels", label.transaction_id, label.label_time_ms)
        client.zadd(f"{tag}:fraud", {label.transaction_id: times[label.transaction_id]})
        client.hset(f"kestrel:{{c:{label.customer_id}}}:frauds", label.transaction_id,
                    label.label_time_ms)  # fmt: skip


def test_migrate_store_rebuilds_the_old_layout_to_what_streaming_gives(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    old = redis.Redis.from_url(f"{base}/3")
    fresh = redis.Redis.from_url(f"{base}/4")
    old.flushdb()
    fresh.flushdb()
    txs, labels = history(7)
    write_old_layout(old, txs, labels)
    streamed = RedisFeatureStore(fresh)
    streamed.apply_labels(labels)
    streamed.apply_transactions(sorted(txs, key=lambda t: (t.event_time_ms, t.transaction_id)))

    out, err = io.StringIO(), io.StringIO()
    assert run_migrate(Namespace(redis_url=None), f"{base}/3", out, err) == 0
    assert "5 customers and 4 terminals rebuilt (1400 transaction entries, 60 fraud labels)" in (
        out.getvalue()
    )
    assert not list(old.scan_iter(match="kestrel:*:tx"))
    assert not list(old.scan_iter(match="kestrel:*:amt"))
    migrated = RedisFeatureStore(old)
    probes = [
        Transaction(f"P{i}", f"C{i % 5}", f"TERM{i % 4}", 12.5, START_MS + i * DAY_MS // 3 + 5)
        for i in range(130)
    ]
    assert migrated.preview_transactions(probes) == streamed.preview_transactions(probes)
    assert migrated.preview_transactions(txs) == streamed.preview_transactions(txs)
    again = migrate(old)
    assert (again.customers, again.terminals) == (0, 0)
    old.flushdb()
    fresh.flushdb()
