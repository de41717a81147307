"""DriftFunction: on a schedule, compare served features and scores with the model's reference."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel import drift_clients
from kestrel.drift import DriftReport
from kestrel.drift_job import DriftJob
from kestrel.monitoring_ports import QueueDepths
from kestrel.stream_batch import dlq_depth_metrics

logger = Logger()
metrics = Metrics()


def drift_metrics(report: DriftReport) -> None:
    """DriftPsiMax (largest PSI judged, features and score) and DriftedFeatures (with score)."""
    if report.psi_max is not None:
        metrics.add_metric(name="DriftPsiMax", unit=MetricUnit.NoUnit, value=report.psi_max)
    metrics.add_metric(name="DriftedFeatures", unit=MetricUnit.Count, value=len(report.drifted))
    metrics.add_metadata(key="drift_status", value=report.status.value)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any],
    context: LambdaContext,
    job: DriftJob | None = None,
    depths: QueueDepths | None = None,
) -> dict[str, Any]:
    """Check the window ending at the event's time (or its ``window_end``); emit metrics."""
    end = event.get("window_end") or event.get("time")
    report, locations = (job or drift_clients.drift_job()).run(end)
    drift_metrics(report)
    dlq_depth_metrics(metrics, (depths or drift_clients.queue_depths()).depths())
    summary = {
        "status": report.status.value,
        "drifted": report.drifted,
        "watch": report.watched,
        "rows": report.window.rows,
        "model_version": report.model_version,
        "reports": locations,
    }
    logger.info("drift check", extra=summary)
    return summary
