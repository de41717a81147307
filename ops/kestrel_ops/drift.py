"""``python -m kestrel_ops drift``: one drift check of a running stack, as DriftFunction does it.

It reads the window from the stack's event-log bucket (by default the 24 hours before the
newest logged event, since the simulator replays 2018), compares it with the model layer's
reference (or the active model's, with ``--model-bucket``), prints the table, writes the
JSON report to ``--report`` (default ``.run/drift/report-<UTC>.json``) and, unless
``--no-publish``, to ``s3://<bucket>/drift/`` and to Redis (``kestrel:{drift}:latest``),
where the API's dashboard reads it. See docs/drift.md for the measures and thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import redis

from kestrel.adapters.redis_telemetry import RedisDriftStatus
from kestrel.adapters.s3_drift_reports import S3DriftReports, active_manifest
from kestrel.adapters.s3_event_window import DEFAULT_MAX_OBJECTS, S3EventWindow
from kestrel.adapters.scipy_drift import ScipyDriftStatistics
from kestrel.drift import Status, Thresholds
from kestrel.drift_job import DriftJob, DriftReportSink, render_table
from kestrel.settings import LocalSettings, default_model_dir, redact_url
from kestrel_local.aws import AwsClients
from kestrel_local.provision import bind
from kestrel_local.template import TemplateError

BUCKET = "EventLogBucket"


class FileDriftReports:
    """Writes each report as a JSON file (`DriftReportSink`)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def write(self, report: Mapping[str, Any]) -> str:
        """Write `report` to the path; return the path."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(dict(report), indent=2, allow_nan=False) + "\n")
        return str(self._path)


def _positive(kind: type[int] | type[float], text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def add_parser(sub: Any) -> None:
    """Add the ``drift`` command to the subparsers of ``python -m kestrel_ops``."""
    cmd = sub.add_parser("drift", help="compare recent features and scores with the model's")
    cmd.add_argument("--stack-name", default=None, help="default: KESTREL_STACK_NAME")
    cmd.add_argument("--template", "-t", default="template.yaml")
    cmd.add_argument("--region", default="us-east-1")
    cmd.add_argument(
        "--end",
        default="latest",
        help="window end: latest (after the newest logged event, default), now, or ISO-8601",
    )
    cmd.add_argument(
        "--window-hours",
        type=partial(_positive, float),
        default=24.0,
        help="window length in hours (default 24; under 24 the night flag is not judged, "
        "under 168 the weekend flag)",
    )
    cmd.add_argument(
        "--max-objects",
        type=partial(_positive, int),
        default=DEFAULT_MAX_OBJECTS,
        help=f"most event-log objects read (default {DEFAULT_MAX_OBJECTS})",
    )
    cmd.add_argument(
        "--min-rows",
        type=partial(_positive, int),
        default=Thresholds().min_rows,
        help="fewer rows in the window: status unknown",
    )
    cmd.add_argument("--model-dir", default=None, help="model layer folder (default MODEL_DIR)")
    cmd.add_argument(
        "--model-bucket", default=None, help="follow this bucket's models/active.json pointer"
    )
    cmd.add_argument("--report", type=Path, default=None, help="JSON report path")
    cmd.add_argument(
        "--no-publish", action="store_true", help="write no Redis status and no S3 report"
    )
    cmd.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the status is drift")


def run_drift(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the drift command; returns the exit code (configuration errors raise ValueError)."""
    settings = LocalSettings.from_env()
    stack_name = args.stack_name or settings.stack_name
    clients = AwsClients(settings.endpoint, region=args.region)
    try:
        app, _ = bind(args.template, clients, stack_name)
    except (TemplateError, OSError) as exc:
        raise ValueError(f"--template {args.template}: {exc}") from None
    if BUCKET not in app.stack.physical:
        raise ValueError(f"--template {args.template}: no {BUCKET} resource")
    bucket = str(app.stack.physical[BUCKET].ref)
    s3 = clients.client("s3")
    model_dir = args.model_dir or os.environ.get("MODEL_DIR") or default_model_dir()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.report or Path(settings.run_dir) / "drift" / f"report-{stamp}.json"
    reports: list[DriftReportSink] = [FileDriftReports(path)]
    status = None
    if not args.no_publish:
        reports.append(S3DriftReports(s3, bucket))
        status = RedisDriftStatus(redis.Redis.from_url(settings.redis, socket_timeout=5))
    job = DriftJob(
        source=S3EventWindow(s3, bucket, max_objects=args.max_objects),
        statistics=ScipyDriftStatistics(),
        manifest=partial(
            active_manifest, model_dir, s3, args.model_bucket or "", "models/active.json"
        ),
        status=status,
        reports=reports,
        window_ms=int(args.window_hours * 3_600_000),
        limits=Thresholds(min_rows=args.min_rows),
    )
    try:
        report, locations = job.run(args.end)
    except redis.exceptions.ConnectionError as exc:
        shown = redact_url(settings.redis)
        raise ValueError(f"Redis at {shown} does not answer ({exc}): make up?") from None
    out.write(render_table(report) + "\n")
    for location in locations:
        out.write(f"report: {location}\n")
    if status is not None:
        out.write("status: kestrel:{drift}:latest in Redis\n")
    if report.status is Status.UNKNOWN:
        err.write("drift: status unknown (too few rows in the window? see the table)\n")
    return 1 if args.fail_on_drift and report.status is Status.DRIFT else 0
