"""`kestrel.adapters.redis_wire.send_batch` on a real redis-server: reuse and recovery."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from kestrel.adapters import redis_wire
from kestrel.adapters.redis_wire import send_batch

pytestmark = pytest.mark.integration

PINGS = [("PING",), ("ECHO", "x")]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of its own (its own pool), closed after the test."""
    made = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield made
    made.close()


def _kill(client: redis.Redis, redis_url: str) -> None:
    """Close, from the server's side, the connection `send_batch` keeps for `client`."""
    (connection_id,) = send_batch(client, [("CLIENT", "ID")])
    killer = redis.Redis.from_url(redis_url)
    try:
        assert killer.client_kill_filter(_id=connection_id) == 1
    finally:
        killer.close()


def test_redis_wire_reuses_one_connection_for_sequential_batches(client: redis.Redis) -> None:
    assert send_batch(client, PINGS) == [b"PONG", b"x"]
    first = redis_wire._idle(client.connection_pool)[-1][0]
    for _ in range(20):
        assert send_batch(client, PINGS) == [b"PONG", b"x"]
    idle = redis_wire._idle(client.connection_pool)
    assert len(idle) == 1 and idle[0][0] is first


def test_redis_wire_reconnects_a_connection_closed_while_idle(
    client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill(client, redis_url)
    monkeypatch.setattr(redis_wire, "RECHECK_IDLE_S", 0.0)  # idle "long enough": checked
    assert send_batch(client, PINGS) == [b"PONG", b"x"]


def test_redis_wire_fails_a_batch_on_a_dead_connection_then_recovers(
    client: redis.Redis, redis_url: str
) -> None:
    _kill(client, redis_url)
    with pytest.raises(redis.exceptions.ConnectionError):  # used at once: not rechecked
        send_batch(client, PINGS)
    assert send_batch(client, PINGS) == [b"PONG", b"x"]  # the failed one reconnects


def test_redis_wire_returns_a_script_error_in_its_place(client: redis.Redis) -> None:
    replies = send_batch(client, [("PING",), ("EVAL", "return redis.error_reply('no')", 0)])
    assert replies[0] == b"PONG" and isinstance(replies[1], redis.exceptions.ResponseError)
    assert send_batch(client, PINGS) == [b"PONG", b"x"]


def test_redis_wire_in_flight_reads_batches_in_the_order_they_were_sent(
    client: redis.Redis,
) -> None:
    client.set("not-a-number-key", "x")
    with redis_wire.InFlight(client) as wire:
        wire.send([("ECHO", "a"), ("ECHO", "b")])
        wire.send([("ECHO", "c")])
        wire.send([("INCR", "not-a-number-key"), ("ECHO", "d")])
        assert wire.read() == [b"a", b"b"]
        assert wire.read() == [b"c"]
        third = wire.read()
    assert isinstance(third[0], redis.exceptions.ResponseError) and third[1] == b"d"
    client.delete("not-a-number-key")
    assert send_batch(client, PINGS) == [b"PONG", b"x"]  # the connection went back, reused


def test_redis_wire_in_flight_left_with_replies_unread_drops_its_connection(
    client: redis.Redis,
) -> None:
    with redis_wire.InFlight(client) as wire:
        wire.send([("ECHO", "stale")])
        held = wire._connection
    assert held._sock is None  # disconnected: nobody reads the stale reply
    assert send_batch(client, [("ECHO", "fresh")]) == [b"fresh"]


def test_redis_wire_times_out_as_redis_py_does_then_recovers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            send_batch(client, [("PING",), ("BLPOP", "wire-never-filled", 1)])
        assert send_batch(client, PINGS) == [b"PONG", b"x"]  # the timed-out one reconnects
    finally:
        client.close()


def test_redis_wire_in_flight_skips_the_health_check_while_replies_are_pending(
    redis_url: str,
) -> None:
    """A due health check (a PING, its PONG read next) must not eat a batch's replies."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, health_check_interval=1)
    try:
        assert send_batch(client, PINGS) == [b"PONG", b"x"]
        with redis_wire.InFlight(client) as wire:
            wire._connection.next_health_check = 0.0  # due now
            wire.send([("ECHO", "first")])
            wire._connection.next_health_check = 0.0  # due again, with "first" in flight
            wire.send([("ECHO", "second")])
            assert (wire.read(), wire.read()) == ([b"first"], [b"second"])
            assert wire._connection.next_health_check > 0.0  # the replies count as an answer
    finally:
        client.close()
