"""The key layout and the one Lua script behind `kestrel.adapters.redis_clicks`.

A user is three entity logs (the fraud store's, `kestrel.adapters.redis_entity_lua`, with
their own windows) and one hash per session, all under the user's hash tag (one slot)::

    kestrel:{u:<user_id>}:views              entity log of page and product views
                                             (amount 0): windows 5 min, 1 h, 24 h
    kestrel:{u:<user_id>}:pviews             entity log of product views (amount: price
                                             in cents): 5 min, 1 h, 24 h, 30 days
    kestrel:{u:<user_id>}:buys               entity log of purchases (amount 0): 30 days,
                                             and the previous purchase within 30 days
    kestrel:{u:<user_id>}:session:<session>  hash: s -> state (events, first time, cart
                                             net, distinct products, distinct categories,
                                             newest (time, id), TTL refresh time);
                                             e:<event_id> -> (time, kind, product,
                                             category[, the session part of the reply
                                             as of the event and the late count then]);
                                             l -> late count (events stored out of
                                             order); p:<product>, c:<category> -> 1

`CLICK_LUA` handles one event in one call: the session hash first (it is the event id
index: an id it holds is a replay, and then no log is written), then each log, in
``apply`` (or ``preview``) mode when the event is of the log's kind and in ``peek`` mode
at the event's own (time, id) otherwise. The logs are the fraud store's entity script,
unchanged, each wrapped in a Lua function with its own constants, so they keep its
guarantees: constant work for an in-order event whatever the history, exact windows in
(time, id) order, late events inserted at their place, replays found by bisection.

The session hash answers an in-order event with constant work (one HMGET of the state,
the event id, the late count and the product and category markers; one HSET). An event
stored in order keeps, in its entry, the session part of its reply and the late count at
that moment: a replay of it (same id and time) while the late count is unchanged answers
from there, with constant work whatever the session's length (a late event before it
would change its answer, and every late event moves the count). A late event, or a replay
that cannot answer so, reads the whole session (HGETALL) and counts the events up to it:
work bounded by the session, never by the user's history. Session keys
expire `SESSION_TTL_MS` after their last refresh (refreshed at most once an hour of event
time); the logs keep their retention (window plus `LATE_SLACK_MS`).

Reply: {session, views, product views, purchases}: the session part is {added (1: stored
by this call), events, distinct products, distinct categories, cart net, first time}; each
log part is the entity script's reply (added, k, running total, previous time, others,
then position and running total per window pointer).
"""

from __future__ import annotations

from kestrel.adapters.redis_entity_lua import entity_script
from kestrel.adapters.redis_scripts import LATE_SLACK_MS
from kestrel.click_features import MONTH_MS, VIEW_WINDOWS

SESSION_TTL_MS = LATE_SLACK_MS
VIEWS_RETENTION_MS = max(w for _, w in VIEW_WINDOWS) + LATE_SLACK_MS
MONTH_RETENTION_MS = MONTH_MS + LATE_SLACK_MS
VIEWS_OFFSETS = [VIEWS_RETENTION_MS, *(w for _, w in VIEW_WINDOWS)]
PRODUCT_VIEWS_OFFSETS = [MONTH_RETENTION_MS, *(w for _, w in VIEW_WINDOWS), MONTH_MS]
PURCHASES_OFFSETS = [MONTH_RETENTION_MS, MONTH_MS]


def _wrapped(name: str, ttl_ms: int, lookback_ms: int, offsets: list[int]) -> str:
    """The entity script as a local Lua function of (KEYS, ARGV), constants inside it."""
    body = entity_script(ttl_ms, lookback_ms, offsets, terminal=False)
    return f"local function {name}(KEYS, ARGV)\n{body}\nend\n"


_SESSION = """
-- The session hash: state 's' is struct SSFMT (n, first, cart, products, categories,
-- newest time, refreshed, newest id); entries 'e:<id>' are struct '<ddss' (time, kind,
-- product, category), followed for an event stored in order by struct SNAP (events,
-- products, categories, cart, first time: the reply as of the event; the late count 'l'
-- when it was stored).
local SSFMT = '<ddddddds'
local SNAP = '<dddddd'
local function session(SK, mode, id, t, kind, product, category)
  local INF = math.huge
  local fields = {'s', 'e:' .. id, 'l'}
  if product ~= '' then fields[4], fields[5] = 'p:' .. product, 'c:' .. category end
  local r = redis.call('HMGET', SK, unpack(fields))
  local n, F, cart, DP, DC, T, R, I = 0, INF, 0, 0, 0, -INF, -INF, ''
  if r[1] then n, F, cart, DP, DC, T, R, I = struct.unpack(SSFMT, r[1]) end
  local stored = r[2] ~= false
  local L = tonumber(r[3] or '0')
  local delta = 0
  if kind == 2 then delta = 1 elseif kind == 3 then delta = -1 end
  local newp = product ~= '' and not r[4]
  local newc = product ~= '' and not r[5]
  local in_order = n == 0 or t > T or (t == T and id > I)
  local added = 0
  if mode == 'apply' and not stored then
    added = 1
    n, cart = n + 1, cart + delta
    if t < F then F = t end
    if newp then DP = DP + 1 end
    if newc then DC = DC + 1 end
    local entry = struct.pack('<ddss', t, kind, product, category)
    if in_order then entry = entry .. struct.pack(SNAP, n, DP, DC, cart, F, L) end
    local writes = {'e:' .. id, entry}
    if newp then writes[#writes + 1] = 'p:' .. product; writes[#writes + 1] = 1 end
    if newc then writes[#writes + 1] = 'c:' .. category; writes[#writes + 1] = 1 end
    if in_order then T, I = t, id
    else writes[#writes + 1] = 'l'; writes[#writes + 1] = L + 1 end
    local refresh = n == 1 or t - R >= 3600000 or t < R
    if refresh then R = t end
    writes[#writes + 1] = 's'
    writes[#writes + 1] = struct.pack(SSFMT, n, F, cart, DP, DC, T, R, I)
    redis.call('HSET', SK, unpack(writes))
    if refresh then redis.call('PEXPIRE', SK, SESSION_TTL) end
    if in_order then return {1, n, DP, DC, cart, F}, false end
  elseif stored and t == T and id == I then
    return {0, n, DP, DC, cart, F}, true
  elseif stored then
    -- A replay of an older event: its own answer, if no event was stored late since.
    local et, _, _, _, at = struct.unpack('<ddss', r[2])
    if et == t and at <= #r[2] then
      local sn, sp, sc, scart, sf, sl = struct.unpack(SNAP, r[2], at)
      if sl == L then return {0, sn, sp, sc, scart, sf}, true end
    end
  elseif mode ~= 'apply' and not stored and in_order then
    if t < F then F = t end
    local p, c = DP, DC
    if newp then p = p + 1 end
    if newc then c = c + 1 end
    return {0, n + 1, p, c, cart + delta, F}, false
  end
  -- A late event or a replay of an older one: count the session's events up to (t, id).
  local all = redis.call('HGETALL', SK)
  local cn, cp, cc, ccart, cf = 0, 0, 0, 0, INF
  local seenp, seenc = {}, {}
  local function count(et, ek, ep, ec)
    cn = cn + 1
    if ek == 2 then ccart = ccart + 1 elseif ek == 3 then ccart = ccart - 1 end
    if et < cf then cf = et end
    if ep ~= '' and not seenp[ep] then seenp[ep] = true; cp = cp + 1 end
    if ec ~= '' and not seenc[ec] then seenc[ec] = true; cc = cc + 1 end
  end
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'e:' then
      local eid = string.sub(f, 3)
      local et, ek, ep, ec = struct.unpack('<ddss', all[i + 1])
      if et < t or (et == t and eid <= id) then count(et, ek, ep, ec) end
    end
  end
  if not stored and added == 0 then count(t, kind, product, category) end
  return {added, cn, cp, cc, ccart, cf}, stored
end
"""

_MAIN = """
-- KEYS: views log, product views log, purchases log, session hash.
-- ARGV: mode (apply or preview), id, t, kind (0-4), price cents, product, category.
local mode, id, t, kind = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local cents = tonumber(ARGV[5])
local sr, stored = session(KEYS[4], mode, id, t, kind, ARGV[6], ARGV[7])
-- A replay writes nothing: the logs answer in preview mode.
local own = mode
if stored then own = 'preview' end
local function pick(member) if member then return own end return 'peek' end
local vr = views_log({KEYS[1]}, {pick(kind <= 1), id, t, 0})
local pr = product_views_log({KEYS[2]}, {pick(kind == 1), id, t, cents})
local br = purchases_log({KEYS[3]}, {pick(kind == 4), id, t, 0})
return {sr, vr, pr, br}
"""

CLICK_LUA = (
    f"local SESSION_TTL = {SESSION_TTL_MS}\n"
    + _wrapped("views_log", VIEWS_RETENTION_MS, 0, VIEWS_OFFSETS)
    + _wrapped("product_views_log", MONTH_RETENTION_MS, 0, PRODUCT_VIEWS_OFFSETS)
    + _wrapped("purchases_log", MONTH_RETENTION_MS, MONTH_MS, PURCHASES_OFFSETS)
    + _SESSION
    + _MAIN
)


def user_keys(user_id: str, session_id: str) -> list[str]:
    """The keys of one user's event (one hash slot): three logs and the session hash."""
    tag = f"kestrel:{{u:{user_id}}}"
    return [f"{tag}:views", f"{tag}:pviews", f"{tag}:buys", f"{tag}:session:{session_id}"]
