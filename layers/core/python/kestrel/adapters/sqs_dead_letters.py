"""`DeadLetterSink` on Amazon SQS: one message per poison record.

Message body (JSON, UTF-8)::

    {"kind": "kestrel.poison", "version": 1,
     "reason": "invalid_field", "detail": "amount: must be a number (got 'x')",
     "payload_b64": "<record data, base64>", "stream_arn": "arn:aws:kinesis:...",
     "shard_id": "shardId-000000000000", "sequence_number": "4965...",
     "partition_key": "C-1", "first_seen": "2026-11-28T09:15:02.173Z"}

A message may not exceed SQS's 256 KiB (`MAX_MESSAGE_BYTES`, body and attributes). A dead
letter that would is sent with its payload in the stack's bucket instead
(`kestrel.adapters.s3_dead_letter_payloads`): ``payload_b64`` is replaced by
``"payload_s3": "s3://<bucket>/dead-letters/..."``, ``payload_size`` (characters of the
base64 text) and ``payload_sha256`` (of that text), and the redrive reads it back. A Kinesis
record of up to 1 MiB is 1.4 MB in base64, so such a record is parked, not retried forever.

The reason is also set as the String message attribute ``reason`` so consoles and the
redrive tool can filter without parsing bodies. The endpoint (AWS, LocalStack or the
embedded emulator) is whatever the boto3 client was built for.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from kestrel.adapters.s3_dead_letter_payloads import payload_sha256
from kestrel.ports import DeadLetter

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MESSAGE_KIND = "kestrel.poison"
MESSAGE_VERSION = 1
# SQS's message limit (body plus attributes) that every queue accepts; queues may allow
# more (up to 1 MiB), but a letter within 256 KiB fits any queue Kestrel may be pointed at.
MAX_MESSAGE_BYTES = 256 * 1024


class PayloadStore(Protocol):
    """Where payloads too large for a queue message are kept (the stack's bucket).

    `put` must be durable when it returns, and return a URI that `get` of the same store
    reads back; storing the same letter again must overwrite, not add, so retries are safe.
    """

    def put(self, letter: DeadLetter) -> str:
        """Store `letter`'s payload (its base64 text) and return where it is.

        Args:
            letter: The dead letter whose ``payload_b64`` is to be stored.

        Returns:
            The payload's URI, e.g. ``s3://<bucket>/dead-letters/<stream>/<shard>/<seq>.b64``.

        Raises:
            Exception: Any error of the backing store, unchanged.
        """
        ...


def message_body(letter: DeadLetter) -> str:
    """The SQS message body for `letter` with its payload inline (see the module docstring)."""
    body: dict[str, str | int] = {"kind": MESSAGE_KIND, "version": MESSAGE_VERSION}
    body.update(letter.to_dict())
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


def pointer_body(letter: DeadLetter, uri: str) -> str:
    """The SQS message body for `letter` with its payload stored at `uri` instead of inline."""
    body: dict[str, str | int] = {"kind": MESSAGE_KIND, "version": MESSAGE_VERSION}
    body.update(letter.to_dict())
    del body["payload_b64"]
    body.update(
        payload_s3=uri,
        payload_size=len(letter.payload_b64),
        payload_sha256=payload_sha256(letter.payload_b64),
    )
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


def message_size(body: str, attributes: dict[str, Any]) -> int:
    """Bytes SQS counts against its limit: the body, and each attribute's name, type and value."""
    size = len(body.encode("utf-8", "surrogatepass"))
    for name, value in attributes.items():
        size += len(name.encode()) + len(str(value["DataType"]).encode())
        size += len(str(value.get("StringValue", "")).encode("utf-8", "surrogatepass"))
    return size


class MessageTooLarge(ValueError):
    """A dead letter that does not fit in a queue message and has nowhere else to go."""


class SqsDeadLetterSink:
    """Sends each dead letter as one SQS message to the poison queue.

    Args:
        client: A boto3 SQS client (created once per container, see `kestrel.clients`).
        queue_url: URL of the poison dead-letter queue (``POISON_DLQ_URL``).
        payloads: Where payloads go when the message would exceed `max_message_bytes`
            (the stack's bucket); None: such a letter raises `MessageTooLarge`.
        max_message_bytes: The queue's message limit (SQS: 256 KiB).

    Raises:
        ValueError: If `queue_url` is empty (the setting is missing).
    """

    def __init__(
        self,
        client: SQSClient,
        queue_url: str,
        payloads: PayloadStore | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if not queue_url:
            raise ValueError("POISON_DLQ_URL: the poison dead-letter queue URL is not set")
        self._client = client
        self._queue_url = queue_url
        self._payloads = payloads
        self._limit = max_message_bytes

    def send(self, letter: DeadLetter) -> None:
        """Send `letter`; returns once SQS (and S3, for a large payload) stored it.

        Raises:
            MessageTooLarge: The letter does not fit and there is no payload store, or
                even its pointer does not fit.
            Exception: botocore errors of SQS or S3, unchanged.
        """
        attributes: dict[str, Any] = {
            "reason": {"DataType": "String", "StringValue": letter.reason}
        }
        body = message_body(letter)
        size = message_size(body, attributes)
        if size > self._limit:
            if self._payloads is None:
                raise MessageTooLarge(
                    f"dead letter of {size} bytes exceeds the queue's {self._limit}-byte limit "
                    "and no bucket is set for its payload (EVENT_LOG_BUCKET)"
                )
            body = pointer_body(letter, self._payloads.put(letter))
            size = message_size(body, attributes)
            if size > self._limit:
                raise MessageTooLarge(
                    f"dead letter of {size} bytes exceeds the queue's {self._limit}-byte limit "
                    "even with its payload in the bucket"
                )
        self._client.send_message(
            QueueUrl=self._queue_url, MessageBody=body, MessageAttributes=attributes
        )
