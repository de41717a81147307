"""`QueueDepths` on Amazon SQS: how many messages wait in each dead-letter queue.

One ``GetQueueAttributes(ApproximateNumberOfMessages)`` per queue, the figure SQS publishes
to CloudWatch as ``ApproximateNumberOfMessagesVisible`` (what the template's depth alarms
watch). Roles are ``poison`` (POISON_DLQ_URL) and ``on_failure`` (ON_FAILURE_QUEUE_URL).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

logger = logging.getLogger(__name__)


class SqsQueueDepths:
    """Reads the depth of each configured dead-letter queue; never raises.

    Args:
        client: A boto3 SQS client.
        queue_urls: Queue URL by role (``poison``, ``on_failure``); an empty URL means the
            queue is not configured, and its depth is None.
    """

    def __init__(self, client: SQSClient, queue_urls: Mapping[str, str]) -> None:
        self._client = client
        self._urls = dict(queue_urls)

    def depths(self) -> dict[str, int | None]:
        """Depth by role; None for a queue that is not configured or could not be read."""
        out: dict[str, int | None] = {}
        for role, url in self._urls.items():
            if not url:
                out[role] = None
                continue
            try:
                attributes = self._client.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                )["Attributes"]
                out[role] = int(attributes.get("ApproximateNumberOfMessages", 0))
            except (BotoCoreError, ClientError, KeyError, ValueError) as exc:
                logger.warning("cannot read the depth of the %s queue %s: %s", role, url, exc)
                out[role] = None
        return out
