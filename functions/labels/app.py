"""LabelsFunction: validate each fraud label, count it once, dead-letter poison records."""

from __future__ import annotations

from functools import partial
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kestrel import clients
from kestrel.events import PoisonRecord, decode_base64, parse_label
from kestrel.ports import DeadLetter, DeadLetterSink, EventCounter

logger = Logger()
# Report failures item by item even when the whole batch fails (e.g. Redis is down), so a
# store error is always a batch item failure and the event source mapping retries from it.
processor = BatchProcessor(
    event_type=EventType.KinesisDataStreams, raise_on_entire_batch_failure=False
)


def record_handler(
    record: KinesisStreamRecord, counter: EventCounter, sink: DeadLetterSink
) -> None:
    """Count one fraud label once; send it to the dead-letter sink if it is poison."""
    try:
        label = parse_label(decode_base64(record.kinesis.data))
    except PoisonRecord as poison:
        logger.set_correlation_id(None)
        sink.send(DeadLetter.from_kinesis_record(record.raw_event, poison))
        logger.warning(
            "poison record dead-lettered",
            reason=poison.reason.value,
            detail=poison.detail,
            sequence_number=record.kinesis.sequence_number,
        )
        return
    logger.set_correlation_id(label.transaction_id)
    if not counter.apply(label.event_id, label.increments()):
        logger.debug("duplicate label skipped", sequence_number=record.kinesis.sequence_number)


@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any],
    context: LambdaContext,
    counter: EventCounter | None = None,
    sink: DeadLetterSink | None = None,
) -> PartialItemFailureResponse:
    """Process a Kinesis batch of fraud labels and report the records to retry."""
    handle = partial(
        record_handler,
        counter=counter if counter is not None else clients.event_counter(),
        sink=sink if sink is not None else clients.dead_letter_sink(),
    )
    return process_partial_response(
        event=event, record_handler=handle, processor=processor, context=context
    )
