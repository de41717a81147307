"""Depth and oldest-message age of an SQS queue, measured locally the way CloudWatch reports them.

On AWS, SQS publishes ``ApproximateNumberOfMessagesVisible`` and
``ApproximateAgeOfOldestMessage`` itself (the template's dead-letter alarms watch them).
The emulator publishes no metrics, so `python -m kestrel_local status` computes the same two
figures: the depth from ``GetQueueAttributes`` and the age from the ``SentTimestamp`` of the
messages a peek returns. The peek receives up to 10 messages with ``VisibilityTimeout=0`` and
never deletes them, so they stay visible to the redrive tool. It does count as a receive, so a
queue with a ``RedrivePolicy`` (whose ``maxReceiveCount`` a peek could exhaust) is not peeked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PEEK_MAX = 10  # the most messages one ReceiveMessage returns


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a dead-letter queue holds.

    Attributes:
        depth: Visible messages (``ApproximateNumberOfMessages``), the CloudWatch metric
            ``ApproximateNumberOfMessagesVisible``.
        oldest_age_s: Seconds since the oldest peeked message was sent, or None when the queue
            is empty, nothing could be peeked, or the queue has a redrive policy.
    """

    depth: int
    oldest_age_s: float | None


def queue_stats(
    sqs_client: Any, queue_url: str, clock: Callable[[], float] = time.time
) -> QueueStats:
    """Depth and oldest-message age of the queue at `queue_url`, deleting nothing.

    Args:
        sqs_client: A boto3 SQS client for the queue's endpoint.
        queue_url: The queue's URL.
        clock: Seconds since the epoch, now (tests pass their own).

    Raises:
        botocore.exceptions.ClientError: The queue does not exist, or the endpoint refused.
    """
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"]
    )["Attributes"]
    depth = int(attributes.get("ApproximateNumberOfMessages", 0))
    if depth == 0 or attributes.get("RedrivePolicy"):
        return QueueStats(depth, None)
    messages = sqs_client.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=PEEK_MAX,
        VisibilityTimeout=0,
        WaitTimeSeconds=0,
        MessageSystemAttributeNames=["SentTimestamp"],
    ).get("Messages", [])
    sent_ms = [
        int(m["Attributes"]["SentTimestamp"])
        for m in messages
        if "SentTimestamp" in m.get("Attributes", {})
    ]
    if not sent_ms:
        return QueueStats(depth, None)
    return QueueStats(depth, max(0.0, clock() - min(sent_ms) / 1000.0))
