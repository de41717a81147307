"""Benchmark a pinned Feast beside Kestrel: the same features, the same Redis, the same run.

Usage: ``python bench/feast.py [--redis-url redis://127.0.0.1:P/3] [--rate 200] [--duration 30]``
(``make bench-feast``; ``make bench`` runs it as its ``feast`` part against the suite's Redis).
Installs ``feast[redis]`` (pinned in bench/feast_setup.py) into ``.venv-feast`` once (a stamp),
computes Kestrel's features (every name of FEATURE_NAMES) for the entities bench/api.py seeds,
each customer and terminal at its latest transaction, and has bench/feast_driver.py (run by
.venv-feast's python) write them through Feast's Redis online store and time
``get_online_features`` for one entity row (a customer and a terminal, all features) in
process. Then starts ``feast serve`` on a free loopback port and sends ``POST
/get-online-features`` at a fixed rate over keep-alive connections with bench/loadgen.py, as
bench/api.py loads ``/v1/score`` (200 req/s by default: see RATE_NOTE). CPU placement (2+
CPUs, unless ``--no-pin``) is bench/api.py's: Redis, the read loop and ``feast serve`` on the
last CPU, the load generator on the first. Without ``--redis-url`` it runs its own
redis-server. When Feast cannot be installed the result says ``skipped`` with the reason and
the exit code is 0. Writes ``bench/results/feast-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/feast.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from kestrel_training.simulator import SimulatorConfig  # noqa: E402

from bench.api_load import BANDS, redis_rtt_us  # noqa: E402
from bench.api_stack import pin_threads  # noqa: E402
from bench.feast_serve import FeastServer, bodies_for, incomplete  # noqa: E402
from bench.feast_setup import (  # noqa: E402
    FEAST_SPEC,
    FEAST_VENV,
    FeastUnavailable,
    connection_string,
    driver_spec,
    ensure_feast,
    entity_tables,
    feature_refs,
    run_driver,
)
from bench.loadgen import run_open_loop, schedule_ns  # noqa: E402
from bench.loadgen_http import prepare_requests  # noqa: E402
from bench.loadgen_stats import LoadResult, summarize, summary  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel_local.processes import LOOPBACK, pid_matches  # noqa: E402
from kestrel_local.services import running_redis  # noqa: E402

PROJECT_KEYS = b"*kestrel_bench"  # Feast's Redis keys end with the project name
SERVE_ARGS = "--no-access-log --max-requests 0"  # no access log, no worker recycling
RATE_NOTE = (
    "feast serve spends ~1.2 ms of CPU per request on the CPU it shares with Redis, so "
    "bench/api.py's 500 req/s saturates it (queueing, seconds of latency); 200 req/s keeps it "
    "well below saturation. With its default --max-requests 1000 a worker restart stalls "
    "~480 ms every ~1,000 requests (DESIGN.md), so recycling is off."
)


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-feast] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def redis_url(given: str | None, workdir: Path) -> Iterator[str]:
    """`given`, or the URL (db 3) of a redis-server of our own, stopped on exit."""
    if given:
        yield given
        return
    with running_redis(workdir / "redis") as handle:
        log(f"started redis-server {handle.address} (this run's own)")
        yield handle.address.rsplit("/", 1)[0] + "/3"


def remove_feast_keys(client: redis.Redis) -> int:
    """UNLINK the keys of this benchmark's Feast project; return how many."""
    keys = list(client.scan_iter(match=PROJECT_KEYS, count=10_000))
    return sum(int(client.unlink(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))


def http_load(
    args: argparse.Namespace, port: int, refs: list[str], pairs: list[tuple[str, str]], tag: str
) -> LoadResult:
    """Open-loop POST /get-online-features at `args.rate`; bodies built before the start."""
    offsets = schedule_ns(args.rate, args.warmup if tag == "warmup" else args.duration)
    bodies = bodies_for(refs, [pairs[i % len(pairs)] for i in range(len(offsets))])
    headers = [("Content-Type", "application/json")]
    requests = prepare_requests("POST", "/get-online-features", f"{LOOPBACK}:{port}", headers,
                                bodies)  # fmt: skip

    def progress(done: int, errors: int, p99: float, worst: float) -> None:
        log(f"{tag}: {done:,} requests, {errors} errors, last window p99 {p99:.3f} ms, "
            f"max {worst:.3f} ms")  # fmt: skip

    start_wall = time.time() + 1.0 + len(offsets) / 50_000
    return run_open_loop(
        LOOPBACK, port, requests, offsets, start_wall, connections=args.connections,
        timeout_s=args.timeout, keep_bodies=True, spin_us=args.spin_us, progress=progress,
    )  # fmt: skip


def placement(cpus: list[int], pinned: bool, rtt: dict[str, float]) -> dict[str, Any]:
    """Where each process ran and which loopback band each hop is in (as bench/api.py)."""
    if not pinned:
        return {"summary": "unpinned: OS placement, either band", "cpus": cpus,
                "redis_ping_rtt_p50_us": rtt}  # fmt: skip
    server, client = cpus[-1], cpus[0]
    return {
        "summary": f"Feast reads, feast serve + Redis on CPU {server}, load generator on "
        f"CPU {client} (bench/api.py's placement)",
        "feast_read_cpu": server, "feast_serve_cpu": server, "redis_server_cpu": server,
        "load_generator_cpu": client, "read_band": BANDS[True],
        "serve_to_redis_band": BANDS[True], "client_to_serve_band": BANDS[False],
        "redis_ping_rtt_p50_us": rtt,
    }  # fmt: skip


def figures_of(reads_ms: dict[str, float], http: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """DESIGN.md's feast.* figures (and a few more) from the read and HTTP summaries."""
    lat = http.get("latency_ms", {})
    ms = {"read_p50": reads_ms.get("p50"), "read_p99": reads_ms.get("p99"),
          "read_max": reads_ms.get("max"), "http_p50": lat.get("p50"),
          "http_p99": lat.get("p99"), "http_max": lat.get("max")}  # fmt: skip
    out = {f"feast.{k}_ms": (round(v, 4), "ms") for k, v in ms.items() if v is not None and v == v}
    if http:
        out["feast.http_errors"] = (http["errors"], "count")
        out["feast.http_requests"] = (http["requests"], "count")
    return out


def skipped(reason: str, spec: str) -> int:
    """Write the result of a part that could not run Feast; exit code 0."""
    log(f"skipped: {reason}")
    path = write_result("feast", {"skipped": reason, "feast_spec": spec}, {})
    log(f"wrote {path}")
    return 0


def measure(args: argparse.Namespace, python: Path, url: str, workdir: Path) -> dict[str, Any]:
    """Tables, pinning, the driver's in-process reads, then feast serve under load."""
    config = SimulatorConfig(args.customers, args.terminals, args.days)
    t0 = time.perf_counter()
    tables = entity_tables(config, int(time.time() * 1000))
    sizes = {k: len(v["ids"]) for k, v in tables.views.items()}
    log(f"features of {sizes} entities from {tables.transactions:,} simulated transactions "
        f"in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    client = redis.Redis.from_url(url, socket_timeout=60)
    remove_feast_keys(client)  # left by an interrupted run
    redis_pid = int(client.info("server")["process_id"])
    if pinned and not pid_matches(redis_pid, ("redis-server",)):
        log(f"Redis (pid {redis_pid}) is not a local redis-server: running unpinned")
        pinned = False
    args.spin_us = (400 if pinned else 0) if args.spin_us is None else args.spin_us
    server_cpu = cpus[-1] if pinned else None
    restore = pin_threads(redis_pid, {cpus[-1]}) if pinned else {}
    rtt = {"unpinned": redis_rtt_us(client)}
    try:
        if pinned:
            os.sched_setaffinity(0, {cpus[-1]})
            rtt["from_server_cpu"] = redis_rtt_us(client)
            os.sched_setaffinity(0, {cpus[0]})
            rtt["from_client_cpu"] = redis_rtt_us(client)
        rng = random.Random(7)
        rows = tables.draw(rng, args.reads + args.warmup_reads)
        spec = driver_spec(tables, workdir / "repo", connection_string(url), rows,
                           args.warmup_reads, server_cpu)  # fmt: skip
        log(f"Feast driver: write {sizes}, then {args.reads:,} timed get_online_features calls")
        driver = run_driver(python, spec, workdir, args.driver_timeout)
        reads_ms = summarize(ns / 1e6 for ns in driver.pop("read_ns"))
        log(f"in process: p50 {reads_ms['p50']:.3f} ms, p99 {reads_ms['p99']:.3f} ms")
        refs = feature_refs(tables.views)
        server = FeastServer(python.parent.parent, workdir / "repo", server_cpu, args.serve_args)
        try:
            server.wait_healthy()
            log(f"feast serve up on {LOOPBACK}:{server.port}; warm-up {args.warmup:g} s")
            pairs = tables.draw(rng, 20_000)
            warm = summary(http_load(args, server.port, refs, pairs, "warmup"))
            log(f"warm-up: p99 {warm['latency_ms']['p99']:.3f} ms, {warm['errors']} errors")
            log(f"timed run: {args.rate:g} req/s for {args.duration:g} s")
            result = http_load(args, server.port, refs, pairs, "timed")
        finally:
            server.stop()
    finally:
        for tid, before in restore.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)
        log(f"removed {remove_feast_keys(client):,} Feast keys from Redis")
    http = summary(result)
    http["incomplete"] = incomplete(result, len(refs) + 2)
    http["errors"] += http["incomplete"]
    http["errors_detail"] = result.errors_detail[:20]
    http["warmup"] = {"latency_ms": warm["latency_ms"], "errors": warm["errors"]}
    seeding = {"customers": args.customers, "terminals": args.terminals, "days": args.days,
               "transactions": tables.transactions, "entities": sizes}  # fmt: skip
    where = placement(cpus, pinned, rtt)
    return {"driver": driver, "reads_ms": reads_ms, "http": http, "seeding": seeding,
            "placement": where, "serve_command": server.command[1:]}  # fmt: skip


def report(args: argparse.Namespace, got: dict[str, Any]) -> int:
    """Print the figures; write the JSON result; 1 if a request or a read failed."""
    figures = figures_of(got["reads_ms"], got["http"])
    driver = got.pop("driver")
    print(f"\nFeast {driver['versions'].get('feast')}: {len(driver['features'])} features, "
          f"one customer + one terminal ({got['placement']['summary']})")  # fmt: skip
    for name, (v, unit) in figures.items():
        print(f"{name:<24} {v:>10g} {unit}")
    params = {
        **got, "feast_spec": args.feast_spec, "feast_venv": str(args.feast_venv),
        "feast_versions": driver["versions"], "features": driver["features"],
        "rows_written": driver["rows_written"], "apply_s": driver["apply_s"],
        "write_s": driver["write_s"], "read_cpu": driver["cpu"],
        "reads": {"calls": args.reads, "warm_up_calls": driver["warmup_calls"],
                  "rows_with_null": driver["rows_with_null"], "sample": driver["sample"],
                  "what": "FeatureStore.get_online_features(every ref, one entity row with "
                  "customer_id and terminal_id).to_dict(), collector off, in one process"},
        "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
        "connections": args.connections, "timeout_s": args.timeout, "spin_us": args.spin_us,
        "latency": "intended send time to the last response byte (coordinated omission "
        "accounted for); nearest-rank percentiles, as bench/api.py", "rate_note": RATE_NOTE,
        "loadavg": {"start": args.loadavg, "end": [round(v, 2) for v in os.getloadavg()]},
    }  # fmt: skip
    path = write_result("feast", params, figures)
    log(f"wrote {path}")
    return 1 if got["http"]["errors"] or driver["rows_with_null"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis-url", help="a redis-server to use (default: start our own)")
    parser.add_argument("--customers", type=int, default=2000, help="as bench/api.py")
    parser.add_argument("--terminals", type=int, default=4000, help="as bench/api.py")
    parser.add_argument("--days", type=int, default=38, help="days of simulated history")
    parser.add_argument("--reads", type=int, default=10_000, help="timed in-process reads")
    parser.add_argument("--warmup-reads", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="HTTP req/s (see RATE_NOTE)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of timed load")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of untimed load")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive pool size")
    parser.add_argument("--timeout", type=float, default=5.0, help="request timeout, seconds")
    parser.add_argument("--spin-us", type=int, default=None, help="default 400 pinned, else 0")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    parser.add_argument("--serve-args", default=SERVE_ARGS, help="extra `feast serve` flags")
    parser.add_argument("--feast-spec", default=FEAST_SPEC, help="what pip installs")
    parser.add_argument("--feast-venv", type=Path, default=FEAST_VENV)
    parser.add_argument("--driver-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    args.loadavg = [round(v, 2) for v in os.getloadavg()]  # others' work shares the machine
    try:
        log(f"Feast: {args.feast_spec} in {args.feast_venv} (installed once, then a stamp)")
        python = ensure_feast(args.feast_venv, args.feast_spec)
    except FeastUnavailable as exc:
        return skipped(str(exc), args.feast_spec)
    with tempfile.TemporaryDirectory(prefix="kestrel-bench-feast-") as tmp:
        workdir = Path(tmp)
        with redis_url(args.redis_url, workdir) as url:
            got = measure(args, python, url, workdir)
    return report(args, got)


if __name__ == "__main__":
    sys.exit(main())
