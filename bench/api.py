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
import contextlib
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/api.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from kestrel_training.simulator import SimulatorConfig  # noqa: E402

from bench.api_stack import (  # noqa: E402
    PREFIX,
    ApiServer,
    History,
    local_stack,
    log,
    pin_threads,
    redis_cpu_seconds,
    remove_bench_keys,
    seed,
)
from bench.e2e_support import cpu_seconds  # noqa: E402
from bench.loadgen import run_open_loop, schedule_ns  # noqa: E402
from bench.loadgen_http import prepare_requests  # noqa: E402
from bench.loadgen_stats import LoadResult, summarize, summary  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel.adapters.redis_features import RedisFeatureStore  # noqa: E402
from kestrel.settings import LocalSettings  # noqa: E402
from kestrel_local.processes import LOOPBACK, pid_matches  # noqa: E402

TARGETS = {"api.http_p99_ms": 1.0, "api.in_handler_p99_ms": 0.5, "api.feature_read_p99_ms": 0.2}
BANDS = {True: "same vCPU (~21 µs loopback round trip)", False: "separate vCPUs (~100 µs)"}


def redis_rtt_us(client: redis.Redis, n: int = 2000) -> float:
    """Median PING round trip from this thread, in µs."""
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        client.ping()
        times.append(time.perf_counter_ns() - t)
    return round(sorted(times)[n // 2] / 1000, 1)


def feature_reads(
    store: RedisFeatureStore, history: History, calls: int, rng: random.Random
) -> dict[str, Any]:
    """Time ``preview_transactions([tx])`` (one customer + one terminal) `calls` times."""
    preview = getattr(store, "preview_transactions", None)
    if preview is None:
        return {"skipped": "RedisFeatureStore.preview_transactions does not exist yet"}
    now = int(time.time() * 1000)
    txs = [history.transaction(rng, f"{PREFIX}fr.{i}", now) for i in range(calls + 1000)]
    errors, times = 0, []
    gc.collect()
    gc.disable()
    try:
        for i, tx in enumerate(txs):
            t = time.perf_counter_ns()
            out = preview([tx])
            elapsed = time.perf_counter_ns() - t
            if i >= 1000:  # the first 1,000 warm up
                times.append(elapsed / 1e6)
                errors += isinstance(out[0], Exception)
    finally:
        gc.enable()
    return {"calls": calls, "errors": errors, "ms": summarize(times), "warm_up_calls": 1000}


def load(
    args: argparse.Namespace, server: ApiServer, history: History, seconds: float, tag: str
) -> LoadResult:
    """Open-loop POST /v1/score at `args.rate` for `seconds`; bodies built before the start."""
    offsets = schedule_ns(args.rate, seconds)
    rng, start_wall = random.Random(tag), time.time() + 1.0 + len(offsets) / 50_000
    start_ms = start_wall * 1000
    bodies = []
    for i, off in enumerate(offsets):
        tx = history.transaction(rng, f"{PREFIX}tx.{tag}.{i}", round(start_ms + off / 1e6))
        doc = {"transaction_id": tx.transaction_id, "customer_id": tx.customer_id,
               "terminal_id": tx.terminal_id, "amount": tx.amount,
               "event_time": tx.event_time_ms, "channel": None, "device_id": None}  # fmt: skip
        bodies.append(json.dumps(doc, separators=(",", ":")).encode())
    headers = [("Content-Type", "application/json"), ("x-api-key", server.key)]
    requests = prepare_requests("POST", "/v1/score", f"{LOOPBACK}:{server.port}", headers, bodies)

    def progress(done: int, errors: int, p99: float, worst: float) -> None:
        window = f"last window p99 {p99:.3f} ms, max {worst:.3f} ms"
        log(f"{tag}: {done:,} requests, {errors} errors, {window}")

    return run_open_loop(
        LOOPBACK, server.port, requests, offsets, start_wall, connections=args.connections,
        timeout_s=args.timeout, keep_bodies=True, spin_us=args.spin_us, progress=progress,
    )  # fmt: skip


def degraded_and_malformed(result: LoadResult) -> tuple[int, int]:
    """Responses with ``degraded: true``, and 2xx responses without a score."""
    degraded = malformed = 0
    for i, body in enumerate(result.bodies):
        if result.is_error(i):
            continue
        try:
            doc = json.loads(body)
            degraded += doc.get("degraded") is True
            malformed += "score" not in doc
        except (ValueError, AttributeError):
            malformed += 1
    return degraded, malformed


def figures_of(run: dict[str, Any], fr: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """The figures of DESIGN.md's contract (and a few more), NaN ones left out."""
    lat, handler, reads = run["latency_ms"], run["in_handler_ms"], fr.get("ms", {})
    ms = {
        "http_p50": lat["p50"], "http_p95": lat["p95"], "http_p99": lat["p99"],
        "http_max": lat["max"], "in_handler_p50": handler["p50"],
        "in_handler_p99": handler["p99"], "feature_read_p50": reads.get("p50", math.nan),
        "feature_read_p99": reads.get("p99", math.nan),
        "client_sched_lag_p99": run["sched_lag_ms"]["p99"],
    }  # fmt: skip
    out = {f"api.{k}_ms": (round(v, 4), "ms") for k, v in ms.items() if not math.isnan(v)}
    for name in ("errors", "requests", "degraded"):
        out[f"api.{name}"] = (run[name], "count")
    for name in ("server_cpu_us_per_request", "redis_cpu_us_per_request"):
        out[f"api.{name}"] = (run[name], "µs")
    return out


def report(args: argparse.Namespace, run: dict[str, Any], fr: dict[str, Any], notes: Any) -> int:
    """Print the summary table; write the JSON result; 1 if any request failed."""
    figures = figures_of(run, fr)
    where = notes["placement"]["summary"]
    print(f"\nscoring API: {args.rate:g} req/s for {args.duration:g} s, open loop, "
          f"{args.connections} keep-alive connections ({where})")  # fmt: skip
    print(f"{'figure':<30} {'value':>10}  {'target':<9}")
    for name, (value, unit) in figures.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("met" if value <= target else "MISSED")
        shown = "" if target is None else f"<= {target:g}"
        print(f"{name:<30} {value:>10g}  {shown:<9} {unit:<5} {verdict}")
    if "skipped" in fr:
        print(f"api.feature_read_*: not measured ({fr['skipped']})")
    lag = run["sched_lag_ms"]
    print(f"client lag behind schedule: p50 {lag['p50']:.3f} ms, p99 {lag['p99']:.3f} ms, "
          f"max {lag['max']:.3f} ms; requests that waited for a connection: "
          f"{run['pool_waits']}")  # fmt: skip
    params = {**notes, "rate": args.rate, "duration_s": args.duration,
              "connections": args.connections, "warmup_s": args.warmup,
              "timeout_s": args.timeout, "spin_us": args.spin_us, "targets_ms": TARGETS,
              "run": run, "feature_read": fr}  # fmt: skip
    out = write_result("api", params, figures)
    log(f"wrote {out}")
    return 1 if run["errors"] else 0


def placement(cpus: list[int], pinned: bool, rtt: dict[str, float]) -> dict[str, Any]:
    """Where each process ran and which loopback band (DESIGN.md) each hop is in."""
    if not pinned:
        return {"summary": "unpinned: OS placement, either band", "cpus": cpus,
                "redis_ping_rtt_p50_us": rtt}  # fmt: skip
    server, client = cpus[-1], cpus[0]
    return {
        "summary": f"API + Redis on CPU {server}, load generator on CPU {client}",
        "api_server_cpu": server, "redis_server_cpu": server, "feature_read_cpu": server,
        "load_generator_cpu": client, "emulator": "unpinned (idle during the run)",
        "client_to_api_band": BANDS[False], "api_to_redis_band": BANDS[True],
        "feature_read_band": BANDS[True], "redis_ping_rtt_p50_us": rtt,
    }  # fmt: skip


def measure(
    args: argparse.Namespace, client: redis.Redis, cpus: list[int], pinned: bool, redis_url: str
) -> Any:
    """Seed, time feature reads, then warm up and load the API server; return the pieces."""
    server_cpu, client_cpu = cpus[-1], cpus[0]
    store = RedisFeatureStore(client)
    config = SimulatorConfig(args.customers, args.terminals, args.days)
    log(f"seeding {args.days} days: {args.customers:,} customers, {args.terminals:,} terminals")
    history = seed(store, config, int(time.time() * 1000))
    what = f"{history.transactions:,} transactions and {history.labels:,} fraud labels"
    log(f"seeded {what} in {history.seconds:.0f} s")
    rtt = {"unpinned": redis_rtt_us(client)}
    if pinned:
        os.sched_setaffinity(0, {server_cpu})
        rtt["from_server_cpu"] = redis_rtt_us(client)
    log(f"feature reads: {args.feature_reads:,} preview_transactions([tx]) calls in process")
    fr = feature_reads(store, history, args.feature_reads, random.Random(7))
    if "ms" in fr:
        log(f"feature read p50 {fr['ms']['p50']:.3f} ms, p99 {fr['ms']['p99']:.3f} ms")
    if pinned:
        os.sched_setaffinity(0, {client_cpu})
        rtt["from_client_cpu"] = redis_rtt_us(client)
    key = f"bench-{random.SystemRandom().getrandbits(64):016x}"
    logfile = Path(tempfile.mkdtemp(prefix="kestrel-bench-api-")) / "api-server.log"
    server = ApiServer(key, server_cpu if pinned else None, logfile, redis_url)
    try:
        server.wait_healthy()
        log(f"API server up on {LOOPBACK}:{server.port} (log {logfile}); warm-up {args.warmup:g} s")
        warm = summary(load(args, server, history, args.warmup, "warmup"))
        log(f"warm-up: p99 {warm['latency_ms']['p99']:.3f} ms, {warm['errors']} errors")
        log(f"timed run: {args.rate:g} req/s for {args.duration:g} s")
        before = (cpu_seconds(server.proc.pid), redis_cpu_seconds(client))
        result = load(args, server, history, args.duration, "timed")
        after = (cpu_seconds(server.proc.pid), redis_cpu_seconds(client))
    finally:
        server.stop()
    n = max(len(result.intended_ns), 1)
    cpu = {
        "server_cpu_us_per_request": round(((after[0] or 0.0) - (before[0] or 0.0)) / n * 1e6, 1),
        "redis_cpu_us_per_request": round((after[1] - before[1]) / n * 1e6, 1),
    }
    return history, fr, rtt, warm, result, server.command, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of timed load")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive pool size")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of untimed load first")
    parser.add_argument("--timeout", type=float, default=5.0, help="request timeout, seconds")
    parser.add_argument(
        "--days", type=int, default=38, help="days of history (terminal windows reach 37 days back)"
    )
    parser.add_argument("--customers", type=int, default=2000, help="seeded customers")
    parser.add_argument("--terminals", type=int, default=4000, help="seeded terminals")
    parser.add_argument("--feature-reads", type=int, default=10_000)
    parser.add_argument("--spin-us", type=int, default=None, help="default 400 pinned, else 0")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    args.spin_us = (400 if pinned else 0) if args.spin_us is None else args.spin_us
    settings = LocalSettings.from_env()
    with local_stack(settings) as (was_running, stops):
        client = redis.Redis.from_url(settings.redis, socket_timeout=60)
        remove_bench_keys(client)  # left by an interrupted run
        restore: dict[int, set[int]] = {}
        try:
            redis_pid = int(client.info("server")["process_id"])
            if pinned and not pid_matches(redis_pid, ("redis-server",)):
                log(f"Redis (pid {redis_pid}) is not a local redis-server: running unpinned")
                pinned, args.spin_us = False, 0
            if pinned:
                restore = pin_threads(redis_pid, {cpus[-1]})
            history, fr, rtt, warm, result, command, cpu = measure(
                args, client, cpus, pinned, settings.redis
            )
        finally:
            for tid, before in restore.items():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, before)
            if not stops:
                log(f"removed {remove_bench_keys(client):,} benchmark keys from Redis")
    run = summary(result)
    run["degraded"], malformed = degraded_and_malformed(result)
    run["errors"] += malformed
    run["errors_by_kind"]["2xx_without_score"] = malformed
    run["errors_detail"] = result.errors_detail[:20]
    run["warmup"] = {"latency_ms": warm["latency_ms"], "errors": warm["errors"]}
    run.update(cpu)
    notes = {
        "placement": placement(cpus, pinned, rtt),
        "latency": "intended send time to the last response byte (coordinated omission "
        "accounted for), over responses and timeouts; nearest-rank percentiles",
        "in_handler": "Server-Timing app;dur of each response",
        "cpu_per_request": "user + system CPU of the API server process (/proc) and of "
        "redis-server (INFO cpu) over the timed run, divided by its requests",
        "seeding": {"customers": args.customers, "terminals": args.terminals, "days": args.days,
                    "transactions": history.transactions, "fraud_labels": history.labels,
                    "seconds": round(history.seconds, 1), "history_ends": "at seeding time"},
        "request_bodies": "each a new transaction id, a seeded (customer, terminal, amount) drawn "
        "from the history (busy customers more often); event_time = intended send time",
        "stack_already_running": was_running, "server_command": " ".join(command[1:]),
        "load_generator": f"bench/loadgen.py: asyncio select() loop, h11 {version('h11')}, "
        "fixed pool, LIFO connections, FIFO wait queue (counted in latency)",
        "redis_py": redis.__version__, "python": sys.version.split()[0],
    }  # fmt: skip
    return report(args, run, fr, notes)


if __name__ == "__main__":
    sys.exit(main())
