"""Unit tests for the Redis and SQS adapters and the client factories (no network)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from kestrel import clients
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink, message_body
from kestrel.events import PoisonReason, PoisonRecord
from kestrel.ports import DeadLetter

QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/kestrel-poison"
LETTER = DeadLetter(
    reason="invalid_field",
    detail="amount: must be a number (got 'x')",
    payload_b64="eyJhbW91bnQiOiJ4In0=",
    stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-transactions",
    shard_id="shardId-000000000001",
    sequence_number="49657734271840271094355780390734429143347318398423810050",
    partition_key="C-1",
    first_seen="2026-11-28T09:15:02.173Z",
)


def test_sqs_sink_sends_json_body_with_reason_attribute() -> None:
    client = boto3.client("sqs", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response(
            "send_message",
            {"MessageId": "m-1", "MD5OfMessageBody": "x"},
            {
                "QueueUrl": QUEUE_URL,
                "MessageBody": message_body(LETTER),
                "MessageAttributes": {
                    "reason": {"DataType": "String", "StringValue": "invalid_field"}
                },
            },
        )
        SqsDeadLetterSink(client, QUEUE_URL).send(LETTER)
        stub.assert_no_pending_responses()
    body = json.loads(message_body(LETTER))
    assert body == {"kind": "kestrel.poison", "version": 1, **LETTER.to_dict()}


def test_sqs_sink_propagates_send_errors() -> None:
    client = boto3.client("sqs", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("send_message", "QueueDoesNotExist", http_status_code=400)
        with pytest.raises(ClientError, match="QueueDoesNotExist"):
            SqsDeadLetterSink(client, QUEUE_URL).send(LETTER)


def test_sqs_sink_requires_a_queue_url() -> None:
    with pytest.raises(ValueError, match="POISON_DLQ_URL"):
        SqsDeadLetterSink(boto3.client("sqs", region_name="us-east-1"), "")


def test_dead_letter_from_kinesis_record_keeps_payload_and_coordinates() -> None:
    record = {
        "kinesis": {
            "partitionKey": "C-1",
            "data": LETTER.payload_b64,
            "sequenceNumber": LETTER.sequence_number,
            "approximateArrivalTimestamp": 1795857302.173,
        },
        "eventID": f"shardId-000000000001:{LETTER.sequence_number}",
        "eventSourceARN": LETTER.stream_arn,
    }
    poison = PoisonRecord(PoisonReason.INVALID_FIELD, LETTER.detail)
    assert DeadLetter.from_kinesis_record(record, poison) == LETTER


def test_clients_factories_create_each_client_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("POISON_DLQ_URL", QUEUE_URL)
    clients.reset()
    try:
        assert clients.sqs_client() is clients.sqs_client()
        assert clients.sqs_client().meta.region_name == "eu-west-1"
        assert clients.redis_client() is clients.redis_client()
        assert clients.dead_letter_sink() is clients.dead_letter_sink()
        assert isinstance(clients.feature_store(), RedisFeatureStore)
        assert clients.feature_store() is clients.feature_store()
        first = clients.kinesis_client()
        clients.reset()
        assert clients.kinesis_client() is not first
    finally:
        clients.reset()
