"""Doubles for the redrive unit tests: in-memory SQS, Kinesis and schema lookup; body builders."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID, uuid4

from botocore.exceptions import ClientError

from kestrel.adapters.sqs_dead_letters import message_body
from kestrel.ports import DeadLetter, UnknownSchemaVersion
from kestrel_local.esm_kinesis import KinesisMapping, on_failure_message
from kestrel_ops.redrive import (
    RedriveReport,
    redrive,
)

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/k-transactions"
LABELS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/k-labels"
SHARD = "shardId-000000000000"
QUEUE = "http://127.0.0.1:1/123456789012/k-on-failure"
PARK = "http://127.0.0.1:1/123456789012/k-parked"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def client_error(code: str, status: int = 400) -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(cast(Any, response), "Operation")


class FakeSqs:
    """SQS double: messages are visible or hidden; every mutating call is recorded."""

    def __init__(self) -> None:
        self.queues: dict[str, list[dict[str, Any]]] = {QUEUE: [], PARK: []}
        self.calls: list[str] = []
        self.sources: list[str] = []
        self.move_task_error: ClientError | None = client_error("500", 500)
        self.visibility: list[int] = []
        self.reappear_after: int | None = None  # receives after which hidden messages return
        self.receives = 0
        self._receipts = 0

    def add(self, body: str, url: str = QUEUE) -> str:
        message_id = str(uuid4())
        self.queues.setdefault(url, []).append(
            {"MessageId": message_id, "Body": body, "hidden": False, "ReceiptHandle": ""}
        )
        return message_id

    def visible(self, url: str = QUEUE) -> list[str]:
        return [m["Body"] for m in self.queues[url] if not m["hidden"]]

    def receive_message(self, **kw: Any) -> Mapping[str, Any]:
        self.receives += 1
        out: list[dict[str, Any]] = []
        for message in self.queues[kw["QueueUrl"]]:
            if self.reappear_after and self.receives - message.get("at", 0) > self.reappear_after:
                message["hidden"] = False  # its visibility timeout ran out
            if not message["hidden"] and len(out) < kw["MaxNumberOfMessages"]:
                self._receipts += 1
                message["hidden"], message["ReceiptHandle"] = True, f"r{self._receipts}"
                message["at"] = self.receives
                out.append({k: message[k] for k in ("MessageId", "Body", "ReceiptHandle")})
        return {"Messages": out} if out else {}

    def _find(self, url: str, receipt: str) -> dict[str, Any]:
        return next(m for m in self.queues[url] if m["ReceiptHandle"] == receipt)

    def get_queue_url(self, **kw: Any) -> Mapping[str, Any]:
        raise client_error("AWS.SimpleQueueService.NonExistentQueue")

    def delete_message(self, **kw: Any) -> Mapping[str, Any]:
        self.calls.append("delete")
        self.queues[kw["QueueUrl"]].remove(self._find(kw["QueueUrl"], kw["ReceiptHandle"]))
        return {}

    def send_message(self, **kw: Any) -> Mapping[str, Any]:
        self.calls.append("send")
        self.add(kw["MessageBody"], kw["QueueUrl"])
        self.queues[kw["QueueUrl"]][-1]["attributes"] = kw.get("MessageAttributes", {})
        return {}

    def change_message_visibility(self, **kw: Any) -> Mapping[str, Any]:
        self.visibility.append(kw["VisibilityTimeout"])
        if kw["VisibilityTimeout"] > 0:  # longer than the receive's: not back during a test
            self._find(kw["QueueUrl"], kw["ReceiptHandle"])["at"] = 10**9
        if kw["VisibilityTimeout"] == 0:
            self._find(kw["QueueUrl"], kw["ReceiptHandle"])["hidden"] = False
        return {}

    def get_queue_attributes(self, **kw: Any) -> Mapping[str, Any]:
        url = kw["QueueUrl"]
        return {
            "Attributes": {
                "QueueArn": "arn:aws:sqs:us-east-1:123456789012:dlq",
                "ApproximateNumberOfMessages": str(len(self.visible(url))),
            }
        }

    def list_dead_letter_source_queues(self, **kw: Any) -> Mapping[str, Any]:
        return {"queueUrls": self.sources}

    def start_message_move_task(self, **kw: Any) -> Mapping[str, Any]:
        self.calls.append("start_message_move_task")
        if self.move_task_error is not None:
            raise self.move_task_error
        return {"TaskHandle": "task-1"}


class FakeKinesis:
    """Kinesis double with one stream: shards of (sequence number, data, key) records."""

    def __init__(self, shards: int = 1) -> None:
        self.shards: dict[str, list[dict[str, Any]]] = {
            f"shardId-{n:012d}": [] for n in range(shards)
        }
        self.failing: dict[str, int] = {}  # partition key -> failures left (-1: always)
        self.put_calls = 0
        self._next = 100

    def append(self, data: bytes, key: str, shard: str = SHARD) -> dict[str, Any]:
        self._next += 1
        record = {
            "SequenceNumber": str(self._next),
            "Data": data,
            "PartitionKey": key,
            "ApproximateArrivalTimestamp": T0,
        }
        self.shards[shard].append(record)
        return record

    def get_shard_iterator(self, **kw: Any) -> Mapping[str, Any]:
        if kw["ShardId"] not in self.shards:
            raise client_error("ResourceNotFoundException")
        records = self.shards[kw["ShardId"]]
        start = int(kw["StartingSequenceNumber"])
        index = next((i for i, r in enumerate(records) if int(r["SequenceNumber"]) >= start), 0)
        return {"ShardIterator": f"{kw['ShardId']}:{index}"}

    def get_records(self, **kw: Any) -> Mapping[str, Any]:
        shard, index = kw["ShardIterator"].rsplit(":", 1)
        got = self.shards[shard][int(index) : int(index) + 2]  # small pages: several calls
        return {
            "Records": got,
            "NextShardIterator": f"{shard}:{int(index) + len(got)}",
            "MillisBehindLatest": 0,
        }

    def put_records(self, **kw: Any) -> Mapping[str, Any]:
        self.put_calls += 1
        results: list[dict[str, Any]] = []
        for entry in kw["Records"]:
            left = self.failing.get(entry["PartitionKey"], 0)
            if left:
                self.failing[entry["PartitionKey"]] = left - 1 if left > 0 else left
                results.append({"ErrorCode": "ProvisionedThroughputExceededException"})
            else:
                record = self.append(entry["Data"], entry["PartitionKey"])
                results.append({"SequenceNumber": record["SequenceNumber"], "ShardId": SHARD})
        failed = sum("ErrorCode" in r for r in results)
        return {"FailedRecordCount": failed, "Records": results}

    def describe_stream_summary(self, **kw: Any) -> Mapping[str, Any]:
        return {"StreamDescriptionSummary": {"RetentionPeriodHours": 24}}


class MemoryLookup:
    """SchemaLookup double: a dict of version id to definition."""

    def __init__(self, known: dict[UUID, str] | None = None) -> None:
        self.known = dict(known or {})

    def schema_for(self, version_id: UUID) -> str:
        if version_id not in self.known:
            raise UnknownSchemaVersion(version_id)
        return self.known[version_id]


def on_failure_body(batch: list[dict[str, Any]], shard: str = SHARD, at: float = 0.0) -> str:
    mapping = SimpleNamespace(
        spec=SimpleNamespace(arn="arn:aws:lambda:us-east-1:123456789012:function:k-tx"),
        source=SimpleNamespace(stream_arn=STREAM_ARN),
        clock=lambda: at or T0.timestamp(),
    )
    message = on_failure_message(
        cast(KinesisMapping, mapping), shard, batch, "RetryAttemptsExhausted", 6, None
    )
    return json.dumps(message)


def poison_body(payload: bytes, reason: str, key: str = "C-1", first_seen: datetime = T0) -> str:
    letter = DeadLetter(
        reason=reason,
        detail="d",
        payload_b64=base64.b64encode(payload).decode(),
        stream_arn=STREAM_ARN,
        shard_id=SHARD,
        sequence_number="7",
        partition_key=key,
        first_seen=first_seen.isoformat().replace("+00:00", "Z"),
    )
    return message_body(letter)


def tx(n: int, amount: float = 10.0) -> bytes:
    doc = {
        "transaction_id": f"T-{n}",
        "customer_id": f"C-{n % 2}",
        "terminal_id": "TERM-1",
        "amount": amount,
        "event_time": "2026-11-29T10:00:00Z",
    }
    return json.dumps(doc).encode()


def run(sqs: FakeSqs, kinesis: FakeKinesis, lookup: Any = None, **kw: Any) -> RedriveReport:
    options = {"streams": (STREAM_ARN, LABELS_ARN), "wait_time_s": 0, **kw}
    return redrive(sqs, kinesis, lookup or MemoryLookup(), QUEUE, sleep=lambda _: None, **options)


def adds_up(report: RedriveReport) -> bool:
    return (
        report.messages_read == report.messages_deleted + report.messages_left
        and report.messages_deleted == report.redriven + report.parked
        and report.messages_left
        == report.still_poison + report.expired + report.errors + report.skipped
        and report.messages_read == sum(sum(row.values()) for row in report.per_reason.values())
    )
