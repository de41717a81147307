"""Redrive dead-lettered Kinesis records back onto their stream.

Two queues feed it. The on-failure queue holds AWS's on-failure messages (no payload, only
``KinesisBatchInfo``: stream, shard and sequence range), so the records are re-read from the
shard with ``AT_SEQUENCE_NUMBER`` and put back. The poison queue holds Kestrel's dead letters
(`kestrel.adapters.sqs_dead_letters`: full payload, reason, coordinates); each is validated
again with the current schema registry, and put back when it now passes. A payload too large
for the queue is read back from the stack's bucket (``dead-letters/``) and checked against
its SHA-256 first; the object stays there. Records keep their partition keys and their order
per key. A message is deleted only after all of its records were accepted by PutRecords;
re-put records that were already applied are harmless, because features are idempotent per
event id. Messages that stay are made visible again at the end.

Records go back only onto the stack's own streams (`stack_streams`: the streams its
functions read, from the template bound to the stack). A message naming any other stream
is refused, with the stream's name in the report, and left in its queue untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError

from kestrel.adapters.s3_dead_letter_payloads import payload_sha256
from kestrel.codec import label_decoder, transaction_decoder
from kestrel.events import PoisonRecord, check_not_ahead_of_arrival, decode_base64
from kestrel.ports import SchemaLookup
from kestrel_ops.redrive_kinesis import (
    KinesisApi,
    MessageError,
    OnFailureBatch,
    Pacer,
    PoisonLetter,
    PutEntry,
    RangeExpired,
    RedriveFailure,
    parse_message,
    put_in_order,
    read_range,
    stream_name,
)
from kestrel_ops.redrive_report import (
    ERROR,
    EXPIRED,
    PARKED,
    REDRIVEN,
    SKIPPED,
    STILL_POISON,
    RedriveReport,
)
from kestrel_ops.redrive_sqs import (
    Progress,
    SqsApi,
    dead_letter_sources,
    each_message,
    move_dead_letters,
)

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_sqs import SQSClient

    from kestrel_local.provision import LocalApp

__all__ = [
    "KinesisApi",
    "OnFailureBatch",
    "Pacer",
    "PayloadReader",
    "PoisonLetter",
    "PutEntry",
    "QueueKind",
    "RangeExpired",
    "RedriveReport",
    "SqsApi",
    "dead_letter_sources",
    "move_dead_letters",
    "parse_message",
    "put_in_order",
    "read_range",
    "redrive",
    "stack_streams",
]

log = logging.getLogger("kestrel_ops.redrive")

QueueKind = Literal["on-failure", "poison"]
DRY_RUN_VISIBILITY_S = 60


def stack_streams(app: LocalApp) -> frozenset[str]:
    """The ARNs of the streams the stack's functions read: the only ones redrive writes to."""
    return frozenset(
        source.stream_arn for spec in app.functions.values() for source in spec.kinesis
    )


class PayloadReader(Protocol):
    """Reads back a dead letter's payload stored in the bucket (`S3DeadLetterPayloads`)."""

    def get(self, uri: str) -> str:
        """The payload's base64 text at `uri`; raises if it cannot be read or is elsewhere."""
        ...


class _Redriver:
    """Handles one message at a time for `redrive`, counting into its report."""

    def __init__(
        self,
        sqs: SqsApi,
        kinesis: KinesisApi,
        schema_lookup: SchemaLookup,
        queue_url: str,
        report: RedriveReport,
        pacer: Pacer,
        options: Mapping[str, Any],
    ) -> None:
        self.sqs, self.kinesis, self.queue_url, self.report = sqs, kinesis, queue_url, report
        self.pacer = pacer
        self.dry_run: bool = options["dry_run"]
        self.since: datetime | None = options["since"]
        self.park_queue_url: str | None = options["park_queue_url"]
        self.label_streams: Collection[str] | None = options["label_streams"]
        self.streams: frozenset[str] = frozenset(options["streams"])
        self.progress: Progress | None = options["progress"]
        self.sleep: Callable[[float], None] = options["sleep"]
        self.max_put_stalls: int = options["max_put_stalls"]
        self.visibility_timeout_s: int = options["visibility_timeout_s"]
        self.payloads: PayloadReader | None = options["payloads"]
        self.transactions = transaction_decoder(schema_lookup)
        self.labels = label_decoder(schema_lookup)

    def __call__(self, message: Mapping[str, Any]) -> bool:
        """Handle one message; True when it stays in the queue."""
        try:
            stays = self._handle(message)
        finally:
            if self.progress is not None:
                self.progress(self.report)
        return stays

    def _left(self, outcome: str, reason: str, problem: str, message: Mapping[str, Any]) -> bool:
        self.report.count(outcome, reason)
        self.report.problems.append(f"message {message['MessageId']}: {problem}")
        log.warning("message %s: %s", message["MessageId"], problem)
        return True

    def _handle(self, message: Mapping[str, Any]) -> bool:
        try:
            parsed = parse_message(str(message["Body"]))
        except MessageError as exc:
            return self._left(ERROR, "unreadable", f"not redrivable: {exc}", message)
        if isinstance(parsed, OnFailureBatch):
            reason, when = parsed.condition or "on-failure", parsed.failed_at
        else:
            reason, when = parsed.reason, parsed.first_seen
        if self.since is not None and when < self.since:
            self.report.count(SKIPPED, reason)
            return True
        if parsed.stream_arn not in self.streams:
            return self._refuse(parsed.stream_arn, reason, message)
        if isinstance(parsed, OnFailureBatch):
            return self._on_failure(parsed, reason, message)
        return self._poison(parsed, message)

    def _refuse(self, stream_arn: str, reason: str, message: Mapping[str, Any]) -> bool:
        """Leave a message naming a stream that is not the stack's (nothing read or put)."""
        own = ", ".join(sorted(stream_name(arn) for arn in self.streams)) or "none"
        problem = (
            f"refused: it names stream {stream_name(stream_arn)} ({stream_arn}), not one of "
            f"this stack's streams ({own}); left in the queue"
        )
        return self._left(ERROR, reason, problem, message)

    def _on_failure(self, batch: OnFailureBatch, reason: str, message: Mapping[str, Any]) -> bool:
        try:
            entries = read_range(self.kinesis, batch, sleep=self.sleep)
        except RangeExpired as exc:
            return self._left(EXPIRED, reason, str(exc), message)
        except (RedriveFailure, ClientError, BotoCoreError) as exc:
            return self._left(ERROR, reason, f"cannot re-read the records: {exc}", message)
        if self.pacer.rate is not None and not self.dry_run:  # hidden while it is paced out
            seconds = self.visibility_timeout_s + int(len(entries) / self.pacer.rate) + 1
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=min(seconds, 43_200),
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("cannot keep message %s hidden: %s", message["MessageId"], exc)
        return self._put_then_delete(stream_name(batch.stream_arn), entries, reason, message)

    def _put_then_delete(
        self, stream: str, entries: list[PutEntry], reason: str, message: Mapping[str, Any]
    ) -> bool:
        if self.dry_run:
            self.report.records_reput += len(entries)
            self.report.count(REDRIVEN, reason)
            return True
        outcome = put_in_order(
            self.kinesis,
            stream,
            entries,
            self.pacer,
            max_stalls=self.max_put_stalls,
            sleep=self.sleep,
        )
        self.report.records_reput += outcome.put
        self.report.records_failed += len(outcome.failed)
        if outcome.failed:
            problem = (
                f"{len(outcome.failed)} of {len(entries)} records could not be put on {stream} "
                f"({outcome.reason}); the message stays (a rerun re-puts duplicates, harmless)"
            )
            return self._left(ERROR, reason, problem, message)
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as exc:
            problem = f"records re-put but the message cannot be deleted ({exc})"
            return self._left(ERROR, reason, problem, message)
        self.report.count(REDRIVEN, reason)
        return False

    def _decoder(self, stream_arn: str) -> Callable[[bytes], Any]:
        name = stream_name(stream_arn)
        if self.label_streams is None:
            is_labels = name.endswith("labels")
        else:
            is_labels = stream_arn in self.label_streams or name in self.label_streams
        return self.labels if is_labels else self.transactions

    def _payload_b64(self, letter: PoisonLetter) -> str:
        """The letter's payload, read back from the bucket when it is stored there."""
        if not letter.payload_s3:
            return letter.payload_b64
        if self.payloads is None:
            raise RedriveFailure(f"payload at {letter.payload_s3}: no bucket to read it from")
        try:
            text = self.payloads.get(letter.payload_s3)
        except (ValueError, ClientError, BotoCoreError) as exc:
            raise RedriveFailure(f"cannot read the payload at {letter.payload_s3}: {exc}") from None
        if payload_sha256(text) != letter.payload_sha256:
            raise RedriveFailure(f"the payload at {letter.payload_s3} does not match its SHA-256")
        return text

    def _poison(self, letter: PoisonLetter, message: Mapping[str, Any]) -> bool:
        try:
            payload_b64 = self._payload_b64(letter)
        except RedriveFailure as exc:
            return self._left(ERROR, letter.reason, str(exc), message)
        try:
            data = decode_base64(payload_b64)
            event = self._decoder(letter.stream_arn)(data)
            # The stream's own rule: not dated far after the record reached the stream.
            check_not_ahead_of_arrival(event, letter.first_seen.timestamp() * 1000.0)
        except PoisonRecord as poison:
            return self._still_poison(letter, poison, message)
        except Exception as exc:  # noqa: BLE001 - e.g. the registry is unreachable: retry later
            problem = f"cannot validate ({type(exc).__name__}: {exc})"
            return self._left(ERROR, letter.reason, problem, message)
        entry = PutEntry(data, letter.partition_key, letter.sequence_number)
        return self._put_then_delete(
            stream_name(letter.stream_arn), [entry], letter.reason, message
        )

    def _still_poison(
        self, letter: PoisonLetter, poison: PoisonRecord, message: Mapping[str, Any]
    ) -> bool:
        if self.park_queue_url is None:
            self.report.count(STILL_POISON, letter.reason)
            return True
        if self.dry_run:
            self.report.count(PARKED, letter.reason)
            return True
        try:
            self.sqs.send_message(
                QueueUrl=self.park_queue_url,
                MessageBody=str(message["Body"]),
                MessageAttributes={
                    "reason": {"DataType": "String", "StringValue": poison.reason.value},
                    "detail": {"DataType": "String", "StringValue": poison.detail[:1000] or "-"},
                },
            )
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as exc:
            problem = f"still poison ({poison.reason.value}) and cannot be parked: {exc}"
            return self._left(ERROR, letter.reason, problem, message)
        self.report.count(PARKED, letter.reason)
        return False


def redrive(
    sqs: SQSClient | SqsApi,
    kinesis: KinesisClient | KinesisApi,
    schema_lookup: SchemaLookup,
    queue_url: str,
    kind: QueueKind | None = None,
    *,
    streams: Collection[str],
    dry_run: bool = False,
    max_messages: int | None = None,
    rate: float | None = None,
    since: datetime | None = None,
    park_queue_url: str | None = None,
    progress: Progress | None = None,
    label_streams: Collection[str] | None = None,
    payloads: PayloadReader | None = None,
    visibility_timeout_s: int = 300,
    wait_time_s: int = 1,
    max_put_stalls: int = 5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RedriveReport:
    """Redrive every message of one dead-letter queue back onto its stream.

    Each message is recognised by its shape (an on-failure message or a ``kestrel.poison``
    dead letter), so `kind` only names the queue in the report. Each message is received
    once; the ones that stay are made visible again (ChangeMessageVisibility 0) when the
    run ends, so a rerun or another tool sees them at once.

    Args:
        sqs: A boto3 SQS client (or anything with the `SqsApi` calls).
        kinesis: A boto3 Kinesis client (or anything with the `KinesisApi` calls).
        schema_lookup: The schema registry poison records are validated against again.
        queue_url: The dead-letter queue to read.
        kind: ``on-failure`` or ``poison``, for the report (None: the queue URL).
        streams: ARNs of the streams records may be put back on (`stack_streams`); a
            message naming any other stream is refused (counted as an error) and stays.
        dry_run: Read and validate only: no puts, no deletes, no sends; the figures say
            what a real run would do.
        max_messages: Read at most this many messages.
        rate: Put at most this many records per second.
        since: Only messages whose failure time (on-failure ``timestamp``) or first-seen
            time (poison ``first_seen``) is at or after this aware datetime; older ones
            are counted as skipped and left.
        park_queue_url: Move poison messages that still fail validation to this queue
            (sent, then deleted); without it they stay.
        progress: Called with the report after each message.
        label_streams: Names or ARNs of the label streams (poison records from them are
            validated as labels); None: streams whose name ends in ``labels``.
        payloads: Reads back payloads stored in the stack's bucket (dead letters too large
            for the queue); None: such messages stay, counted as errors.
        visibility_timeout_s: How long a received message stays hidden (at most 60 s in
            a dry run). Messages that stay are released at the end of the run anyway; this
            only says when they come back if the run dies. Messages that come back during
            a longer run are not handled twice.
        wait_time_s: ReceiveMessage long-poll wait; an empty answer ends the run.
        max_put_stalls: PutRecords rounds in a row without progress before giving up on
            a message (it stays, counted as an error).
        clock: Monotonic clock (injected by tests).
        sleep: Pause for backoff and pacing (injected by tests).

    Returns:
        The run's `RedriveReport`; its `exit_code` is 1 when an error or an expired range
        left a message in the queue.

    Raises:
        ValueError: `rate` or `max_messages` is not positive, or `since` is naive.
        botocore.exceptions.ClientError: ReceiveMessage failed (e.g. no such queue).
    """
    if max_messages is not None and max_messages <= 0:
        raise ValueError(f"max_messages must be positive, got {max_messages}")
    if since is not None and since.utcoffset() is None:
        raise ValueError("since must be an aware datetime (with a UTC offset)")
    report = RedriveReport(queue=kind or queue_url, dry_run=dry_run)
    options = {
        "dry_run": dry_run,
        "since": since,
        "park_queue_url": park_queue_url,
        "label_streams": label_streams,
        "streams": streams,
        "progress": progress,
        "sleep": sleep,
        "max_put_stalls": max_put_stalls,
        "visibility_timeout_s": visibility_timeout_s,
        "payloads": payloads,
    }
    pacer = Pacer(rate, clock, sleep)
    sqs_api, kinesis_api = cast(SqsApi, sqs), cast(KinesisApi, kinesis)
    handler = _Redriver(sqs_api, kinesis_api, schema_lookup, queue_url, report, pacer, options)
    # A dry run changes nothing: its messages hide briefly, and are released at the end.
    hidden_s = min(visibility_timeout_s, DRY_RUN_VISIBILITY_S) if dry_run else visibility_timeout_s
    each_message(sqs_api, queue_url, handler, max_messages, hidden_s, wait_time_s, clock)
    return report
