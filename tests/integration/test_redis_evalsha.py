"""`kestrel.adapters.redis_evalsha.EvalBatches` on a real redis-server: NOSCRIPT in order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from kestrel.adapters.redis_evalsha import EvalBatches

pytestmark = pytest.mark.integration

PUSH = "return redis.call('RPUSH', KEYS[1], ARGV[1])"
PUSH_TOO = "return redis.call('RPUSH', KEYS[1], ARGV[1]) + 0"  # another SHA, same effect


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of its own, its key removed after the test."""
    made = redis.Redis.from_url(redis_url, socket_timeout=5)
    made.delete("evalsha-order")
    yield made
    made.delete("evalsha-order")
    made.close()


def _push(script: Any, value: str) -> tuple[str | int, ...]:
    return ("EVALSHA", script.sha, 1, "evalsha-order", value)


def test_eval_batches_resend_everything_from_the_first_noscript_in_order(
    client: redis.Redis,
) -> None:
    push, push_too = client.register_script(PUSH), client.register_script(PUSH_TOO)
    batches = EvalBatches(client, [push, push_too], rerun=lambda first, again: (first, again))
    batches.load()
    client.script_flush()
    client.script_load(PUSH_TOO)  # as if another client loaded this one meanwhile
    replies = batches.run([_push(push, "a"), _push(push_too, "b"), _push(push, "c")])
    # "b" ran before "a" could: all three went again, in order, "b" as a rerun.
    assert client.lrange("evalsha-order", 0, -1) == [b"b", b"a", b"b", b"c"]
    assert replies == [2, (1, 3), 4]
    assert all(client.script_exists(push.sha, push_too.sha))


def test_eval_batches_in_parts_take_the_part_in_flight_along_after_a_noscript(
    client: redis.Redis,
) -> None:
    push = client.register_script(PUSH)
    batches = EvalBatches(client, [push])
    batches.load()
    client.script_flush()
    x, y, z = ([_push(push, f"{p}{i}") for i in range(3)] for p in "xyz")

    def parts() -> Iterator[list[tuple[str | int, ...]]]:
        yield x  # runs without the script
        client.script_load(PUSH)  # another client loads it before y is sent
        yield y  # runs
        yield z

    replies = list(batches.run_in_parts(parts()))
    # x failed, so y (in flight behind it) went again after it: y counts x.
    assert replies == [[4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert client.lrange("evalsha-order", 0, -1) == [
        f"{p}{i}".encode() for p in "yxyz" for i in range(3)
    ]
