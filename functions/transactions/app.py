"""TransactionsFunction: decode, apply features once, score and decide, log, park poison."""

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
    log_outcome,
    respond,
    transaction_metrics,
)
from kestrel.streaming import TransactionPath

logger = Logger()
metrics = Metrics()
processor = kinesis_processor()
collect_less_often()  # batches allocate many short-lived objects
build_at_init(clients.transaction_path, logger)


@metrics.log_metrics
@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, path: TransactionPath | None = None
) -> PartialItemFailureResponse:
    """Process a Kinesis batch of transactions (features, decisions) and report retries."""
    outcome = (path or clients.transaction_path()).run(event["Records"])
    transaction_metrics(metrics, outcome)
    log_outcome(logger, outcome)
    return respond(event, context, outcome, processor)
