"""An SQS event-source mapping with AWS's documented semantics, polling any endpoint.

Pollers receive up to BatchSize messages (gathering for up to
MaximumBatchingWindowInSeconds), invoke the function, and delete what succeeded. A failed
message is left in the queue: it comes back after the visibility timeout, and the queue's
own RedrivePolicy moves it to its dead-letter queue after maxReceiveCount receives.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kestrel_local.aws import AwsClients
from kestrel_local.esm_common import MappingStats, failed_item_ids
from kestrel_local.functions import FunctionSpec, SqsSource
from kestrel_local.invoker import FunctionPool

log = logging.getLogger("kestrel_local.sqs")


def sqs_event_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One received message in the exact shape Lambda passes to a handler."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": value.get("StringListValues", []),
                "binaryListValues": value.get("BinaryListValues", []),
                "dataType": value["DataType"],
            }
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsMapping:
    """One SQS event source of one function, with MaximumConcurrency poller threads."""

    def __init__(
        self,
        source: SqsSource,
        spec: FunctionSpec,
        pool: FunctionPool,
        clients: AwsClients,
        stopping: threading.Event,
        poll_wait_s: int = 1,
    ) -> None:
        self.source, self.spec, self.pool = source, spec, pool
        self.clients, self.stopping, self.poll_wait_s = clients, stopping, poll_wait_s
        self.stats = MappingStats()
        self._url: str | None = None
        self._threads = [
            threading.Thread(target=self._poll, name=f"sqs:{source.name}:{i}", daemon=True)
            for i in range(source.max_concurrency)
        ]

    @property
    def queue_url(self) -> str:
        if self._url is None:
            parts = self.source.queue_arn.split(":")
            self._url = str(
                self.clients.client("sqs").get_queue_url(
                    QueueName=parts[5], QueueOwnerAWSAccountId=parts[4]
                )["QueueUrl"]
            )
        return self._url

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _receive(self) -> list[dict[str, Any]]:
        sqs = self.clients.client("sqs")
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.source.window_s
        while len(messages) < self.source.batch_size and not self.stopping.is_set():
            response = sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self.source.batch_size - len(messages)),
                WaitTimeSeconds=0 if messages else self.poll_wait_s,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages.extend(response.get("Messages", []))
            if time.monotonic() >= deadline:
                break
            if not response.get("Messages"):
                self.stopping.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        return messages

    def _poll(self) -> None:
        while not self.stopping.is_set():
            try:
                messages = self._receive()
                if messages:
                    self.deliver(messages)
            except Exception:
                log.exception(
                    "%s.%s: poll failed; retrying", self.spec.logical_id, self.source.name
                )
                self.stopping.wait(1.0)

    def deliver(self, messages: list[dict[str, Any]]) -> None:
        """Invoke once on a batch; delete the messages that succeeded, leave the rest."""
        self.stats.add(received=len(messages))
        event = {
            "Records": [
                sqs_event_record(m, self.source.queue_arn, self.clients.region) for m in messages
            ]
        }
        result = self.pool.invoke(event)
        self.stats.add(invokes=1, function_errors=int(result.function_error))
        failed = failed_item_ids(
            result, self.source.report_item_failures, {m["MessageId"] for m in messages}
        )
        if failed is None:
            log.info(
                "%s.%s: batch of %d failed; messages return after the visibility timeout",
                self.spec.logical_id,
                self.source.name,
                len(messages),
            )
            return
        done = [m for m in messages if m["MessageId"] not in set(failed)]
        self.stats.add(succeeded=len(done), partial_failures=int(bool(failed)))
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            response = self.clients.client("sqs").delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )
            for failure in response.get("Failed", []):
                log.warning("%s: delete failed for a message: %s", self.source.name, failure)
