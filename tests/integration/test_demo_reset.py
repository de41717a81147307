"""`kestrel_local.demo_stack.reset_stack` on the emulator: a second reset within 60 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel_local.aws import AwsClients
from kestrel_local.demo_stack import reset_stack
from kestrel_local.template import PhysicalResource

pytestmark = pytest.mark.integration


def test_demo_reset_twice_within_a_minute_empties_the_queues(
    emulator_endpoint: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    clients = AwsClients(emulator_endpoint)
    sqs = clients.client("sqs")
    urls = {
        logical_id: sqs.create_queue(QueueName=f"reset-{logical_id}")["QueueUrl"]
        for logical_id in ("OnFailureQueue", "PoisonDLQ")
    }
    physical = {
        **{name: PhysicalResource(ref=f"reset-missing-{name}") for name in (
            "TransactionsStream", "LabelsStream", "DecisionsStream", "ClickstreamStream")},
        **{logical_id: PhysicalResource(ref=url) for logical_id, url in urls.items()},
    }  # fmt: skip
    checkpoints = tmp_path / "checkpoints.json"
    for _ in range(2):  # the second purge comes within SQS's 60 s: drained instead
        for url in urls.values():
            for n in range(23):
                sqs.send_message(QueueUrl=url, MessageBody=f"left over {n}")
        reset_stack(clients, physical, checkpoints)
        for url in urls.values():
            attributes = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            assert attributes["ApproximateNumberOfMessages"] == "0"
