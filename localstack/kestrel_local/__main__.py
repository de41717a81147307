"""Command line of the local platform: start its services; provision, invoke, run a template.

python -m kestrel_local up|down [--timeout S]
python -m kestrel_local status [--template template.yaml]
python -m kestrel_local provision --template template.yaml
python -m kestrel_local invoke --template template.yaml TransactionsFunction --event events/x.json
python -m kestrel_local run --template template.yaml [--function F ...] [--metrics-port 9464]
python -m kestrel_local register-schemas --stack-name kestrel
python -m kestrel_local serve --template template.yaml [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from kestrel.adapters.glue_fallback import register_shipped
from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.schema_compat import SchemaIncompatible
from kestrel.settings import LocalSettings, SettingsError
from kestrel_local import metrics_server
from kestrel_local.api_server import (
    ServeError,
    api_key,
    build_server,
    load_app,
    serve,
    warm_up,
)
from kestrel_local.aws import AwsClients, apply_local_endpoint_defaults
from kestrel_local.events import load_event
from kestrel_local.invoker import FunctionPool, function_environment
from kestrel_local.processes import run_below_serving
from kestrel_local.provision import QUEUE, LocalApp, bind
from kestrel_local.queue_stats import QueueStats, queue_stats
from kestrel_local.runtime import RUNTIME_READY, LocalRuntime
from kestrel_local.services import (
    HEALTH_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ServiceError,
    ServiceStatus,
    down,
    status,
    up,
)
from kestrel_local.template import TemplateError


def _overrides(values: Sequence[str]) -> dict[str, str]:
    result = {}
    for pair in (pair for value in values for pair in value.split()):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TemplateError(f"--parameter-overrides: {pair!r} is not Key=Value")
        result[key] = value
    return result


def _bind(
    args: argparse.Namespace, settings: LocalSettings, create: bool
) -> tuple[LocalApp, AwsClients]:
    clients = AwsClients(settings.endpoint, region=args.region)
    overrides = _overrides(args.parameter_overrides)
    app, report = bind(args.template, clients, args.stack_name, overrides, create=create)
    for line in report:
        print(line)
    return app, clients


def _cmd_provision(args: argparse.Namespace, settings: LocalSettings) -> int:
    print(f"provisioning {args.template} as stack {args.stack_name!r} on {settings.endpoint}")
    _bind(args, settings, create=True)
    return 0


def _cmd_register_schemas(args: argparse.Namespace, settings: LocalSettings) -> int:
    clients = AwsClients(settings.endpoint, region=args.region)
    registry = GlueSchemaRegistry(clients.client("glue"), args.stack_name)
    warned: list[str] = []
    versions = register_shipped(registry, warned.append)
    for line in warned:
        print(f"warning: {line}", file=sys.stderr)
    where = "fixed id (no registry)" if warned else f"registry {args.stack_name}"
    for name, version in versions.items():
        print(f"schema {name:<16} {where}: version {version}")
    return 0


def _cmd_invoke(args: argparse.Namespace, settings: LocalSettings) -> int:
    event = load_event(args.event) if args.event else {}
    app, clients = _bind(args, settings, create=False)
    spec = app.function(args.function)
    pool = FunctionPool(spec, function_environment(spec, clients.credentials_env()), 1)
    try:
        result = pool.invoke(event)
    finally:
        pool.close()
    print(f"{spec.logical_id} {result.request_id}: {result.duration_ms:.1f} ms", file=sys.stderr)
    print(json.dumps(result.error if result.function_error else result.payload, indent=2))
    return 1 if result.function_error else 0


def _cmd_run(args: argparse.Namespace, settings: LocalSettings) -> int:
    run_below_serving()  # the stream functions yield the CPU to the API and Redis
    app, clients = _bind(args, settings, create=False)
    runtime = LocalRuntime(app, clients, settings, only=args.function or None)
    lines = runtime.describe()
    if not lines:
        print(f"no Kinesis or SQS event sources in {args.template}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(runtime.warm(), file=sys.stderr)
    runtime.start()
    print(f"{RUNTIME_READY} on {settings.endpoint}; Ctrl-C stops it", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    metrics = None
    if args.metrics_port:
        metrics = metrics_server.start(
            app, clients, settings.redis, args.metrics_port, args.metrics_host
        )
    if metrics is not None:
        print(f"  stream metrics (Prometheus): {metrics.url}", file=sys.stderr)
    stop.wait()
    print("stopping: finishing in-flight batches and flushing checkpoints", file=sys.stderr)
    if metrics is not None:
        metrics.stop()
    runtime.stop()
    return 0


def _cmd_serve(args: argparse.Namespace, settings: LocalSettings) -> int:
    key = api_key(settings.run_dir)  # first: no key, nothing else is done
    app, clients = _bind(args, settings, create=False)
    spec = app.function(args.function)
    environment = function_environment(spec, clients.credentials_env())
    environment["KESTREL_API_KEY"] = key
    # No API Gateway here: the app checks the key itself (the template says gateway for AWS).
    environment["KESTREL_API_AUTH"] = "app"
    chalice_app = load_app(spec, environment)
    server = build_server(chalice_app, spec, args.host, args.port)
    print(f"health: {warm_up(chalice_app)}", file=sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    url = f"http://{args.host}:{args.port}"
    print(f"scoring API ({spec.logical_id}) on {url}; Ctrl-C stops it", file=sys.stderr)
    print(f"  API key (x-api-key header): {environment['KESTREL_API_KEY']}", file=sys.stderr)
    print(f"  spec: {url}/openapi.json   health: {url}/health", file=sys.stderr)
    print(f"  dashboard: {url}/dashboard#key={environment['KESTREL_API_KEY']}", file=sys.stderr)
    serve(server, stop, environment["KESTREL_API_KEY"])
    return 0


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One queue row of `status`: a template queue and its stats (None: not provisioned)."""

    logical_id: str
    name: str
    stats: QueueStats | None


def _table(table: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in table
    ]


def _age(stats: QueueStats | None) -> str:
    if stats is None:
        return "-  (not provisioned)"
    return "-" if stats.oldest_age_s is None else f"{stats.oldest_age_s:.0f} s"


def format_status(rows: list[ServiceStatus], queues: Sequence[QueueStatus] = ()) -> str:
    """Render `status` rows as a small aligned table, then the queues' depth and oldest age."""
    lines = _table(
        [("SERVICE", "MODE", "PID", "ADDRESS", "HEALTHY")]
        + [
            (
                r.name,
                "embedded" if r.embedded else "external",
                str(r.pid or "-"),
                r.address,
                "yes" if r.healthy else "no",
            )
            for r in rows
        ]
    )
    if queues:
        lines += _table(
            [("QUEUE", "NAME", "MESSAGES", "OLDEST")]
            + [
                (
                    q.logical_id,
                    q.name,
                    "-" if q.stats is None else str(q.stats.depth),
                    _age(q.stats),
                )
                for q in queues
            ]
        )
    return "\n".join(lines)


def queue_statuses(
    template: str, stack_name: str, region: str, settings: LocalSettings
) -> list[QueueStatus]:
    """Depth and oldest-message age of every SQS queue of `template` on the local endpoint.

    On AWS, SQS publishes these as CloudWatch metrics (the template's dead-letter alarms);
    locally they are measured with `queue_stats` (a peek that deletes nothing).
    """
    clients = AwsClients(settings.endpoint, region=region)
    app, _ = bind(template, clients, stack_name, create=False)
    sqs = clients.client("sqs")
    rows = []
    for logical_id, physical in sorted(app.stack.physical.items()):
        if app.stack.resources[logical_id]["Type"] != QUEUE:
            continue
        name = physical.attributes["QueueName"]
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except ClientError:
            rows.append(QueueStatus(logical_id, name, None))
            continue
        rows.append(QueueStatus(logical_id, name, queue_stats(sqs, url)))
    return rows


def _cmd_up(args: argparse.Namespace, settings: LocalSettings) -> int:
    print("\n".join(up(settings, args.timeout or HEALTH_TIMEOUT_S)))
    return 0


def _cmd_down(args: argparse.Namespace, settings: LocalSettings) -> int:
    print("\n".join(down(settings, args.timeout or STOP_TIMEOUT_S)))
    return 0


def _cmd_status(args: argparse.Namespace, settings: LocalSettings) -> int:
    rows = status(settings)
    queues: list[QueueStatus] = []
    emulator_up = any(r.name == "emulator" and r.healthy for r in rows)
    note = None
    if emulator_up and not Path(args.template).is_file():
        note = f"queues: no template {args.template} here (--template names one)"
    elif emulator_up:
        stack_name = args.stack_name or settings.stack_name
        try:
            queues = queue_statuses(args.template, stack_name, args.region, settings)
        except (TemplateError, BotoCoreError, ClientError) as exc:
            note = f"queues of {args.template}: unavailable ({exc})"
    print(format_status(rows, queues))
    if note:
        print(note, file=sys.stderr)
    return 0


# Commands that manage the local services: no template options, errors exit 1.
SERVICE_COMMANDS = {
    "up": ("start the embedded AWS emulator and redis-server in the background", _cmd_up),
    "down": ("stop what `up` started", _cmd_down),
    "status": (
        "show each service (embedded or external, pid, address, healthy) and the depth and "
        "oldest-message age of the template's queues",
        _cmd_status,
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kestrel_local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, func) in SERVICE_COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        cmd.set_defaults(func=func)
        if name != "status":
            cmd.add_argument("--timeout", type=float, default=None, help="seconds to wait")
        else:
            cmd.add_argument("--template", "-t", default="template.yaml")
            cmd.add_argument("--stack-name", default=None, help="default: KESTREL_STACK_NAME")
            cmd.add_argument("--region", default="us-east-1")
    commands = {
        "provision": ("create the template's streams, queues and buckets", _cmd_provision),
        "invoke": ("run one function once on one event, like sam local invoke", _cmd_invoke),
        "run": ("poll every Kinesis/SQS event source and invoke the functions", _cmd_run),
        "serve": ("serve the template's Chalice API locally (chalice local)", _cmd_serve),
        "register-schemas": (
            "register Kestrel's Avro schemas (backward compatible) in the stack's registry",
            _cmd_register_schemas,
        ),
    }
    for name, (help_text, func) in commands.items():
        cmd = sub.add_parser(name, help=help_text)
        cmd.set_defaults(func=func)
        cmd.add_argument("--template", "-t", default="template.yaml")
        cmd.add_argument("--stack-name", default=None, help="default: KESTREL_STACK_NAME")
        cmd.add_argument("--region", default="us-east-1")
        cmd.add_argument(
            "--parameter-overrides",
            action="append",
            default=[],
            metavar="'K=V [K=V ...]'",
            help="template parameter values, as with sam deploy (repeatable)",
        )
        if name == "invoke":
            cmd.add_argument("function", help="logical id or function name")
            cmd.add_argument("--event", "-e", help="JSON event file (default: {})")
        if name == "serve":
            cmd.add_argument("--function", "-f", default="ApiFunction", help="the API function")
            cmd.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
            cmd.add_argument("--port", "-p", type=int, default=8000)
        if name == "run":
            cmd.add_argument(
                "--function", "-f", action="append", help="run only this function (repeatable)"
            )
            cmd.add_argument(
                "--metrics-port", type=int, default=metrics_server.DEFAULT_PORT,
                help="serve the stream's Prometheus /metrics on this port (0: off)",
            )  # fmt: skip
            cmd.add_argument(
                "--metrics-host", default="127.0.0.1", help="loopback address for /metrics"
            )
    return parser


def _endpoint_hint() -> str:
    """What to check when the endpoint failed: the embedded emulator, or the user's endpoint."""
    try:
        settings = LocalSettings.from_env()
    except SettingsError as exc:
        return str(exc)
    if settings.embedded_emulator:
        return "is the local stack up? (make up)"
    return (
        f"is the endpoint at {settings.endpoint} up, and does it offer this service? "
        "(LocalStack without Docker: make localstack-up)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    apply_local_endpoint_defaults()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if args.command in SERVICE_COMMANDS:
        try:
            return int(args.func(args, LocalSettings.from_env()))
        except (ServiceError, SettingsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        settings = LocalSettings.from_env()
        args.stack_name = args.stack_name or settings.stack_name
        return int(args.func(args, settings))
    except (SettingsError, TemplateError, SchemaIncompatible, ServeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(
            f"error: the AWS endpoint {LocalSettings.from_env().endpoint} failed: {exc}\n"
            f"hint: {_endpoint_hint()}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
