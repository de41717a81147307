"""Stream telemetry and the drift status in Redis: per-second buckets, rollups, totals, status.

Key layout (``{tm}`` is a Redis Cluster hash tag: every telemetry key is in one slot, so a
window is read with one pipeline to one node; the clickstream's telemetry has the same
layout under ``kestrel:{tmc}:``, where ``score:<bin>`` holds the propensities)::

    kestrel:{tm}:s:<epoch_s>      hash    one second's figures
    kestrel:{tm}:s10:<epoch_s>    hash    the 10 seconds from <epoch_s> (a multiple of 10)
    kestrel:{tm}:s60:<epoch_s>    hash    the minute from <epoch_s> (a multiple of 60)
    kestrel:{tm}:totals           hash    all-time counters, model_version, last_batch_ms
    kestrel:{drift}:latest        string  the drift job's latest status (JSON), see below

Buckets expire BUCKET_TTL_S (1 h 5 min) after their last write. Fields of a bucket
(integers unless said): ``applied``, ``duplicates``, ``poison``, ``failed`` (records to
retry), ``batches``, ``batch_errors`` (attempts that failed as a whole), ``labels``,
``frauds``, ``decision:approve|review|decline``, ``freshness:<bin>`` (the log-scale bins
of `kestrel.telemetry.freshness_edges`), ``score:<bin>`` (20 bins on [0, 1]) and
``freshness_max_ms`` (a decimal); with a challenger set, also ``shadow_scored``,
``shadow_errors`` and ``shadow_score:<bin>``. A rollup (``s10``, ``s60``) holds the sums of its
seconds' fields (the largest ``freshness_max_ms``) and ``e:<epoch_s>``, each of its
seconds' events (applied + duplicates) for the per-second series. The totals hold the
same counters (no histograms) plus ``model_version`` (the model of the last scored batch),
``shadow_model_version`` (the challenger that shadow-scored that batch; absent when none
did) and ``last_batch_ms``. The counters are per attempt: a retried batch counts again
(telemetry is not exactly once; the feature keys are), so state comparisons leave
``kestrel:{tm}:*`` and ``kestrel:{drift}:*`` out.

Each batch costs one EVALSHA (one round trip; inside Redis, a few dozen HINCRBY for each
of the three buckets its second is in). A window is read with the fewest aligned buckets
that cover it exactly (`cover`): at most 86 hashes for any window up to an hour,
where per-second buckets alone would take up to 3,600.

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

from kestrel.telemetry import BUCKET_TTL_S, BatchFigures, TelemetryWindow, combine, events_of

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

TELEMETRY_PREFIX = "kestrel:{tm}:"
# The clickstream's telemetry: the same layout under its own hash tag (ClickstreamFunction).
CLICK_TELEMETRY_PREFIX = "kestrel:{tmc}:"
TOTALS_KEY = TELEMETRY_PREFIX + "totals"
DRIFT_KEY = "kestrel:{drift}:latest"
# Key prefixes whose values are not exactly-once state (left out of state comparisons).
NON_STATE_PREFIXES = (TELEMETRY_PREFIX, CLICK_TELEMETRY_PREFIX, "kestrel:{drift}:")
# Seconds per bucket, coarsest first; each size divides the one before it.
BUCKET_SIZES = (60, 10, 1)
EVENTS_FIELD = "e:"  # a rollup's ``e:<epoch_s>``: that second's events

# KEYS: the totals, then the second's bucket and its rollups (finest first). ARGV: ttl (s),
# then one JSON object: "c" counters, "h" histogram fields, "m" maxima (field -> number),
# "e" the batch's events and "f" their rollup field, "v" model version or null, "sv" the
# challenger's version or null, "t" now (ms). One JSON argument instead of a hundred:
# redis-py packs each argument in Python.
RECORD_LUA = """
local d = cjson.decode(ARGV[2])
local ttl = tonumber(ARGV[1])
for name, n in pairs(d.c) do
  redis.call('HINCRBY', KEYS[1], name, n)
end
for i = 2, #KEYS do
  local key = KEYS[i]
  for name, n in pairs(d.c) do
    redis.call('HINCRBY', key, name, n)
  end
  for name, n in pairs(d.h) do
    redis.call('HINCRBY', key, name, n)
  end
  for name, value in pairs(d.m) do
    local old = tonumber(redis.call('HGET', key, name))
    if old == nil or old < value then
      redis.call('HSET', key, name, value)
    end
  end
  if i > 2 and d.e > 0 then
    redis.call('HINCRBY', key, d.f, d.e)
  end
  redis.call('EXPIRE', key, ttl)
end
if type(d.v) == 'string' then
  redis.call('HSET', KEYS[1], 'model_version', d.v)
  if type(d.sv) == 'string' then
    redis.call('HSET', KEYS[1], 'shadow_model_version', d.sv)
  else
    redis.call('HDEL', KEYS[1], 'shadow_model_version')
  end
end
redis.call('HSET', KEYS[1], 'last_batch_ms', d.t)
return 1
"""


def bucket_key(start_s: int, size: int = 1, prefix: str = TELEMETRY_PREFIX) -> str:
    """The hash of the `size` seconds from epoch second `start_s` (a multiple of `size`)."""
    return f"{prefix}s:{start_s}" if size == 1 else f"{prefix}s{size}:{start_s}"


def cover(
    first_s: int, last_s: int, sizes: tuple[int, ...] = BUCKET_SIZES
) -> list[tuple[int, int]]:
    """(size, start) of the aligned buckets that cover `first_s`..`last_s` exactly, in order.

    Whole buckets of the largest size in the middle, the finer sizes at both ends: for a
    window of up to an hour, at most 86 buckets (58 minutes, then 5 ten-second and 9
    one-second buckets at each end).
    """
    if first_s > last_s:
        return []
    size, finer = sizes[0], sizes[1:]
    if not finer:
        return [(size, s) for s in range(first_s, last_s + 1, size)]
    start = -(-first_s // size) * size  # the first bucket boundary at or after first_s
    end = (last_s + 1) // size * size  # the last boundary at or before last_s + 1
    if start >= end:
        return cover(first_s, last_s, finer)
    whole = [(size, s) for s in range(start, end, size)]
    return [*cover(first_s, start - 1, finer), *whole, *cover(end, last_s, finer)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisTelemetry:
    """`TelemetrySink` and `TelemetrySource` on Redis or Redis Cluster.

    Args:
        client: The container's Redis client (the stream's, or one for reading).
        ttl_s: How long a bucket is kept after its last write (seconds).
        prefix: The keys' prefix: `TELEMETRY_PREFIX` (transactions and labels) or
            `CLICK_TELEMETRY_PREFIX` (the clickstream); the layout under it is the same.

    ``last_batch_ms`` in the totals is the start of the last batch's second (ms).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        ttl_s: int = BUCKET_TTL_S,
        prefix: str = TELEMETRY_PREFIX,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._prefix, self._totals = prefix, prefix + "totals"
        self._script = client.register_script(RECORD_LUA)

    def record(self, figures: BatchFigures) -> None:
        """Add one batch's non-zero figures in one EVALSHA; raise on any Redis error."""
        second = figures.second
        body = {
            "c": {k: v for k, v in figures.counters.items() if v},
            "h": {k: v for k, v in figures.histograms.items() if v},
            "m": {k: round(v, 3) for k, v in figures.maxima.items()},
            "e": events_of(figures.counters),
            "f": f"{EVENTS_FIELD}{second}",
            "v": figures.model_version,
            "sv": figures.shadow_model_version,
            "t": second * 1000,
        }
        payload = json.dumps(body, separators=(",", ":"), allow_nan=False)
        buckets = [
            bucket_key(second // size * size, size, self._prefix) for size in reversed(BUCKET_SIZES)
        ]
        self._script(keys=[self._totals, *buckets], args=[self._ttl_s, payload])

    def read(self, first_s: int, last_s: int) -> tuple[TelemetryWindow, dict[str, str]]:
        """The window `first_s`..`last_s` from the buckets of `cover`, and the totals.

        One pipeline of at most 87 HGETALL (86 buckets and the totals) for up to an hour.
        """
        blocks = cover(first_s, last_s)
        pipe = self._client.pipeline(transaction=False)
        for size, start in blocks:
            pipe.hgetall(bucket_key(start, size, self._prefix))
        pipe.hgetall(self._totals)
        *hashes, totals = pipe.execute()
        events = [0] * (last_s - first_s + 1)
        parts: list[dict[str, float]] = []
        for (size, start), raw in zip(blocks, hashes, strict=True):
            bucket: dict[str, float] = {}
            for key, value in raw.items():
                name = _text(key)
                if not name.startswith(EVENTS_FIELD):
                    bucket[name] = float(value)
                    continue
                second = name[len(EVENTS_FIELD) :]
                if second.isdigit() and first_s <= int(second) <= last_s:
                    events[int(second) - first_s] += int(value)
            if size == 1:
                events[start - first_s] = events_of(bucket)
            parts.append(bucket)
        window = TelemetryWindow(combine(parts), tuple(events))
        return window, {_text(k): _text(v) for k, v in totals.items()}


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
