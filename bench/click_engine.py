"""Benchmark the clickstream engine: the real ClickstreamFunction handler on Kinesis batches.

Usage: ``python bench/click_engine.py [--quick] [--events 60000] [--batch 500] [--repeats 3]``.
Starts its own redis-server (free loopback port, no persistence, pinned to the last CPU, this
process to the others), simulates clicks (2,000 users), applies the first ones straight to
the store (warm-up, not timed), then calls ``lambda_handler`` of
``functions/clickstream/app.py`` on Kinesis-shaped events of Avro frames under the shipped
schema's fixed id: decode, features in Redis, one propensity model call per batch, each
user's latest propensity, the event log (JSON + gzip to an in-memory S3). Each repeat times
fresh events; figures are medians, beside the fraud path's bars (issue 14: 25,000 events/s,
Redis 25 µs and client 40 µs per event). Then (unless ``--heavy-clicks 0``) the
degenerate-user phase of `bench.click_heavy`: Redis µs and commands per click for a user with
a long history beside a light one. Writes ``bench/results/click_engine-<UTC timestamp>.json``
with ``clickstream.engine_events_per_s``, Redis and client CPU and Redis commands per event.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/click_engine.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "kestrel")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")

from kestrel_training.click_simulator import ClickSimulatorConfig, simulate_clicks  # noqa: E402

from bench.click_heavy import heavy_user, script_commands  # noqa: E402
from bench.engine_parts import Context, MemoryS3, NoDeadLetters, RedisServer  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel.adapters.onnx_model import LayerModelSource  # noqa: E402
from kestrel.adapters.redis_clicks import RedisClickStore  # noqa: E402
from kestrel.adapters.redis_propensity import RedisPropensities  # noqa: E402
from kestrel.adapters.s3_event_log import S3EventLog  # noqa: E402
from kestrel.click_features import CLICK_FEATURE_NAMES, CLICK_FEATURE_SET_HASH  # noqa: E402
from kestrel.click_streaming import ClickPath  # noqa: E402
from kestrel.codec import AvroEncoder, click_decoder, schema_definition  # noqa: E402
from kestrel.scoring import Scorer  # noqa: E402
from kestrel.settings import default_propensity_dir  # noqa: E402
from kestrel.shipped_schemas import shipped_id, shipped_versions  # noqa: E402

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-clickstream"
SHARD = "shardId-000000000000"
SCHEMA = "click_event.v1"
GOAL = 50_000.0  # DESIGN.md's engine goal
# The fraud path's bars of issue 14, which issue 17 gives the clickstream.
BARS = {
    "clickstream.engine_events_per_s": (">=", 25_000.0),
    "clickstream.engine_redis_us_per_event": ("<=", 25.0),
    "clickstream.engine_client_us_per_event": ("<=", 40.0),
}


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-click-engine] {message}", file=sys.stderr, flush=True)


class ShippedLookup:
    """SchemaLookup of the shipped schemas under their fixed ids (nothing registered)."""

    def schema_for(self, version_id: UUID) -> str:
        return shipped_versions()[version_id]


def load_app() -> ModuleType:
    """functions/clickstream/app.py, imported by path as the Lambda runtime would."""
    spec = importlib.util.spec_from_file_location(
        "clickstream_app", REPO / "functions" / "clickstream" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def click_frames(events: int, seed: int) -> tuple[list[bytes], list[str]]:
    """`events` simulated clicks in time order as Avro frames, with their user ids."""
    days = max(3, math.ceil(events / (7.0 * 2000)) + 1)
    sim = simulate_clicks(ClickSimulatorConfig(n_users=2000, n_days=days, seed=seed))
    rows = sim.events.head(events).to_dict("records")
    if len(rows) < events:
        raise SystemExit(f"the simulation gave {len(rows):,} clicks, fewer than {events:,}")
    encode = AvroEncoder(schema_definition(SCHEMA), shipped_id(SCHEMA))
    clean = [{k: (None if v != v else v) for k, v in row.items()} for row in rows]  # NaN: null
    return [encode(row) for row in clean], [str(row["user_id"]) for row in clean]


def kinesis_record(frame: bytes, user: str, seq: int, now: float) -> dict[str, Any]:
    """One Lambda Kinesis record (exact shape) of an Avro frame."""
    data = {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": user,
        "sequenceNumber": str(seq),
        "approximateArrivalTimestamp": now,
        "data": base64.b64encode(frame).decode("ascii"),
    }
    return {
        "kinesis": data,
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{SHARD}:{seq}",
        "eventName": "aws:kinesis:record",
        "awsRegion": "us-east-1",
        "eventSourceARN": ARN,
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/kestrel-ClickstreamRole",
    }


def kinesis_events(frames: list[bytes], users: list[str], span: range, batch: int) -> list[Any]:
    """Lambda Kinesis events of `batch` records each over `span`."""
    now = round(time.time(), 3)
    return [
        {
            "Records": [
                kinesis_record(frames[i], users[i], 10**20 + i, now)
                for i in range(start, min(span.stop, start + batch))
            ]
        }
        for start in range(span.start, span.stop, batch)
    ]


def timed_run(
    server: RedisServer, app: ModuleType, path: ClickPath, events: list[Any]
) -> dict[str, float]:
    """Call the handler on every event; events/s and Redis and client CPU µs per event."""
    context, done = Context(function_name="kestrel-ClickstreamFunction"), 0
    server.client.config_resetstat()
    redis0, cpu0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # EMF lines
        for event in events:
            response = app.lambda_handler(event, context, path=path)
            if response["batchItemFailures"]:
                failures = response["batchItemFailures"][:3]
                raise SystemExit(f"the handler reported failures: {failures}")
            done += len(event["Records"])
    wall = time.perf_counter() - t0
    client, redis_cpu = time.process_time() - cpu0, server.cpu_seconds() - redis0
    usec, calls = script_commands(server.client)
    return {
        "events": done,
        "events_per_s": done / wall,
        "redis_us_per_event": redis_cpu * 1e6 / done,
        "client_us_per_event": client * 1e6 / done,
        "redis_commands_per_event": calls / done,
        "evalsha_us_per_event": usec / done,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its result file."""
    parser = argparse.ArgumentParser(prog="python bench/click_engine.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--events", type=int, default=60_000, help="timed events per repeat")
    parser.add_argument("--warmup", type=int, default=100_000, help="clicks applied untimed")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--heavy-clicks", type=int, default=50_000, help="degenerate user's clicks (0: skip)"
    )
    parser.add_argument("--heavy-events", type=int, default=2000, help="timed clicks per user")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.warmup, args.repeats = 3000, 5000, 1
        args.heavy_clicks, args.heavy_events = min(args.heavy_clicks, 2000), 500
    load_start = os.getloadavg()
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    if pinned:  # redis-server on the last CPU, this process on the others
        os.sched_setaffinity(0, set(cpus[:-1]))
    total = args.warmup + args.events * args.repeats
    log(f"simulating {total:,} clicks (2,000 users)")
    frames, users = click_frames(total, args.seed)
    server = RedisServer(cpus[-1] if pinned else None)
    try:
        store = RedisClickStore(server.client)
        scorer = Scorer(
            LayerModelSource(default_propensity_dir()),
            feature_names=CLICK_FEATURE_NAMES,
            feature_set_hash=CLICK_FEATURE_SET_HASH,
        )
        path = ClickPath(
            click_decoder(ShippedLookup()),
            store,
            NoDeadLetters(),
            S3EventLog(MemoryS3(), "bench"),
            scorer=scorer,
            propensities=RedisPropensities(server.client),
        )
        app = load_app()
        warm = kinesis_events(frames, users, range(args.warmup), 1000)
        timed_run(server, app, path, warm)  # also the first model load and script loads
        log(f"warm-up: {args.warmup:,} clicks applied")
        runs = []
        for rep in range(args.repeats):
            start = args.warmup + rep * args.events
            events = kinesis_events(frames, users, range(start, start + args.events), args.batch)
            gc.collect()
            run = timed_run(server, app, path, events)
            log(
                f"repeat {rep + 1}: {run['events_per_s']:,.0f} events/s, Redis "
                f"{run['redis_us_per_event']:.1f} µs/event, client {run['client_us_per_event']:.1f}"
                f", {run['redis_commands_per_event']:.2f} Redis commands/event"
            )
            runs.append(run)
        heavy: dict[str, Any] = {"figures": {}, "params": {"skipped": "--heavy-clicks 0"}}
        if args.heavy_clicks > 0:
            heavy = heavy_user(server.client, args.heavy_clicks, args.heavy_events, log)
    finally:
        server.stop()
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    figures = {
        "clickstream.engine_events_per_s": (median["events_per_s"], "events/s"),
        "clickstream.engine_redis_us_per_event": (median["redis_us_per_event"], "µs"),
        "clickstream.engine_client_us_per_event": (median["client_us_per_event"], "µs"),
        "clickstream.engine_redis_commands_per_event": (
            round(median["redis_commands_per_event"], 2), "count"),
        **heavy["figures"],
    }  # fmt: skip
    load_end = os.getloadavg()
    print(f"clickstream engine, batch {args.batch}, median of {len(runs)} "
          f"(load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end); "
          f"DESIGN goal {GOAL:,.0f} events/s: "
          f"{median['events_per_s'] / GOAL:.3f} x")  # fmt: skip
    for name, (value, unit) in figures.items():
        op, bar = BARS.get(name, ("", math.nan))
        verdict = "" if not op else ("met" if (value >= bar if op == ">=" else value <= bar)
                                     else "MISSED")  # fmt: skip
        shown = f"{op} {bar:,.0f}" if op else ""
        print(f"{name:<58} {value:>12,.2f} {unit:<9} {shown:<10} {verdict}")
    params = {
        "batch": args.batch,
        "events_per_repeat": args.events,
        "repeats": args.repeats,
        "warmup_clicks": args.warmup,
        "seed": args.seed,
        "pinned": pinned,
        "model": "the shipped propensity layer",
        "runs": runs,
        "bars": BARS,
        "load_average_1m": {"start": load_start[0], "end": load_end[0]},
        "heavy_user": heavy["params"],
    }
    name = "click_engine_quick" if args.quick else "click_engine"
    path_out = write_result(name, params, figures)
    log(f"wrote {path_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
