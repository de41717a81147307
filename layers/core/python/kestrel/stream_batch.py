"""What the stream handlers share: the collector's pace, the batch processor, the response and
the metrics."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable, Mapping
from statistics import median
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel.batch_outcome import BatchOutcome

# Allocations between two young-generation collections in a stream handler's process.
GC_YOUNG_THRESHOLD = 20_000


def collect_less_often() -> None:
    """Let the young generation grow to GC_YOUNG_THRESHOLD allocations (700 by default).

    A batch of 1,000 events allocates a few hundred thousand short-lived objects (records,
    vectors, decisions, log rows); with the default threshold the collector runs hundreds
    of times a batch and re-scans what the batch still holds. Measured with `make
    bench-engine` (batches of 1,000): the client's CPU per event fell from 79 to 61-66 µs.
    The older generations keep their defaults' ratio (10 and 10).
    """
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def build_at_init(build: Callable[[], object], logger: Logger) -> None:
    """Build the function's path in Lambda's init phase, so the first batch waits for nothing.

    Models load and clients are made while the environment starts: on AWS before its first
    invoke, in the local runtime while it warms environments, before any record is read.
    Only inside a Lambda environment (``AWS_LAMBDA_FUNCTION_NAME`` set), so importing a
    handler anywhere else does no I/O. A failure (an endpoint not up yet) is logged and
    left to the first invoke, which builds the path again: the factories cache no failure.
    """
    if "AWS_LAMBDA_FUNCTION_NAME" not in os.environ:
        return
    try:
        build()
    except Exception:  # init must not die: the first invoke builds the path again
        logger.exception("could not build the function's path at init; the first batch will")


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


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank q-quantile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _batch_metrics(metrics: Metrics, prefix: str, outcome: BatchOutcome) -> None:
    """Counts, freshness, scoring time and model versions of one batch as EMF metrics."""
    count = MetricUnit.Count
    metrics.add_metric(name=f"{prefix}Applied", unit=count, value=outcome.applied)
    metrics.add_metric(name=f"{prefix}Duplicates", unit=count, value=outcome.duplicates)
    metrics.add_metric(name="PoisonRecords", unit=count, value=outcome.poisoned)
    metrics.add_metric(name=f"{prefix}Failed", unit=count, value=len(outcome.failures))
    for decision, n in sorted(outcome.decisions.items()):
        metrics.add_metric(name=f"Decisions{decision.title()}", unit=count, value=n)
    for name, lags in (
        ("FreshnessArrival", outcome.arrival_lag_ms),
        ("FreshnessEventTime", outcome.event_lag_ms),
    ):
        if lags:
            ordered = sorted(lags)
            ms = MetricUnit.Milliseconds
            metrics.add_metric(name=f"{name}P50", unit=ms, value=median(ordered))
            metrics.add_metric(name=f"{name}P99", unit=ms, value=_quantile(ordered, 0.99))
            metrics.add_metric(name=f"{name}Max", unit=ms, value=ordered[-1])
    if outcome.scoring_ms is not None:
        metrics.add_metric(
            name="ScoringLatency", unit=MetricUnit.Milliseconds, value=outcome.scoring_ms
        )
    if outcome.model_version is not None:
        metrics.add_metadata(key="model_version", value=outcome.model_version)
    shadow = outcome.shadow
    if shadow is not None:  # a challenger shadow-scored the batch (kestrel.shadow)
        metrics.add_metric(
            name="ShadowScoringLatency", unit=MetricUnit.Milliseconds, value=shadow.ms
        )
        metrics.add_metric(name="ShadowErrors", unit=count, value=int(shadow.error is not None))
        if shadow.model_version is not None:
            metrics.add_metadata(key="shadow_model_version", value=shadow.model_version)


def transaction_metrics(metrics: Metrics, outcome: BatchOutcome) -> None:
    """A transaction batch's EMF metrics: the shared ones and TransactionsProcessed."""
    _batch_metrics(metrics, "Transactions", outcome)
    processed = outcome.applied + outcome.duplicates
    metrics.add_metric(name="TransactionsProcessed", unit=MetricUnit.Count, value=processed)


def label_metrics(metrics: Metrics, outcome: BatchOutcome) -> None:
    """A label batch's EMF metrics: the shared ones, LabelsReceived and LabelsFrauds."""
    _batch_metrics(metrics, "Labels", outcome)
    metrics.add_metric(name="LabelsReceived", unit=MetricUnit.Count, value=outcome.labels)
    metrics.add_metric(name="LabelsFrauds", unit=MetricUnit.Count, value=outcome.frauds)


def click_metrics(metrics: Metrics, outcome: BatchOutcome) -> None:
    """A clickstream batch's EMF metrics: the shared ones and ClicksProcessed."""
    _batch_metrics(metrics, "Clicks", outcome)
    processed = outcome.applied + outcome.duplicates
    metrics.add_metric(name="ClicksProcessed", unit=MetricUnit.Count, value=processed)


DLQ_METRICS = {"poison": "PoisonDLQDepth", "on_failure": "OnFailureQueueDepth"}


def dlq_depth_metrics(metrics: Metrics, depths: Mapping[str, int | None]) -> None:
    """Dead-letter queue depths as EMF metrics (PoisonDLQDepth, OnFailureQueueDepth).

    `depths` is what `kestrel.monitoring_ports.QueueDepths.depths` returns; unknown depths
    (None) and roles other than ``poison`` and ``on_failure`` are left out.
    """
    for role, name in DLQ_METRICS.items():
        depth = depths.get(role)
        if depth is not None:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=depth)


def log_outcome(logger: Logger, outcome: BatchOutcome) -> None:
    """One WARNING when records of the batch must be retried (nothing when all went well)."""
    if outcome.failures:
        reasons = sorted(set(outcome.failures.values()))
        logger.warning(
            "records to retry",
            extra={"failed": len(outcome.failures), "reasons": reasons[:5],
                   "sequence_numbers": sorted(outcome.failures)[:10]},
        )  # fmt: skip
