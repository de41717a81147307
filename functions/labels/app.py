"""LabelsFunction: decode fraud labels, record them once on their terminal, park poison."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel import clients
from kestrel.stream_batch import (
    build_at_init,
    collect_less_often,
    kinesis_processor,
    label_metrics,
    log_outcome,
    respond,
)
from kestrel.streaming import LabelPath

logger = Logger()
metrics = Metrics()
processor = kinesis_processor()
collect_less_often()  # batches allocate many short-lived objects
build_at_init(clients.label_path, logger)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, path: LabelPath | None = None
) -> PartialItemFailureResponse:
    """Process a Kinesis batch of fraud labels and report the records to retry."""
    outcome = (path or clients.label_path()).run(event["Records"])
    label_metrics(metrics, outcome)
    log_outcome(logger, outcome)
    return respond(event, context, outcome, processor)
