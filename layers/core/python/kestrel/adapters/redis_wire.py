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

A reply that is a Redis error comes back in its place as the exception (as a pipeline with
``raise_on_error=False``). A connection error or timeout drops the connection and raises
for the whole batch: the caller fails it and the event source mapping retries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
from redis import Redis
from redis.exceptions import ResponseError

Command = Sequence[str | bytes | int | float]


def send_batch(client: Any, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` in one round trip; return each reply or its `ResponseError`, in order."""
    if not commands:
        return []
    if not isinstance(client, Redis):  # a cluster: one sub-pipeline per node
        pipe = client.pipeline(transaction=False)
        slot_map = client.nodes_manager
        for command in commands:
            primary = slot_map.get_node_from_slot(client.determine_slot(*command))
            pipe.execute_command(*command, target_nodes=primary)
        return list(pipe.execute(raise_on_error=False))
    pack: Any = hiredis.pack_command  # typed for one-element tuples only
    payload = b"".join(pack(tuple(command)) for command in commands)
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        connection.send_packed_command([payload])
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()  # never hand a half-read connection back to the pool
        raise
    finally:
        pool.release(connection)
