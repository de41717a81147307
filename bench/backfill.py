"""Benchmark the backfill: simulated days from Parquet into Redis, as ``make backfill`` loads them.

Usage: ``python bench/backfill.py [--days 30] [--batch 2000] [--redis-url URL --no-ref]``.
Simulates the default population (5,000 customers, 10,000 terminals) over ``--days``,
writes it as the simulator writes it (Parquet), then times `kestrel_ops.backfill.backfill`
loading the whole range into an empty database (``backfill.events_per_s``: transactions per
second of wall time, their fraud labels applied in the same run) and loading it again
(``backfill.replay_events_per_s``: every event already stored, nothing changes). Redis and
client CPU per transaction come from INFO cpu and the process's CPU time.

Without ``--redis-url`` it starts its own redis-server (free loopback port, no persistence;
pinned to the last CPU and this process to the others unless ``--no-pin``) and measures,
on that server in the same run, the ceiling ``ref.redis_set_pipelined_per_s``
(redis-benchmark SET with ``-P 32``, as `bench/refs.py`). In the suite it gets the suite's
Redis and ``--no-ref`` (the refs part measures the ceilings). Writes
``bench/results/backfill-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
import redis.utils

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/backfill.py
    sys.path[:0] = [str(REPO), str(REPO / "training"), str(REPO / "ops")]

from kestrel_training.simulator import SimulatorConfig, simulate  # noqa: E402

from bench.engine_parts import RedisServer  # noqa: E402
from bench.refs import SIZES, measure, median  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel.adapters.redis_features import RedisFeatureStore  # noqa: E402
from kestrel.features import DAY_MS  # noqa: E402
from kestrel_ops.backfill import DEFAULT_BATCH, BackfillReport, backfill  # noqa: E402
from kestrel_ops.backfill_sources import ParquetHistory  # noqa: E402


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-backfill] {message}", file=sys.stderr, flush=True)


def cpu_seconds(client: redis.Redis) -> float:
    """The server's used_cpu_user + used_cpu_sys (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(
    client: redis.Redis, folder: Path, start_ms: int, end_ms: int, batch: int
) -> tuple[BackfillReport, dict[str, float]]:
    """One backfill of the range; its report and the CPU it cost per transaction."""
    redis0, cpu0 = cpu_seconds(client), time.process_time()
    report = backfill(RedisFeatureStore(client), ParquetHistory(folder), start_ms, end_ms, batch)
    n = max(report.transactions, 1)
    cpu = {
        "redis_us_per_event": round((cpu_seconds(client) - redis0) / n * 1e6, 2),
        "client_us_per_event": round((time.process_time() - cpu0) / n * 1e6, 2),
    }
    return report, cpu


def set_pipelined(client: redis.Redis) -> tuple[float, dict[str, Any]]:
    """redis-benchmark SET -P 32 against `client`'s server, in the next database (emptied
    after), as bench/refs.py measures it."""
    kwargs = client.connection_pool.connection_kwargs
    port, db = int(kwargs["port"]), int(kwargs.get("db", 0)) + 1
    runs = measure(port, db, SIZES["full"], ["-r", "100000", "-t", "set", "-P", "32"])
    redis.Redis(host=kwargs.get("host", "127.0.0.1"), port=port, db=db).flushdb()
    return median(runs["SET"]), {"runs_per_s": runs, "database": db, "pipeline": 32}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--days", type=int, default=30, help="simulated days to load")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="events per pipeline")
    parser.add_argument("--redis-url", help="use this Redis database (flushed) instead")
    parser.add_argument("--no-ref", action="store_true", help="skip ref.redis_set_pipelined")
    parser.add_argument("--no-replay", action="store_true", help="skip the second, replay run")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and not args.redis_url and len(cpus) >= 2
    if pinned:  # redis-server on the last CPU, this process (reader thread too) on the others
        os.sched_setaffinity(0, set(cpus[:-1]))
    config = SimulatorConfig(
        n_customers=args.customers, n_terminals=args.terminals, n_days=args.days
    )
    log(f"simulating {args.days} days ({args.customers:,} customers, {args.terminals:,} terminals)")
    sim = simulate(config)
    start_ms, end_ms = config.start_ms, config.start_ms + args.days * DAY_MS
    server = None if args.redis_url else RedisServer(cpus[-1] if pinned else None)
    client = server.client if server else redis.Redis.from_url(args.redis_url, socket_timeout=120)
    figures: dict[str, tuple[float, str]] = {}
    params: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="kestrel-bench-backfill-") as tmp:
            sim.write(tmp)
            if not args.no_ref:
                rate, raw = set_pipelined(client)
                figures["ref.redis_set_pipelined_per_s"] = (rate, "ops/s")
                params["ref"] = raw
                log(f"redis-benchmark SET -P 32: {rate:,.0f}/s (same server, same run)")
            client.flushdb()
            first, cpu = timed(client, Path(tmp), start_ms, end_ms, args.batch)
            log(
                f"backfill: {first.transactions:,} transactions, {first.frauds:,} fraud labels "
                f"in {first.seconds:.1f} s: {first.events_per_s:,.0f} events/s "
                f"(Redis {cpu['redis_us_per_event']} µs, client {cpu['client_us_per_event']} µs "
                "per event)"
            )
            if first.transactions_new != first.transactions or first.rejected:
                log("error: the first load did not store every transaction")
                return 1
            figures["backfill.events_per_s"] = (round(first.events_per_s, 1), "events/s")
            figures["backfill.redis_us_per_event"] = (cpu["redis_us_per_event"], "µs")
            figures["backfill.client_us_per_event"] = (cpu["client_us_per_event"], "µs")
            params["load"] = {**asdict(first), "reasons": first.reasons[:3], **cpu}
            if not args.no_replay:
                again, cpu = timed(client, Path(tmp), start_ms, end_ms, args.batch)
                log(f"replay: {again.events_per_s:,.0f} events/s, {again.transactions_new} new")
                if again.transactions_new or again.frauds_new:
                    log("error: the second load changed the store")
                    return 1
                figures["backfill.replay_events_per_s"] = (round(again.events_per_s, 1), "events/s")
                params["replay"] = {**asdict(again), "reasons": [], **cpu}
            version = client.info("server").get("redis_version")
            client.flushdb()
    finally:
        if server:
            server.stop()
    params.update({
        "days": args.days,
        "simulation": {"n_customers": args.customers, "n_terminals": args.terminals,
                       "seed": config.seed},
        "source": "ParquetHistory on the simulator's folder (kestrel_ops.backfill_sources)",
        "batch": args.batch,
        "events": "transactions per second of wall time; the fraud labels of the range are "
        "applied in the same run, in time order, and not counted",
        "placement": (f"redis-server pinned to CPU {cpus[-1]}, benchmark process to {cpus[:-1]}"
                      if pinned else "unpinned (OS placement)"),
        "redis": "own redis-server" if server else "the given --redis-url",
        "redis_server": version, "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
    })  # fmt: skip
    path = write_result("backfill", params, figures)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
