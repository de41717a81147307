"""The API benchmarks' shared run: pinning, the API server under open-loop load, figures.

`bench.api` (``POST /v1/score``) and `bench.click_api` (``POST /v1/propensity``) differ only
in what they seed, the route and each request's body; both measure the same way through
`run_api_bench`: the local stack up (`bench.api_stack.local_stack`), redis-server and the
API server on the last CPU, the load generator on the first, an in-process read timed on
Redis's CPU, a warm-up, then one timed open-loop run at a fixed rate over keep-alive
connections (latency from each request's intended send time to the last byte of its
response, nearest-rank percentiles, in-handler time from Server-Timing).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from bench.api_stack import (
    ApiServer,
    local_stack,
    log,
    pin_threads,
    redis_cpu_seconds,
    remove_bench_keys,
)
from bench.e2e_support import cpu_seconds
from bench.loadgen import run_open_loop, schedule_ns
from bench.loadgen_http import prepare_requests
from bench.loadgen_stats import LoadResult, summarize, summary
from bench.results_io import write_result
from kestrel.settings import LocalSettings
from kestrel_local.processes import LOOPBACK, pid_matches

BANDS = {True: "same vCPU (~21 µs loopback round trip)", False: "separate vCPUs (~100 µs)"}
# One request's body: (rng, request id, intended send time in epoch ms) -> JSON document.
Body = Callable[[random.Random, str, int], dict[str, Any]]


@dataclass
class Bench:
    """What one API benchmark loads: its route, bodies, the reply field that must be there,
    an in-process read to time (items made by `reads`), its figure prefix and targets."""

    name: str  # result file prefix
    prefix: str  # figure prefix, e.g. "api." or "clickstream.api_"
    title: str
    route: str
    body: Body
    answer_field: str
    read: Callable[[Any], Any] | None
    reads: Callable[[random.Random, int], Sequence[Any]] | None
    targets: dict[str, float]


def add_load_args(parser: argparse.ArgumentParser) -> None:
    """The load's options, the same for every API benchmark."""
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of timed load")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive pool size")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of untimed load first")
    parser.add_argument("--timeout", type=float, default=5.0, help="request timeout, seconds")
    parser.add_argument("--spin-us", type=int, default=None, help="default 400 pinned, else 0")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")


def redis_rtt_us(client: redis.Redis, n: int = 2000) -> float:
    """Median PING round trip from this thread, in µs."""
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        client.ping()
        times.append(time.perf_counter_ns() - t)
    return round(sorted(times)[n // 2] / 1000, 1)


def timed_reads(read: Callable[[Any], Any], items: Sequence[Any], warm: int) -> dict[str, Any]:
    """Time ``read(item)`` for each item, the first `warm` untimed; an Exception in the
    first place of a reply counts as an error."""
    errors, times = 0, []
    gc.collect()
    gc.disable()
    try:
        for i, item in enumerate(items):
            t = time.perf_counter_ns()
            out = read(item)
            elapsed = time.perf_counter_ns() - t
            if i >= warm:
                times.append(elapsed / 1e6)
                errors += isinstance(out[0], Exception)
    finally:
        gc.enable()
    return {"calls": len(times), "errors": errors, "ms": summarize(times), "warm_up_calls": warm}


def load(
    args: argparse.Namespace, bench: Bench, server: ApiServer, seconds: float, tag: str
) -> LoadResult:
    """Open-loop POSTs to the bench's route at `args.rate` for `seconds`; bodies built first."""
    offsets = schedule_ns(args.rate, seconds)
    rng, start_wall = random.Random(tag), time.time() + 1.0 + len(offsets) / 50_000
    start_ms = start_wall * 1000
    bodies = [
        json.dumps(bench.body(rng, f"{tag}.{i}", round(start_ms + off / 1e6)),
                   separators=(",", ":")).encode()
        for i, off in enumerate(offsets)
    ]  # fmt: skip
    headers = [("Content-Type", "application/json"), ("x-api-key", server.key)]
    requests = prepare_requests("POST", bench.route, f"{LOOPBACK}:{server.port}", headers, bodies)

    def progress(done: int, errors: int, p99: float, worst: float) -> None:
        window = f"last window p99 {p99:.3f} ms, max {worst:.3f} ms"
        log(f"{tag}: {done:,} requests, {errors} errors, {window}")

    return run_open_loop(
        LOOPBACK, server.port, requests, offsets, start_wall, connections=args.connections,
        timeout_s=args.timeout, keep_bodies=True, spin_us=args.spin_us, progress=progress,
    )  # fmt: skip


def degraded_and_malformed(result: LoadResult, answer_field: str) -> tuple[int, int]:
    """Responses with ``degraded`` set, and 2xx responses without `answer_field`."""
    degraded = malformed = 0
    for i, body in enumerate(result.bodies):
        if result.is_error(i):
            continue
        try:
            doc = json.loads(body)
            degraded += doc.get("degraded") is True
            malformed += answer_field not in doc
        except (ValueError, AttributeError):
            malformed += 1
    return degraded, malformed


def figures_of(
    prefix: str, run: dict[str, Any], fr: dict[str, Any]
) -> dict[str, tuple[float, str]]:
    """The HTTP, in-handler, read and CPU figures under `prefix`, NaN ones left out."""
    lat, handler, reads = run["latency_ms"], run["in_handler_ms"], fr.get("ms", {})
    ms = {
        "http_p50": lat["p50"], "http_p95": lat["p95"], "http_p99": lat["p99"],
        "http_max": lat["max"], "in_handler_p50": handler["p50"],
        "in_handler_p99": handler["p99"], "feature_read_p50": reads.get("p50", math.nan),
        "feature_read_p99": reads.get("p99", math.nan),
        "client_sched_lag_p99": run["sched_lag_ms"]["p99"],
    }  # fmt: skip
    out = {f"{prefix}{k}_ms": (round(v, 4), "ms") for k, v in ms.items() if not math.isnan(v)}
    for name in ("errors", "requests", "degraded"):
        out[f"{prefix}{name}"] = (run[name], "count")
    for name in ("server_cpu_us_per_request", "redis_cpu_us_per_request"):
        out[f"{prefix}{name}"] = (run[name], "µs")
    return out


def report(
    args: argparse.Namespace, bench: Bench, run: dict[str, Any], fr: dict[str, Any], notes: Any
) -> int:
    """Print the summary table; write the JSON result; 1 if any request failed."""
    figures = figures_of(bench.prefix, run, fr)
    where = notes["placement"]["summary"]
    print(f"\n{bench.title}: {args.rate:g} req/s for {args.duration:g} s, open loop, "
          f"{args.connections} keep-alive connections ({where})")  # fmt: skip
    print(f"{'figure':<40} {'value':>10}  {'target':<9}")
    for name, (value, unit) in figures.items():
        target = bench.targets.get(name)
        verdict = "" if target is None else ("met" if value <= target else "MISSED")
        shown = "" if target is None else f"<= {target:g}"
        print(f"{name:<40} {value:>10g}  {shown:<9} {unit:<5} {verdict}")
    if "skipped" in fr:
        print(f"{bench.prefix}feature_read_*: not measured ({fr['skipped']})")
    lag = run["sched_lag_ms"]
    print(f"client lag behind schedule: p50 {lag['p50']:.3f} ms, p99 {lag['p99']:.3f} ms, "
          f"max {lag['max']:.3f} ms; requests that waited for a connection: "
          f"{run['pool_waits']}")  # fmt: skip
    params = {**notes, "rate": args.rate, "duration_s": args.duration,
              "connections": args.connections, "warmup_s": args.warmup,
              "timeout_s": args.timeout, "spin_us": args.spin_us, "targets_ms": bench.targets,
              "route": bench.route, "run": run, "feature_read": fr}  # fmt: skip
    out = write_result(bench.name, params, figures)
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
    args: argparse.Namespace,
    bench: Bench,
    client: redis.Redis,
    cpus: list[int],
    pinned: bool,
    redis_url: str,
) -> dict[str, Any]:
    """Time the in-process reads, then warm up and load the API server; return the pieces."""
    server_cpu, client_cpu = cpus[-1], cpus[0]
    rtt = {"unpinned": redis_rtt_us(client)}
    if pinned:
        os.sched_setaffinity(0, {server_cpu})
        rtt["from_server_cpu"] = redis_rtt_us(client)
    fr: dict[str, Any] = {"skipped": "no in-process read for this route"}
    if bench.read is not None and bench.reads is not None and args.feature_reads > 0:
        log(f"feature reads: {args.feature_reads:,} calls in process")
        items = bench.reads(random.Random(7), args.feature_reads + 1000)
        fr = timed_reads(bench.read, items, 1000)
        log(f"feature read p50 {fr['ms']['p50']:.3f} ms, p99 {fr['ms']['p99']:.3f} ms")
    if pinned:
        os.sched_setaffinity(0, {client_cpu})
        rtt["from_client_cpu"] = redis_rtt_us(client)
    key = f"bench-{random.SystemRandom().getrandbits(64):016x}"
    logfile = Path(tempfile.mkdtemp(prefix=f"kestrel-bench-{bench.name}-")) / "api-server.log"
    server = ApiServer(key, server_cpu if pinned else None, logfile, redis_url)
    try:
        server.wait_healthy()
        log(f"API server up on {LOOPBACK}:{server.port} (log {logfile}); warm-up {args.warmup:g} s")
        warm = summary(load(args, bench, server, args.warmup, "warmup"))
        log(f"warm-up: p99 {warm['latency_ms']['p99']:.3f} ms, {warm['errors']} errors")
        log(f"timed run: {args.rate:g} req/s for {args.duration:g} s, POST {bench.route}")
        before = (cpu_seconds(server.proc.pid), redis_cpu_seconds(client))
        result = load(args, bench, server, args.duration, "timed")
        after = (cpu_seconds(server.proc.pid), redis_cpu_seconds(client))
    finally:
        server.stop()
    n = max(len(result.intended_ns), 1)
    run = summary(result)
    run["degraded"], malformed = degraded_and_malformed(result, bench.answer_field)
    run["errors"] += malformed
    run["errors_by_kind"][f"2xx_without_{bench.answer_field}"] = malformed
    run["errors_detail"] = result.errors_detail[:20]
    run["warmup"] = {"latency_ms": warm["latency_ms"], "errors": warm["errors"]}
    run["server_cpu_us_per_request"] = round(((after[0] or 0.0) - (before[0] or 0.0)) / n * 1e6, 1)
    run["redis_cpu_us_per_request"] = round((after[1] - before[1]) / n * 1e6, 1)
    return {"run": run, "feature_read": fr, "rtt": rtt, "command": server.command}


def run_api_bench(
    args: argparse.Namespace,
    seed: Callable[[redis.Redis], tuple[Bench, dict[str, Any]]],
) -> int:
    """Bring the stack up, pin, seed (`seed` returns the bench and its seeding notes, with
    ``request_bodies`` saying what each request is), measure, remove the benchmark's keys,
    and report."""
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
            bench, seeding = seed(client)
            got = measure(args, bench, client, cpus, pinned, settings.redis)
        finally:
            for tid, before in restore.items():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, before)
            if not stops:
                log(f"removed {remove_bench_keys(client):,} benchmark keys from Redis")
    bodies = seeding.pop("request_bodies", "")
    notes = {
        "placement": placement(cpus, pinned, got["rtt"]),
        "latency": "intended send time to the last response byte (coordinated omission "
        "accounted for), over responses and timeouts; nearest-rank percentiles",
        "in_handler": "Server-Timing app;dur of each response",
        "cpu_per_request": "user + system CPU of the API server process (/proc) and of "
        "redis-server (INFO cpu) over the timed run, divided by its requests",
        "seeding": seeding, "request_bodies": bodies,
        "stack_already_running": was_running, "server_command": " ".join(got["command"][1:]),
        "load_generator": f"bench/loadgen.py: asyncio select() loop, h11 {version('h11')}, "
        "fixed pool, LIFO connections, FIFO wait queue (counted in latency)",
        "redis_py": redis.__version__, "python": sys.version.split()[0],
    }  # fmt: skip
    return report(args, bench, got["run"], got["feature_read"], notes)
