"""DriftFunction's clients and adapters, created once per container from `Settings`.

`kestrel.clients` wires the stream and API paths and imports the ONNX adapter, which the
drift function does not ship (its layers hold numpy and scipy, not onnxruntime), so the
drift check is wired here, with the same settings and the same client options.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from kestrel import connections
from kestrel.adapters.redis_telemetry import RedisDriftStatus
from kestrel.adapters.s3_drift_reports import S3DriftReports, active_manifest
from kestrel.adapters.s3_event_window import S3EventWindow
from kestrel.adapters.scipy_drift import ScipyDriftStatistics
from kestrel.adapters.sqs_queue_depths import SqsQueueDepths
from kestrel.connections import redis_client, s3_client, settings, sqs_client
from kestrel.drift import Thresholds
from kestrel.drift_job import DriftJob


def _manifest() -> dict[str, Any]:
    config = settings()
    return active_manifest(
        config.model_dir, s3_client(), config.model_bucket, config.model_pointer_key
    )


@cache
def drift_job() -> DriftJob:
    """The drift check: event log window, scipy statistics, S3 reports, Redis status."""
    config = settings()
    return DriftJob(
        source=S3EventWindow(
            s3_client(), config.event_log_bucket, max_objects=config.drift_max_objects
        ),
        statistics=ScipyDriftStatistics(),
        manifest=_manifest,
        status=RedisDriftStatus(redis_client()),
        reports=(S3DriftReports(s3_client(), config.event_log_bucket),),
        window_ms=config.drift_window_s * 1000,
        status_ttl_s=config.drift_status_ttl_s,
        limits=Thresholds(min_rows=config.drift_min_rows),
    )


@cache
def queue_depths() -> SqsQueueDepths:
    """Depths of the poison and on-failure dead-letter queues."""
    config = settings()
    return SqsQueueDepths(sqs_client(), config.dlq_urls)


def reset() -> None:
    """Forget every cached client and setting (tests, or after changing the environment)."""
    connections.reset()
    drift_job.cache_clear()
    queue_depths.cache_clear()
