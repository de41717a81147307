"""`make demo`: the whole platform on one machine, fed by the simulator, with a closing summary.

    python -m kestrel_local.demo [--rate 2000] [--duration 120] [--seed 7] [--port 8000]

On a stack that `make up` and `make deploy-local` prepared, the demo:

1. starts from an empty embedded Redis (an external `REDIS_URL` needs `--reset-redis`);
2. simulates `--backfill-days` (default 30) days of the book's card network, then
   `rate x duration` transactions (Avro, schema registry), and backfills the history into
   Redis with `python -m kestrel_ops backfill`'s code, so the stream does not start cold;
3. starts the local Lambda runtime and the scoring API (`python -m kestrel_local run` and
   `serve`, as child processes logging to `<run dir>/demo-*.log`);
4. streams the transactions at `rate` events/s, feeds each chargeback label back once the
   stream's clock passes its date, scores live transactions through the API at `--api-rate`,
   and injects `--poison` broken records half-way; at the same time streams the clickstream
   simulator's clicks at `--click-rate` onto ClickstreamStream (0: none) and asks
   `/v1/propensity` at `--click-api-rate` (`kestrel_local.demo_clicks`);
5. prints a progress line from the API's `/v1/telemetry` every 2 s, waits until every
   transaction has its decision and every click is processed, redrives both dead-letter
   queues, and prints the summary (also written to `<run dir>/demo-summary.json`);
6. keeps serving the API and the dashboard until Ctrl-C (`--exit` stops at once).

Ctrl-C stops everything it started at any point; `make down` stops the emulator and Redis.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
from botocore.exceptions import BotoCoreError, ClientError
from kestrel_training.avro_encoding import avro_encoders
from kestrel_training.producer import DeliveryError, produce, rate_pacer

from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.events import iso_ms
from kestrel.settings import LocalSettings, default_model_dir, redact_url
from kestrel_local.api_server import ServeError, api_key
from kestrel_local.aws import AwsClients, apply_local_endpoint_defaults
from kestrel_local.demo_api_load import ApiLoad
from kestrel_local.demo_children import Children, wait_http, wait_line
from kestrel_local.demo_clicks import (
    DEFAULT_CLICK_API_RATE,
    DEFAULT_CLICK_RATE,
    ClickSummary,
    Lag,
    api_bodies,
    click_records,
    fill,
    second_pacer,
    wait_processed,
)
from kestrel_local.demo_input import (
    label_records,
    poison_entries,
    simulated_input,
    transaction_records,
)
from kestrel_local.demo_report import DemoSummary, percentile, summary_table
from kestrel_local.demo_runner import (
    DemoError,
    Progress,
    backfill_history,
    collect_results,
    drift_check,
    redrive_all,
    telemetry,
    wait_decided,
)
from kestrel_local.demo_stack import reset_stack
from kestrel_local.provision import bind
from kestrel_local.runtime import RUNTIME_READY
from kestrel_local.services import status
from kestrel_ops.redrive import stack_streams

ROOT = Path(__file__).resolve().parents[2]


def say(line: str) -> None:
    """One line of the demo's own output."""
    print(f"demo: {line}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m kestrel_local.demo`."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_local.demo", description=__doc__)
    parser.add_argument("--rate", type=float, default=2000.0, help="transactions per second")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of streaming")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed")
    parser.add_argument("--port", type=int, default=8000, help="API and dashboard port")
    parser.add_argument("--api-rate", type=float, default=50.0, help="API scores per second")
    parser.add_argument("--poison", type=int, default=6, help="broken records to inject")
    parser.add_argument(
        "--click-rate", type=float, default=DEFAULT_CLICK_RATE, help="clicks per second (0: none)"
    )
    parser.add_argument(
        "--click-api-rate", type=float, default=DEFAULT_CLICK_API_RATE,
        help="API propensities per second",
    )  # fmt: skip
    parser.add_argument(
        "--backfill-days",
        type=int,
        default=30,
        help="simulated days before the stream, backfilled first (0: start cold)",
    )
    parser.add_argument("--template", default=str(ROOT / "template.yaml"))
    parser.add_argument("--stack-name", default=os.environ.get("KESTREL_STACK_NAME", "kestrel"))
    parser.add_argument("--reset-redis", action="store_true", help="flush an external REDIS_URL")
    parser.add_argument("--exit", action="store_true", help="stop after the summary")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or min(args.api_rate, args.poison) < 0:
        parser.error("--rate and --duration must be positive, --api-rate and --poison >= 0")
    if args.click_rate < 0 or args.click_api_rate < 0:
        parser.error("--click-rate and --click-api-rate must be >= 0")
    if args.backfill_days < 0:
        parser.error("--backfill-days must be >= 0")
    return args


def test_set_metrics() -> tuple[float, float]:
    """The shipped model's test-set AP and CP@100 (its manifest), NaN when unknown."""
    try:
        manifest = json.loads((Path(default_model_dir()) / "manifest.json").read_text())
        metrics = manifest["metrics"]
        return float(metrics["average_precision"]), float(metrics["card_precision_100"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan, math.nan


def demo_key(run_dir: Path) -> str:
    """The key `kestrel_local serve` uses (KESTREL_API_KEY or the run directory's file)."""
    try:
        return api_key(str(run_dir))
    except ServeError as exc:
        raise DemoError(str(exc)) from None


def _until(stop: threading.Event, records: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for record in records:
        if stop.is_set():
            return
        yield record


def run(args: argparse.Namespace, settings: LocalSettings, children: Children) -> DemoSummary:
    """The demo up to its summary; the runtime and API it starts stay in `children`."""
    down = [s.name for s in status(settings) if not s.healthy]
    if down:
        raise DemoError(f"{' and '.join(down)} not running: run `make up` (make demo does)")
    if not settings.embedded_redis and not args.reset_redis:
        shown = redact_url(settings.redis)
        raise DemoError(f"REDIS_URL={shown} is yours: pass --reset-redis to flush it")
    clients = AwsClients(settings.endpoint)
    app, _ = bind(args.template, clients, args.stack_name, {}, create=False)
    checkpoints = Path(settings.run_dir) / "checkpoints" / f"{args.stack_name}.db"
    reset_stack(clients, app.stack.physical, checkpoints)
    app, _ = bind(args.template, clients, args.stack_name, {}, create=True)
    physical = app.stack.physical
    say(f"stack {args.stack_name}: streams re-created empty, dead-letter queues purged")
    store = redis.Redis.from_url(settings.redis)
    store.flushdb()
    say(f"flushed Redis {redact_url(settings.redis)}: the demo starts with no history")

    events = int(args.rate * args.duration)
    history = f"{args.backfill_days} days of history, then " if args.backfill_days else ""
    say(f"simulating {history}{events:,} transactions (seed {args.seed})")
    data = simulated_input(events, args.rate, args.seed, args.backfill_days)
    tx = transaction_records(data.transactions)
    labels = label_records(data.labels)
    say(f"{len(tx):,} transactions over {data.days:.1f} simulated days, {len(labels):,} labels")
    clicks = click_records(int(args.click_rate * args.duration), args.seed)
    if clicks:
        say(f"{len(clicks):,} clicks of the clickstream simulator (seed {args.seed}) at "
            f"{args.click_rate:,.0f} clicks/s beside them")  # fmt: skip

    run_dir = Path(settings.run_dir)
    summary = DemoSummary(events_sent=len(tx), poison_injected=args.poison, rate=args.rate)
    summary.test_set_ap, summary.test_set_cp100 = test_set_metrics()
    if clicks:
        summary.clicks = ClickSummary(rate=args.click_rate, sent=len(clicks))
    if args.backfill_days:
        first, begins = iso_ms(data.start_ms)[:10], iso_ms(data.stream_start_ms)[:10]
        say(
            f"backfilling the {args.backfill_days} days before the stream ({first} to {begins}, "
            "python -m kestrel_ops backfill's code): transactions and fraud labels"
        )
        done = backfill_history(data, settings.redis, run_dir / "demo-history")
        summary.backfill = (
            f"{args.backfill_days} days before the stream ({first} to {begins}): "
            f"{done.transactions:,} transactions, {done.frauds:,} fraud labels in "
            f"{done.seconds:.0f} s ({done.events_per_s:,.0f} events/s)"
        )
        say(f"backfilled: {summary.backfill}; the stream starts at {iso_ms(data.stream_start_ms)}")
    stop = threading.Event()
    try:
        stack_args = ["-t", args.template, "--stack-name", args.stack_name]
        stack_args += ["--parameter-overrides", f"RedisUrl={settings.redis}"]
        # The stream's workers yield the CPU to the API when both want it: on a laptop they
        # share two cores, on AWS they never share a machine.
        # Only what the demo streams: an idle function would warm environments that wait.
        streamed = ["-f", "TransactionsFunction", "-f", "LabelsFunction"]
        streamed += ["-f", "ClickstreamFunction"] if clicks else []
        runtime_log = children.start("runtime", ["run", *stack_args, *streamed])
        say(f"local Lambda runtime starting (log: {runtime_log})")
        key = demo_key(run_dir)  # made before the server starts, which then reads it
        log = children.start("api", ["serve", *stack_args, "--port", str(args.port)])
        health = wait_http(args.port, "/health", 120.0, children, key)
        summary.model_version = str(health.get("checks", {}).get("model", {}).get("version") or "")
        say(f"API on http://127.0.0.1:{args.port} (log: {log}), model {summary.model_version}")
        say(f"runtime {wait_line(runtime_log, 'warm environments', 120.0, children)}")
        wait_line(runtime_log, RUNTIME_READY, 30.0, children)

        registry = GlueSchemaRegistry(clients.client("glue"), args.stack_name)
        encoders = avro_encoders(registry, lambda line: say(f"warning: {line}"))
        kinesis = clients.client("kinesis")
        tx_stream = str(physical["TransactionsStream"].ref)
        label_stream = str(physical["LabelsStream"].ref)
        due = data.label_due_s

        def label_pacer(index: int, _record: dict[str, Any]) -> float:
            return float(due[index])

        errors: list[Exception] = []  # a streaming thread's failure, raised by the main thread

        def stream(records: Sequence[dict[str, Any]], name: str, **kwargs: Any) -> None:
            try:
                produce(_until(stop, records), name, client=kinesis, **kwargs)
            except (DeliveryError, BotoCoreError, ClientError, ValueError) as exc:
                errors.append(exc)

        threads = [
            threading.Thread(
                target=stream,
                args=(tx, tx_stream),
                kwargs={
                    "encoder": encoders["transactions"],
                    "pacer": rate_pacer(args.rate),
                    "max_records_per_batch": max(1, min(500, int(args.rate * 0.1))),
                },
                daemon=True,
            ),
            threading.Thread(
                target=stream,
                args=(labels, label_stream),
                kwargs={"encoder": encoders["labels"], "pacer": label_pacer},
                daemon=True,
            ),
        ]
        if clicks:
            threads.append(threading.Thread(
                target=stream, args=(clicks, str(physical["ClickstreamStream"].ref)),
                kwargs={"encoder": encoders["clicks"], "partition_key": "user_id",
                        "pacer": second_pacer(args.click_rate),
                        "max_records_per_batch": max(1, min(500, int(args.click_rate)))},
                daemon=True,
            ))  # fmt: skip
        api = ApiLoad(args.port, key, tx, args.api_rate)
        rate = args.click_api_rate if clicks else 0.0
        click_api = ApiLoad(args.port, key, api_bodies(clicks), rate, "/v1/propensity")
        lag = Lag(args.click_rate) if clicks else None
        progress = Progress(args.port, key, args.duration, len(tx), args.rate, lag)
        api.start()  # before the stream: their start-up takes no CPU from its first seconds
        click_api.start()
        started = time.monotonic()
        for thread in threads:
            thread.start()
        progress.start()
        poisoned = False
        while any(t.is_alive() for t in threads):
            children.check()
            if errors:
                raise DemoError(f"streaming failed: {errors[0]}")
            if not poisoned and time.monotonic() - started >= args.duration / 2:
                entries = poison_entries(args.poison, tx[0])
                if entries:
                    kinesis.put_records(
                        StreamName=tx_stream,
                        Records=[{"Data": d, "PartitionKey": k} for _, d, k in entries],
                    )
                    kinds = ", ".join(kind for kind, _, _ in entries)
                    say(f"injected {len(entries)} poison records ({kinds})")
                poisoned = True
            time.sleep(0.2)
        if errors:
            raise DemoError(f"streaming failed: {errors[0]}")
        summary.labels_sent = len(labels)
        say("all records sent; waiting for every transaction's decision")
        wait_decided(store, [r["transaction_id"] for r in tx], children.check, 600.0)
        if summary.clicks is not None:
            say("every transaction decided; waiting for every click to be processed")
            summary.clicks.processed = wait_processed(
                store, clicks, children.check, 600.0, DemoError
            )
        summary.seconds = time.monotonic() - started
        api.stop()
        click_api.stop()
        progress.stop()
        summary.fell_behind = progress.fell_behind
        collect_results(summary, data, store, api, args.port, key)
        if summary.clicks is not None and lag is not None:
            c = summary.clicks
            c.fell_behind, c.api_errors = lag.fell_behind, click_api.errors
            c.api_requests = len(click_api.latencies_ms) + click_api.errors
            c.api_p50_ms = percentile(click_api.latencies_ms, 50)
            c.api_p99_ms = percentile(click_api.latencies_ms, 99)
            c.api_in_handler_p99_ms = percentile(click_api.in_handler_ms, 99)
            # Every click's second, from the first put until now (the drains took a while).
            snap = telemetry(args.port, key, time.monotonic() - started + 5)
            fill(c, store, clicks, snap.get("clickstream") or {})
        summary.redrive, summary.poison_parked = redrive_all(
            clients, physical, args.stack_name, stack_streams(app)
        )
        say("drift check: the last 24 h of the event log against the model's reference")
        drift = drift_check(
            args.template, args.stack_name, settings.redis, run_dir / "demo-drift.json"
        )
        drifted = ", ".join(drift.get("drifted", [])) or "nothing drifted"
        summary.drift = f"{drift['status']} ({drifted}; {drift['window']['rows']:,} rows)"
        return summary
    finally:
        stop.set()  # the streaming threads stop sending


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; serve until Ctrl-C unless --exit; 1 with a message on failure."""
    args = parse_args(argv)
    apply_local_endpoint_defaults()  # and the runtime and API it starts inherit them
    settings = LocalSettings.from_env()
    # Ctrl-C and SIGTERM both stop the demo and what it started (even if started in the
    # background, where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    children = Children(Path(settings.run_dir))
    try:
        summary = run(args, settings, children)
        print(summary_table(summary), flush=True)
        out = Path(settings.run_dir) / "demo-summary.json"
        out.write_text(summary.as_json() + "\n")
        say(f"summary written to {out}")
        if not args.exit:
            key = demo_key(Path(settings.run_dir))
            say(f"dashboard: http://127.0.0.1:{args.port}/dashboard#key={key}")
            say("serving the API and the dashboard; Ctrl-C stops them, `make down` the rest")
            threading.Event().wait()
        return 0
    except KeyboardInterrupt:
        say("stopping")
        return 130
    except DemoError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        children.stop()


if __name__ == "__main__":
    sys.exit(main())
