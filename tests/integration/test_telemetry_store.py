"""RedisTelemetry and RedisDriftStatus on a real redis-server and a real Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from kestrel.adapters.redis_telemetry import (
    DRIFT_KEY,
    TOTALS_KEY,
    RedisDriftStatus,
    RedisTelemetry,
    bucket_key,
)
from kestrel.telemetry import BUCKET_TTL_S, BatchFigures, TelemetryService

pytestmark = pytest.mark.integration

SECOND = 1_795_857_312


def figures(second: int, applied: int, peak: float, version: str | None = "2") -> BatchFigures:
    return BatchFigures(
        second,
        {"applied": applied, "duplicates": 0, "batches": 1, "decision:approve": applied},
        {"freshness:30": applied, "score:0": applied},
        {"freshness_max_ms": peak},
        version,
    )


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """Database 10 of the session's redis-server, flushed before and after."""
    db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/10")
    db.flushdb()
    yield db
    db.flushdb()
    db.close()


def test_redis_telemetry_adds_counters_keeps_maxima_and_expires_buckets(
    client: redis.Redis,
) -> None:
    store = RedisTelemetry(client)
    store.record(figures(SECOND, 3, 40.5))
    store.record(figures(SECOND, 2, 12.25, version=None))  # a smaller maximum, no model
    store.record(figures(SECOND + 2, 1, 7.0, version="3"))
    assert client.hgetall(bucket_key(SECOND)) == {
        b"applied": b"5", b"batches": b"2", b"decision:approve": b"5",
        b"freshness:30": b"5", b"score:0": b"5", b"freshness_max_ms": b"40.5",
    }  # fmt: skip
    # (zero counters, here duplicates, are not written)
    assert 0 < client.ttl(bucket_key(SECOND)) <= BUCKET_TTL_S
    assert client.ttl(TOTALS_KEY) == -1  # all time
    totals = client.hgetall(TOTALS_KEY)
    assert totals[b"applied"] == b"6" and totals[b"model_version"] == b"3"
    assert totals[b"last_batch_ms"] == str((SECOND + 2) * 1000).encode()
    assert b"freshness:30" not in totals  # histograms only per second
    window, read_totals = store.read(SECOND, SECOND + 2)
    assert window.events == (5, 0, 1) and window.figures["applied"] == 6.0
    assert window.figures["freshness_max_ms"] == 40.5 and read_totals["applied"] == "6"


def test_redis_telemetry_survives_a_script_flush(client: redis.Redis) -> None:
    store = RedisTelemetry(client)
    store.record(figures(SECOND, 1, 1.0))
    client.script_flush()  # a restarted or failed-over server lost its scripts
    store.record(figures(SECOND, 1, 1.0))
    assert client.hget(bucket_key(SECOND), "applied") == b"2"


def test_telemetry_service_reads_a_decoding_client_too(redis_url: str) -> None:
    db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/10", decode_responses=True)
    db.flushdb()
    try:
        RedisTelemetry(db).record(figures(SECOND, 4, 9.0))
        snap = TelemetryService(RedisTelemetry(db), clock=lambda: SECOND + 0.5).snapshot(10)
        assert snap.counts["applied"] == 4 and snap.model_version == "2"
        assert snap.freshness_max_ms == 9.0
    finally:
        db.flushdb()
        db.close()


def test_redis_drift_status_round_trips_and_ignores_what_is_not_a_status(
    client: redis.Redis,
) -> None:
    drift = RedisDriftStatus(client)
    assert drift.latest() is None
    drift.publish({"status": "watch", "checked_at": "2026-11-29T10:00:00.000Z"}, ttl_s=60)
    assert drift.latest() == {"status": "watch", "checked_at": "2026-11-29T10:00:00.000Z"}
    assert 0 < client.ttl(DRIFT_KEY) <= 60
    with pytest.raises(ValueError, match="status"):
        drift.publish({"state": "drift"})
    for raw in (b"not json", b"[1, 2]", b'{"status": 1}'):
        client.set(DRIFT_KEY, raw)
        assert drift.latest() is None


def test_redis_telemetry_on_a_cluster_keeps_every_key_in_one_slot(redis_cluster_url: str) -> None:
    cluster = RedisCluster.from_url(redis_cluster_url)
    keys = [bucket_key(SECOND + s) for s in range(3)]
    keys += [bucket_key(SECOND // size * size, size) for size in (10, 60)]  # the rollups
    try:
        store = RedisTelemetry(cluster)
        for offset in range(3):
            store.record(figures(SECOND + offset, offset + 1, 5.0))
        assert all(cluster.exists(key) for key in keys)
        slots = {key_slot(key.encode()) for key in keys}
        assert slots == {key_slot(TOTALS_KEY.encode())}
        snap = TelemetryService(store, clock=lambda: SECOND + 2.5).snapshot(3)
        assert snap.events == (1, 2, 3) and snap.totals["batches"] == 3
        hour = TelemetryService(store, clock=lambda: SECOND + 1800.5).snapshot(3600)
        assert sum(hour.events) == 6 and hour.counts["applied"] == 6
    finally:
        for key in keys:
            cluster.delete(key)
        cluster.delete(TOTALS_KEY)
        cluster.close()
