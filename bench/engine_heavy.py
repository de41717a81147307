"""The engine benchmark's degenerate-entity phase: does the store's work grow with history?

One customer and one terminal get `transactions` transactions inside their 30-day window
(one every 30 days / `transactions`), loaded through the store's own scripts in order.
Then `events` more transactions of that pair are applied in order, in batches, and so are
as many of a light pair with 60 transactions in the same 30 days. Redis's own time in the
entity scripts (INFO commandstats, EVALSHA µs) per event is the figure: on a store whose
work is constant per event the two are about equal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Transaction
from kestrel.features import DAY_MS

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, far from the simulated stream's dates
WINDOW_MS = 30 * DAY_MS
LIGHT = 60


def _load(store: RedisFeatureStore, prefix: str, count: int, log: Callable[[str], None]) -> int:
    """`count` transactions of customer and terminal `prefix`, in order; return the spacing."""
    step = max(1, WINDOW_MS // count)
    chunk = 5000
    started = time.perf_counter()
    for first in range(0, count, chunk):
        rows = [
            (f"{prefix}-{i:08d}", START_MS + i * step, 1000 + i % 5000)
            for i in range(first, min(count, first + chunk))
        ]
        store.load_history("customer", f"{prefix}-customer", rows)
        store.load_history("terminal", f"{prefix}-terminal", [(r[0], r[1], 0) for r in rows])
        if first and first % 200_000 == 0:
            seconds = time.perf_counter() - started
            log(f"heavy entity: {first:,} of {count:,} loaded ({seconds:.0f}s)")
    return step


def _timed(store: RedisFeatureStore, prefix: str, start_ms: int, step: int, events: int) -> float:
    """Redis µs in EVALSHA per event for `events` in-order transactions of `prefix`."""
    client = store._client
    txs = [
        Transaction(f"{prefix}-t{i:07d}", f"{prefix}-customer", f"{prefix}-terminal",
                    12.34, start_ms + (i + 1) * step)
        for i in range(events)
    ]  # fmt: skip
    client.config_resetstat()
    for first in range(0, events, 500):
        results = store.apply_transactions(txs[first : first + 500])
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"heavy-entity phase: {failed[0]}")
    usec = float(client.info("commandstats")["cmdstat_evalsha"]["usec"])
    return round(usec / events, 2)


def heavy_entity(
    store: RedisFeatureStore, transactions: int, events: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Figures and params of the phase (see the module docstring)."""
    log(f"heavy entity: loading {transactions:,} transactions into one customer and terminal")
    t0 = time.perf_counter()
    step = _load(store, "heavy", transactions, log)
    load_s = time.perf_counter() - t0
    light_step = _load(store, "light", LIGHT, log)
    end_ms = START_MS + WINDOW_MS
    heavy_us = _timed(store, "heavy", START_MS + (transactions - 1) * step, step, events)
    light_us = _timed(store, "light", START_MS + (LIGHT - 1) * light_step, light_step, events)
    log(
        f"heavy entity: {heavy_us} µs of Redis per event with {transactions:,} transactions "
        f"in the window, {light_us} µs with {LIGHT}"
    )
    return {
        "figures": {
            "engine.heavy_entity_redis_us_per_event": (heavy_us, "µs"),
            "engine.light_entity_redis_us_per_event": (light_us, "µs"),
            "engine.heavy_entity_transactions": (transactions, "count"),
        },
        "params": {
            "heavy_transactions_in_window": transactions,
            "light_transactions_in_window": LIGHT,
            "timed_events_each": events,
            "load_seconds": round(load_s, 1),
            "window_end": end_ms,
            "method": "INFO commandstats EVALSHA usec over the timed events (both entity "
            "scripts of each event), in-order events in batches of 500",
        },
    }
