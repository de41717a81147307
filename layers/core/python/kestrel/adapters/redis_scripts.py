"""The Redis key layout and Lua scripts behind `kestrel.adapters.redis_features`.

Every customer and every terminal is an *entity log*: its transactions in (time, id) order,
numbered by position (seq), each stored with a running total of the cents up to it. A
window is then two positions: the last transaction at or before its lower bound (a
*pointer*) and the transaction the window ends at. Count = difference of positions, sum =
difference of running totals.

Key layout (the part in braces is the Redis Cluster hash tag: one entity, one slot)::

    kestrel:{c:<customer_id>}:log    hash    s -> the entity's state (struct, see
                                             `state_format`): last seq, first kept seq,
                                             newest (time, id), running total, and per
                                             pointer its seq, running total and the next
                                             entry's time and total;
                                             <seq> -> struct (time, running cents, id)
    kestrel:{c:<customer_id>}:frauds hash    fraudulent transaction_id -> label time (ms)
    kestrel:{t:<terminal_id>}:log    hash    as for customers (amounts are 0), plus
                                             #<transaction_id> -> event time (ms), so a
                                             label finds its transaction
    kestrel:{t:<terminal_id>}:fraud  zset    fraudulent transaction_id, score event time
    kestrel:{t:<terminal_id>}:labels zset    labelled transaction_id, score label time
    kestrel:{d:<transaction_id>}     string  the transaction's decision (JSON)

Pointers are kept for the newest transaction: one per window bound (customers: t - W for
each window; terminals: t - D and t - D - W) and one for retention. Applying a transaction
that comes after every stored one (the stream's normal case) appends one entry and moves
each pointer past the entries that left its window, reading only those (gallop, then
bisect, so a long jump costs log of its length): one HGET of the state, usually one HMGET
of the entries that left windows, one HSET of the new entry and state (and, for
terminals with frauds, one count per window), whatever the history. A late transaction
is inserted at its place: the entries after it move one seq up with their running totals
corrected (it repairs only what it changes) and each pointer is patched in constant time.
A replay, a preview of the past and a peek at the past find positions by bisection:
logarithmic in the history, never linear.

A transaction is stored when an entry holds its (time, id): a replay is found by
bisecting to that place (an in-order event cannot be a replay), so customers keep no id
index. Retention: entries older than the newest transaction's time minus the retention are
dropped in chunks (a terminal's ids too); a late transaction still finds exact windows while it is
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

import struct
from typing import Any

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

# The body of both entity scripts; `entity_script` puts the constants in front of it:
# ttl, lookback, off (pointer offsets), terminal, SFMT (the state's struct format).
# KEYS: log[, fraud zset, labels zset]. ARGV: mode, id, t, cents[, day start].
# Entries are struct '<dds' (time, running cents, id). The state is struct SFMT: n, lo, c0,
# C, T, x, f, pl, then per pointer its seq, running total, next entry's time and total,
# then I; "none" is -inf for T and x and +inf for a next time (no next entry), so
# comparisons need no special case.
_ENTITY_BODY = """
local LOG = KEYS[1]
local mode, id, t, amount = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local day_start = tonumber(ARGV[5] or '0')
local P, INF = #off, math.huge
-- v: the state, flat: 1 n, 2 lo, 3 c0, 4 C, 5 T, 6 x, 7 f, 8 pl; pointer p at 5 + 4p: its
-- seq, then its running total, then the next entry's time and total; I (last id) at 9 + 4P.
local v
local raw = redis.call('HGET', LOG, 's')
if raw then
  v = {struct.unpack(SFMT, raw)}
  v[10 + 4 * P] = nil
else
  v = {0, 1, 0, 0, -INF, -INF, 0, 0}
  for p = 1, P do v[5 + 4 * p], v[6 + 4 * p], v[7 + 4 * p], v[8 + 4 * p] = 0, 0, INF, 0 end
  v[9 + 4 * P] = ''
end
local n, lo, T, I = v[1], v[2], v[5], v[9 + 4 * P]
-- Entries read in this call, by seq: time, running total, id (prefetched raw first).
local et, ec, ei, fetched = {}, {}, {}, {}
local function load(seq)
  if et[seq] == nil then
    et[seq], ec[seq], ei[seq] = struct.unpack('<dds',
      fetched[seq] or redis.call('HGET', LOG, seq))
  end
end
-- The last seq with time <= bound between good (it qualifies, total gcum) and bad (it
-- does not), by bisection; its total, and the first seq after it.
local function bisect(good, gcum, bad, bound)
  while bad - good > 1 do
    local mid = math.floor((good + bad) / 2)
    load(mid)
    if et[mid] <= bound then good, gcum = mid, ec[mid] else bad = mid end
  end
  return good, gcum, bad
end
-- Move the pointers of state w to the bounds of time tq over entries up to hi: gallop,
-- then bisect, from each pointer's cached next entry. The two entries just past each
-- moving pointer are read in one HMGET first: most moves are short.
local function advance(w, tq, hi)
  local want, seen = {}, {}
  for p = 1, P do
    local hp = w[5 + 4 * p]
    if w[7 + 4 * p] <= tq - off[p] then
      for seq = hp + 2, math.min(hi, hp + 3) do
        if not seen[seq] then seen[seq] = true; want[#want + 1] = seq end
      end
    end
  end
  if #want > 0 then
    local vals = redis.call('HMGET', LOG, unpack(want))
    for i, seq in ipairs(want) do fetched[seq] = vals[i] end
  end
  for p = 1, P do
    local bound = tq - off[p]
    if w[7 + 4 * p] <= bound then
      local good, gcum, bad, step = w[5 + 4 * p] + 1, w[8 + 4 * p], hi + 1, 1
      while good + step < bad do
        load(good + step)
        if et[good + step] <= bound then
          good, gcum = good + step, ec[good + step]
          -- Step by one over what was read ahead, then gallop.
          if fetched[good + 1] == nil and et[good + 1] == nil then step = step * 2 end
        else bad = good + step; break end
      end
      good, gcum, bad = bisect(good, gcum, bad, bound)
      w[5 + 4 * p], w[6 + 4 * p] = good, gcum
      if bad <= hi then load(bad); w[7 + 4 * p], w[8 + 4 * p] = et[bad], ec[bad]
      else w[7 + 4 * p] = INF end
    end
  end
end
local function after(ta, ia, tb, ib) return ta > tb or (ta == tb and ia > ib) end
-- Slow paths only (late events, replays, the past): positions by bisection.
local function total(seq) if seq < lo then return v[3] end load(seq); return ec[seq] end
local function locate()
  local good, bad = lo - 1, n + 1
  while bad - good > 1 do
    local mid = math.floor((good + bad) / 2)
    load(mid)
    if after(et[mid], ei[mid], t, id) then bad = mid else good = mid end
  end
  return good
end
local k, cum, prev, stored, pt, w
local added = 0
local writes
local in_order = n < lo or after(t, id, T, I)
local last = n >= lo and t == T and id == I
local at
if in_order or last then
  stored = last
else
  -- Is this very transaction stored? Its (time, id) is its place: bisect to it.
  at = locate()
  if at >= lo then load(at) end
  stored = at >= lo and et[at] == t and ei[at] == id
end
if mode == 'apply' and in_order then
  added, stored = 1, true
  k, cum, prev = n + 1, v[4] + amount, n
  if n >= lo then pt = T; advance(v, t, n) end
  for p = 1, P do if v[7 + 4 * p] == INF then v[7 + 4 * p], v[8 + 4 * p] = t, cum end end
  writes = {k, struct.pack('<dds', t, cum, id)}
  v[1], v[4], v[5], v[9 + 4 * P] = k, cum, t, id
  w = v
elseif mode == 'apply' and not stored and t <= T - off[1] then
  -- Older than the retention: scored as of its time, never stored (it would be dropped).
  added = 1
  k, cum, prev = at + 1, total(at) + amount, at
elseif mode == 'apply' and not stored then
  added, stored = 1, true
  k, cum, prev = at + 1, total(at) + amount, at
  -- Insert at k: later entries move one seq up, their running totals grow by amount.
  for first = n, k, -512 do
    local stop = math.max(k, first - 511)
    local seqs = {}
    for seq = first, stop, -1 do seqs[#seqs + 1] = seq end
    local vals = redis.call('HMGET', LOG, unpack(seqs))
    local moved = {}
    for i, seq in ipairs(seqs) do
      local mt, mc, mi = struct.unpack('<dds', vals[i])
      moved[#moved + 1] = seq + 1
      moved[#moved + 1] = struct.pack('<dds', mt, mc + amount, mi)
    end
    redis.call('HSET', LOG, unpack(moved))
  end
  writes = {k, struct.pack('<dds', t, cum, id)}
  et, ec, ei, fetched = {}, {}, {}, {}
  for p = 1, P do
    if t <= T - off[p] then
      v[5 + 4 * p], v[6 + 4 * p] = v[5 + 4 * p] + 1, v[6 + 4 * p] + amount
      v[8 + 4 * p] = v[8 + 4 * p] + amount
    elseif k == v[5 + 4 * p] + 1 then
      v[7 + 4 * p], v[8 + 4 * p] = t, cum
    end
  end
  v[1], v[4] = n + 1, v[4] + amount
elseif last then
  k, cum, prev, w = n, v[4], n - 1, v
elseif in_order then
  -- preview or peek after the newest: move copies of the pointers forward, write nothing.
  w = {}
  for i = 1, 8 + 4 * P do w[i] = v[i] end
  if n >= lo then pt = T; advance(w, t, n) end
  if mode == 'peek' then k, cum, prev = n, v[4], n
  else k, cum, prev = n + 1, v[4] + amount, n end
elseif mode == 'peek' then k, cum, prev = at, total(at), at
elseif stored then k, cum, prev = at, total(at), at - 1
else k, cum, prev = at + 1, total(at) + amount, at end
if terminal and added == 1 and stored then
  writes[#writes + 1] = '#' .. id  -- labels find the transaction's time here
  writes[#writes + 1] = t
end
if w == nil then
  -- Each pointer for this transaction's own time: search down from it.
  w = {}
  local hi = k - 1
  if mode == 'peek' then hi = k end
  for p = 1, P do
    local bound = t - off[p]
    local good, gcum, bad, step = lo - 1, v[3], hi + 1, 1
    while bad - step >= lo do
      load(bad - step)
      if et[bad - step] <= bound then good, gcum = bad - step, ec[bad - step]; break end
      bad = bad - step; step = step * 2
    end
    w[5 + 4 * p], w[6 + 4 * p] = bisect(good, gcum, bad, bound)
  end
end
local previous = -1
if pt == nil and prev >= lo then load(prev); pt = et[prev] end
if prev >= 1 and pt and pt > t - lookback then previous = pt end
local others = v[1] - v[9]
if stored then others = others - 1 end
local out = {added, k, cum, previous, others}
for p = 2, P do out[#out + 1] = w[5 + 4 * p]; out[#out + 1] = w[6 + 4 * p] end
if terminal then
  local FRAUD, LABELS = KEYS[2], KEYS[3]
  if added == 1 and stored and v[8] > 0 and redis.call('ZSCORE', LABELS, id) then
    redis.call('ZADD', FRAUD, 'NX', t, id)
    v[7], v[8] = 1, v[8] - 1
  end
  local hi = t - off[2]
  if v[7] == 1 then
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
  -- Drop entries past the retention pointer (and their ids), a chunk at a time.
  if v[9] - v[2] + 1 >= 64 then
    local last = math.min(v[9], v[2] + 1023)
    local seqs = {}
    for seq = v[2], last do seqs[#seqs + 1] = seq end
    local gone = {}
    for _, e in ipairs(redis.call('HMGET', LOG, unpack(seqs))) do
      if e then
        local _, dc, di = struct.unpack('<dds', e)
        if terminal then gone[#gone + 1] = '#' .. di end
        v[3] = dc
      end
    end
    for _, seq in ipairs(seqs) do gone[#gone + 1] = seq end
    redis.call('HDEL', LOG, unpack(gone))
    v[2] = last + 1
    if terminal and v[7] == 1 then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', v[5] - off[1])
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', v[5] - off[1])
    end
  end
  local refresh = t - v[6] >= 86400000 or t < v[6]
  if refresh then v[6] = t end
  writes[#writes + 1] = 's'
  writes[#writes + 1] = struct.pack(SFMT, unpack(v, 1, 9 + 4 * P))
  redis.call('HSET', LOG, unpack(writes))
  if refresh then redis.call('PEXPIRE', LOG, ttl) end
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
        f"local SFMT = '{state_format(len(offsets))}'\n"
    )
    return header + _ENTITY_BODY


def state_format(pointers: int) -> str:
    """The struct format of an entity's state with this many pointers (see `_ENTITY_BODY`)."""
    return "<" + "d" * (8 + 4 * pointers) + "s"


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
CUSTOMER_POINTERS = 1 + len(CUSTOMER_WINDOWS)

# KEYS: log, fraud zset, labels zset. ARGV: id, label time, ttl ms.
# Returns 1 when this call recorded the label (a label counts once).
LABEL_LUA = (
    f"local SFMT, P = '{state_format(TERMINAL_POINTERS)}', {TERMINAL_POINTERS}\n"
    + """
local LOG, FRAUD, LABELS = KEYS[1], KEYS[2], KEYS[3]
local id, ttl = ARGV[1], tonumber(ARGV[3])
local new = redis.call('ZADD', LABELS, 'NX', tonumber(ARGV[2]), id)
if new == 1 then
  redis.call('PEXPIRE', LABELS, ttl)
  local raw = redis.call('HGET', LOG, 's')
  local v
  if raw then
    v = {struct.unpack(SFMT, raw)}
  else
    -- No transaction yet: an empty state in which a label waits (the first apply links it).
    v = {0, 1, 0, 0, -math.huge, -math.huge, 0, 0}
    for p = 1, P do v[#v + 1] = 0; v[#v + 1] = 0; v[#v + 1] = math.huge; v[#v + 1] = 0 end
    v[#v + 1] = ''
  end
  local t = redis.call('HGET', LOG, '#' .. id)
  if t then
    redis.call('ZADD', FRAUD, 'NX', tonumber(t), id)
    redis.call('PEXPIRE', FRAUD, ttl)
    v[7] = 1
  else
    v[8] = v[8] + 1
  end
  redis.call('HSET', LOG, 's', struct.pack(SFMT, unpack(v, 1, 9 + 4 * P)))
  if not raw then redis.call('PEXPIRE', LOG, ttl) end
end
return new
"""
)

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
    """The keys of one customer (one hash slot): its log."""
    return [f"kestrel:{{c:{customer_id}}}:log"]


def terminal_keys(terminal_id: str) -> list[str]:
    """The keys of one terminal (one hash slot): log, fraud, labels."""
    tag = f"kestrel:{{t:{terminal_id}}}"
    return [f"{tag}:log", f"{tag}:fraud", f"{tag}:labels"]


def decode_state(raw: bytes, pointers: int) -> dict[str, Any]:
    """An entity's state (its log's ``s`` field) as named values, for tools and checks.

    ``refreshed`` is when the key's TTL was last pushed (event time): bookkeeping that
    depends on the order events arrived in, not part of the features.
    """
    values = struct.unpack_from(state_format(pointers)[:-1], raw)
    size = struct.calcsize(state_format(pointers)[:-1])
    names = ("last_seq", "first_seq", "dropped_total", "total", "last_time", "refreshed",
             "has_frauds", "pending_labels")  # fmt: skip
    state: dict[str, Any] = dict(zip(names, values[:8], strict=True))
    state["pointers"] = [values[8 + 4 * p : 12 + 4 * p] for p in range(pointers)]
    state["last_id"] = bytes(raw[size:-1]).decode()
    return state


def stored_transactions(client: Any, log_key: str) -> dict[str, int]:
    """The transactions an entity's log holds, id -> event time ms (reads every entry with
    HSCAN: for tools and checks, not the hot path)."""
    held: dict[str, int] = {}
    for _, value in client.hscan_iter(log_key, match="[0-9]*", count=1000):
        time_ms, _ = struct.unpack_from("<dd", value)
        held[bytes(value[16:-1]).decode()] = int(time_ms)
    return held


def decision_key(transaction_id: str) -> str:
    """Where a transaction's decision is kept (its own slot)."""
    return f"kestrel:{{d:{transaction_id}}}"
