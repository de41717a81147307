"""What both stream handlers share: the batch processor, the response and the metrics."""

from __future__ import annotations

from statistics import median
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel.streaming import BatchOutcome


def kinesis_processor() -> BatchProcessor:
    """A Kinesis batch processor that reports item failures even when every record fails."""
    # Without this, a batch where every record fails raises instead of returning
    # batchItemFailures, and the mapping could not retry from the first failed record.
    return BatchProcessor(
        event_type=EventType.KinesisDataStreams, raise_on_entire_batch_failure=False
    )


def respond(
    event: dict[str, Any],
    context: LambdaContext,
    outcome: BatchOutcome,
    processor: BatchProcessor,
) -> PartialItemFailureResponse:
    """The partial batch response: the records `outcome` says must be retried."""

    def check(record: KinesisStreamRecord) -> None:
        outcome.check(record.kinesis.sequence_number)

    return process_partial_response(
        event=event, record_handler=check, processor=processor, context=context
    )


def record_metrics(metrics: Metrics, prefix: str, outcome: BatchOutcome) -> None:
    """Counts and freshness of one batch as EMF metrics."""
    metrics.add_metric(name=f"{prefix}Applied", unit=MetricUnit.Count, value=outcome.applied)
    metrics.add_metric(name=f"{prefix}Duplicates", unit=MetricUnit.Count, value=outcome.duplicates)
    metrics.add_metric(name="PoisonRecords", unit=MetricUnit.Count, value=outcome.poisoned)
    metrics.add_metric(name=f"{prefix}Failed", unit=MetricUnit.Count, value=len(outcome.failures))
    for decision, count in sorted(outcome.decisions.items()):
        metrics.add_metric(name=f"Decisions{decision.title()}", unit=MetricUnit.Count, value=count)
    for name, lags in (
        ("FreshnessArrival", outcome.arrival_lag_ms),
        ("FreshnessEventTime", outcome.event_lag_ms),
    ):
        if lags:
            metrics.add_metric(name=f"{name}P50", unit=MetricUnit.Milliseconds, value=median(lags))
            metrics.add_metric(name=f"{name}Max", unit=MetricUnit.Milliseconds, value=max(lags))
