"""Unit tests for the Redis and SQS adapters and the client factories (no network)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from kestrel import clients
from kestrel.adapters.redis_counter import APPLY_ONCE_LUA, RedisEventCounter
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink, message_body
from kestrel.events import Increment, PoisonReason, PoisonRecord
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


class RecordingScript:
    """Stands in for redis-py's Script: records calls, answers 1 then 0 per applied key."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[Any]]] = []
        self.applied: set[str] = set()

    def __call__(self, keys: Sequence[str], args: Iterable[Any]) -> int:
        self.calls.append((list(keys), list(args)))
        if keys[0] in self.applied:
            return 0
        self.applied.add(keys[0])
        return 1


class RecordingRedis:
    """Stands in for redis.Redis: only `register_script`, which it counts."""

    def __init__(self) -> None:
        self.registered: list[str] = []
        self.script = RecordingScript()

    def register_script(self, script: str) -> RecordingScript:
        self.registered.append(script)
        return self.script


def _counter(**kwargs: Any) -> tuple[RedisEventCounter, RecordingRedis]:
    fake = RecordingRedis()
    return RedisEventCounter(fake, **kwargs), fake  # type: ignore[arg-type]


def test_redis_counter_registers_its_script_once() -> None:
    counter, fake = _counter()
    counter.apply("txn:T-1", [Increment("global", "transactions_applied")])
    counter.apply("txn:T-2", [Increment("global", "transactions_applied")])
    assert fake.registered == [APPLY_ONCE_LUA]


def test_redis_counter_sends_hash_tagged_keys_and_field_amount_pairs() -> None:
    counter, fake = _counter(dedupe_ttl_s=600)
    applied = counter.apply(
        "txn:T-1",
        [Increment("cust:C-1", "transactions"), Increment("term:X", "fraud_labels", 2)],
    )
    assert applied is True
    assert fake.script.calls == [
        (
            ["kestrel:{txn:T-1}:applied", "kestrel:{cust:C-1}:counts", "kestrel:{term:X}:counts"],
            [600, "transactions", 1, "fraud_labels", 2],
        )
    ]


def test_redis_counter_reports_a_seen_event_as_not_applied() -> None:
    counter, _ = _counter()
    assert counter.apply("txn:T-1", [Increment("global", "x")]) is True
    assert counter.apply("txn:T-1", [Increment("global", "x")]) is False


def test_redis_counter_script_sets_dedupe_key_before_incrementing() -> None:
    script = " ".join(APPLY_ONCE_LUA.split())
    assert "redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])" in script
    assert script.index("'SET'") < script.index("'HINCRBY'")
    assert "ARGV[2 * i - 2], ARGV[2 * i - 1]" in script


def test_redis_counter_script_undoes_partial_work_when_an_increment_fails() -> None:
    script = " ".join(APPLY_ONCE_LUA.split())
    failure = script[script.index("done.err") :]
    assert "-tonumber(ARGV[2 * j - 1])" in failure
    assert failure.index("redis.call('DEL', KEYS[1])") < failure.index("error_reply")


@pytest.mark.parametrize(("prefix", "ttl"), [("", 60), ("k{1}", 60), ("kestrel", 0)])
def test_redis_counter_rejects_bad_configuration(prefix: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        _counter(prefix=prefix, dedupe_ttl_s=ttl)


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
        assert isinstance(clients.event_counter(), RedisEventCounter)
        first = clients.kinesis_client()
        clients.reset()
        assert clients.kinesis_client() is not first
    finally:
        clients.reset()
