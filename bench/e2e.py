"""End-to-end benchmark: sustained events/s with bounded lag and zero loss, and freshness.

Usage: ``python bench/e2e.py [--size full|medium|tiny] [--endpoint URL --redis-url URL]``.
The path is production's: a producer process (`kestrel_training.producer`, Avro, partition
key = customer) → the embedded Kinesis (the real ``template.yaml`` with ``ShardCount=4``) →
Kestrel's local Lambda runtime (`kestrel_local.runtime.LocalRuntime`, the template's event
source mapping: BatchSize 500, 1 s window, ParallelizationFactor 2, worker processes) →
TransactionsFunction → Redis (features, decisions), the decisions stream and the S3 log.

1. warm-up (workers started, a short step at a low rate): not in any figure;
2. probing steps of ``probe_s`` at rising rates (`bench.e2e_logic.Ladder`); a rate passes
   when the backlog (records put minus records the mapping finished, sampled 4 times a
   second) does not grow, the stream drains after the step, and every event has its
   decision in Redis (none lost, no function error, no discarded record);
3. one ``hold_s`` hold at the best rate (one step lower if it fails): its achieved rate is
   ``e2e.sustained_events_per_s``;
4. freshness at 5,000 events/s (or, when less was sustained, over the hold at the
   sustained rate): put time = ``time.time()`` just before the PutRecords call that
   accepted the record (producer); visible = the decision's ``decided_at`` (handler, after
   the features were written, before the decision's own SET); same host, same clock.
Writes ``<results>/e2e-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import redis

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/e2e.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from bench.e2e_logic import (  # noqa: E402
    SIZES,
    E2EConfig,
    Ladder,
    StepOutcome,
    batching_wait_s,
    judge,
    should_abort,
)
from bench.e2e_producer import Producer, transaction_id  # noqa: E402
from bench.e2e_support import (  # noqa: E402
    CpuMeter,
    GetRecordsCounter,
    Monitor,
    decided_at_ms,
    forget_decisions,
    missing_decisions,
)
from bench.loadgen_stats import summarize  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel.settings import LocalSettings  # noqa: E402
from kestrel_local.aws import AwsClients  # noqa: E402
from kestrel_local.provision import bind  # noqa: E402
from kestrel_local.runtime import LocalRuntime  # noqa: E402
from kestrel_local.services import running_services  # noqa: E402

FUNCTION = "TransactionsFunction"
STATS = ("succeeded", "discarded", "function_errors", "partial_failures", "retries", "invokes")


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-e2e] {message}", file=sys.stderr, flush=True)


class Bench:
    """The provisioned stack, the runtime, the producer and the monitor of one run."""

    def __init__(self, config: E2EConfig, endpoint: str, redis_url: str, workdir: Path) -> None:
        self.config, self.tag = config, f"e2e{uuid.uuid4().hex[:6]}"
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=120)
        self.redis.flushdb()
        clients = AwsClients(endpoint)
        overrides = {"RedisUrl": redis_url, "ShardCount": str(config.shards)}
        self.app, _ = bind(REPO / "template.yaml", clients, self.tag, overrides, create=True)
        stream = str(self.app.stack.physical["TransactionsStream"].ref)
        env = {
            "KESTREL_RUN_DIR": str(workdir),
            "AWS_ENDPOINT_URL": endpoint,
            "REDIS_URL": redis_url,
        }
        if config.max_concurrency:
            env["KESTREL_MAX_CONCURRENCY"] = str(config.max_concurrency)
        self.settings = LocalSettings.from_env(env)
        self.runtime = LocalRuntime(
            self.app, clients, self.settings, only=[FUNCTION], log_dir=workdir / "logs"
        )
        self.mapping = self.runtime.kinesis[0]
        self.gets = GetRecordsCounter(clients.client("kinesis"))
        log(f"stack {self.tag}: {self.runtime.describe()[0]}")
        self.producer = Producer(endpoint, stream, self.tag, self.tag, config.population)
        self.monitor: Monitor | None = None
        self.next_index = 0
        self.steps: list[dict[str, Any]] = []
        self.freshness: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}

    def start(self) -> None:
        """Start the runtime, warm its workers, wait for the producer's simulation."""
        pool = self.runtime.pools[FUNCTION]
        concurrency = pool.spec.reserved_concurrency or self.settings.max_concurrency
        self.runtime.start()
        warm = [
            threading.Thread(target=pool.invoke, args=({"Records": []},), daemon=True)
            for _ in range(concurrency)
        ]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        seconds = self.producer.wait_ready()
        log(
            f"producer ready: {self.producer.rows:,} simulated rows in {seconds:.1f} s; "
            f"{concurrency} warm workers"
        )
        stats = self.mapping.stats
        self.monitor = Monitor(lambda: self.producer.put, lambda: stats.succeeded + stats.discarded)

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.producer.stop()
        self.runtime.stop()

    def counters(self) -> dict[str, int]:
        return {name: int(getattr(self.mapping.stats, name)) for name in STATS}

    def wait_drained(self) -> tuple[bool, float]:
        assert self.monitor is not None
        t0 = time.monotonic()
        while self.monitor.backlog() > 0:
            if time.monotonic() - t0 > self.config.drain_timeout_s:
                return False, time.monotonic() - t0
            time.sleep(0.05)
        return True, time.monotonic() - t0

    def step(
        self,
        label: str,
        rate: float,
        seconds: float,
        fresh: bool = False,
        meter: CpuMeter | None = None,
    ) -> dict[str, Any]:
        """One step at `rate` for `seconds`: put, drain, check every event, judge."""
        assert self.monitor is not None
        before, start, aborted = self.counters(), self.next_index, False
        gets0 = self.gets.snapshot()
        self.monitor.mark()
        if meter is not None:
            meter.start()
        self.producer.begin(start, rate, seconds)
        began = last_line = time.monotonic()
        while not self.producer.done(0.2):
            backlog = self.monitor.backlog()
            late = time.monotonic() - began > 1.5 * seconds + 5.0
            if not aborted and (late or should_abort(backlog, rate, self.config.tolerances)):
                self.producer.abort.set()
                aborted = True
                why = "the producer is far behind" if late else f"backlog {backlog:,} past bound"
                log(f"{label}: {why}: stopping the step")
            if time.monotonic() - last_line >= 5.0:
                last_line = time.monotonic()
                log(f"{label} @ {rate:,.0f}/s: put {self.producer.put:,}, backlog {backlog:,}")
        result = self.producer.result(60.0)
        samples = self.monitor.series()
        cpu = meter.stop() if meter is not None else None
        gets = [b - a for a, b in zip(gets0, self.gets.snapshot(), strict=True)]
        self.next_index = start + result.planned
        drained, drain_s = self.wait_drained()
        after = self.counters()
        delta = {k: after[k] - before[k] for k in STATS}
        times = result.times()
        accepted = np.flatnonzero(~np.isnan(times))
        ids = [transaction_id(self.tag, start + int(j)) for j in accepted]
        lost, examples = missing_decisions(self.redis, ids)
        if fresh:
            decided = decided_at_ms(self.redis, ids)
            self.freshness[label] = decided - times[accepted] * 1000.0
        forget_decisions(self.redis, ids)
        errors = delta["function_errors"] + delta["partial_failures"] + delta["discarded"]
        duration = min(seconds, samples[-1][0]) if samples else seconds
        outcome = StepOutcome(
            rate,
            result.achieved_rate,
            samples,
            duration,
            lost,
            errors,
            len(result.errors),
            drained,
            aborted,
        )
        verdict = judge(outcome, self.config.tolerances)
        record = {
            "label": label,
            "target_rate": rate,
            "achieved_rate": round(result.achieved_rate, 1),
            "events": result.accepted,
            "seconds": round(result.seconds, 2),
            "passed": verdict.passed,
            "reasons": list(verdict.reasons),
            "slope_records_per_s": round(verdict.slope_per_s, 1),
            "backlog_start": round(verdict.backlog_start),
            "backlog_end": round(verdict.backlog_end),
            "backlog_max": round(verdict.backlog_max),
            "drained": drained,
            "drain_s": round(drain_s, 2),
            "lost": lost,
            "lost_examples": examples,
            "errors": errors,
            "retries": delta["retries"],
            "invokes": delta["invokes"],
            "producer_errors": result.errors[:5],
            "aborted": aborted,
        }
        record["get_records_calls"] = gets[0]
        record["records_per_get_records"] = round(gets[1] / gets[0], 1) if gets[0] else 0.0
        record["get_records_calls_per_s"] = round(gets[0] / max(duration, 1e-9), 1)
        if cpu is not None:
            record["cpu"] = cpu
        self.steps.append(record)
        verdict_text = "PASS" if verdict.passed else "FAIL: " + "; ".join(verdict.reasons)
        log(
            f"{label} @ {rate:,.0f}/s: achieved {result.achieved_rate:,.0f}/s, "
            f"backlog {verdict.backlog_start:,.0f} -> {verdict.backlog_end:,.0f} "
            f"(slope {verdict.slope_per_s:+,.1f}/s), drained in {drain_s:.1f} s, lost {lost}, "
            f"errors {errors}: {verdict_text}"
        )
        return record


def search(bench: Bench, meter: CpuMeter, deadline: float) -> dict[str, Any]:
    """Warm-up, probing steps, the hold (one fall-back), freshness, all before `deadline`."""
    cfg = bench.config
    bench.step("warm-up", cfg.warmup_rate, cfg.warmup_s)["judged"] = False
    ladder = Ladder(cfg.start_rate, cfg.factor, cfg.max_probes)
    probing_ends = min(time.monotonic() + cfg.probe_budget_s, deadline - cfg.hold_s)
    while (rate := ladder.next_rate()) is not None and time.monotonic() < probing_ends:
        n = len(ladder.passed) + len(ladder.failed) + 1
        ladder.record(rate, bench.step(f"probe {n}", rate, cfg.probe_s)["passed"])
    log(f"probing done: passed {ladder.passed}, failed {ladder.failed}")
    hold_rate, sustained, hold = ladder.best, 0.0, None
    holds = 0
    while hold_rate is not None and holds < 2:
        holds += 1
        fresh = hold_rate < cfg.freshness_rate
        length = min(cfg.hold_s, deadline - time.monotonic() - cfg.freshness_s)
        if length < cfg.hold_s / 2:
            log(f"no time left for a {cfg.hold_s:g} s hold at {hold_rate:,.0f}/s: stopping")
            break
        hold = bench.step(f"hold {holds}", hold_rate, length, fresh=fresh, meter=meter)
        if hold["passed"]:
            sustained = hold["achieved_rate"]
            break
        hold_rate = ladder.fallback(hold_rate)
    fresh_label, fresh_rate = None, 0.0
    if hold is not None and hold["passed"] and hold["target_rate"] < cfg.freshness_rate:
        fresh_label, fresh_rate = hold["label"], hold["achieved_rate"]
    elif hold is not None and hold["passed"]:
        fresh_label = "freshness"
        fresh_rate = bench.step(fresh_label, cfg.freshness_rate, cfg.freshness_s, fresh=True)[
            "achieved_rate"
        ]
    return {
        "ladder_passed": ladder.passed,
        "ladder_failed": ladder.failed,
        "hold": hold,
        "sustained": sustained,
        "freshness_label": fresh_label,
        "freshness_rate": fresh_rate,
    }


def figures_of(bench: Bench, summary: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """The e2e figures: sustained rate, loss and errors over every step, freshness."""
    steps = bench.steps
    figures: dict[str, tuple[float, str]] = {
        "e2e.sustained_events_per_s": (summary["sustained"], "events/s"),
        "e2e.lost": (sum(s["lost"] for s in steps), "count"),
        "e2e.errors": (sum(s["errors"] + len(s["producer_errors"]) for s in steps), "count"),
        "e2e.retries": (sum(s["retries"] for s in steps), "count"),
        "e2e.events": (sum(s["events"] for s in steps), "count"),
        "e2e.hold_seconds": (summary["hold"]["seconds"] if summary["hold"] else 0.0, "s"),
    }
    label = summary["freshness_label"]
    if label is not None:
        values = bench.freshness[label]
        stats = summarize(float(v) for v in values[~np.isnan(values)])
        for name in ("p50", "p99", "max"):
            figures[f"e2e.freshness_{name}_ms"] = (round(stats[name], 1), "ms")
        figures["e2e.freshness_rate_events_per_s"] = (summary["freshness_rate"], "events/s")
        figures["e2e.freshness_events"] = (int(stats["count"]), "count")
    return figures


def run(
    config: E2EConfig, endpoint: str, redis_url: str, workdir: Path, emulator_pid: int | None = None
) -> tuple[dict[str, tuple[float, str]], dict[str, Any]]:
    """Run the whole benchmark on running services; return (figures, params)."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bench = Bench(config, endpoint, redis_url, workdir)
    redis_pid = int(bench.redis.info("server")["process_id"])
    try:
        bench.start()
        meter = CpuMeter(
            {
                "emulator": emulator_pid,
                "redis-server": redis_pid,
                "runtime pollers (this process)": os.getpid(),
                "producer": bench.producer.process.pid,
            }
        )
        summary = search(bench, meter, started + config.total_s)
    finally:
        bench.stop()
        bench.redis.flushdb()
    figures = figures_of(bench, summary)
    notes = (
        "freshness at the sustained rate, below 5,000/s"
        if summary["freshness_label"] and summary["freshness_rate"] < config.freshness_rate
        else "freshness at the target rate"
    )
    source = bench.mapping.source
    lanes = config.shards * source.parallelization
    wait_s = batching_wait_s(summary["freshness_rate"], source.batch_size, lanes, source.window_s)
    params = {
        "freshness_batching_wait_max_ms": round(wait_s * 1000, 1),
        "config": asdict(config),
        "esm": bench.runtime.describe(),
        "steps": bench.steps,
        "ladder": {"passed": summary["ladder_passed"], "failed": summary["ladder_failed"]},
        "freshness_note": notes,
        "tag": bench.tag,
        "method": {
            "backlog": "records accepted by PutRecords minus records the event-source mapping "
            "finished (succeeded + discarded), sampled every 0.25 s",
            "verdict": "bench/e2e_logic.py judge(): pace >= 95%, least-squares backlog slope "
            "<= 5% of the rate and end-vs-start backlog growth <= 1.5 s of input after the "
            "settle time, drained after the step, 0 lost, 0 errors",
            "loss": "every accepted event's decision key checked in Redis (EXISTS) after drain",
            "freshness": "decided_at (handler, ms) minus time.time() before the accepting "
            "PutRecords call; every event of the run, nearest-rank percentiles",
            "warm_up": "a warm-up step and one empty invoke per worker, not in any figure",
            "labels": "no label stream: terminal risk features see no new fraud",
        },
        "max_concurrency": bench.settings.max_concurrency,
    }
    return figures, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--endpoint", help="AWS endpoint already running (default: start one)")
    parser.add_argument("--redis-url", help="Redis already running (default: start one)")
    parser.add_argument("--emulator-pid", type=int, help="for the CPU shares of the hold")
    parser.add_argument("--hold-s", type=float, help="override the hold length")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    config = SIZES[args.size]
    if args.hold_s:
        config = replace(config, hold_s=args.hold_s)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kestrel-bench-e2e-"))
    if args.endpoint and args.redis_url:
        figures, params = run(
            config, args.endpoint, args.redis_url, workdir / "run", args.emulator_pid
        )
    else:
        with running_services(workdir / "services") as services:
            redis_url = services.redis_url.rsplit("/", 1)[0] + "/1"
            pid = services.emulator.process.pid
            figures, params = run(config, services.endpoint, redis_url, workdir / "run", pid)
    params["size"] = args.size
    path = write_result("e2e", params, figures)
    log(f"wrote {path}")
    for name, (value, unit) in figures.items():
        print(f"{name:<36} {value:>12,.1f} {unit}")
    return 0 if figures["e2e.lost"][0] == 0 and figures["e2e.errors"][0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
