"""Chaos run: every good event applied exactly once, every poison record parked, under faults.

Usage: ``python bench/chaos.py [--events 100000] [--seed 7] [--outage-s 10]`` (``make chaos``).

It starts its own embedded AWS emulator (unless ``--endpoint`` names one) and its own
redis-server (loopback, append-only file fsynced on every write, so it can be killed and
restarted without losing an acknowledged write), provisions a fresh copy of
``tests/fixtures/chaos/template.yaml`` (Kestrel's TransactionsFunction behind a wrapper that
crashes in ``--crash-rate`` of its batches, half of them raised errors and half hard process
exits, after applying the first half of the batch; the real template's event source mapping,
decisions stream, on-failure queue and poison DLQ), and runs the local Lambda runtime as a
real ``python -m kestrel_local run`` process. Then:

1. the simulator's transactions, with ``--poison-rate`` poison records mixed in (undecodable
   bytes, broken JSON, missing or invalid fields, event times past 2100), are put with the
   producer; ``--duplicate-rate`` of its PutRecords calls are sent twice, as a client does
   when a response is lost;
2. when ``--outage-at`` of the records are checkpointed, redis-server is killed (SIGKILL)
   and started again ``--outage-s`` seconds later on the same port and data;
3. when ``--restart-at`` of them are checkpointed, the runtime gets SIGTERM and a new one is
   started on the same run folder (it resumes from the durable checkpoints);
4. once the stream is drained, the redrive tool (`kestrel_ops.redrive`) re-puts the records
   of the batches the runtime gave up on (the on-failure queue), and the stream drains again.

Invariants (exit code 1 when one fails): no good event lost; none applied twice (the
feature state equals a clean, in-order pass of the good events in another database, and
every good event has exactly one decision); every poison record is in the poison DLQ with
the reason its kind must get; the on-failure queue is empty after the redrive; and the
figures add up (see `ChaosReport.checks`). Writes ``bench/results/chaos-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import redis

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/chaos.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from kestrel_training.producer import produce  # noqa: E402

from bench.chaos_checks import check_end_state, drained, queue_depth, read_queue  # noqa: E402
from bench.chaos_faults import TEMPLATE, PersistentRedis, Runtime  # noqa: E402
from bench.chaos_input import DuplicatingKinesis, encoder, good_transactions, mix  # noqa: E402
from bench.chaos_report import ChaosConfig, ChaosReport, Stage  # noqa: E402
from bench.results_io import write_result  # noqa: E402
from kestrel.adapters.glue_registry import GlueSchemaRegistry  # noqa: E402
from kestrel_local.aws import AwsClients  # noqa: E402
from kestrel_local.provision import LocalApp, bind  # noqa: E402
from kestrel_local.services import running_emulator  # noqa: E402
from kestrel_ops.redrive import QueueKind, redrive, stack_streams  # noqa: E402
from kestrel_ops.redrive_report import RedriveReport  # noqa: E402

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient


def say(line: str) -> None:
    """A progress line on stderr."""
    print(f"[chaos] {line}", file=sys.stderr, flush=True)


# --- The redrive -------------------------------------------------------------------------------


def redrive_queue(
    clients: AwsClients, app: LocalApp, queue_url: str, kind: QueueKind
) -> RedriveReport:
    """Run the redrive tool (`kestrel_ops.redrive`) over one dead-letter queue, as a user would."""
    registry = GlueSchemaRegistry(clients.client("glue"), app.stack.stack_name)
    return redrive(
        clients.client("sqs"),
        clients.client("kinesis"),
        registry,
        queue_url,
        kind,
        streams=stack_streams(app),
    )


# --- The run -----------------------------------------------------------------------------------


def run_chaos(config: ChaosConfig, workdir: Path, endpoint: str | None = None) -> ChaosReport:
    """Run the chaos scenario in `workdir` (its own emulator unless `endpoint` is given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if endpoint is not None:
        return _run(config, workdir, endpoint)
    with running_emulator(workdir / "emulator") as emulator:
        return _run(config, workdir, emulator.address)


def _run(config: ChaosConfig, workdir: Path, endpoint: str) -> ChaosReport:
    started = time.monotonic()
    report = ChaosReport(config)

    def stage(name: str) -> None:
        report.stages.append(Stage(name, round(time.monotonic() - started, 1)))
        say(f"{time.monotonic() - started:6.1f}s  {name}")

    say(f"simulating {config.events:,} transactions (seed {config.seed})")
    good = good_transactions(config.events, config.seed)
    records, poison = mix(good, config.poison, config.seed)
    report.good, report.poison = len(good), len(poison)
    stage(f"input: {len(good):,} good + {len(poison):,} poison records")

    server = PersistentRedis(workdir / "redis")
    observe = workdir / "observed"
    observe.mkdir(exist_ok=True)
    runtime: Runtime | None = None
    try:
        server.start()
        chaos_db, clean_db = (
            redis.Redis.from_url(server.url(0)),
            redis.Redis.from_url(server.url(1)),
        )
        clients = AwsClients(endpoint)
        stack = f"chaos{uuid.uuid4().hex[:8]}"
        overrides = {
            "RedisUrl": server.url(0),
            "CrashRate": str(config.crash_rate),
            "ObserveDir": str(observe),
        }
        app, _ = bind(TEMPLATE, clients, stack, overrides, create=True)
        stream = str(app.stack.physical["TransactionsStream"].ref)
        on_failure_url = str(app.stack.physical["OnFailureQueue"].ref)
        poison_url = str(app.stack.physical["PoisonDLQ"].ref)
        kinesis, sqs = clients.client("kinesis"), clients.client("sqs")
        stage(f"stack {stack} on {endpoint}, redis-server on port {server.port}")

        runtime = rt = Runtime(
            endpoint,
            stack,
            " ".join(f"{k}={v}" for k, v in overrides.items()),
            workdir / "run",
            config.retry_backoff_s,
        )
        runtime.run_dir.mkdir(parents=True, exist_ok=True)
        runtime.start()
        putter = DuplicatingKinesis(kinesis, config.duplicate_rate, config.seed, set(poison))
        produced: list[BaseException] = []

        def producer() -> None:
            try:
                produce(records, stream, client=putter, encoder=encoder())  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                produced.append(exc)

        thread = threading.Thread(target=producer, name="producer", daemon=True)
        thread.start()
        planned = len(records)
        last_line = [0.0]

        def progress(note: str = "") -> int:
            done = putter.finished(rt.checkpoints())
            now = time.monotonic()
            if now - last_line[0] >= 2.0:
                last_line[0] = now
                total = max(planned, putter.accepted)
                say(
                    f"{now - started:6.1f}s  put {putter.accepted:,}  checkpointed {done:,} "
                    f"({done / total:.0%} of {total:,}){note}"
                )
            return done

        def until(share: float, what: str) -> None:
            target = int(planned * share)
            deadline = time.monotonic() + config.drain_timeout_s
            while progress() < target:
                if produced:
                    raise RuntimeError(f"the producer failed: {produced[0]}")
                if not rt.alive():
                    raise RuntimeError(f"the runtime exited; see {rt.logs[-1]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for {what}")
                time.sleep(0.1)

        until(config.outage_at, "the Redis outage point")
        report.redis_killed_at_checkpointed = progress()
        server.kill()
        down_at = time.monotonic()
        stage(f"redis-server killed (SIGKILL) at {report.redis_killed_at_checkpointed:,} done")
        while time.monotonic() < down_at + config.outage_s:
            progress("  [redis down]")
            time.sleep(0.2)
        server.start()
        report.redis_outage_s = time.monotonic() - down_at
        stage(f"redis-server restarted after {report.redis_outage_s:.1f} s")

        until(config.restart_at, "the runtime restart point")
        report.restart_at_checkpointed = progress()
        code = runtime.sigterm()
        stage(f"runtime SIGTERM at {report.restart_at_checkpointed:,} checkpointed: exit {code}")
        runtime.start()
        stage("runtime started again on the same checkpoints")

        thread.join(config.drain_timeout_s)
        if produced or thread.is_alive():
            raise RuntimeError(f"the producer failed: {produced[:1] or 'still running'}")
        report.sent = putter.accepted
        report.duplicates, report.duplicates_of_poison = (
            putter.duplicates,
            putter.duplicates_of_poison,
        )
        stage(f"producer done: {report.sent:,} records accepted ({report.duplicates:,} duplicates)")
        wait_drained(kinesis, stream, runtime, config.drain_timeout_s, progress)
        stage("stream drained")

        # Redrive what the runtime gave up on (batches that exhausted their retries), until
        # none is left (a redriven batch could fail again).
        for _ in range(3):
            failures = read_queue(sqs, on_failure_url, release=True)
            if not failures:
                break
            report.on_failure_messages += len(failures)
            records_in = sum(int(f["KinesisBatchInfo"]["batchSize"]) for f in failures)
            report.on_failure_records += records_in
            stage(f"on-failure queue: {len(failures)} messages, {records_in} records; redriving")
            result = redrive_queue(clients, app, on_failure_url, "on-failure")
            say("redrive of the on-failure queue:\n" + result.table())
            report.redrive_messages += result.redriven
            report.redriven += result.records_reput
            report.redrive_errors += result.errors + result.expired
            wait_drained(kinesis, stream, runtime, config.drain_timeout_s, progress)
        report.on_failure_left = queue_depth(sqs, on_failure_url)
        # The poison queue: still invalid, so the redrive must leave every message there.
        result = redrive_queue(clients, app, poison_url, "poison")
        say("redrive of the poison queue:\n" + result.table())
        report.poison_redrive_still_poison = result.still_poison
        report.poison_redrive_reput = result.records_reput
        stage(f"redrive done: {report.redriven} records re-put; stream drained again")
        code = runtime.sigterm()
        stage(f"runtime stopped: exit {code}")
        report.esm = runtime.stats()
        report.runtime_starts = runtime.starts

        check_end_state(report, good, poison, chaos_db, clean_db, sqs, poison_url, observe)
        stage("checked")
    finally:
        if runtime is not None:
            runtime.stop()
        server.stop()
    report.seconds = time.monotonic() - started
    return report


def wait_drained(
    kinesis: KinesisClient,
    stream: str,
    runtime: Runtime,
    timeout_s: float,
    progress: Callable[[str], int],
) -> None:
    """Wait until the runtime checkpointed every record of the stream."""
    deadline = time.monotonic() + timeout_s
    while not drained(kinesis, stream, runtime.checkpoints()):
        if not runtime.alive():
            raise RuntimeError(f"the runtime exited; see {runtime.logs[-1]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stream did not drain in {timeout_s:.0f}s")
        progress("  [draining]")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the scenario, print the report, write the result JSON."""
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=defaults.events, help="good transactions")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--poison-rate", type=float, default=defaults.poison_rate)
    parser.add_argument("--duplicate-rate", type=float, default=defaults.duplicate_rate)
    parser.add_argument("--crash-rate", type=float, default=defaults.crash_rate)
    parser.add_argument("--outage-s", type=float, default=defaults.outage_s)
    parser.add_argument("--outage-at", type=float, default=defaults.outage_at)
    parser.add_argument("--restart-at", type=float, default=defaults.restart_at)
    parser.add_argument("--retry-backoff-s", type=float, default=defaults.retry_backoff_s)
    parser.add_argument("--endpoint", help="an AWS endpoint already running (default: start one)")
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: .run/)")
    parser.add_argument("--no-result", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        events=args.events,
        seed=args.seed,
        poison_rate=args.poison_rate,
        duplicate_rate=args.duplicate_rate,
        crash_rate=args.crash_rate,
        outage_s=args.outage_s,
        outage_at=args.outage_at,
        restart_at=args.restart_at,
        retry_backoff_s=args.retry_backoff_s,
    )
    workdir = args.workdir or REPO / ".run" / f"chaos-{time.strftime('%Y%m%dT%H%M%S')}"
    say(f"work folder: {workdir}")
    report = run_chaos(config, workdir, args.endpoint)
    print(report.table())
    if not args.no_result:
        path = write_result(
            "chaos",
            {
                **dataclasses.asdict(config),
                "stages": [dataclasses.asdict(s) for s in report.stages],
            },
            report.figures(),
        )
        say(f"wrote {path}")
    if not report.ok:
        say("FAILED: " + "; ".join(name for name, ok in report.checks() if not ok))
        return 1
    say("all checks passed")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
