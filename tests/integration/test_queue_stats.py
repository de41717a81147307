"""kestrel_local.queue_stats on the real emulator: depth and oldest age, and nothing consumed."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from kestrel_local.__main__ import main
from kestrel_local.queue_stats import QueueStats, queue_stats

pytestmark = pytest.mark.integration


@pytest.fixture
def sqs(emulator_endpoint: str) -> Any:
    """An SQS client of the session's emulator."""
    return boto3.client(
        "sqs",
        endpoint_url=emulator_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _queue(sqs: Any, **attributes: str) -> str:
    name = f"stats-{uuid.uuid4().hex[:12]}"
    url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url


def _all_bodies(sqs: Any, url: str) -> list[str]:
    """Every message body, received and deleted (to check that nothing was consumed)."""
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30)
        if not got.get("Messages"):
            return sorted(bodies)
        for message in got["Messages"]:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_queue_stats_of_an_empty_queue_has_no_age(sqs: Any) -> None:
    assert queue_stats(sqs, _queue(sqs)) == QueueStats(depth=0, oldest_age_s=None)


def test_queue_stats_counts_messages_and_ages_the_oldest_without_consuming(sqs: Any) -> None:
    url = _queue(sqs)
    sent = [json.dumps({"reason": "invalid_field", "n": i}) for i in range(13)]
    before = time.time()
    sqs.send_message(QueueUrl=url, MessageBody=sent[0])
    time.sleep(1.2)
    for body in sent[1:]:
        sqs.send_message(QueueUrl=url, MessageBody=body)

    stats = queue_stats(sqs, url, clock=lambda: before + 61.0)
    assert stats.depth == 13
    assert stats.oldest_age_s is not None
    assert 59.0 <= stats.oldest_age_s <= 61.5  # the first message's age, to the emulator's second
    again = queue_stats(sqs, url)  # peeking twice: every message is still visible
    assert again.depth == 13
    assert again.oldest_age_s is not None and again.oldest_age_s >= 1.0
    assert _all_bodies(sqs, url) == sorted(sent)


def test_queue_stats_age_is_never_negative_when_clocks_disagree(sqs: Any) -> None:
    url = _queue(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="x")
    assert queue_stats(sqs, url, clock=lambda: 0.0) == QueueStats(depth=1, oldest_age_s=0.0)


def test_queue_stats_does_not_peek_a_queue_with_a_redrive_policy(sqs: Any) -> None:
    dlq = _queue(sqs)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
    source = _queue(sqs, RedrivePolicy=policy)
    sqs.send_message(QueueUrl=source, MessageBody="keep me")
    for _ in range(3):
        assert queue_stats(sqs, source) == QueueStats(depth=1, oldest_age_s=None)
    # No receive counted, so the redrive policy moved nothing to the dead-letter queue.
    assert queue_stats(sqs, dlq).depth == 0
    assert _all_bodies(sqs, source) == ["keep me"]


def test_queue_stats_in_status_for_every_queue_of_a_template(
    sqs: Any,
    emulator_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        "Resources:\n"
        "  DeadLetters:\n    Type: AWS::SQS::Queue\n"
        "  NeverMade:\n    Type: AWS::SQS::Queue\n"
        "  Alarm:\n    Type: AWS::CloudWatch::Alarm\n"
        "    Properties:\n      MetricName: ApproximateNumberOfMessagesVisible\n"
    )
    stack = f"st{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=f"{stack}-DeadLetters")["QueueUrl"]
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator_endpoint)
    monkeypatch.setenv("KESTREL_RUN_DIR", str(tmp_path / "run"))

    assert main(["status", "--template", str(template), "--stack-name", stack]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("QUEUE "))
    queues = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :]}
    assert queues["DeadLetters"][:2] == [f"{stack}-DeadLetters", "2"]
    assert queues["DeadLetters"][2:] in (["0", "s"], ["1", "s"], ["2", "s"])
    assert queues["NeverMade"] == [f"{stack}-NeverMade", "-", "-", "(not", "provisioned)"]
    assert _all_bodies(sqs, url) == ["a", "b"]
