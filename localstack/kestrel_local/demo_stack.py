"""Empty the demo's stack before a run: streams deleted (the runtime re-creates them), queues
emptied, the runtime's checkpoints dropped."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kestrel_local.aws import AwsClients
from kestrel_local.template import PhysicalResource


def reset_stack(
    clients: AwsClients, physical: Mapping[str, PhysicalResource], checkpoints: Path
) -> None:
    """Empty the stack for a fresh run: streams deleted (then re-created), queues purged."""
    kinesis, sqs = clients.client("kinesis"), clients.client("sqs")
    for logical_id in (
        "TransactionsStream",
        "LabelsStream",
        "DecisionsStream",
        "ClickstreamStream",
    ):
        name = str(physical[logical_id].ref)
        try:
            kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
        except kinesis.exceptions.ResourceNotFoundException:
            continue
        kinesis.get_waiter("stream_not_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
        )
    for logical_id in ("OnFailureQueue", "PoisonDLQ"):
        url = str(physical[logical_id].ref)
        try:
            sqs.purge_queue(QueueUrl=url)
        except sqs.exceptions.QueueDoesNotExist:
            continue  # not provisioned yet: the demo creates it next
        except sqs.exceptions.PurgeQueueInProgress:
            _drain(sqs, url)  # purged less than 60 s ago (a demo just before): one by one
    checkpoints.unlink(missing_ok=True)  # the runtime's positions in the deleted streams


def _drain(sqs: Any, url: str) -> None:
    """Delete every visible message of the queue (SQS allows one purge per 60 s)."""
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                     for i, m in enumerate(messages)],
        )  # fmt: skip
