"""Users' latest purchase propensity in Redis: one small hash per user, newest event wins.

Key (in the user's hash slot, beside the click store's keys of
`kestrel.adapters.redis_click_lua`)::

    kestrel:{u:<user_id>}:propensity   hash: propensity, model_version, event_time (epoch
                                       ms), event_id, session_id

One Lua call per user per batch (`PROPENSITY_LUA`: HMGET, HSET, PEXPIRE) writes the hash
unless it holds an event at or after the new one in (event time, event id) order, so a
late or replayed event never replaces a newer score and a retried batch changes nothing.
The key expires `PROPENSITY_TTL_MS` after its last write. Constant work per user: nothing
grows with the user's history.

As the click store, the script is loaded once and sent with EVALSHA in one pipeline
(`kestrel.adapters.redis_evalsha`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kestrel.adapters.redis_evalsha import EvalBatches
from kestrel.features import DAY_MS
from kestrel.propensity import Propensity

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

PROPENSITY_TTL_MS = 7 * DAY_MS
FIELDS = ("propensity", "model_version", "event_time", "event_id", "session_id")

PROPENSITY_LUA = """
local held = redis.call('HMGET', KEYS[1], 'event_time', 'event_id')
if held[1] then
  local t, nt = tonumber(held[1]), tonumber(ARGV[1])
  if t > nt or (t == nt and held[2] >= ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'event_time', ARGV[1], 'event_id', ARGV[2], 'session_id', ARGV[3],
  'propensity', ARGV[4], 'model_version', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""


def propensity_key(user_id: str) -> str:
    """The user's propensity hash (the user's hash tag, as the click store's keys)."""
    return f"kestrel:{{u:{user_id}}}:propensity"


class RedisPropensities:
    """`kestrel.propensity.PropensitySink` on Redis or Redis Cluster, and its reader.

    Args:
        client: a `redis.Redis` or `redis.cluster.RedisCluster` (the container's client).
        ttl_ms: how long a user's propensity is kept after its last write.

    `publish` sends one pipeline (one round trip per node); any Redis error raises, so the
    stream retries the batch.
    """

    def __init__(self, client: Redis | RedisCluster, ttl_ms: int = PROPENSITY_TTL_MS) -> None:
        self._client = client
        self._script = client.register_script(PROPENSITY_LUA)
        self._ttl_ms = ttl_ms
        self._batches = EvalBatches(client, [self._script])

    def publish(self, propensities: Sequence[Propensity]) -> None:
        """Store each user's propensity unless a later (or the same) event's is stored."""
        if not propensities:
            return
        replies = self._batches.run([self._command(p) for p in propensities])
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed

    def latest(self, user_id: str) -> dict[str, Any] | None:
        """The user's stored propensity (FIELDS, typed), or None."""
        raw = self._client.hgetall(propensity_key(user_id))
        if not raw:
            return None
        doc = {_text(k): _text(v) for k, v in raw.items()}
        return {
            "propensity": float(doc["propensity"]),
            "model_version": doc["model_version"],
            "event_time": int(doc["event_time"]),
            "event_id": doc["event_id"],
            "session_id": doc["session_id"],
        }

    def _command(self, p: Propensity) -> tuple[str | int, ...]:
        return (
            "EVALSHA", self._script.sha, 1, propensity_key(p.user_id), p.event_time_ms,
            p.event_id, p.session_id, repr(float(p.propensity)), p.model_version, self._ttl_ms,
        )  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
