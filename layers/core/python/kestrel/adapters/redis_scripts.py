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
each pointer past the entries that left its window, reading only those: one HGET of the
state, usually one HMGET of the entries that left windows, one HSET of the new entry and
state (and, for terminals with frauds, one count per window), whatever the history. A
pointer whose bound is at or past the newest entry jumps to it without a read; the others
walk forward in rounds of one HMGET (2, 4, 8, 16, then 32 entries per pointer), with no
Lua closures or caches. Only a pointer that moves more than 62 entries (a long silence on
a heavy entity) takes the general path: gallop, then bisect, so a long jump costs the log
of its length. A late transaction
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

Reply: added (1: stored by this call; 2: applied but older than the retention, so not
kept; 0: a replay, or not ``apply``), k (this transaction's position; for ``peek`` the last
entry at or before the moment), running total at k, previous transaction's time (-1: none
within the lookback), how many *other* transactions the entity keeps (0: unknown, scored
cold), then for each window pointer its position and running total, then (terminals)
frauds per window.

Migration: the layout before this one (``:tx`` sorted sets and ``:amt`` hashes) is not
read; ``python -m kestrel_ops migrate-store`` rebuilds every entity from it.
"""

from __future__ import annotations

import struct
from typing import Any

from kestrel.adapters.redis_entity_lua import entity_script, state_format
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
# Returns 1 when this call recorded the label (a label counts once). A label dated at or
# before the terminal's newest transaction minus the retention is not recorded: the
# retention drops such labels (and their transactions), so a replay must not bring one back.
LABEL_LUA = (
    f"local SFMT, P = '{state_format(TERMINAL_POINTERS)}', {TERMINAL_POINTERS}\n"
    f"local RETENTION = {TERMINAL_RETENTION_MS}\n"
    + """
local LOG, FRAUD, LABELS = KEYS[1], KEYS[2], KEYS[3]
local id, at, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local raw = redis.call('HGET', LOG, 's')
local v
if raw then
  v = {struct.unpack(SFMT, raw)}
  if at <= v[5] - RETENTION then return 0 end
end
local new = redis.call('ZADD', LABELS, 'NX', at, id)
if new == 1 then
  redis.call('PEXPIRE', LABELS, ttl)
  if not raw then
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
