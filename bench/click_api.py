"""Benchmark the propensity API over HTTP: open-loop load on keep-alive connections, real Redis.

Usage: ``python bench/click_api.py [--rate 500] [--duration 60] [--users 1000] [--days 10]``
(``make bench-click-api``). Measured exactly as `bench.api` measures ``/v1/score`` (the
same `bench.api_load.run_api_bench`: local stack, API server and redis-server on the last
CPU, load generator on the first, warm-up, one open-loop run, nearest-rank percentiles),
on ``POST /v1/propensity``. Seeds Redis with simulated clicks (``--users`` users, ``--days``
days ending now, through ``RedisClickStore.apply_clicks``, ids prefixed ``bench.``,
removed after) and times ``preview_history`` of one click in process
(``clickstream.api_feature_read_*``). Each request is a new click (new event id, event
time = its send time) repeating a seeded click's user, session, type, product, category
and price, so it continues that session. Writes ``bench/results/click_api-<UTC>.json``
with ``clickstream.api_http_p99_ms``, ``clickstream.api_http_p50_ms``,
``clickstream.api_in_handler_p99_ms`` and ``clickstream.api_errors``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/click_api.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from kestrel_training.click_simulator import ClickSimulatorConfig, simulate_clicks  # noqa: E402

from bench.api_load import Bench, add_load_args, run_api_bench  # noqa: E402
from bench.api_stack import PREFIX, log  # noqa: E402
from kestrel.adapters.redis_clicks import RedisClickStore  # noqa: E402
from kestrel.click_events import ClickEvent, ClickType  # noqa: E402
from kestrel.features import DAY_MS  # noqa: E402

# The fraud API's bars (issue 17: the clickstream's bars are the fraud path's).
TARGETS = {
    "clickstream.api_http_p99_ms": 1.0,
    "clickstream.api_in_handler_p99_ms": 0.5,
    "clickstream.api_feature_read_p99_ms": 0.2,
}
# A seeded click: user, session, type, product, category, price (None for a page view).
Row = tuple[str, str, str, str | None, str | None, float | None]


def _none(value: Any) -> Any:
    """NaN (pandas' missing value) as None."""
    return None if value != value else value


def seed_clicks(store: RedisClickStore, config: ClickSimulatorConfig, now_ms: int) -> list[Row]:
    """Apply the simulated clicks, shifted to end now; return each one's (user, session,
    type, product, category, price)."""
    sim = simulate_clicks(config)
    shift = now_ms - (config.start_ms + config.n_days * DAY_MS)
    events, rows = [], []
    for r in sim.events.to_dict("records"):
        product, category, price = _none(r["product_id"]), _none(r["category"]), _none(r["price"])
        e = ClickEvent(
            PREFIX + str(r["event_id"]), PREFIX + str(r["user_id"]),
            PREFIX + str(r["session_id"]), ClickType(r["event_type"]),
            int(r["event_time"]) + shift, product, category,
            None if price is None else float(price),
        )  # fmt: skip
        events.append(e)
        rows.append((e.user_id, e.session_id, e.event_type.value, product, category, e.price))
    for start in range(0, len(events), 2000):
        replies = store.apply_clicks(events[start : start + 2000])
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"seeding failed: {failed[0]!r}")
    return rows


def click_of(rng: random.Random, rows: list[Row], event_id: str, event_time_ms: int) -> ClickEvent:
    """A new click repeating a seeded one (busy users more often) at `event_time_ms`."""
    user, session, kind, product, category, price = rng.choice(rows)
    return ClickEvent(
        event_id, user, session, ClickType(kind), event_time_ms, product, category, price
    )


def propensity_bench(store: RedisClickStore, rows: list[Row]) -> Bench:
    """POST /v1/propensity of new clicks of the seeded users; reads: preview_history."""

    def body(rng: random.Random, request: str, event_time_ms: int) -> dict[str, Any]:
        e = click_of(rng, rows, f"{PREFIX}click.{request}", event_time_ms)
        return {"event_id": e.event_id, "user_id": e.user_id, "session_id": e.session_id,
                "event_type": e.event_type.value, "product_id": e.product_id,
                "category": e.category, "price": e.price,
                "event_time": e.event_time_ms}  # fmt: skip

    def reads(rng: random.Random, n: int) -> list[Any]:
        now = int(time.time() * 1000)
        return [[click_of(rng, rows, f"{PREFIX}fr.{i}", now)] for i in range(n)]

    return Bench(
        name="click_api", prefix="clickstream.api_", title="propensity API",
        route="/v1/propensity", body=body, answer_field="propensity",
        read=store.preview_history, reads=reads, targets=TARGETS,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_load_args(parser)
    parser.add_argument("--users", type=int, default=1000, help="seeded users")
    parser.add_argument("--days", type=int, default=10, help="days of seeded clicks")
    parser.add_argument("--feature-reads", type=int, default=10_000)
    args = parser.parse_args(argv)

    def seeded(client: redis.Redis) -> tuple[Bench, dict[str, Any]]:
        store = RedisClickStore(client)
        config = ClickSimulatorConfig(n_users=args.users, n_days=args.days)
        log(f"seeding {args.days} days of clicks: {args.users:,} users")
        t0 = time.perf_counter()
        rows = seed_clicks(store, config, int(time.time() * 1000))
        seconds = time.perf_counter() - t0
        log(f"seeded {len(rows):,} clicks in {seconds:.0f} s")
        notes = {
            "users": args.users, "days": args.days, "clicks": len(rows),
            "seconds": round(seconds, 1), "history_ends": "at seeding time",
            "request_bodies": "each a new event id repeating a seeded click (user, session, "
            "type, product, category, price; busy users more often); event_time = intended "
            "send time",
        }  # fmt: skip
        return propensity_bench(store, rows), notes

    return run_api_bench(args, seeded)


if __name__ == "__main__":
    sys.exit(main())
