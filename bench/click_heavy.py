"""The click engine benchmark's degenerate-user phase: does the store's work grow with history?

One user gets `clicks` clicks inside 30 days (one every 30 days / `clicks`, sessions of 20
clicks, a fixed mix of the five kinds: views, product views, cart adds and removes,
purchases), applied in order through the store's own script. Then `events` more clicks of
that user are applied in order, in batches of 500, and as many of a light user with 60
clicks in the same 30 days. Per event: redis-server's CPU time (INFO cpu; EVALSHA's own
usec, a wall time that counts preemption on a busy machine, goes in the params) and the
Redis commands the script ran (the calls of every other command in INFO commandstats). On
a store whose work is constant per event, the command counts are equal and the times
about equal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from kestrel.adapters.redis_clicks import RedisClickStore
from kestrel.click_events import ClickEvent, ClickType
from kestrel.features import DAY_MS

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, far from the simulated clicks' dates
WINDOW_MS = 30 * DAY_MS
LIGHT = 60
SESSION = 20
MIX = (
    ClickType.PAGE_VIEW, ClickType.PRODUCT_VIEW, ClickType.PRODUCT_VIEW, ClickType.ADD_TO_CART,
    ClickType.PAGE_VIEW, ClickType.PRODUCT_VIEW, ClickType.REMOVE_FROM_CART,
    ClickType.PRODUCT_VIEW, ClickType.ADD_TO_CART, ClickType.PURCHASE,
)  # fmt: skip
NOT_SCRIPT = frozenset({"evalsha", "info", "config|resetstat", "script|load", "ping", "hello"})


def click(user: str, i: int, step: int) -> ClickEvent:
    """The user's i-th click, `step` ms after the one before."""
    kind, t = MIX[i % len(MIX)], START_MS + i * step
    session, event = f"{user}-s{i // SESSION}", f"{user}-e{i:09d}"
    if kind is ClickType.PAGE_VIEW:
        return ClickEvent(event, user, session, kind, t)
    return ClickEvent(event, user, session, kind, t, f"p{i % 97}", f"c{i % 11}", 10.0 + i % 50)


def apply(store: RedisClickStore, user: str, first: int, count: int, step: int) -> None:
    """Apply clicks first .. first + count - 1 of `user` in batches of 500."""
    for start in range(first, first + count, 500):
        clicks = [click(user, i, step) for i in range(start, min(first + count, start + 500))]
        failed = [r for r in store.apply_clicks(clicks) if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"degenerate-user phase: {failed[0]}")


def script_commands(client: redis.Redis) -> tuple[float, int]:
    """(EVALSHA usec, calls of the commands scripts run) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    usec = float(stats.get("cmdstat_evalsha", {}).get("usec", 0))
    calls = sum(
        int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") not in NOT_SCRIPT
    )
    return usec, calls


def cpu_seconds(client: redis.Redis) -> float:
    """redis-server's used_cpu_user + used_cpu_sys (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(store: RedisClickStore, client: redis.Redis, user: str, first: int, step: int,
          events: int) -> tuple[float, float, float]:  # fmt: skip
    """(Redis CPU µs, EVALSHA µs, Redis commands) per event for `events` in-order clicks."""
    client.config_resetstat()
    cpu0 = cpu_seconds(client)
    apply(store, user, first, events, step)
    cpu = cpu_seconds(client) - cpu0
    usec, calls = script_commands(client)
    return round(cpu * 1e6 / events, 2), round(usec / events, 2), round(calls / events, 2)


def heavy_user(
    client: redis.Redis, clicks: int, events: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Figures and params of the phase (see the module docstring)."""
    store = RedisClickStore(client)
    log(f"degenerate user: loading {clicks:,} clicks in 30 days into one user")
    t0 = time.perf_counter()
    step, light_step = max(1, WINDOW_MS // clicks), WINDOW_MS // LIGHT
    apply(store, "heavy", 0, clicks, step)
    load_s = time.perf_counter() - t0
    apply(store, "light", 0, LIGHT, light_step)
    heavy_us, heavy_evalsha, heavy_calls = timed(store, client, "heavy", clicks, step, events)
    light_us, light_evalsha, light_calls = timed(store, client, "light", LIGHT, light_step, events)
    log(
        f"degenerate user: {heavy_us} µs of Redis CPU and {heavy_calls} commands per click with "
        f"{clicks:,} clicks in 30 days, {light_us} µs and {light_calls} with {LIGHT}"
    )
    return {
        "figures": {
            "clickstream.engine_heavy_user_redis_us_per_event": (heavy_us, "µs"),
            "clickstream.engine_light_user_redis_us_per_event": (light_us, "µs"),
            "clickstream.engine_heavy_user_redis_commands_per_event": (heavy_calls, "count"),
            "clickstream.engine_light_user_redis_commands_per_event": (light_calls, "count"),
            "clickstream.engine_heavy_user_clicks": (clicks, "count"),
        },
        "params": {
            "heavy_clicks_in_30_days": clicks,
            "light_clicks_in_30_days": LIGHT,
            "timed_events_each": events,
            "session_clicks": SESSION,
            "kinds": [k.value for k in MIX],
            "load_seconds": round(load_s, 1),
            "evalsha_us_per_event": {"heavy": heavy_evalsha, "light": light_evalsha},
            "method": "over the timed clicks: redis-server CPU (INFO cpu) per click, EVALSHA "
            "usec (INFO commandstats, wall time in the script) per click, and the calls of "
            "the commands the script ran per click; in-order clicks in batches of 500",
        },
    }
