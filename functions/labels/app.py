"""LabelsFunction: validate each fraud label, count it once, dead-letter poison records."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel import clients
from kestrel.events import parse_label
from kestrel.ports import DeadLetterSink, EventCounter
from kestrel.stream_batch import kinesis_processor, process_batch

logger = Logger()
processor = kinesis_processor()


@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any],
    context: LambdaContext,
    counter: EventCounter | None = None,
    sink: DeadLetterSink | None = None,
) -> PartialItemFailureResponse:
    """Process a Kinesis batch of fraud labels and report the records to retry."""
    return process_batch(
        event,
        context,
        parse_label,
        counter if counter is not None else clients.event_counter(),
        sink if sink is not None else clients.dead_letter_sink(),
        processor,
        logger,
    )
