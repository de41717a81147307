"""ClickstreamFunction: decode clicks, apply their features once, log them, park poison."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel import clients
from kestrel.click_streaming import ClickPath
from kestrel.stream_batch import (
    build_at_init,
    click_metrics,
    collect_less_often,
    kinesis_processor,
    log_outcome,
    respond,
)

logger = Logger()
metrics = Metrics()
processor = kinesis_processor()
collect_less_often()  # batches allocate many short-lived objects
build_at_init(clients.click_path, logger)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, path: ClickPath | None = None
) -> PartialItemFailureResponse:
    """Process a Kinesis batch of clickstream events (features, event log) and report retries."""
    outcome = (path or clients.click_path()).run(event["Records"])
    click_metrics(metrics, outcome)
    log_outcome(logger, outcome)
    return respond(event, context, outcome, processor)
