"""Send a batch of Redis commands in one write and read every reply: the hot path's pipeline.

redis-py's pipeline spends more Python per command (argument checks, callbacks, its
bookkeeping) than the stream spends on the rest of an event. On a single node the batch is
packed by hiredis (the reply parser redis-py itself uses), written once on a pooled
connection and read back reply by reply; on a Redis Cluster, redis-py's cluster pipeline
sends each node its commands, each command routed here to its slot's primary by the
client's slot map. (Left to route EVALSHA itself, redis-py 8.1's cluster pipeline asks the
client's default node with ``COMMAND GETKEYS`` for every script call: a round trip per
call, and once that node is down every batch fails without the slot map being read
again, so the client never learns of the failover.)

The whole batch goes in one write. Redis runs each client's buffered commands 16 KB at a
time (about 150 scripts), one client after another, so an API read that arrives while four
stream workers send batches waits behind up to four such chunks. Writing a batch in
windows of N commands, each window's replies read before the next, bounds that wait; it
was measured in `make demo` at 2,000 events/s (`/v1/score` p99 21.6 ms whole, 12.2 ms in
windows of 64, 9.8 ms in windows of 16) and in `make bench` (the engine lost 14% of its
throughput with windows of 64 and a quarter with 16, one round trip per window), and the
engine's throughput won: the stream and the API get separate Lambda functions on AWS.

Connections: redis-py's pool checks a connection for unread data (socket calls) on every
checkout and does its own bookkeeping on every return, more than a whole API read costs
in Python. A single-node batch here takes the connection used last from a short list of
its own instead (one per thread using the client at once, taken from the pool once and kept),
and checks it as the pool would only when it sat idle for over RECHECK_IDLE_S: a server
that closed it meanwhile (restarted, idle timeout) then costs a reconnect, not an error.
A connection that failed is disconnected before it goes back; its next use reconnects.

A reply that is a Redis error comes back in its place as the exception (as a pipeline with
``raise_on_error=False``). A connection error or timeout drops the connection and raises
for the whole batch: the caller fails it and the event source mapping retries it.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import hiredis
from redis import Redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[str | bytes | int | float]
# A connection idle longer than this is checked before use, as the pool would check it.
RECHECK_IDLE_S = 1.0


def send_batch(client: Any, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` in one round trip; return each reply or its `ResponseError`, in order."""
    if not commands:
        return []
    if not isinstance(client, Redis):
        return _cluster_batch(client, commands)
    with InFlight(client) as wire:
        wire.send(commands)
        return wire.read()


class InFlight:
    """One connection with batches written ahead of their replies, read back in order.

    `send` writes a batch and returns at once, so the caller works while Redis runs it;
    `read` returns the replies of the oldest batch not read yet (waiting for them). With
    two batches in flight, Redis runs the next one while the caller handles the replies of
    this one: the stream's client work and Redis's overlap on two cores. Leaving the block
    with replies unread drops the connection (it reconnects on its next use), so nobody
    reads another caller's replies. On a Redis Cluster nothing is sent ahead: `read` sends
    the oldest batch (one sub-pipeline per node) and waits for it.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._counts: list[int] = []  # commands per batch in flight, oldest first
        self._queued: list[Sequence[Command]] = []  # a cluster's batches, not sent yet
        self._single = isinstance(client, Redis)
        self._connection: Any = None

    def __enter__(self) -> InFlight:
        if self._single:
            self._idle = _idle(self._client.connection_pool)
            self._connection = _take(self._client.connection_pool, self._idle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is None:
            return
        if self._counts or exc[0] is not None:
            self._connection.disconnect()  # never reuse a half-read connection
            self._idle.append((self._connection, 0.0))
        else:
            self._idle.append((self._connection, time.monotonic()))
        self._connection = None

    def send(self, commands: Sequence[Command]) -> None:
        """Write one batch (a cluster: queue it for `read`)."""
        if not self._single:
            self._queued.append(commands)
            return
        pack: Any = hiredis.pack_command  # typed for one-element tuples only
        # redis-py's health check (a PING when the connection sat idle past the client's
        # health_check_interval) reads the next reply as its PONG: only with none in flight.
        self._connection.send_packed_command(
            [b"".join(pack(tuple(command)) for command in commands)],
            check_health=not self._counts,
        )
        self._counts.append(len(commands))

    def read(self) -> list[Any]:
        """The replies of the oldest batch not read yet, each reply or its `ResponseError`."""
        if not self._single:
            commands = self._queued.pop(0)
            return _cluster_batch(self._client, commands) if commands else []
        replies = _read_replies(self._connection, self._counts[0])
        del self._counts[0]
        return replies


def _read_replies(connection: Any, count: int) -> list[Any]:
    """`count` replies, an error reply as its `ResponseError`, straight from the hiredis
    reader redis-py gave the connection (redis-py's own read adds two Python calls per
    reply, about a tenth of the stream's Python per event); redis-py reads the socket."""
    parser = connection._parser
    reader = getattr(parser, "_reader", None)
    replies: list[Any] = []
    if not isinstance(parser, _HiredisParser) or reader is None:
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    gets: Any = reader.gets
    fill: Any = parser.read_from_socket
    while len(replies) < count:
        reply = gets()
        if reply is not NOT_ENOUGH_DATA:
            replies.append(reply)
            continue
        try:
            fill()  # redis-py's: a timeout or a closed socket raises as from read_response
        except OSError as exc:  # as Connection.read_response turns them
            raise RedisConnectionError(f"Error while reading from socket: {exc.args}") from exc
    if connection.health_check_interval:  # as Connection.read_response: it answered
        connection.next_health_check = time.monotonic() + connection.health_check_interval
    return replies


def _cluster_batch(client: Any, commands: Sequence[Command]) -> list[Any]:
    """One sub-pipeline per node, each command routed to its slot's primary."""
    pipe = client.pipeline(transaction=False)
    slot_map = client.nodes_manager
    for command in commands:
        primary = slot_map.get_node_from_slot(client.determine_slot(*command))
        pipe.execute_command(*command, target_nodes=primary)
    return list(pipe.execute(raise_on_error=False))


class _Idle(list[tuple[Any, float]]):
    """Connections this module keeps out of a pool, each with when it was last used."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()


_IDLE: weakref.WeakKeyDictionary[Any, _Idle] = weakref.WeakKeyDictionary()
_IDLE_LOCK = threading.Lock()


def _idle(pool: Any) -> _Idle:
    """The pool's idle connections here (none after a fork: a child never uses its parent's)."""
    idle = _IDLE.get(pool)
    if idle is None or idle.pid != os.getpid():
        with _IDLE_LOCK:  # one list per pool, whichever thread comes first
            idle = _IDLE.get(pool)
            if idle is None or idle.pid != os.getpid():
                idle = _IDLE[pool] = _Idle()
    return idle


def _take(pool: Any, idle: _Idle) -> Any:
    """A connection: the last one used (checked as the pool checks it, if it sat idle for
    over RECHECK_IDLE_S), else a new one from the pool, kept here from then on."""
    try:
        connection, used_at = idle.pop()  # atomic under the GIL: threads share the list
    except IndexError:
        return pool.get_connection()
    if time.monotonic() - used_at > RECHECK_IDLE_S:
        try:  # what ConnectionPool.get_connection does: the server may have closed it
            connection.connect()
            if connection.can_read():
                connection.disconnect()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            connection.disconnect()
    return connection
