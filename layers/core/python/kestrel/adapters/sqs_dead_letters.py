"""`DeadLetterSink` on Amazon SQS: one message per poison record.

Message body (JSON, UTF-8)::

    {"kind": "kestrel.poison", "version": 1,
     "reason": "invalid_field", "detail": "amount: must be a number (got 'x')",
     "payload_b64": "<record data, base64>", "stream_arn": "arn:aws:kinesis:...",
     "shard_id": "shardId-000000000000", "sequence_number": "4965...",
     "partition_key": "C-1", "first_seen": "2026-11-28T09:15:02.173Z"}

The reason is also set as the String message attribute ``reason`` so consoles and the
redrive tool can filter without parsing bodies. The endpoint (AWS, LocalStack or the
embedded emulator) is whatever the boto3 client was built for.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kestrel.ports import DeadLetter

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MESSAGE_KIND = "kestrel.poison"
MESSAGE_VERSION = 1


def message_body(letter: DeadLetter) -> str:
    """The SQS message body for `letter` (see the module docstring for its shape)."""
    body: dict[str, str | int] = {"kind": MESSAGE_KIND, "version": MESSAGE_VERSION}
    body.update(letter.to_dict())
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


class SqsDeadLetterSink:
    """Sends each dead letter as one SQS message to the poison queue.

    Args:
        client: A boto3 SQS client (created once per container, see `kestrel.clients`).
        queue_url: URL of the poison dead-letter queue (``POISON_DLQ_URL``).

    Raises:
        ValueError: If `queue_url` is empty (the setting is missing).
    """

    def __init__(self, client: SQSClient, queue_url: str) -> None:
        if not queue_url:
            raise ValueError("POISON_DLQ_URL: the poison dead-letter queue URL is not set")
        self._client = client
        self._queue_url = queue_url

    def send(self, letter: DeadLetter) -> None:
        """Send `letter`; returns once SQS has stored it, botocore errors propagate."""
        self._client.send_message(
            QueueUrl=self._queue_url,
            MessageBody=message_body(letter),
            MessageAttributes={"reason": {"DataType": "String", "StringValue": letter.reason}},
        )
