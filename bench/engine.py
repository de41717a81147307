"""Benchmark the engine: the real TransactionsFunction handler on Kinesis batches, real Redis.

Usage: ``python bench/engine.py [--quick] [--seconds 20] [--repeats 3] [--batches 100,500,1000]``.
Starts its own redis-server (free loopback port, no persistence), simulates the default
population (5,000 customers, 10,000 terminals), applies the first simulated days straight to
the store (warm-up, not timed), then calls ``lambda_handler`` of ``functions/transactions/app.py``
on Kinesis-shaped events of Avro frames, each batch size for a bounded time, sizes interleaved,
``--repeats`` times; each figure is the median. Each repeat also runs the largest batch size
with a challenger set (shadow scoring: a second session of the same model, as heavy as the
champion), so the report shows the engine with and without one (``--no-shadow``: skip).
The event log is `S3EventLog` on an in-memory S3 double (same JSON + gzip work, no
network: S3 is not the engine). A last phase times the
handler's parts, reads each script's server time and runs cProfile. Writes
``bench/results/engine-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
import redis.client
import redis.utils

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/engine.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "kestrel")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")

from bench.engine_heavy import heavy_entity  # noqa: E402
from bench.engine_parts import (  # noqa: E402
    Context,
    CountingPath,
    FixedModelSource,
    MemoryKinesis,
    MemoryLookup,
    MemoryS3,
    NoDeadLetters,
    RedisServer,
)
from bench.engine_profile import STAGES, profile  # noqa: E402
from bench.engine_stream import Stream, kinesis_events, simulated_stream  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel.adapters.kinesis_decisions import KinesisDecisionStream  # noqa: E402
from kestrel.adapters.onnx_model import LayerModelSource, OnnxModel  # noqa: E402
from kestrel.adapters.redis_decisions import RedisDecisions  # noqa: E402
from kestrel.adapters.redis_features import RedisFeatureStore  # noqa: E402
from kestrel.adapters.s3_event_log import S3EventLog  # noqa: E402
from kestrel.codec import transaction_decoder  # noqa: E402
from kestrel.features import DAY_MS  # noqa: E402
from kestrel.scoring import Scorer  # noqa: E402
from kestrel.settings import default_model_dir  # noqa: E402

TARGET = 50_000.0  # DESIGN.md, Performance targets: events/s on a 2-core machine


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-engine] {message}", file=sys.stderr, flush=True)


def load_app() -> ModuleType:
    """functions/transactions/app.py, imported by path as the Lambda runtime would."""
    app = REPO / "functions" / "transactions" / "app.py"
    spec = importlib.util.spec_from_file_location("transactions_app", app)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Bench:
    """What the runs share: server, store, handler, path, stream and the runs so far."""

    server: RedisServer
    store: RedisFeatureStore
    app: ModuleType
    path: CountingPath
    stream: Stream
    runs: list[dict[str, Any]] = field(default_factory=list)
    challenger: Scorer | None = None

    def feed_labels(self, before_ms: int) -> None:
        """Apply the fraud labels known before `before_ms` (untimed: another function's job)."""
        labels = self.stream.due_labels(before_ms)
        for start in range(0, len(labels), 1000):
            self.store.apply_labels(labels[start : start + 1000])

    def warm_up(self, days: int) -> int:
        """Apply the first `days` simulated days straight to the store; return the events."""
        first = self.stream.tx[0].event_time_ms
        end, n = first - first % DAY_MS + days * DAY_MS, 0
        while self.stream.cursor < len(self.stream.tx):
            if self.stream.tx[self.stream.cursor].event_time_ms >= end:
                break
            span = self.stream.take(1000)
            self.feed_labels(self.stream.tx[span.start].event_time_ms)
            self.store.apply_transactions([self.stream.tx[i] for i in span])
            n += len(span)
        return n

    def prepare(self, events: int, batch: int) -> tuple[int, list[dict[str, Any]]]:
        """Labels due, then the next `events` as Kinesis events (not consumed yet)."""
        start = self.stream.cursor
        self.feed_labels(self.stream.tx[start].event_time_ms)
        span = range(start, min(len(self.stream.tx), start + events))
        prepared = kinesis_events(self.stream, span, batch)
        gc.collect()
        gc.freeze()  # prepared events stay out of the collector's way, as in a Lambda's heap
        return start, prepared

    def invoke(self, events: list[dict[str, Any]], seconds: float = float("inf")) -> int:
        """Call the handler on `events` until they run out or `seconds` pass; return events."""
        context, done, deadline = Context(), 0, time.perf_counter() + seconds
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # EMF lines
            for event in events:
                response = self.app.lambda_handler(event, context, path=self.path)
                if response["batchItemFailures"]:
                    raise RuntimeError(f"failed: {response['batchItemFailures'][:3]}")
                done += len(event["Records"])
                if time.perf_counter() >= deadline:
                    break
        return done

    def timed(
        self, batch: int, seconds: float, max_events: int, shadow: bool = False
    ) -> dict[str, Any]:
        """One timed run of one batch size (with the challenger set if `shadow`), with Redis
        and client CPU measured around it."""
        start, events = self.prepare(max_events, batch)
        self.path._event_log._client.objects.clear()  # type: ignore[attr-defined]
        self.server.client.config_resetstat()
        self.path.challenger, self.path.shadow_ms = self.challenger if shadow else None, 0.0
        redis0, cpu0, t0 = self.server.cpu_seconds(), time.process_time(), time.perf_counter()
        try:
            done = self.invoke(events, seconds)
        finally:
            self.path.challenger = None
        elapsed = time.perf_counter() - t0
        client_cpu, redis_cpu = time.process_time() - cpu0, self.server.cpu_seconds() - redis0
        calls, usec = self.server.evalsha_usec()
        self.stream.cursor = start + done
        run = {
            "batch": batch, "events": done, "seconds": round(elapsed, 3),
            "events_per_s": round(done / elapsed, 1),
            "client_cpu_s": round(client_cpu, 3), "redis_cpu_s": round(redis_cpu, 3),
            "client_cpu_us_per_event": round(client_cpu / done * 1e6, 2),
            "redis_cpu_us_per_event": round(redis_cpu / done * 1e6, 2),
            "evalsha_usec_per_call": round(usec / calls, 2) if calls else 0.0,
            "shadow": shadow,
            "shadow_us_per_event": round(self.path.shadow_ms * 1000 / done, 2) if shadow else 0.0,
        }  # fmt: skip
        self.runs.append(run)
        return run


def median_of(runs: list[dict[str, Any]], batch: int, key: str, shadow: bool = False) -> float:
    """The median of `key` over the runs of one batch size (with a challenger if `shadow`)."""
    return round(
        float(statistics.median(
            r[key] for r in runs if r["batch"] == batch and r.get("shadow", False) == shadow
        )),
        2,
    )  # fmt: skip


def shadow_challenger(folder: str) -> Scorer:
    """The bench's challenger: a second session of the layer's model under another version."""
    layer = OnnxModel.from_folder(folder)
    version = f"{layer.manifest['model_version']}-shadow"
    model = OnnxModel(Path(folder) / "model.onnx", {**layer.manifest, "model_version": version})
    return Scorer(FixedModelSource(model))


def shadow_figures(bench: Bench, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures and params of the runs with a challenger against those without, at `batch`."""
    plain = median_of(bench.runs, batch, "events_per_s")
    shadowed = median_of(bench.runs, batch, "events_per_s", shadow=True)
    own = median_of(bench.runs, batch, "shadow_us_per_event", shadow=True)
    overhead = round(1e6 / shadowed - 1e6 / plain, 2)
    figures = {
        "engine.shadow_events_per_s": (shadowed, "events/s"),
        "engine.shadow_overhead_us_per_event": (overhead, "µs"),
        "engine.shadow_challenger_us_per_event": (own, "µs"),
    }
    params = {
        "batch": batch, "events_per_s_without": plain, "events_per_s_with": shadowed,
        "overhead_us_per_event": overhead, "challenger_scoring_us_per_event": own,
        "challenger": "a second onnxruntime session of the model layer's model (as heavy as "
        "the champion), under another version; overhead = 1e6/with - 1e6/without",
    }  # fmt: skip
    return figures, params


def report(
    args: argparse.Namespace,
    bench: Bench,
    prof: dict[str, Any],
    notes: dict[str, Any],
    heavy: dict[str, Any],
) -> int:
    """Print the table and the profile; write the JSON result."""
    sizes = [int(b) for b in args.batches.split(",")]

    def med(b: int, key: str) -> float:
        return median_of(bench.runs, b, key)

    rate = {b: med(b, "events_per_s") for b in sizes}
    best = max(sizes, key=lambda b: rate[b])
    print(f"\nengine throughput, median of {args.repeats} (target {TARGET:,.0f} events/s)")
    print(f"{'batch':>6} {'events/s':>9} {'x target':>8} {'Redis CPU':>10} {'client CPU':>11}")
    for b in sizes:
        redis_us, client_us = med(b, "redis_cpu_us_per_event"), med(b, "client_cpu_us_per_event")
        print(
            f"{b:>6} {rate[b]:>9,.0f} {rate[b] / TARGET:>8.3f} {redis_us:>7} µs {client_us:>8} µs"
        )
    shadow: dict[str, Any] = {"skipped": "--no-shadow"}
    shadow_figs: dict[str, Any] = {}
    if any(r.get("shadow") for r in bench.runs):
        shadow_figs, shadow = shadow_figures(bench, max(sizes))
        print(
            f"\nwith a challenger (shadow scoring), batch {shadow['batch']}: "
            f"{shadow['events_per_s_with']:,.0f} events/s against "
            f"{shadow['events_per_s_without']:,.0f}; overhead "
            f"{shadow['overhead_us_per_event']} µs/event, the challenger's own scoring "
            f"{shadow['challenger_scoring_us_per_event']} µs/event"
        )
    print(f"\nwhere the time goes, batch {best} (wall µs per event, {prof['events']:,} events):")
    for name, value in prof["breakdown_us_per_event"].items():
        print(f"  {name:<46} {value:>8}")
    print(f"  Redis EVALSHA µs per script: {prof['server_evalsha_us_per_script']}")
    print("cProfile, top own time (µs/event; profiling inflates Python code):")
    for row in prof["cprofile_top_tottime"][:12]:
        own, cum = row["tottime_us_per_event"], row["cumtime_us_per_event"]
        print(f"  own {own:>7} cum {cum:>8}  {row['function']}")
    params = {
        **notes, "target_events_per_s": TARGET, "ratio_to_target": round(rate[best] / TARGET, 4),
        "batch_sizes": sizes, "best_batch": best, "repeats": args.repeats,
        "statistic": "median of repeats (sizes interleaved)", "seconds_per_run": args.seconds,
        "events_timed": sum(r["events"] for r in bench.runs),
        "redis_cpu_s_timed": round(sum(r["redis_cpu_s"] for r in bench.runs), 3),
        "client_cpu_s_timed": round(sum(r["client_cpu_s"] for r in bench.runs), 3),
        "redis_cpu_us_per_event": {b: med(b, "redis_cpu_us_per_event") for b in sizes},
        "client_cpu_us_per_event": {b: med(b, "client_cpu_us_per_event") for b in sizes},
        "evalsha_usec_per_call": {b: med(b, "evalsha_usec_per_call") for b in sizes},
        "outcomes": bench.path.totals, "runs": bench.runs, "profile": prof,
        "heavy_entity": heavy["params"], "shadow": shadow,
    }  # fmt: skip
    figures = {"engine.events_per_s": (rate[best], "events/s")}
    figures |= {f"engine.events_per_s_batch_{b}": (rate[b], "events/s") for b in sizes}
    figures["engine.redis_us_per_event"] = (med(best, "redis_cpu_us_per_event"), "µs")
    figures["engine.client_us_per_event"] = (med(best, "client_cpu_us_per_event"), "µs")
    for stage, us in prof["breakdown_us_per_event"].items():
        figures[f"engine.stage.{STAGES[stage]}_us"] = (us, "µs")
    figures |= heavy["figures"] | shadow_figs
    out = write_result("engine_quick" if args.quick else "engine", params, figures)
    log(f"wrote {out}")
    return 0 if not bench.path.totals["failed"] and not bench.path.totals["duplicates"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke use")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound of one run")
    parser.add_argument("--max-events", type=int, default=150_000, help="event bound of one run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="100,500,1000")
    parser.add_argument("--warmup-days", type=int, default=31, help="30-day windows + 1")
    parser.add_argument("--days", type=int, default=183, help="simulated days")
    parser.add_argument("--profile-events", type=int, default=20_000)
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    parser.add_argument(
        "--heavy-transactions",
        type=int,
        default=1_000_000,
        help="transactions in the degenerate entity's 30-day window (0: skip that phase)",
    )
    parser.add_argument("--heavy-events", type=int, default=5000)
    parser.add_argument(
        "--no-shadow", action="store_true", help="no runs with a challenger (shadow scoring)"
    )
    args = parser.parse_args(argv)
    if args.heavy_transactions and args.heavy_events < 1:
        parser.error("--heavy-events must be at least 1 (--heavy-transactions 0 skips that phase)")
    if args.quick:
        args.seconds, args.max_events, args.repeats, args.batches = 1.0, 3000, 1, "100,500"
        args.warmup_days, args.days, args.profile_events = 1, 3, 1000
        args.heavy_transactions, args.heavy_events = 20_000, 1000
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    if pinned:  # redis-server on the last CPU, this process on the others
        os.sched_setaffinity(0, set(cpus[:-1]))
    log(f"simulating {args.days} days (5,000 customers, 10,000 terminals)")
    stream = simulated_stream(args.days)
    gc.collect()
    gc.freeze()
    server = RedisServer(cpus[-1] if pinned else None)
    try:
        store = RedisFeatureStore(server.client)
        log_ = S3EventLog(MemoryS3(), "bench")
        decisions = (
            RedisDecisions(server.client, 3600),
            KinesisDecisionStream(MemoryKinesis(), "bench-decisions"),  # type: ignore[arg-type]
        )
        scorer = Scorer(LayerModelSource(default_model_dir()))
        path = CountingPath(
            transaction_decoder(MemoryLookup()), store, NoDeadLetters(), log_, scorer, decisions
        )
        bench = Bench(server, store, load_app(), path, stream)
        if not args.no_shadow:
            bench.challenger = shadow_challenger(default_model_dir())
        t0 = time.perf_counter()
        warm = bench.warm_up(args.warmup_days)
        log(f"warm-up: {warm:,} events, {args.warmup_days} days, {time.perf_counter() - t0:.0f}s")
        sizes = [int(b) for b in args.batches.split(",")]
        left = len(stream.tx) - stream.cursor - 2 * args.profile_events
        runs = [(b, False) for b in sizes] + ([] if args.no_shadow else [(max(sizes), True)])
        per_run = min(args.max_events, left // (args.repeats * len(runs)))
        for rep in range(args.repeats):
            for batch, shadow in runs:
                run = bench.timed(batch, args.seconds, per_run, shadow)
                rate, redis_us = run["events_per_s"], run["redis_cpu_us_per_event"]
                with_challenger = ", with a challenger" if shadow else ""
                log(
                    f"repeat {rep + 1}, batch {batch}{with_challenger}: {rate:,.0f} events/s, "
                    f"Redis {redis_us} µs/ev"
                )
        best = max(sizes, key=lambda b: median_of(bench.runs, b, "events_per_s"))
        log(f"profiling batch {best}: {args.profile_events:,} events timed, as many profiled")
        prof = profile(bench, best, args.profile_events)
        heavy = (
            heavy_entity(store, args.heavy_transactions, args.heavy_events, log)
            if args.heavy_transactions
            else {"figures": {}, "params": {"skipped": "--heavy-transactions 0"}}
        )
        version = server.client.info("server").get("redis_version")
    finally:
        server.stop()
    notes = {
        "machine_note": f"{os.cpu_count()} cores; "
        + (f"redis-server pinned to CPU {cpus[-1]}, benchmark process to {cpus[:-1]}"
           if pinned else "unpinned: client and redis-server share the CPUs"),
        "warm_up": f"{warm:,} events, the first {args.warmup_days} simulated days, applied "
        "straight to the store before timing (with fraud labels known by then); not in figures",
        "labels": "fraud labels due before each run are applied between runs, untimed",
        "simulation": {"n_customers": 5000, "n_terminals": 10000, "n_days": args.days},
        "max_events_per_run": per_run,
        "records": "Kinesis event shape, base64 Avro transaction.v2 in Glue framing; "
        "in-memory SchemaLookup under a fixed version id",
        "event_log": "S3EventLog on an in-memory S3 double: same JSON lines + gzip, no network "
        "(S3 is not the engine)",
        "process": "one process calling lambda_handler in a loop; EMF lines go to /dev/null; "
        "gc.freeze() after preparing events (a Lambda heap holds one batch, not 100k events)",
        "hiredis": bool(redis.utils.HIREDIS_AVAILABLE), "redis_py": redis.__version__,
        "redis_server": version,
    }  # fmt: skip
    return report(args, bench, prof, notes, heavy)


if __name__ == "__main__":
    sys.exit(main())
