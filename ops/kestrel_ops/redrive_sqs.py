"""SQS side of the redrive: receive each message once, keep it hidden, release it, move DLQs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError

from kestrel_ops.redrive_kinesis import Pacer, error_code
from kestrel_ops.redrive_report import ERROR, REDRIVEN, RedriveReport

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger("kestrel_ops.redrive")

UNSUPPORTED_CODES = frozenset(
    {
        "InvalidAction",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "NotImplemented",
        "UnknownOperationException",
    }
)
Progress = Callable[[RedriveReport], None]


class SqsApi(Protocol):
    """The boto3 ``sqs`` client operations the redrive tool calls (keyword arguments only)."""

    def receive_message(self, **kwargs: Any) -> Mapping[str, Any]:
        """ReceiveMessage."""
        ...

    def delete_message(self, **kwargs: Any) -> Mapping[str, Any]:
        """DeleteMessage."""
        ...

    def send_message(self, **kwargs: Any) -> Mapping[str, Any]:
        """SendMessage."""
        ...

    def change_message_visibility(self, **kwargs: Any) -> Mapping[str, Any]:
        """ChangeMessageVisibility."""
        ...

    def get_queue_attributes(self, **kwargs: Any) -> Mapping[str, Any]:
        """GetQueueAttributes."""
        ...

    def list_dead_letter_source_queues(self, **kwargs: Any) -> Mapping[str, Any]:
        """ListDeadLetterSourceQueues."""
        ...

    def start_message_move_task(self, **kwargs: Any) -> Mapping[str, Any]:
        """StartMessageMoveTask."""
        ...


def _extend_visibility(sqs: SqsApi, queue_url: str, handle: str, seconds: int) -> None:
    """Keep a message hidden for `seconds` more (it waited in a received batch)."""
    sqs.change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=seconds
    )


def _hide_longer(sqs: SqsApi, queue_url: str, handle: str, seconds: int) -> None:
    """Hide a message handled already for ten timeouts, so that the run can get past it."""
    try:
        _extend_visibility(sqs, queue_url, handle, min(43_200, seconds * 10))
    except (ClientError, BotoCoreError) as exc:
        log.warning("cannot hide a message handled already: %s", exc)


def each_message(
    sqs: SqsApi,
    queue_url: str,
    handle: Callable[[Mapping[str, Any]], bool],
    max_messages: int | None,
    visibility_timeout_s: int,
    wait_time_s: int,
    clock: Callable[[], float],
) -> None:
    """Receive every message once and call `handle` (True: it stays, made visible at the end)."""
    seen: set[str] = set()
    release: dict[str, str] = {}
    read = stale = 0
    try:
        while max_messages is None or read < max_messages:
            wanted = 10 if max_messages is None else min(10, max_messages - read)
            answer = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=wanted,
                VisibilityTimeout=visibility_timeout_s,
                WaitTimeSeconds=wait_time_s,
                MessageAttributeNames=["All"],
            )
            received_at = clock()
            messages = answer.get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in seen]
            for message in messages:
                if message["MessageId"] in seen:  # back during a long run: hide it for longer
                    release[message["MessageId"]] = message["ReceiptHandle"]
                    _hide_longer(sqs, queue_url, message["ReceiptHandle"], visibility_timeout_s)
            if not messages:
                break
            # Only messages seen already (they came back during a long run; this receive
            # hid them again): go on while the unseen ones may lie behind them.
            stale = 0 if fresh else stale + 1
            if stale > len(seen) // 10 + 1:
                break
            for message in fresh:
                seen.add(message["MessageId"])
                if max_messages is not None and read >= max_messages:
                    release[message["MessageId"]] = message["ReceiptHandle"]
                    continue
                read += 1
                if clock() - received_at > visibility_timeout_s / 2:
                    _extend_visibility(
                        sqs, queue_url, message["ReceiptHandle"], visibility_timeout_s
                    )
                if handle(message):
                    release[message["MessageId"]] = message["ReceiptHandle"]
    finally:
        for receipt in release.values():
            try:  # visible again at once, for the next run
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("cannot make a message visible again: %s", exc)


def dead_letter_sources(sqs: SQSClient | SqsApi, queue_url: str) -> list[str]:
    """URLs of the queues whose RedrivePolicy targets `queue_url` (empty: not an SQS DLQ)."""
    try:
        answer = cast(SqsApi, sqs).list_dead_letter_source_queues(QueueUrl=queue_url)
    except ClientError:
        return []
    return [str(url) for url in answer.get("queueUrls", [])]


def _unsupported(exc: ClientError) -> bool:
    """True when the endpoint does not implement the call (moto answers a bare HTTP 500)."""
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    code = error_code(exc)
    # A purely numeric code means the answer was not an AWS error document at all.
    return code in UNSUPPORTED_CODES or code.isdigit() or status in {404, 501}


def move_dead_letters(
    sqs_client: SQSClient | SqsApi,
    dlq_url: str,
    sources: Sequence[str],
    *,
    dry_run: bool = False,
    max_messages: int | None = None,
    rate: float | None = None,
    progress: Progress | None = None,
    wait_time_s: int = 1,
) -> RedriveReport:
    """Move the messages of an SQS-source dead-letter queue back to its source queue.

    Uses StartMessageMoveTask where the endpoint supports it (AWS; not moto 5.2.5) and no
    `max_messages` is set; otherwise receives, sends to the single source queue, then
    deletes. The task runs asynchronously on AWS: the report lists its handle.

    Raises:
        ValueError: The fallback is needed but the DLQ has no or several source queues.
    """
    report = RedriveReport(queue=dlq_url, dry_run=dry_run)
    sqs = cast(SqsApi, sqs_client)
    if not dry_run and max_messages is None:
        arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        args: dict[str, Any] = {"SourceArn": arn["Attributes"]["QueueArn"]}
        if rate is not None:
            args["MaxNumberOfMessagesPerSecond"] = max(1, int(rate))
        try:
            task = sqs.start_message_move_task(**args)
        except ClientError as exc:
            if not _unsupported(exc):
                raise
            log.info("StartMessageMoveTask unsupported here (%s): moving message by message", exc)
        else:
            report.move_tasks.append(str(task["TaskHandle"]))
            return report
    if len(sources) != 1:
        raise ValueError(f"{dlq_url}: {len(sources)} source queues; cannot tell where to move")
    pacer = Pacer(rate)

    def move(message: Mapping[str, Any]) -> bool:
        if dry_run:
            report.count(REDRIVEN, "sqs-dlq")
            return True
        pacer.wait(1)
        attributes = {
            name: {
                k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")
            }
            for name, value in (message.get("MessageAttributes") or {}).items()
        }
        try:
            sqs.send_message(
                QueueUrl=sources[0],
                MessageBody=message["Body"],
                **({"MessageAttributes": attributes} if attributes else {}),
            )
            sqs.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as exc:
            report.count(ERROR, "sqs-dlq")
            report.problems.append(f"message {message['MessageId']}: cannot move it: {exc}")
            return True
        report.count(REDRIVEN, "sqs-dlq")
        return False

    def handle(message: Mapping[str, Any]) -> bool:
        try:
            return move(message)
        finally:
            if progress is not None:
                progress(report)

    each_message(sqs, dlq_url, handle, max_messages, 30, wait_time_s, time.monotonic)
    return report
