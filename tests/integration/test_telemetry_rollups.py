"""Telemetry rollups on a real redis-server: a window read from them equals its seconds summed.

`RedisTelemetry.record` keeps 10-second and minute rollups beside each second's bucket in
the same Lua call; `read` covers a window with the fewest aligned buckets. These tests write
random batches over two hours, then compare every window with the per-second buckets read
one by one and combined, and count the commands an hour-long snapshot costs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kestrel.adapters.redis_telemetry import (
    RedisDriftStatus,
    RedisTelemetry,
    bucket_key,
    cover,
)
from kestrel.telemetry import (
    BUCKET_TTL_S,
    FRESHNESS_MAX,
    MAX_WINDOW_S,
    BatchFigures,
    TelemetryService,
    TelemetryWindow,
    combine,
    events_of,
)
from kestrel_local.services import running_redis

pytestmark = pytest.mark.integration

T0 = 1_795_857_000  # a multiple of 60
SPAN_S = 2 * 3600 + 45  # two hours and a bit of seconds with batches


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """Database 11 of the session's redis-server, flushed before and after."""
    db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/11")
    db.flushdb()
    yield db
    db.flushdb()
    db.close()


def random_batches(rng: random.Random, n: int) -> list[BatchFigures]:
    """`n` batches at random seconds of the span, with random counters, bins and maxima."""
    batches = []
    for _ in range(n):
        applied = rng.randrange(0, 500)
        counters = {
            "applied": applied,
            "duplicates": rng.choice([0, 0, rng.randrange(1, 20)]),
            "poison": rng.choice([0, 0, 0, 1]),
            "batches": 1,
            "decision:approve": applied,
        }
        histograms = {f"freshness:{rng.randrange(89)}": rng.randrange(1, 50) for _ in range(5)}
        histograms |= {f"score:{rng.randrange(20)}": rng.randrange(1, 50) for _ in range(3)}
        maxima = {FRESHNESS_MAX: round(rng.uniform(0.5, 5000.0), 3)} if applied else {}
        second = T0 + rng.randrange(SPAN_S)
        batches.append(BatchFigures(second, counters, histograms, maxima, "7"))
    return batches


def per_second_window(db: redis.Redis, first_s: int, last_s: int) -> TelemetryWindow:
    """The window from the per-second buckets alone, read one by one (the reference)."""
    pipe = db.pipeline(transaction=False)
    for second in range(first_s, last_s + 1):
        pipe.hgetall(bucket_key(second))
    buckets = [{k.decode(): float(v) for k, v in raw.items()} for raw in pipe.execute()]
    return TelemetryWindow(combine(buckets), tuple(events_of(b) for b in buckets))


def test_telemetry_rollups_equal_the_per_second_buckets_summed(client: redis.Redis) -> None:
    rng = random.Random(15)
    store = RedisTelemetry(client)
    batches = random_batches(rng, 1500)
    for batch in batches:
        store.record(batch)
    windows = [(T0, T0 + MAX_WINDOW_S - 1), (T0 + 1, T0 + MAX_WINDOW_S), (T0 + 59, T0 + 3658)]
    windows += [(T0 + SPAN_S - MAX_WINDOW_S, T0 + SPAN_S - 1), (T0 + 7, T0 + 7), (T0, T0 + 59)]
    for _ in range(25):
        length = rng.choice([1, 9, 10, 11, 60, 61, 119, 600, 3599, MAX_WINDOW_S])
        first = T0 - 30 + rng.randrange(SPAN_S - length + 60)
        windows.append((first, first + length - 1))
    for first, last in windows:
        window, totals = store.read(first, last)
        assert window == per_second_window(client, first, last), (first, last)
    whole, totals = store.read(T0, T0 + SPAN_S - 1)
    assert sum(whole.events) == sum(events_of(b.counters) for b in batches) > 0
    assert whole.figures["applied"] == int(totals["applied"])


def test_telemetry_rollups_are_written_with_their_seconds_and_expire(client: redis.Redis) -> None:
    store = RedisTelemetry(client)
    second = T0 + 75  # in the 10 s bucket of T0 + 70 and the minute of T0 + 60
    store.record(BatchFigures(second, {"applied": 3, "duplicates": 1}, {"score:2": 3}, {}))
    store.record(BatchFigures(second + 2, {"applied": 2}, {}, {FRESHNESS_MAX: 9.5}))
    store.record(BatchFigures(second, {"labels": 4}, {}, {}))  # no events: no e: field
    ten, minute = bucket_key(T0 + 70, 10), bucket_key(T0 + 60, 60)
    expected = {
        b"applied": b"5", b"duplicates": b"1", b"labels": b"4", b"score:2": b"3",
        b"freshness_max_ms": b"9.5", f"e:{second}".encode(): b"4",
        f"e:{second + 2}".encode(): b"2",
    }  # fmt: skip
    assert client.hgetall(ten) == client.hgetall(minute) == expected
    assert client.hgetall(bucket_key(second)) == {
        b"applied": b"3",
        b"duplicates": b"1",
        b"labels": b"4",
        b"score:2": b"3",
    }
    for key in (ten, minute, bucket_key(second)):
        assert 0 < client.ttl(key) <= BUCKET_TTL_S
    assert sorted(client.keys("kestrel:{tm}:s*")) == sorted(
        k.encode() for k in (ten, minute, bucket_key(second), bucket_key(second + 2))
    )


def test_telemetry_hour_snapshot_costs_a_bounded_number_of_redis_commands(
    tmp_path: Path,
) -> None:
    # A redis-server of its own, so INFO commandstats counts this test's commands only.
    with running_redis(tmp_path) as server:
        db = redis.Redis.from_url(server.address)
        try:
            store = RedisTelemetry(db)
            for batch in random_batches(random.Random(3), 400):
                store.record(batch)
            costs = []
            for now in (T0 + 3600.5, T0 + 3629.5, T0 + 3658.5, T0 + 7200.5):
                clock = lambda at=now: at  # noqa: E731
                service = TelemetryService(store, drift=RedisDriftStatus(db), clock=clock)
                db.config_resetstat()
                snap = service.snapshot(MAX_WINDOW_S)
                stats = db.info("commandstats")
                calls = {
                    name.removeprefix("cmdstat_"): int(stat["calls"])
                    for name, stat in stats.items()
                    if not name.startswith(("cmdstat_config", "cmdstat_info"))
                }
                assert len(snap.events) == MAX_WINDOW_S
                buckets = len(cover(int(now) - MAX_WINDOW_S + 1, int(now)))
                assert calls == {"hgetall": buckets + 1, "get": 1}  # buckets, totals, drift
                costs.append(sum(calls.values()))
        finally:
            db.close()
    print(f"commands per 1-hour /v1/telemetry snapshot: {costs} (per-second buckets: 3602)")
    assert max(costs) <= 88
