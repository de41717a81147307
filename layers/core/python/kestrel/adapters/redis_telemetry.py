"""Stream telemetry and the drift status in Redis: per-second buckets, totals, one JSON status.

Key layout (``{tm}`` is a Redis Cluster hash tag: every telemetry key is in one slot, so a
window is read with one pipeline to one node)::

    kestrel:{tm}:s:<epoch_s>  hash    one second's figures, expire after BUCKET_TTL_S (1 h 5 min)
    kestrel:{tm}:totals       hash    all-time counters, model_version, last_batch_ms
    kestrel:{drift}:latest    string  the drift job's latest status (JSON), see below

Fields of a second's hash (integers unless said): ``applied``, ``duplicates``, ``poison``,
``failed`` (records to retry), ``batches``, ``batch_errors`` (attempts that failed as a
whole), ``labels``, ``frauds``, ``decision:approve|review|decline``, ``freshness:<bin>``
(the log-scale bins of `kestrel.telemetry.freshness_edges`), ``score:<bin>`` (20 bins on
[0, 1]) and ``freshness_max_ms`` (a decimal). The totals hold the same counters (no
histograms) plus ``model_version`` (the model of the last scored batch) and
``last_batch_ms``. The counters are per attempt: a retried batch counts again (telemetry is
not exactly once; the feature keys are), so state comparisons leave ``kestrel:{tm}:*`` and
``kestrel:{drift}:*`` out.

Each batch costs one EVALSHA (one round trip, a few dozen HINCRBY inside Redis).

The drift status is a JSON object written by the drift job with `RedisDriftStatus.publish`
(``SET kestrel:{drift}:latest``)::

    {"status": "ok" | "watch" | "drift" | "unknown",  # required; "drift" raises the alert
     "checked_at": "2026-01-01T12:00:00.000Z", # when the job ran (ISO-8601 UTC)
     "model_version": "3",                     # the model it checked
     ...}                                      # anything else (e.g. "features": {name: psi})

``GET /v1/telemetry`` returns it as ``drift`` unchanged; without it (or when it is not an
object with a string ``status``), ``{"status": "unknown"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kestrel.telemetry import BUCKET_TTL_S, BatchFigures

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

TELEMETRY_PREFIX = "kestrel:{tm}:"
TOTALS_KEY = TELEMETRY_PREFIX + "totals"
DRIFT_KEY = "kestrel:{drift}:latest"
# Key prefixes whose values are not exactly-once state (left out of state comparisons).
NON_STATE_PREFIXES = (TELEMETRY_PREFIX, "kestrel:{drift}:")

# KEYS: the second's bucket, the totals. ARGV: ttl (s), then one JSON object: "c" counters,
# "h" histogram fields, "m" maxima (field -> number), "v" model version or null, "t" now (ms).
# One JSON argument instead of a hundred: redis-py packs each argument in Python.
RECORD_LUA = """
local d = cjson.decode(ARGV[2])
for name, n in pairs(d.c) do
  redis.call('HINCRBY', KEYS[1], name, n)
  redis.call('HINCRBY', KEYS[2], name, n)
end
for name, n in pairs(d.h) do
  redis.call('HINCRBY', KEYS[1], name, n)
end
for name, value in pairs(d.m) do
  local old = tonumber(redis.call('HGET', KEYS[1], name))
  if old == nil or old < value then
    redis.call('HSET', KEYS[1], name, value)
  end
end
if type(d.v) == 'string' then
  redis.call('HSET', KEYS[2], 'model_version', d.v)
end
redis.call('HSET', KEYS[2], 'last_batch_ms', d.t)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def bucket_key(second: int) -> str:
    """The hash of one epoch second's figures."""
    return f"{TELEMETRY_PREFIX}s:{second}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisTelemetry:
    """`TelemetrySink` and `TelemetrySource` on Redis or Redis Cluster.

    Args:
        client: The container's Redis client (the stream's, or one for reading).
        ttl_s: How long a second's bucket is kept (seconds).

    ``last_batch_ms`` in the totals is the start of the last batch's second (ms).
    """

    def __init__(self, client: Redis | RedisCluster, ttl_s: int = BUCKET_TTL_S) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._script = client.register_script(RECORD_LUA)

    def record(self, figures: BatchFigures) -> None:
        """Add one batch's non-zero figures in one EVALSHA; raise on any Redis error."""
        body = {
            "c": {k: v for k, v in figures.counters.items() if v},
            "h": {k: v for k, v in figures.histograms.items() if v},
            "m": {k: round(v, 3) for k, v in figures.maxima.items()},
            "v": figures.model_version,
            "t": figures.second * 1000,
        }
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False)
        self._script(keys=[bucket_key(figures.second), TOTALS_KEY], args=[self._ttl_s, payload])

    def read(self, first_s: int, last_s: int) -> tuple[list[dict[str, float]], dict[str, str]]:
        """Every second's bucket from `first_s` to `last_s` and the totals, in one pipeline."""
        pipe = self._client.pipeline(transaction=False)
        for second in range(first_s, last_s + 1):
            pipe.hgetall(bucket_key(second))
        pipe.hgetall(TOTALS_KEY)
        *buckets, totals = pipe.execute()
        return (
            [{_text(k): float(v) for k, v in bucket.items()} for bucket in buckets],
            {_text(k): _text(v) for k, v in totals.items()},
        )


class RedisDriftStatus:
    """`DriftStatusReader` on Redis, and the writer the drift job uses.

    Args:
        client: A Redis client.
        key: Where the status is kept (default ``kestrel:{drift}:latest``).
    """

    def __init__(self, client: Redis | RedisCluster, key: str = DRIFT_KEY) -> None:
        self._client, self._key = client, key

    def latest(self) -> dict[str, Any] | None:
        """The stored status if it is a JSON object with a string ``status``, else None."""
        raw = self._client.get(self._key)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            return None
        return doc

    def publish(self, status: Mapping[str, Any], ttl_s: int | None = None) -> None:
        """Store `status` (a JSON object with a string ``status``) as the latest one.

        Args:
            status: The drift job's result, e.g. ``{"status": "drift", "checked_at": ...}``.
            ttl_s: Optional expiry, so a job that stopped running leaves ``unknown`` behind.

        Raises:
            ValueError: `status` has no string ``status``.
        """
        if not isinstance(status.get("status"), str):
            raise ValueError("a drift status needs a string 'status' field")
        body = json.dumps(dict(status), separators=(",", ":"), allow_nan=False)
        self._client.set(self._key, body, ex=ttl_s)
