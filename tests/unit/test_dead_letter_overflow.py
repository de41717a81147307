"""Dead letters past the queue's message limit: payload in the bucket, pointer in the queue.

The sink stores the payload under dead-letters/ and sends a pointer only when the inline
message would pass SQS's 256 KiB; the redrive reads the payload back, checks its SHA-256,
and puts the exact bytes back on the stream. Network-free doubles for SQS, S3 and Kinesis.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError
from redrive_doubles import (
    QUEUE,
    SHARD,
    STREAM_ARN,
    FakeKinesis,
    FakeSqs,
    adds_up,
    client_error,
    run,
    tx,
)

from kestrel.adapters.s3_dead_letter_payloads import S3DeadLetterPayloads, payload_sha256
from kestrel.adapters.sqs_dead_letters import (
    MAX_MESSAGE_BYTES,
    MessageTooLarge,
    SqsDeadLetterSink,
    message_body,
    message_size,
)
from kestrel.ports import DeadLetter

BUCKET = "k-events-123456789012-us-east-1"
ATTRIBUTES = {"reason": {"DataType": "String", "StringValue": "invalid_field"}}
SEQUENCE = "49657734271840271094355780390734429143347318398423810050"


class SqsClient:
    """SQS send_message double that refuses, as SQS does, a message past 256 KiB."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **kw: Any) -> Mapping[str, Any]:
        if message_size(kw["MessageBody"], kw["MessageAttributes"]) > MAX_MESSAGE_BYTES:
            raise client_error("InvalidParameterValue")
        self.sent.append(kw)
        return {"MessageId": f"m-{len(self.sent)}"}


class S3Client:
    """S3 double: objects in a dict; `fail` makes every put raise."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.fail: ClientError | None = None

    def put_object(self, **kw: Any) -> Mapping[str, Any]:
        if self.fail is not None:
            raise self.fail
        self.objects[(kw["Bucket"], kw["Key"])] = kw["Body"]
        return {}

    def get_object(self, **kw: Any) -> Mapping[str, Any]:
        if (kw["Bucket"], kw["Key"]) not in self.objects:
            raise client_error("NoSuchKey", 404)
        return {"Body": io.BytesIO(self.objects[(kw["Bucket"], kw["Key"])])}


def letter(payload_b64: str, sequence: str = SEQUENCE, key: str = "C-1") -> DeadLetter:
    return DeadLetter(
        reason="invalid_field",
        detail="device_id: must be a string of 1-128 characters (printable) or null",
        payload_b64=payload_b64,
        stream_arn=STREAM_ARN,
        shard_id=SHARD,
        sequence_number=sequence,
        partition_key=key,
        first_seen="2026-11-29T10:00:00.000Z",
    )


def sized(total: int) -> DeadLetter:
    """A letter whose inline message is exactly `total` bytes (body and attribute)."""
    base = message_size(message_body(letter("")), ATTRIBUTES)
    return letter("A" * (total - base))


def sink(s3: S3Client | None = None) -> tuple[SqsDeadLetterSink, SqsClient]:
    sqs = SqsClient()
    payloads = S3DeadLetterPayloads(s3, BUCKET) if s3 is not None else None
    return SqsDeadLetterSink(cast(Any, sqs), QUEUE, payloads), sqs


def test_a_letter_exactly_at_the_limit_goes_inline() -> None:
    s3 = S3Client()
    dead_letters, sqs = sink(s3)
    at_limit = sized(MAX_MESSAGE_BYTES)

    dead_letters.send(at_limit)

    assert s3.objects == {}
    body = json.loads(sqs.sent[0]["MessageBody"])
    assert body["payload_b64"] == at_limit.payload_b64
    assert message_size(sqs.sent[0]["MessageBody"], sqs.sent[0]["MessageAttributes"]) == (
        MAX_MESSAGE_BYTES
    )


def test_a_letter_one_byte_past_the_limit_goes_to_the_bucket_with_a_pointer() -> None:
    s3 = S3Client()
    dead_letters, sqs = sink(s3)
    over = sized(MAX_MESSAGE_BYTES + 1)

    dead_letters.send(over)

    key = f"dead-letters/k-transactions/{SHARD}/{SEQUENCE}.b64"
    assert s3.objects == {(BUCKET, key): over.payload_b64.encode()}
    body = json.loads(sqs.sent[0]["MessageBody"])
    assert "payload_b64" not in body
    assert body["payload_s3"] == f"s3://{BUCKET}/{key}"
    assert body["payload_size"] == len(over.payload_b64)
    assert body["payload_sha256"] == payload_sha256(over.payload_b64)
    assert {k: body[k] for k in ("reason", "detail", "sequence_number", "partition_key")} == {
        "reason": over.reason,
        "detail": over.detail,
        "sequence_number": SEQUENCE,
        "partition_key": "C-1",
    }
    assert sqs.sent[0]["MessageAttributes"] == ATTRIBUTES


def test_a_record_at_the_stream_limit_is_parked_through_the_bucket() -> None:
    s3 = S3Client()
    dead_letters, sqs = sink(s3)
    record = b"{" + b" " * (1024 * 1024 - 5) + b"}"  # 1 MiB with its 3-byte partition key

    dead_letters.send(letter(base64.b64encode(record).decode()))

    (stored,) = s3.objects.values()
    assert base64.b64decode(stored) == record
    assert len(sqs.sent) == 1


def test_an_oversized_letter_without_a_bucket_raises_and_sends_nothing() -> None:
    dead_letters, sqs = sink(None)
    with pytest.raises(MessageTooLarge, match="EVENT_LOG_BUCKET"):
        dead_letters.send(sized(MAX_MESSAGE_BYTES + 1))
    assert sqs.sent == []


def test_a_bucket_failure_propagates_and_sends_nothing() -> None:
    s3 = S3Client()
    s3.fail = client_error("AccessDenied", 403)
    dead_letters, sqs = sink(s3)
    with pytest.raises(ClientError, match="AccessDenied"):
        dead_letters.send(sized(MAX_MESSAGE_BYTES + 1))
    assert sqs.sent == []


def test_payload_keys_are_the_stream_coordinates_made_safe() -> None:
    payloads = S3DeadLetterPayloads(S3Client(), BUCKET)
    odd = DeadLetter(**{**letter("x").to_dict(), "shard_id": "../x y", "sequence_number": ""})
    assert payloads.key(letter("x")) == f"dead-letters/k-transactions/{SHARD}/{SEQUENCE}.b64"
    assert payloads.key(odd) == "dead-letters/k-transactions/.._x_y/_.b64"


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://other-bucket/dead-letters/k/{SHARD}/1.b64",
        f"s3://{BUCKET}/models/active.json",
        f"s3://{BUCKET}/dead-letters/../models/active.json",
        f"{BUCKET}/dead-letters/k/{SHARD}/1.b64",
    ],
)
def test_payloads_refuse_a_pointer_outside_their_bucket_prefix(uri: str) -> None:
    with pytest.raises(ValueError, match="is not under"):
        S3DeadLetterPayloads(S3Client(), BUCKET).get(uri)


def _parked(record: bytes) -> tuple[FakeSqs, S3Client, str]:
    """The poison queue and bucket after the sink parked `record` through the bucket."""
    s3, queue = S3Client(), FakeSqs()
    big = letter(base64.b64encode(record).decode(), key="C-1")
    SqsDeadLetterSink(cast(Any, queue), QUEUE, S3DeadLetterPayloads(s3, BUCKET)).send(big)
    (key,) = (k for _, k in s3.objects)
    return queue, s3, key


def big_transaction() -> bytes:
    doc = json.loads(tx(1))
    return json.dumps({**doc, "note": "x" * 300_000}).encode()


def test_redrive_reads_the_payload_back_and_reputs_the_exact_record() -> None:
    record = big_transaction()
    queue, s3, key = _parked(record)
    kinesis = FakeKinesis()

    report = run(queue, kinesis, payloads=S3DeadLetterPayloads(s3, BUCKET))

    assert (report.redriven, report.records_reput, report.exit_code) == (1, 1, 0)
    assert [(r["Data"], r["PartitionKey"]) for r in kinesis.shards[SHARD]] == [(record, "C-1")]
    assert queue.queues[QUEUE] == []
    assert (BUCKET, key) in s3.objects  # kept: the record's archive
    assert adds_up(report)
    again = run(queue, kinesis, payloads=S3DeadLetterPayloads(s3, BUCKET))
    assert (again.messages_read, len(kinesis.shards[SHARD])) == (0, 1)


def test_redrive_dry_run_reads_the_payload_and_changes_nothing() -> None:
    queue, s3, _ = _parked(big_transaction())
    kinesis = FakeKinesis()

    report = run(queue, kinesis, payloads=S3DeadLetterPayloads(s3, BUCKET), dry_run=True)

    assert (report.redriven, report.records_reput, kinesis.put_calls) == (1, 1, 0)
    assert len(queue.visible()) == 1


def _left_with(queue: FakeSqs, s3: S3Client | None, text: str) -> None:
    kinesis = FakeKinesis()
    payloads = S3DeadLetterPayloads(s3, BUCKET) if s3 is not None else None
    report = run(queue, kinesis, payloads=payloads)
    assert (report.errors, report.records_reput, report.exit_code) == (1, 0, 1)
    assert text in report.problems[0]
    assert len(queue.visible()) == 1
    assert kinesis.put_calls == 0


def test_redrive_leaves_a_pointer_whose_object_changed() -> None:
    queue, s3, key = _parked(big_transaction())
    s3.objects[(BUCKET, key)] = base64.b64encode(tx(2))
    _left_with(queue, s3, "does not match its SHA-256")


def test_redrive_leaves_a_pointer_whose_object_is_gone() -> None:
    queue, s3, key = _parked(big_transaction())
    del s3.objects[(BUCKET, key)]
    _left_with(queue, s3, "NoSuchKey")


def test_redrive_leaves_a_pointer_it_has_no_bucket_for() -> None:
    queue, _, _ = _parked(big_transaction())
    _left_with(queue, None, "no bucket to read it from")


def test_redrive_leaves_a_pointer_into_another_bucket() -> None:
    queue, s3, _ = _parked(big_transaction())
    body = json.loads(queue.queues[QUEUE][0]["Body"])
    body["payload_s3"] = body["payload_s3"].replace(BUCKET, "someone-elses-bucket")
    queue.queues[QUEUE][0]["Body"] = json.dumps(body)
    _left_with(queue, s3, "is not under")
