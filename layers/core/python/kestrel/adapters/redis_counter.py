"""`EventCounter` on Redis: one atomic, idempotent server-side Lua script per event.

Key layout (``<prefix>`` defaults to ``kestrel``; the part in braces is the Redis Cluster
hash tag, so all keys of one entity live in one slot)::

    <prefix>:{<event_id>}:applied     string "1" with a TTL: the event was applied
                                      (event_id is e.g. "txn:T-1" or "label:T-1")
    <prefix>:{cust:<customer_id>}:counts   hash, field "transactions"
    <prefix>:{term:<terminal_id>}:counts   hash, fields "transactions", "labels", "fraud_labels"
    <prefix>:{global}:counts               hash, fields "transactions_applied", "labels_applied"

Entities and fields come from the domain (`kestrel.events.Increment`): an entity ``E`` maps
to the hash ``<prefix>:{E}:counts`` and the field is used as is.

For each event the script runs ``SET <applied key> 1 NX EX <ttl>``; if the key already
existed the event was applied before and the script returns 0 without touching anything.
Otherwise it runs one ``HINCRBY`` per increment and returns 1. Redis runs a script
atomically (no other command interleaves) but does not roll back on a failing command, so
if an ``HINCRBY`` fails (e.g. WRONGTYPE) the script reverts its earlier increments and the
``applied`` key and returns the error: an event is applied entirely or not at all, and never
twice while its ``applied`` key lives. The TTL (default 15 days) outlives the streams' 24 h
retention and the dead-letter queues' 14 days, so replays and redrives are not counted twice.

The script is registered once per adapter (``register_script``) and invoked with
``EVALSHA``; redis-py reloads it transparently if the server lost its script cache.

Limitation: the keys of one event span several hash tags, so this script needs a
non-clustered Redis (or a cluster where they share a slot). The per-entity tags are kept
so that the layout stays the same when updates are later split per entity for a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kestrel.events import Increment

if TYPE_CHECKING:
    from redis import Redis

DEFAULT_DEDUPE_TTL_S = 15 * 24 * 3600

# KEYS[1] = applied key; KEYS[2..n] = counter hashes.
# ARGV[1] = TTL in seconds; then, for KEYS[i] (i >= 2), ARGV[2i-2] = field, ARGV[2i-1] = amount.
# Redis does not roll a script back when a command fails, so a failing HINCRBY (e.g. WRONGTYPE)
# undoes the increments made so far and the applied marker before returning the error.
APPLY_ONCE_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 2, #KEYS do
  local done = redis.pcall('HINCRBY', KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1])
  if type(done) == 'table' and done.err then
    for j = 2, i - 1 do
      redis.call('HINCRBY', KEYS[j], ARGV[2 * j - 2], -tonumber(ARGV[2 * j - 1]))
    end
    redis.call('DEL', KEYS[1])
    return redis.error_reply(done.err)
  end
end
return 1
"""


class RedisEventCounter:
    """Applies event increments once per event id with one atomic Lua script in Redis.

    Args:
        client: A redis-py client (created once per container, see `kestrel.clients`).
        prefix: First component of every key, to separate stacks sharing one Redis.
        dedupe_ttl_s: How long an event id is remembered as applied, in seconds.

    Raises:
        ValueError: If `prefix` is empty or contains braces, or `dedupe_ttl_s` < 1.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "kestrel",
        dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL_S,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
        if dedupe_ttl_s < 1:
            raise ValueError(f"dedupe_ttl_s must be at least 1, got {dedupe_ttl_s}")
        self._prefix = prefix
        self._ttl = dedupe_ttl_s
        self._script = client.register_script(APPLY_ONCE_LUA)

    def applied_key(self, event_id: str) -> str:
        """The key that marks `event_id` as applied."""
        return f"{self._prefix}:{{{event_id}}}:applied"

    def counts_key(self, entity: str) -> str:
        """The hash holding the counters of `entity` (e.g. ``cust:C-1``)."""
        return f"{self._prefix}:{{{entity}}}:counts"

    def apply(self, event_id: str, increments: Sequence[Increment]) -> bool:
        """Apply `increments` once for `event_id`; True if applied now, False if seen before.

        Redis errors (connection, timeout, script errors) propagate unchanged.
        """
        keys = [self.applied_key(event_id)]
        args: list[str | int] = [self._ttl]
        for inc in increments:
            keys.append(self.counts_key(inc.entity))
            args.extend((inc.field, inc.by))
        return bool(self._script(keys=keys, args=args))
