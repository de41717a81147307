"""The Redis key layout and Lua scripts behind `kestrel.adapters.redis_features`.

Every customer and every terminal is an *entity log*: its transactions in (time, id) order,
numbered by position (seq), each stored with a running total of the cents up to it. A
window is then two positions: the last transaction at or before its lower bound (a
*pointer*) and the transaction the window ends at. Count = difference of positions, sum =
difference of running totals.

Key layout (the part in braces is the Redis Cluster hash tag: one entity, one slot)::

    kestrel:{c:<customer_id>}:ids    hash    transaction_id -> event time (ms): dedupe, lookup
    kestrel:{c:<customer_id>}:log    hash    seq -> msgpack [time, running cents, id]
    kestrel:{c:<customer_id>}:state  string  msgpack: last seq, last (time, id), running
                                             total, first kept seq, and per pointer its seq,
                                             running total and the next entry's time/total
    kestrel:{c:<customer_id>}:frauds hash    fraudulent transaction_id -> label time (ms)
    kestrel:{t:<terminal_id>}:ids / :log / :state    as for customers (amounts are 0)
    kestrel:{t:<terminal_id>}:fraud  zset    fraudulent transaction_id, score event time
    kestrel:{t:<terminal_id>}:labels zset    labelled transaction_id, score label time
    kestrel:{d:<transaction_id>}     string  the transaction's decision (JSON)

Pointers are kept for the newest transaction: one per window bound (customers: t - W for
each window; terminals: t - D and t - D - W) and one for retention. Applying a transaction
that comes after every stored one (the stream's normal case) appends one entry and moves
each pointer past the entries that left its window, reading only those (gallop, then
bisect, so a long jump costs log of its length): about five `redis.call`s, whatever the
history. A late transaction is inserted at its place: the entries after it move one seq up
with their running totals corrected (it repairs only what it changes) and each pointer is
patched in constant time. A replay, a preview of the past and a peek at the past find
positions by bisection: logarithmic in the history, never linear.

Retention: entries older than the newest transaction's time minus the retention are
dropped in chunks (their ids too); a late transaction still finds exact windows while it is
at most `LATE_SLACK_MS` older than the newest one. Keys expire after the retention of
silence; TTLs are refreshed once per day of event time, not per event.

Modes of the entity scripts, `CUSTOMER_LUA` and `TERMINAL_LUA` (the stream and the API run
the same code):

- ``apply``: store the transaction once and return the aggregates as of its event time;
- ``preview``: write nothing, return what ``apply`` would return (a transaction not yet
  stored counts as a virtual entry at its own place in the (time, id) order);
- ``peek``: write nothing, return the aggregates at a moment, without a transaction (the
  id argument is ``~``, which sorts after every valid id).

Reply: added, k (this transaction's position; for ``peek`` the last entry at or before the
moment), running total at k, previous transaction's time (-1: none within the lookback),
how many *other* transactions the entity keeps (0: unknown, scored cold), then for each
window pointer its position and running total, then (terminals) frauds per window.

Migration: the layout before this one (``:tx`` sorted sets and ``:amt`` hashes) is not
read; ``python -m kestrel_ops migrate-store`` rebuilds every entity from it.
"""

from __future__ import annotations

from kestrel.features import (
    CUSTOMER_LOOKBACK_MS,
    CUSTOMER_WINDOWS,
    DAY_MS,
    TERMINAL_DELAY_MS,
    TERMINAL_LOOKBACK_MS,
    TERMINAL_WINDOWS,
)

LATE_SLACK_MS = 3 * DAY_MS
CUSTOMER_RETENTION_MS = CUSTOMER_LOOKBACK_MS + LATE_SLACK_MS
TERMINAL_RETENTION_MS = TERMINAL_LOOKBACK_MS + LATE_SLACK_MS
PEEK_ID = "~"

# The body of both entity scripts; `entity_script` puts the constants in front of it.
# KEYS: ids, log, state[, fraud zset, labels zset]. ARGV: mode, id, t, cents[, day start].
_ENTITY_BODY = """
local IDS, LOG, STATE = KEYS[1], KEYS[2], KEYS[3]
local mode, id, t, amount = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local day_start = tonumber(ARGV[5] or '0')
local P = #off
local raw = redis.call('GET', STATE)
local s
if raw then s = cmsgpack.unpack(raw) else
  s = {n = 0, lo = 1, c0 = 0, C = 0, T = false, I = '', x = false, f = 0, pl = 0,
       h = {}, hc = {}, nt = {}, nc = {}}
  for p = 1, P do s.h[p] = 0; s.hc[p] = 0; s.nt[p] = false; s.nc[p] = 0 end
end
local cache = {}
local function entry(seq)
  local v = cache[seq]
  if v == nil then v = cmsgpack.unpack(redis.call('HGET', LOG, seq)); cache[seq] = v end
  return v
end
-- Largest seq b in [a, hi] with time <= bound, given entry a qualifies (total acum).
local function up(a, acum, hi, bound)
  local good, gcum, bad, step = a, acum, hi + 1, 1
  while good + step < bad do
    local v = entry(good + step)
    if v[1] <= bound then good, gcum = good + step, v[2]; step = step * 2
    else bad = good + step; break end
  end
  while bad - good > 1 do
    local mid = math.floor((good + bad) / 2)
    local v = entry(mid)
    if v[1] <= bound then good, gcum = mid, v[2] else bad = mid end
  end
  return good, gcum, bad
end
-- Largest seq b in [lo - 1, hi] with time <= bound (lo - 1: none), searching down from hi.
local function down(hi, bound)
  local good, gcum, bad, step = s.lo - 1, s.c0, hi + 1, 1
  while bad - step >= s.lo do
    local v = entry(bad - step)
    if v[1] <= bound then good, gcum = bad - step, v[2]; break end
    bad = bad - step; step = step * 2
  end
  while bad - good > 1 do
    local mid = math.floor((good + bad) / 2)
    local v = entry(mid)
    if v[1] <= bound then good, gcum = mid, v[2] else bad = mid end
  end
  return good, gcum
end
-- Is (ta, ia) after (tb, ib) in (time, id) order?
local function after(ta, ia, tb, ib) return ta > tb or (ta == tb and ia > ib) end
-- Last seq whose (time, id) <= (t, id), by bisection over the kept entries.
local function locate()
  local good, bad = s.lo - 1, s.n + 1
  while bad - good > 1 do
    local mid = math.floor((good + bad) / 2)
    local v = entry(mid)
    if after(v[1], v[3], t, id) then bad = mid else good = mid end
  end
  return good
end
local function total(seq) if seq < s.lo then return s.c0 end return entry(seq)[2] end
local function time_at(seq) if seq < s.lo then return false end return entry(seq)[1] end
-- Move pointer copies (h, hc, nt, nc) to the bounds of time tq over entries up to hi.
local function advance(h, hc, nt, nc, tq, hi)
  local want = {}
  for p = 1, P do
    if nt[p] and nt[p] <= tq - off[p] and h[p] + 2 <= hi and cache[h[p] + 2] == nil then
      want[#want + 1] = h[p] + 2
    end
  end
  if #want > 0 then
    local vals = redis.call('HMGET', LOG, unpack(want))
    for i, seq in ipairs(want) do cache[seq] = cmsgpack.unpack(vals[i]) end
  end
  for p = 1, P do
    if nt[p] and nt[p] <= tq - off[p] then
      local bad
      h[p], hc[p], bad = up(h[p] + 1, nc[p], hi, tq - off[p])
      if bad <= hi then local v = entry(bad); nt[p], nc[p] = v[1], v[2]
      else nt[p] = false end
    end
  end
end
local k, cum, prev, stored, pt
local b, bc = {}, {}
local added = 0
local in_order = s.n < s.lo or after(t, id, s.T, s.I)
if mode == 'apply' and in_order then
  added = 1
  redis.call('HSET', IDS, id, t)
  k, cum, prev, stored = s.n + 1, s.C + amount, s.n, true
  if s.n >= s.lo then
    pt = s.T
    advance(s.h, s.hc, s.nt, s.nc, t, s.n)
  end
  for p = 1, P do if not s.nt[p] then s.nt[p], s.nc[p] = t, cum end end
  redis.call('HSET', LOG, k, cmsgpack.pack({t, cum, id}))
  s.n, s.C, s.T, s.I = k, cum, t, id
  for p = 1, P do b[p], bc[p] = s.h[p], s.hc[p] end
elseif mode == 'apply' and t <= s.T - off[1] then
  -- Older than the retention: scored as of its time, never stored (it would be dropped).
  added = 1
  local at = locate()
  k, cum, prev, stored = at + 1, total(at) + amount, at, false
elseif mode == 'apply' and redis.call('HSETNX', IDS, id, t) == 1 then
  added = 1
  local at = locate()
  k, cum, prev, stored = at + 1, total(at) + amount, at, true
  -- Insert at k: later entries move one seq up, their running totals grow by amount.
  for first = s.n, k, -512 do
    local last = math.max(k, first - 511)
    local seqs = {}
    for seq = first, last, -1 do seqs[#seqs + 1] = seq end
    local vals = redis.call('HMGET', LOG, unpack(seqs))
    local moved = {}
    for i, seq in ipairs(seqs) do
      local v = cmsgpack.unpack(vals[i])
      moved[#moved + 1] = seq + 1
      moved[#moved + 1] = cmsgpack.pack({v[1], v[2] + amount, v[3]})
    end
    redis.call('HSET', LOG, unpack(moved))
  end
  redis.call('HSET', LOG, k, cmsgpack.pack({t, cum, id}))
  cache = {}
  for p = 1, P do
    if t <= s.T - off[p] then
      s.h[p], s.hc[p], s.nc[p] = s.h[p] + 1, s.hc[p] + amount, s.nc[p] + amount
    elseif k == s.h[p] + 1 then
      s.nt[p], s.nc[p] = t, cum
    end
  end
  s.n, s.C = s.n + 1, s.C + amount
else
  local known = mode ~= 'peek' and redis.call('HGET', IDS, id)
  stored = known and true or false
  if stored and tonumber(known) == s.T and id == s.I then
    k, cum, prev = s.n, s.C, s.n - 1
    for p = 1, P do b[p], bc[p] = s.h[p], s.hc[p] end
  elseif mode ~= 'apply' and in_order then
    local h, hc, nt, nc = {}, {}, {}, {}
    for p = 1, P do h[p], hc[p], nt[p], nc[p] = s.h[p], s.hc[p], s.nt[p], s.nc[p] end
    if s.n >= s.lo then pt = s.T; advance(h, hc, nt, nc, t, s.n) end
    for p = 1, P do b[p], bc[p] = h[p], hc[p] end
    if mode == 'peek' then k, cum, prev = s.n, s.C, s.n
    else k, cum, prev = s.n + 1, s.C + amount, s.n end
  else
    local at = locate()
    if mode == 'peek' then k, cum, prev = at, total(at), at
    elseif stored then k, cum, prev = at, total(at), at - 1
    else k, cum, prev = at + 1, total(at) + amount, at end
  end
end
if b[1] == nil then
  local hi = k - 1
  if mode == 'peek' then hi = k end
  for p = 1, P do b[p], bc[p] = down(hi, t - off[p]) end
end
local previous = -1
if pt == nil then pt = time_at(prev) end
if prev >= 1 and pt and pt > t - lookback then previous = pt end
local others = s.n - s.h[1]
if stored then others = others - 1 end
local out = {added, k, cum, previous, others}
for p = 2, P do out[#out + 1] = b[p]; out[#out + 1] = bc[p] end
if terminal then
  local FRAUD, LABELS = KEYS[4], KEYS[5]
  if added == 1 and stored and s.pl > 0 and redis.call('ZSCORE', LABELS, id) then
    redis.call('ZADD', FRAUD, 'NX', t, id)
    s.f, s.pl = 1, s.pl - 1
  end
  local hi = t - off[2]
  if s.f == 1 then
    local late = {}
    for _, lid in ipairs(redis.call('ZRANGEBYSCORE', LABELS, day_start, '+inf')) do
      late[#late + 1] = tonumber(redis.call('ZSCORE', FRAUD, lid))
    end
    for p = 3, P do
      local count = redis.call('ZCOUNT', FRAUD, '(' .. (t - off[p]), hi)
      for _, lt in ipairs(late) do
        if lt and lt > t - off[p] and lt <= hi then count = count - 1 end
      end
      out[#out + 1] = count
    end
  else
    for p = 3, P do out[#out + 1] = 0 end
  end
end
if added == 1 and stored then
  -- Drop entries past the retention pointer, a chunk at a time.
  if s.h[1] - s.lo + 1 >= 64 then
    local last = math.min(s.h[1], s.lo + 1023)
    local seqs = {}
    for seq = s.lo, last do seqs[#seqs + 1] = seq end
    local ids = {}
    for _, v in ipairs(redis.call('HMGET', LOG, unpack(seqs))) do
      if v then local e = cmsgpack.unpack(v); ids[#ids + 1] = e[3]; s.c0 = e[2] end
    end
    redis.call('HDEL', LOG, unpack(seqs))
    if #ids > 0 then redis.call('HDEL', IDS, unpack(ids)) end
    s.lo = last + 1
    if terminal and s.f == 1 then
      redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', s.T - off[1])
      redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', s.T - off[1])
    end
  end
  if not s.x or t - s.x >= 86400000 or t < s.x then
    s.x = t
    redis.call('SET', STATE, cmsgpack.pack(s), 'PX', ttl)
    redis.call('PEXPIRE', IDS, ttl)
    redis.call('PEXPIRE', LOG, ttl)
  else
    redis.call('SET', STATE, cmsgpack.pack(s), 'KEEPTTL')
  end
end
return out
"""


def entity_script(ttl_ms: int, lookback_ms: int, offsets: list[int], terminal: bool) -> str:
    """The entity script with its constants: TTL, lookback, pointer offsets, terminal or not.

    `offsets` are the pointers' offsets from the transaction's time: the retention first,
    then one per window's lower bound (terminals: the delay, then delay + each window).
    """
    header = (
        f"local ttl, lookback = {ttl_ms}, {lookback_ms}\n"
        f"local off = {{{', '.join(str(o) for o in offsets)}}}\n"
        f"local terminal = {'true' if terminal else 'false'}\n"
    )
    return header + _ENTITY_BODY


CUSTOMER_LUA = entity_script(
    CUSTOMER_RETENTION_MS,
    CUSTOMER_LOOKBACK_MS,
    [CUSTOMER_RETENTION_MS, *(w for _, w in CUSTOMER_WINDOWS)],
    terminal=False,
)
TERMINAL_LUA = entity_script(
    TERMINAL_RETENTION_MS,
    0,
    [
        TERMINAL_RETENTION_MS,
        TERMINAL_DELAY_MS,
        *(TERMINAL_DELAY_MS + w for _, w in TERMINAL_WINDOWS),
    ],
    terminal=True,
)
TERMINAL_POINTERS = 2 + len(TERMINAL_WINDOWS)

# KEYS: ids, log, state, fraud zset, labels zset. ARGV: id, label time, ttl ms, pointers.
# Returns 1 when this call recorded the label (a label counts once).
LABEL_LUA = """
local IDS, STATE, FRAUD, LABELS = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local id, ttl = ARGV[1], tonumber(ARGV[3])
local new = redis.call('ZADD', LABELS, 'NX', tonumber(ARGV[2]), id)
if new == 1 then
  redis.call('PEXPIRE', LABELS, ttl)
  local raw = redis.call('GET', STATE)
  if raw then
    local s = cmsgpack.unpack(raw)
    local t = redis.call('HGET', IDS, id)
    if t then
      redis.call('ZADD', FRAUD, 'NX', tonumber(t), id)
      redis.call('PEXPIRE', FRAUD, ttl)
      s.f = 1
    else
      s.pl = s.pl + 1
    end
    redis.call('SET', STATE, cmsgpack.pack(s), 'KEEPTTL')
  else
    -- No transaction yet: a minimal state that says a label waits (the first apply links it).
    local s = {n = 0, lo = 1, c0 = 0, C = 0, T = false, I = '', x = false, f = 0, pl = 1,
               h = {}, hc = {}, nt = {}, nc = {}}
    for p = 1, tonumber(ARGV[4]) do s.h[p] = 0; s.hc[p] = 0; s.nt[p] = false; s.nc[p] = 0 end
    redis.call('SET', STATE, cmsgpack.pack(s), 'PX', ttl)
  end
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
    """The keys of one customer's log (one hash slot): ids, log, state."""
    tag = f"kestrel:{{c:{customer_id}}}"
    return [f"{tag}:ids", f"{tag}:log", f"{tag}:state"]


def terminal_keys(terminal_id: str) -> list[str]:
    """The keys of one terminal (one hash slot): ids, log, state, fraud, labels."""
    tag = f"kestrel:{{t:{terminal_id}}}"
    return [f"{tag}:ids", f"{tag}:log", f"{tag}:state", f"{tag}:fraud", f"{tag}:labels"]


def decision_key(transaction_id: str) -> str:
    """Where a transaction's decision is kept (its own slot)."""
    return f"kestrel:{{d:{transaction_id}}}"
