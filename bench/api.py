"""Benchmark the scoring API over HTTP: open-loop load on keep-alive connections, real Redis.

Usage: ``python bench/api.py [--rate 500] [--duration 60] [--connections 16] [--warmup 5]``
(``python -m bench.api`` works too). Brings the local stack up (``kestrel_local up``,
``provision``, ``register-schemas``) unless it is running, and leaves it as it found it.
Seeds Redis with simulated history (2,000 customers, 4,000 terminals, 38 days ending now,
through ``RedisFeatureStore.apply_transactions``, ids prefixed ``bench.``, removed after), times
``preview_transactions`` for one transaction in process (``api.feature_read_*``), starts
``kestrel_local serve`` on a free loopback port, warms it up, then sends ``POST /v1/score``
at a fixed rate with `bench.loadgen` (latency from each request's intended send time to the
last byte of its response; coordinated omission accounted for). Each request is a new
transaction of a seeded customer at one of its terminals, with event time = its send time.
CPU placement (2+ CPUs, unless ``--no-pin``): API server, redis-server and the feature-read
loop on the last CPU, the load generator on the first. Writes
``bench/results/api-<UTC timestamp>.json``.
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
if __package__ in (None, ""):  # run as a script: python bench/api.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from kestrel_training.simulator import SimulatorConfig  # noqa: E402

from bench.api_load import Bench, add_load_args, run_api_bench  # noqa: E402
from bench.api_stack import PREFIX, History, log, seed  # noqa: E402
from kestrel.adapters.redis_features import RedisFeatureStore  # noqa: E402

TARGETS = {"api.http_p99_ms": 1.0, "api.in_handler_p99_ms": 0.5, "api.feature_read_p99_ms": 0.2}


def score_bench(store: RedisFeatureStore, history: History) -> Bench:
    """POST /v1/score of new transactions of the seeded history; reads: preview_transactions."""

    def body(rng: random.Random, request: str, event_time_ms: int) -> dict[str, Any]:
        tx = history.transaction(rng, f"{PREFIX}tx.{request}", event_time_ms)
        return {"transaction_id": tx.transaction_id, "customer_id": tx.customer_id,
                "terminal_id": tx.terminal_id, "amount": tx.amount,
                "event_time": tx.event_time_ms, "channel": None, "device_id": None}  # fmt: skip

    def reads(rng: random.Random, n: int) -> list[Any]:
        now = int(time.time() * 1000)
        return [[history.transaction(rng, f"{PREFIX}fr.{i}", now)] for i in range(n)]

    return Bench(
        name="api", prefix="api.", title="scoring API", route="/v1/score", body=body,
        answer_field="score", read=store.preview_transactions, reads=reads, targets=TARGETS,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_load_args(parser)
    parser.add_argument(
        "--days", type=int, default=38, help="days of history (terminal windows reach 37 days back)"
    )
    parser.add_argument("--customers", type=int, default=2000, help="seeded customers")
    parser.add_argument("--terminals", type=int, default=4000, help="seeded terminals")
    parser.add_argument("--feature-reads", type=int, default=10_000)
    args = parser.parse_args(argv)

    def seeded(client: redis.Redis) -> tuple[Bench, dict[str, Any]]:
        store = RedisFeatureStore(client)
        config = SimulatorConfig(args.customers, args.terminals, args.days)
        log(f"seeding {args.days} days: {args.customers:,} customers, {args.terminals:,} terminals")
        history = seed(store, config, int(time.time() * 1000))
        what = f"{history.transactions:,} transactions and {history.labels:,} fraud labels"
        log(f"seeded {what} in {history.seconds:.0f} s")
        notes = {
            "customers": args.customers, "terminals": args.terminals, "days": args.days,
            "transactions": history.transactions, "fraud_labels": history.labels,
            "seconds": round(history.seconds, 1), "history_ends": "at seeding time",
            "request_bodies": "each a new transaction id, a seeded (customer, terminal, "
            "amount) drawn from the history (busy customers more often); event_time = "
            "intended send time",
        }  # fmt: skip
        return score_bench(store, history), notes

    return run_api_bench(args, seeded)


if __name__ == "__main__":
    sys.exit(main())
