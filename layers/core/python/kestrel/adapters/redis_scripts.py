"""The Redis key layout and Lua scripts behind `kestrel.adapters.redis_features`.

Key layout (the part in braces is the Redis Cluster hash tag: one entity, one slot)::

    kestrel:{c:<customer_id>}:tx      sorted set  member transaction_id, score event time (ms)
    kestrel:{c:<customer_id>}:amt     hash        transaction_id -> amount in cents
    kestrel:{c:<customer_id>}:frauds  hash        fraudulent transaction_id -> label time (ms)
    kestrel:{t:<terminal_id>}:tx      sorted set  member transaction_id, score event time (ms)
    kestrel:{t:<terminal_id>}:fraud   sorted set  fraudulent transaction_id, score event time
    kestrel:{t:<terminal_id>}:labels  hash        fraudulent transaction_id -> label time (ms)
    kestrel:{d:<transaction_id>}      string      the transaction's decision (JSON)

The customer and terminal scripts take a mode as their first argument, so the stream and
the API run the same aggregation code:

- ``apply``: add the transaction once (`ZADD NX` is the dedupe mark) and return the
  aggregates as of its event time;
- ``preview``: write nothing and return what ``apply`` would return (a transaction not yet
  stored counts as a virtual row at its own place in the (time, id) order);
- ``peek``: write nothing and return the aggregates at a moment, without a transaction
  (the id argument is ``~``, which sorts after every valid id).

Every script returns, last, how many *other* transactions its entity holds (0: unknown
entity, scored cold).
"""

from __future__ import annotations

from kestrel.features import CUSTOMER_LOOKBACK_MS, DAY_MS, TERMINAL_LOOKBACK_MS

CUSTOMER_RETENTION_MS = CUSTOMER_LOOKBACK_MS + DAY_MS
TERMINAL_RETENTION_MS = TERMINAL_LOOKBACK_MS + DAY_MS
PEEK_ID = "~"

# KEYS: tx zset, amount hash. ARGV: mode, id, t, cents, retention, lookback, windows...
# Returns: added, (count, cents) per window, previous time (-1: none), other transactions.
CUSTOMER_LUA = """
local mode, id, t, amount = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local retention, lookback = tonumber(ARGV[5]), tonumber(ARGV[6])
local added = 0
if mode == 'apply' then
  added = redis.call('ZADD', KEYS[1], 'NX', t, id)
  if added == 1 then
    redis.call('HSET', KEYS[2], id, amount)
    local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (t - retention),
                           'LIMIT', 0, 256)
    if #old > 0 then
      redis.call('ZREM', KEYS[1], unpack(old))
      redis.call('HDEL', KEYS[2], unpack(old))
    end
    redis.call('PEXPIRE', KEYS[1], retention)
    redis.call('PEXPIRE', KEYS[2], retention)
  end
end
local stored = redis.call('ZSCORE', KEYS[1], id) ~= false
local others = redis.call('ZCARD', KEYS[1])
if stored then others = others - 1 end
-- Rows come in (time, member) order and every window ends at t, so each window is a
-- suffix of them: counts come from ZCOUNT and sums from prefix sums, with no scores read
-- (converting scores is what costs most in a Lua reply). Rows at exactly t sort by
-- member; those after this id are not "up to this one": drop them, from every window.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (t - lookback), t)
local after = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], t, t)) do
  if member > id then after = after + 1 end
end
local n = #ids - after
local prefix = {[0] = 0}
for start = 1, n, 4000 do
  local stop = math.min(n, start + 3999)
  local amounts = redis.call('HMGET', KEYS[2], unpack(ids, start, stop))
  for i = start, stop do prefix[i] = prefix[i - 1] + (tonumber(amounts[i - start + 1]) or 0) end
end
local virtual = 0
if mode == 'preview' and not stored then
  virtual = 1
  prefix[n + 1] = prefix[n] + tonumber(amount)
end
local total = n + virtual
local out = {added}
for w = 7, #ARGV do
  local count = redis.call('ZCOUNT', KEYS[1], '(' .. (t - tonumber(ARGV[w])), t) - after + virtual
  out[#out + 1] = count
  out[#out + 1] = prefix[total] - prefix[total - count]
end
-- The previous transaction: the row before this one (or the last row, without one).
local before = n
if stored then before = n - 1 end
local previous = -1
if before >= 1 then previous = tonumber(redis.call('ZSCORE', KEYS[1], ids[before])) end
out[#out + 1] = previous
out[#out + 1] = others
return out
"""

# KEYS: tx zset, fraud zset, label hash. ARGV: mode, id, t, day_start, delay, retention,
# windows... Returns: added, counts per window, frauds per window, other transactions.
TERMINAL_LUA = """
local mode, id, t, day_start = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local delay, retention = tonumber(ARGV[5]), tonumber(ARGV[6])
local added = 0
if mode == 'apply' then
  added = redis.call('ZADD', KEYS[1], 'NX', t, id)
  if added == 1 then
    if redis.call('HEXISTS', KEYS[3], id) == 1 then
      redis.call('ZADD', KEYS[2], 'NX', t, id)
      redis.call('PEXPIRE', KEYS[2], retention)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (t - retention))
    local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (t - retention),
                           'LIMIT', 0, 256)
    if #old > 0 then
      redis.call('ZREM', KEYS[2], unpack(old))
      redis.call('HDEL', KEYS[3], unpack(old))
    end
    redis.call('PEXPIRE', KEYS[1], retention)
  end
end
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], id) then others = others - 1 end
local high = t - delay
local nwin = #ARGV - 6
local starts, frauds, lowest = {}, {}, high
for w = 1, nwin do
  starts[w] = high - tonumber(ARGV[6 + w]); frauds[w] = 0
  lowest = math.min(lowest, starts[w])
end
local out = {added}
for w = 1, nwin do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[1], '(' .. starts[w], high)
end
local rows = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. lowest, high, 'WITHSCORES')
for i = 1, #rows, 2 do
  local known = tonumber(redis.call('HGET', KEYS[3], rows[i]) or '')
  if known and known < day_start then
    local score = tonumber(rows[i + 1])
    for w = 1, nwin do
      if score > starts[w] then frauds[w] = frauds[w] + 1 end
    end
  end
end
for w = 1, nwin do out[#out + 1] = frauds[w] end
out[#out + 1] = others
return out
"""

# KEYS: tx zset, fraud zset, label hash. ARGV: id, label_time, retention.
LABEL_LUA = """
local new = redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2])
if new == 1 then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score then redis.call('ZADD', KEYS[2], 'NX', score, ARGV[1]) end
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
end
return new
"""

# KEYS: the customer's fraud hash. ARGV: id, label_time, retention. Known frauds per card.
CUSTOMER_LABEL_LUA = """
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if new == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3])) end
return new
"""


def customer_fraud_key(customer_id: str) -> str:
    """The customer's known frauds: transaction id → label time (the customer's slot)."""
    return f"kestrel:{{c:{customer_id}}}:frauds"


def customer_keys(customer_id: str) -> list[str]:
    """The keys of one customer (one hash slot)."""
    return [f"kestrel:{{c:{customer_id}}}:tx", f"kestrel:{{c:{customer_id}}}:amt"]


def terminal_keys(terminal_id: str) -> list[str]:
    """The keys of one terminal (one hash slot)."""
    tag = f"kestrel:{{t:{terminal_id}}}"
    return [f"{tag}:tx", f"{tag}:fraud", f"{tag}:labels"]


def decision_key(transaction_id: str) -> str:
    """Where a transaction's decision is kept (its own slot)."""
    return f"kestrel:{{d:{transaction_id}}}"
