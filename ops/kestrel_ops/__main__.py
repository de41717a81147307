"""Command line of the operations tools for a running Kestrel stack.

python -m kestrel_ops redrive --stack-name kestrel --dry-run
python -m kestrel_ops redrive --queue poison --park-queue-url URL --since 2026-11-29T00:00:00Z
python -m kestrel_ops redrive --queue-url URL --max 100 --rate 500
python -m kestrel_ops drift [--end latest|now|ISO] [--window-hours 24] [--no-publish]
python -m kestrel_ops migrate-store [--redis-url URL]
python -m kestrel_ops backfill --parquet DIR | --event-log [--start T] [--end T] [--redis-url URL]

Exit codes: 0 when everything that could be redriven was, 1 when an error or an expired
range left messages in a queue, 2 on a usage or configuration error. drift: 0, or 1 with
--fail-on-drift when the status is drift, 2 on a usage or configuration error.
backfill: 0, 1 when rows were refused or the store failed part-way, 2 on a usage or
configuration error (see `kestrel_ops.backfill`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.adapters.s3_dead_letter_payloads import S3DeadLetterPayloads
from kestrel.settings import LocalSettings, SettingsError
from kestrel_local.aws import AwsClients, apply_local_endpoint_defaults
from kestrel_local.provision import bind
from kestrel_local.template import TemplateError
from kestrel_ops import backfill, drift, migrate_store
from kestrel_ops.redrive import (
    QueueKind,
    RedriveReport,
    dead_letter_sources,
    move_dead_letters,
    redrive,
    stack_streams,
)

QUEUES: dict[str, str] = {"on-failure": "OnFailureQueue", "poison": "PoisonDLQ"}
LABEL_STREAM = "LabelsStream"
BUCKET = "EventLogBucket"  # also holds dead-letter payloads too large for a queue message


class ConfigError(Exception):
    """A usage or configuration problem; the message names the option."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
    return value


def parse_since(text: str) -> datetime:
    """An ISO-8601 time; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (e.g. 2026-11-29T09:00:00Z)"
        ) from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) queue URL")
    return text


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m kestrel_ops``."""
    top = argparse.ArgumentParser(
        prog="python -m kestrel_ops",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = top.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser(
        "redrive", help="put dead-lettered records back on their stream (dry-run first)"
    )
    cmd.add_argument("--stack-name", default=None, help="default: KESTREL_STACK_NAME")
    cmd.add_argument("--template", "-t", default="template.yaml")
    cmd.add_argument("--region", default="us-east-1")
    cmd.add_argument(
        "--queue",
        choices=sorted(QUEUES),
        default=None,
        help="which queue (default: both, on-failure first); with --queue-url, its kind",
    )
    cmd.add_argument(
        "--queue-url",
        type=_url,
        default=None,
        help="read this queue instead (records still go back only onto the stack's streams)",
    )
    cmd.add_argument(
        "--park-queue-url",
        type=_url,
        default=None,
        help="move poison messages that still fail validation here (default: they stay)",
    )
    cmd.add_argument("--dry-run", action="store_true", help="report only: change nothing")
    cmd.add_argument("--max", type=_positive_int, default=None, help="read at most N messages")
    cmd.add_argument(
        "--rate", type=_positive_float, default=None, help="put at most R records per second"
    )
    cmd.add_argument(
        "--since",
        type=parse_since,
        default=None,
        help="only messages failed or first seen at or after this ISO-8601 time (UTC default)",
    )
    cmd.add_argument(
        "--registry-name", default=None, help="schema registry (default: the stack name)"
    )
    cmd.add_argument(
        "--visibility-timeout",
        type=_positive_int,
        default=300,
        help="seconds a received message stays hidden if the run dies (default 300; "
        "messages left are released at the end of a run)",
    )
    drift.add_parser(sub)
    migrate_store.add_parser(sub)
    backfill.add_parser(sub)
    return top


@dataclass
class ProgressLine:
    """A carriage-return progress line on stderr (tqdm is not a dependency)."""

    total: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    shown_problems: int = 0
    width: int = 24

    def __call__(self, report: RedriveReport) -> None:
        """Redraw the line; print new problems above it."""
        for problem in report.problems[self.shown_problems :]:
            self.out.write(f"\r\033[K{problem}\n")
        self.shown_problems = len(report.problems)
        done = report.messages_read
        total = max(self.total, done)
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r\033[K[{bar}] {done}/{total} messages | {report.progress_line()}")
        self.out.flush()

    def finish(self) -> None:
        """End the line."""
        self.out.write("\n")
        self.out.flush()


def _depth(sqs: Any, url: str, option: str) -> int:
    try:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
    except ClientError as exc:
        raise ConfigError(f"{option}: cannot read queue {url} ({exc})") from None
    return int(attributes.get("ApproximateNumberOfMessages", 0))


def _targets(
    args: argparse.Namespace, clients: AwsClients
) -> tuple[list[tuple[QueueKind | None, str, str]], list[str] | None, frozenset[str]]:
    """Queues to read (kind, url, option), label streams (None: guess), the stack's streams."""
    try:
        app, _ = bind(args.template, clients, args.stack_name)
    except (TemplateError, OSError) as exc:
        raise ConfigError(f"--template {args.template}: {exc}") from None
    streams = stack_streams(app)
    if not streams:
        raise ConfigError(f"--template {args.template}: no function reads a Kinesis stream")
    if args.queue_url:
        kind: QueueKind | None = args.queue
        return [(kind, args.queue_url, "--queue-url")], None, streams
    physical = app.stack.physical
    missing = [QUEUES[k] for k in QUEUES if QUEUES[k] not in physical]
    if missing:
        raise ConfigError(f"--template {args.template}: no {', '.join(missing)} resource")
    kinds: list[QueueKind] = [args.queue] if args.queue else ["on-failure", "poison"]
    option = f"--stack-name {args.stack_name}"
    targets: list[tuple[QueueKind | None, str, str]] = [
        (k, str(physical[QUEUES[k]].ref), option) for k in kinds
    ]
    labels = physical.get(LABEL_STREAM)
    label_streams = [labels.ref, str(labels.attributes.get("Arn", ""))] if labels else []
    return targets, label_streams, streams


class StackPayloads:
    """Reads dead-letter payloads from the stack's bucket, found on the first one needed."""

    def __init__(self, args: argparse.Namespace, clients: AwsClients) -> None:
        self._args, self._clients = args, clients
        self._reader: S3DeadLetterPayloads | None = None

    def get(self, uri: str) -> str:
        """The payload's base64 text at `uri` (see `S3DeadLetterPayloads.get`)."""
        if self._reader is None:
            args = self._args
            try:
                app, _ = bind(args.template, self._clients, args.stack_name)
            except (TemplateError, OSError) as exc:
                raise ValueError(f"--template {args.template}: {exc}") from None
            bucket = app.stack.physical.get(BUCKET)
            if bucket is None:
                raise ValueError(f"--template {args.template}: no {BUCKET} resource")
            self._reader = S3DeadLetterPayloads(self._clients.client("s3"), str(bucket.ref))
        return self._reader.get(uri)


def run_redrive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the redrive command; returns the exit code (config errors raise `ConfigError`)."""
    settings = LocalSettings.from_env()
    args.stack_name = args.stack_name or settings.stack_name
    clients = AwsClients(settings.endpoint, region=args.region)
    sqs, kinesis = clients.client("sqs"), clients.client("kinesis")
    targets, label_streams, streams = _targets(args, clients)
    if args.park_queue_url:
        _depth(sqs, args.park_queue_url, "--park-queue-url")
    registry = GlueSchemaRegistry(clients.client("glue"), args.registry_name or args.stack_name)
    payloads = StackPayloads(args, clients)
    total = RedriveReport(dry_run=args.dry_run)
    remaining = args.max
    for kind, url, option in targets:
        if remaining is not None and remaining <= 0:
            break
        depth = _depth(sqs, url, option)
        progress = ProgressLine(depth if remaining is None else min(depth, remaining), err)
        sources = dead_letter_sources(sqs, url)
        if sources:
            report = move_dead_letters(
                sqs,
                url,
                sources,
                dry_run=args.dry_run,
                max_messages=remaining,
                rate=args.rate,
                progress=progress,
            )
        else:
            report = redrive(
                sqs,
                kinesis,
                registry,
                url,
                kind,
                streams=streams,
                dry_run=args.dry_run,
                max_messages=remaining,
                rate=args.rate,
                since=args.since,
                park_queue_url=args.park_queue_url,
                progress=progress,
                label_streams=label_streams,
                payloads=payloads,
                visibility_timeout_s=args.visibility_timeout,
            )
        progress(report)
        progress.finish()
        total.merge(report)
        if remaining is not None:
            remaining -= report.messages_read
    out.write(total.table() + "\n")
    if total.problems:
        err.write(f"{len(total.problems)} message(s) left because of an error or expiry:\n")
        err.writelines(f"  {problem}\n" for problem in total.problems)
    return total.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parser().parse_args(argv)
    apply_local_endpoint_defaults()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "drift":
            return drift.run_drift(args, sys.stdout, sys.stderr)
        if args.command == "migrate-store":
            redis_url = LocalSettings.from_env().redis
            return migrate_store.run_migrate(args, redis_url, sys.stdout, sys.stderr)
        if args.command == "backfill":
            return backfill.run_backfill(args, LocalSettings.from_env(), sys.stdout, sys.stderr)
        return run_redrive(args, sys.stdout, sys.stderr)
    except (ConfigError, SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(
            f"error: the AWS endpoint failed: {exc}\nhint: is the stack up? (make up)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        if args.command == "backfill":
            print("\ninterrupted: rerun the same range to finish (idempotent)", file=sys.stderr)
        else:
            print("\ninterrupted: messages left so far are visible again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
