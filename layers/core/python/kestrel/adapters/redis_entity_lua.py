"""The Lua of the entity scripts (see `kestrel.adapters.redis_scripts` for the key layout).

One body serves customers and terminals; `entity_script` puts each one's constants in front.
"""

from __future__ import annotations

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
local k, cum, prev, stored, pt, w
local added = 0
local writes
-- The stream's normal case: an apply after every stored transaction, and the API's: a
-- preview of such a transaction. A pointer whose bound is at or past the newest entry
-- jumps to it without a read; the others walk forward over the entries that left their
-- window, read in one HMGET per round (2, then 4, 8, 16, 32 entries per pointer). No
-- closures, no caches. A pointer that would move further (a long silence on a heavy
-- entity) sends the call to the general path below, from the state as read; so do a late
-- event, a replay and peek.
if (mode == 'apply' or mode == 'preview') and raw and n >= lo
    and (t > T or (t == T and id > I)) then
  local raw_seq, short, todo, nt = v[9], true, nil, 0
  for p = 1, P do
    local bound = t - off[p]
    if v[7 + 4 * p] <= bound then
      if T <= bound then
        v[5 + 4 * p], v[6 + 4 * p], v[7 + 4 * p], v[8 + 4 * p] = n, v[4], INF, 0
      else
        -- Its next entry is in; one past the newest is not, so the walk ends by n.
        v[5 + 4 * p], v[6 + 4 * p] = v[5 + 4 * p] + 1, v[8 + 4 * p]
        nt = nt + 1
        if todo == nil then todo = {} end
        todo[nt] = p
      end
    end
  end
  local span = 2
  while nt > 0 do
    if span > 32 then short = false; break end
    local want, m = {}, 0
    for i = 1, nt do
      local s = v[5 + 4 * todo[i]]
      for q = s + 1, math.min(n, s + span) do m = m + 1; want[m] = q end
    end
    local vals = redis.call('HMGET', LOG, unpack(want))
    local j, left = 0, 0
    for i = 1, nt do
      local p = todo[i]
      local bound, s = t - off[p], v[5 + 4 * p]
      local last, moving = math.min(n, s + span), true
      for q = s + 1, last do
        j = j + 1
        if moving then
          local qt, qc = struct.unpack('<dd', vals[j])
          if qt <= bound then v[5 + 4 * p], v[6 + 4 * p] = q, qc
          else v[7 + 4 * p], v[8 + 4 * p], moving = qt, qc, false end
        end
      end
      if moving then left = left + 1; todo[left] = p end
    end
    nt, span = left, span * 2
  end
  if short and mode == 'preview' then
    -- What the general path answers: the moved pointers (the retention pointer, 1, is not
    -- in the reply and must stay as read, since `others` counts from it) and nothing written.
    k, cum, prev, pt = n + 1, v[4] + amount, n, T
    v[9] = raw_seq
    w = v
  elseif short then
    added, stored = 1, true
    k, cum, prev, pt = n + 1, v[4] + amount, n, T
    for p = 1, P do if v[7 + 4 * p] == INF then v[7 + 4 * p], v[8 + 4 * p] = t, cum end end
    writes = {k, struct.pack('<dds', t, cum, id)}
    v[1], v[4], v[5], v[9 + 4 * P] = k, cum, t, id
    w = v
  else
    v = {struct.unpack(SFMT, raw)}
    v[10 + 4 * P] = nil
  end
end
-- The general path's helpers (set only when it runs).
local et, ec, ei, fetched, load, bisect, advance, after, total, locate
if w == nil then
  -- Entries read in this call, by seq: time, running total, id (prefetched raw first).
  et, ec, ei, fetched = {}, {}, {}, {}
  load = function(seq)
    if et[seq] == nil then
      et[seq], ec[seq], ei[seq] = struct.unpack('<dds',
        fetched[seq] or redis.call('HGET', LOG, seq))
    end
  end
  -- The last seq with time <= bound between good (it qualifies, total gcum) and bad (it
  -- does not), by bisection; its total, and the first seq after it.
  bisect = function(good, gcum, bad, bound)
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
  advance = function(w, tq, hi)
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
  after = function(ta, ia, tb, ib) return ta > tb or (ta == tb and ia > ib) end
  -- Slow paths only (late events, replays, the past): positions by bisection.
  total = function(seq) if seq < lo then return v[3] end load(seq); return ec[seq] end
  locate = function()
    local good, bad = lo - 1, n + 1
    while bad - good > 1 do
      local mid = math.floor((good + bad) / 2)
      load(mid)
      if after(et[mid], ei[mid], t, id) then bad = mid else good = mid end
    end
    return good
  end
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
    -- Older than the retention: scored as of its time, never stored (it would be dropped);
    -- reply 2, so a caller can tell it from a transaction stored now (1).
    added = 2
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
end
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
