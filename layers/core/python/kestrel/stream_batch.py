"""The per-record flow both stream handlers share: decode, dead-letter poison, apply once."""

from __future__ import annotations

from collections.abc import Callable
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

from kestrel.events import Label, PoisonRecord, Transaction, decode_base64
from kestrel.ports import DeadLetter, DeadLetterSink, EventCounter

Parser = Callable[[bytes], Transaction | Label]


def kinesis_processor() -> BatchProcessor:
    """A Kinesis batch processor that reports item failures even when every record fails."""
    # Without this, a batch where every record fails (e.g. Redis down) raises instead of
    # returning batchItemFailures, and the mapping could not retry from the failed record.
    return BatchProcessor(
        event_type=EventType.KinesisDataStreams, raise_on_entire_batch_failure=False
    )


def apply_record(
    record: KinesisStreamRecord,
    parse: Parser,
    counter: EventCounter,
    sink: DeadLetterSink,
    logger: Logger,
) -> None:
    """Apply one record once; send it to the dead-letter sink if it is poison."""
    try:
        event = parse(decode_base64(record.kinesis.data))
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
    logger.set_correlation_id(event.transaction_id)
    if not counter.apply(event.event_id, event.increments()):
        logger.debug("duplicate event skipped", sequence_number=record.kinesis.sequence_number)


def process_batch(
    event: dict[str, Any],
    context: LambdaContext,
    parse: Parser,
    counter: EventCounter,
    sink: DeadLetterSink,
    processor: BatchProcessor,
    logger: Logger,
) -> PartialItemFailureResponse:
    """Process a Kinesis batch record by record and report the records to retry."""
    handle = partial(apply_record, parse=parse, counter=counter, sink=sink, logger=logger)
    return process_partial_response(
        event=event, record_handler=handle, processor=processor, context=context
    )
