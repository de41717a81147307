"""EVALSHA batches for the Redis stores: scripts loaded once, NOSCRIPT answered in order.

Every store sends its scripts by SHA (redis-py's own pipeline script support would add a
SCRIPT EXISTS round trip to every pipeline, and its cluster pipeline refuses scripts). The
scripts are loaded once (SCRIPT LOAD, on every primary of a cluster) and again when a node
answers NOSCRIPT (restarted, failed over, flushed): the call did not run.

A batch is resent from its first NOSCRIPT on, in order, not only the calls that failed: a
later call may have run meanwhile (another client loaded the scripts in between), and
resent alone, the failed call would run after it, so that call's answer would lack an
earlier event. Sent again in order, such a call is a replay of an idempotent script: it
changes nothing and answers with every earlier event counted. `rerun` picks what to keep
of its two replies (a store keeps the first reply's "stored by this call").

`run_in_parts` keeps two parts in flight on one connection (`redis_wire.InFlight`): Redis
runs a part while the caller works on the results of the one before. A part answered
NOSCRIPT takes the part in flight behind it along: both are read, then resent from the
first NOSCRIPT on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from kestrel.adapters.redis_wire import Command, InFlight, send_batch

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.commands.core import Script


def replay_reply(first: Any, again: Any) -> Any:
    """Keep the replay's reply (the default `rerun`)."""
    return again


class EvalBatches:
    """Batches of EVALSHA commands of `scripts` on one client.

    Args:
        client: a `redis.Redis` or `redis.cluster.RedisCluster`.
        scripts: every script the commands may call (registered on `client`).
        rerun: for a call that ran and was resent after an earlier NOSCRIPT, the reply to
            keep, from its first reply and the replay's.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        scripts: Sequence[Script],
        rerun: Callable[[Any, Any], Any] = replay_reply,
    ) -> None:
        self._client, self._scripts, self._rerun = client, tuple(scripts), rerun
        self._loaded = False

    def run(self, commands: Sequence[Command]) -> list[Any]:
        """One round trip (one per node on a cluster); each reply or its error, in order."""
        if not commands:
            return []
        if not self._loaded:
            self.load()
        return self._resend(commands, send_batch(self._client, commands))

    def run_in_parts(self, parts: Iterable[Sequence[Command]]) -> Iterator[list[Any]]:
        """`run` on each part in turn, the next part sent before this one's replies are read
        (on a cluster, one part at a time)."""
        with InFlight(self._client) as wire:
            sent: deque[Sequence[Command]] = deque()
            for commands in parts:
                if not self._loaded:
                    self.load()
                wire.send(commands)
                sent.append(commands)
                if len(sent) == 2:
                    yield from self._take(wire, sent, 1)
            yield from self._take(wire, sent, len(sent))

    def load(self) -> None:
        """SCRIPT LOAD every script (on a cluster, on every primary)."""
        for script in self._scripts:
            self._client.script_load(script.script)
        self._loaded = True

    def _take(
        self, wire: InFlight, sent: deque[Sequence[Command]], parts: int
    ) -> Iterator[list[Any]]:
        """The replies of the `parts` oldest parts in flight (more after a NOSCRIPT)."""
        for _ in range(parts):
            if not sent:
                return
            commands, replies = list(sent.popleft()), wire.read()
            sizes = [len(commands)]
            if sent and any(isinstance(reply, NoScriptError) for reply in replies):
                while sent:
                    sizes.append(len(sent[0]))
                    commands += sent.popleft()
                    replies += wire.read()
            replies = self._resend(commands, replies)
            for size in sizes:
                yield replies[:size]
                replies = replies[size:]

    def _resend(self, commands: Sequence[Command], replies: list[Any]) -> list[Any]:
        """`replies`, with every command from the first NOSCRIPT on sent again in order."""
        first = next((i for i, r in enumerate(replies) if isinstance(r, NoScriptError)), None)
        if first is None:
            return replies
        self.load()
        again = send_batch(self._client, commands[first:])
        for i, reply in enumerate(again, first):
            before = replies[i]
            if isinstance(before, NoScriptError):
                replies[i] = reply
            elif not isinstance(before, Exception) and not isinstance(reply, Exception):
                replies[i] = self._rerun(before, reply)
        return replies
