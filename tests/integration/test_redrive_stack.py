"""The redrive tool against the real emulator and Kestrel's own template (queues, streams)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
import redis
from botocore.config import Config
from esm_harness import wait_until

from kestrel.adapters.glue_registry import GlueSchemaRegistry, register_all
from kestrel.adapters.redis_scripts import stored_transactions
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink
from kestrel.codec import encode, schema_definition
from kestrel.ports import DeadLetter
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.esm_kinesis import KinesisMapping, on_failure_message
from kestrel_local.provision import LocalApp, bind
from kestrel_local.runtime import LocalRuntime
from kestrel_ops.redrive import dead_letter_sources, move_dead_letters, redrive, stack_streams

ROOT = Path(__file__).resolve().parent.parent.parent
SHARD = "shardId-000000000000"

pytestmark = pytest.mark.integration


class Stack:
    """Kestrel's template provisioned under a unique stack name (one shard per stream)."""

    def __init__(self, endpoint: str, redis_url: str) -> None:
        self.clients = AwsClients(endpoint)
        self.name = f"rd{uuid.uuid4().hex[:8]}"
        overrides = {"RedisUrl": redis_url, "ShardCount": "1"}
        self.app: LocalApp
        self.app, _ = bind(ROOT / "template.yaml", self.clients, self.name, overrides, create=True)
        self.sqs = self.clients.client("sqs")
        self.kinesis = self.clients.client("kinesis")
        self.registry = GlueSchemaRegistry(self.clients.client("glue"), self.name)

    def ref(self, logical_id: str) -> str:
        return str(self.app.stack.physical[logical_id].ref)

    def arn(self, logical_id: str) -> str:
        return str(self.app.stack.physical[logical_id].attributes["Arn"])

    def put(self, records: list[tuple[bytes, str]]) -> None:
        answer = self.kinesis.put_records(
            StreamName=self.ref("TransactionsStream"),
            Records=[{"Data": data, "PartitionKey": key} for data, key in records],
        )
        assert answer["FailedRecordCount"] == 0

    def stream_records(self) -> list[dict[str, Any]]:
        iterator = self.kinesis.get_shard_iterator(
            StreamName=self.ref("TransactionsStream"),
            ShardId=SHARD,
            ShardIteratorType="TRIM_HORIZON",
        )["ShardIterator"]
        return list(self.kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"])

    def send_on_failure(self, batch: list[dict[str, Any]], shard_id: str = SHARD) -> None:
        mapping = SimpleNamespace(
            spec=SimpleNamespace(arn=self.arn("TransactionsFunction")),
            source=SimpleNamespace(stream_arn=self.arn("TransactionsStream")),
            clock=lambda: 1_795_000_000.0,
        )
        message = on_failure_message(
            cast(KinesisMapping, mapping), shard_id, batch, "RetryAttemptsExhausted", 6, None
        )
        self.sqs.send_message(QueueUrl=self.ref("OnFailureQueue"), MessageBody=json.dumps(message))

    def bodies(self, logical_id: str) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(
            QueueUrl=self.ref(logical_id),
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            MessageAttributeNames=["All"],
        )
        return [json.loads(m["Body"]) for m in answer.get("Messages", [])]

    def redrive(self, queue: str, **options: Any) -> Any:
        return redrive(
            self.sqs,
            self.kinesis,
            self.registry,
            self.ref(queue),
            "on-failure" if queue == "OnFailureQueue" else "poison",
            **{
                "streams": stack_streams(self.app),
                "wait_time_s": 0,
                "label_streams": [self.arn("LabelsStream")],
                **options,
            },
        )


@pytest.fixture
def stack(emulator_endpoint: str, redis_url: str) -> Iterator[Stack]:
    yield Stack(emulator_endpoint, redis_url)
    redis.Redis.from_url(redis_url).flushdb()


def transaction(n: int, amount: float | None = None) -> dict[str, Any]:
    return {
        "transaction_id": f"RD-{n:05d}",
        "customer_id": f"C-{n % 3}",
        "terminal_id": f"TERM-{n % 2}",
        "amount": 12.5 + n if amount is None else amount,
        "event_time": "2026-11-29T10:00:00Z",
    }


def json_records(count: int) -> list[tuple[bytes, str]]:
    return [(json.dumps(transaction(n)).encode(), f"C-{n % 3}") for n in range(count)]


def test_redrive_reputs_exactly_the_on_failure_range_and_deletes_the_message(
    stack: Stack,
) -> None:
    stack.put(json_records(10))
    originals = stack.stream_records()
    stack.send_on_failure(originals[3:8])

    report = stack.redrive("OnFailureQueue")

    assert (report.messages_read, report.redriven, report.records_reput) == (1, 1, 5)
    assert report.exit_code == 0
    after = stack.stream_records()
    assert len(after) == 15
    reput = [(r["Data"], r["PartitionKey"]) for r in after[10:]]
    assert reput == [(r["Data"], r["PartitionKey"]) for r in originals[3:8]]
    assert stack.bodies("OnFailureQueue") == []


def test_redrive_dry_run_puts_nothing_and_keeps_the_message_visible(
    stack: Stack, emulator_endpoint: str, tmp_path: Path
) -> None:
    stack.put(json_records(6))
    stack.send_on_failure(stack.stream_records()[1:4])

    report = stack.redrive("OnFailureQueue", dry_run=True)

    assert (report.dry_run, report.redriven, report.records_reput) == (True, 1, 3)
    assert "DRY RUN" in report.table()
    assert len(stack.stream_records()) == 6
    assert len(stack.bodies("OnFailureQueue")) == 1  # visible again at once

    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": emulator_endpoint}
    env["KESTREL_RUN_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "kestrel_ops", "redrive", "--stack-name", stack.name, "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "messages would be deleted" in done.stdout
    assert re.search(r"^records would be re-put\s+3$", done.stdout, re.MULTILINE), done.stdout
    assert len(stack.stream_records()) == 6
    assert len(stack.bodies("OnFailureQueue")) == 1


@pytest.mark.parametrize(
    ("shard_id", "start"),
    [("shardId-000000000009", None), (SHARD, "0")],
    ids=["unknown-shard", "start-trimmed"],
)
def test_redrive_reports_an_expired_range_and_keeps_the_message(
    stack: Stack, shard_id: str, start: str | None
) -> None:
    stack.put(json_records(4))
    batch = stack.stream_records()[:2]
    if start is not None:
        batch[0] = {**batch[0], "SequenceNumber": start}
    stack.send_on_failure(batch, shard_id=shard_id)

    report = stack.redrive("OnFailureQueue")

    assert (report.expired, report.redriven, report.records_reput) == (1, 0, 0)
    assert report.exit_code == 1
    problem = report.problems[0]
    assert shard_id in problem
    assert "retention" in problem
    assert "24 h" in problem
    assert f"{batch[0]['SequenceNumber']}..{batch[-1]['SequenceNumber']}" in problem
    assert len(stack.bodies("OnFailureQueue")) == 1
    assert len(stack.stream_records()) == 4


def dead_letter(stack: Stack, payload: bytes, reason: str, key: str) -> None:
    """Put `payload` on the stream and dead-letter it as the handler would have."""
    stack.put([(payload, key)])
    record = stack.stream_records()[-1]
    letter = DeadLetter(
        reason=reason,
        detail="seen by TransactionsFunction",
        payload_b64=base64.b64encode(payload).decode(),
        stream_arn=stack.arn("TransactionsStream"),
        shard_id=SHARD,
        sequence_number=record["SequenceNumber"],
        partition_key=key,
        first_seen="2026-11-29T10:00:00.000Z",
    )
    SqsDeadLetterSink(stack.sqs, stack.ref("PoisonDLQ")).send(letter)


def test_redrive_reputs_poison_that_now_validates_and_parks_the_rest(stack: Stack) -> None:
    versions = register_all(stack.registry)  # registered after the records were dead-lettered
    good = encode(transaction(1), schema_definition("transaction.v2"), versions["transaction.v2"])
    unknown = encode(transaction(2), schema_definition("transaction.v2"), uuid.uuid4())
    invalid = json.dumps(transaction(3, amount=-5.0)).encode()
    dead_letter(stack, good, "unknown_schema", "C-1")
    dead_letter(stack, unknown, "unknown_schema", "C-2")
    dead_letter(stack, invalid, "invalid_field", "C-0")

    first = stack.redrive("PoisonDLQ")

    assert (first.redriven, first.still_poison, first.records_reput) == (1, 2, 1)
    assert first.exit_code == 0
    records = stack.stream_records()
    assert (records[-1]["Data"], records[-1]["PartitionKey"]) == (good, "C-1")
    assert len(stack.bodies("PoisonDLQ")) == 2

    park = stack.sqs.create_queue(QueueName=f"{stack.name}-parked")["QueueUrl"]
    second = stack.redrive("PoisonDLQ", park_queue_url=park)

    assert (second.parked, second.still_poison, second.records_reput) == (2, 0, 0)
    assert stack.bodies("PoisonDLQ") == []
    parked = stack.sqs.receive_message(
        QueueUrl=park, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in parked)
    assert reasons == ["invalid_field", "unknown_schema"]
    assert len(stack.stream_records()) == 4


def test_redrive_twice_applies_nothing_twice(
    stack: Stack, redis_url: str, emulator_endpoint: str, tmp_path: Path
) -> None:
    stack.put(json_records(9))
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(tmp_path), "AWS_ENDPOINT_URL": emulator_endpoint}
    )
    runtime = LocalRuntime(
        stack.app,
        stack.clients,
        settings,
        only=["TransactionsFunction"],
        log_dir=tmp_path / "logs",
    )
    store = redis.Redis.from_url(redis_url)

    def applied() -> int:
        return sum(len(stored_transactions(store, f"kestrel:{{c:C-{c}}}:log")) for c in range(3))

    runtime.start()
    try:
        wait_until(lambda: runtime.kinesis[0].stats.succeeded >= 9, what="the first pass")
        assert applied() == 9
        stack.send_on_failure(stack.stream_records()[2:9])

        first = stack.redrive("OnFailureQueue")
        second = stack.redrive("OnFailureQueue")

        assert (first.redriven, first.records_reput) == (1, 7)
        assert (second.messages_read, second.records_reput) == (0, 0)
        wait_until(lambda: runtime.kinesis[0].stats.succeeded >= 16, what="the re-put records")
    finally:
        runtime.stop()
    assert applied() == 9  # the 7 re-put records were duplicates: nothing applied twice
    assert len(stack.stream_records()) == 16


def test_move_dead_letters_falls_back_to_receive_send_delete_on_the_emulator(
    stack: Stack, emulator_endpoint: str
) -> None:
    sqs = boto3.client(  # no retries: moto answers StartMessageMoveTask with a bare HTTP 500
        "sqs",
        endpoint_url=emulator_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    dlq = sqs.create_queue(QueueName=f"{stack.name}-sqs-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]
    policy = {"deadLetterTargetArn": dlq_arn["QueueArn"], "maxReceiveCount": "1"}
    source = sqs.create_queue(
        QueueName=f"{stack.name}-sqs-source", Attributes={"RedrivePolicy": json.dumps(policy)}
    )["QueueUrl"]
    for body in ("one", "two"):
        sqs.send_message(QueueUrl=dlq, MessageBody=body)
    sources = dead_letter_sources(sqs, dlq)
    assert [url.rsplit("/", 1)[-1] for url in sources] == [f"{stack.name}-sqs-source"]

    report = move_dead_letters(sqs, dlq, sources, wait_time_s=0)  # moto: no move tasks

    assert (report.redriven, report.move_tasks, report.exit_code) == (2, [], 0)
    moved = sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in moved) == ["one", "two"]
    assert "Messages" not in sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)


def foreign_stream(stack: Stack) -> str:
    """A real stream on the emulator that is not the stack's; returns its ARN."""
    name = f"{stack.name}-elsewhere"
    stack.kinesis.create_stream(StreamName=name, ShardCount=1)
    stack.kinesis.get_waiter("stream_exists").wait(StreamName=name)
    return str(
        stack.kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
            "StreamARN"
        ]
    )


def records_on(stack: Stack, stream: str) -> list[dict[str, Any]]:
    iterator = stack.kinesis.get_shard_iterator(
        StreamName=stream, ShardId=SHARD, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return list(stack.kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"])


def test_redrive_refuses_a_planted_dead_letter_for_a_foreign_stream_and_leaves_it(
    stack: Stack, emulator_endpoint: str, tmp_path: Path
) -> None:
    foreign = foreign_stream(stack)
    name = foreign.rsplit("/", 1)[-1]
    payload = json.dumps(transaction(7)).encode()  # valid: only the stream is wrong
    planted = {
        "kind": "kestrel.poison",
        "reason": "unknown_schema",
        "detail": "planted",
        "payload_b64": base64.b64encode(payload).decode(),
        "stream_arn": foreign,
        "shard_id": SHARD,
        "sequence_number": "1",
        "partition_key": "C-1",
        "first_seen": "2026-11-29T10:00:00.000Z",
    }
    stack.sqs.send_message(QueueUrl=stack.ref("PoisonDLQ"), MessageBody=json.dumps(planted))
    stack.kinesis.put_record(StreamName=name, Data=payload, PartitionKey="C-1")
    ranged = records_on(stack, name)
    mapping = SimpleNamespace(
        spec=SimpleNamespace(arn=stack.arn("TransactionsFunction")),
        source=SimpleNamespace(stream_arn=foreign),
        clock=lambda: 1_795_000_000.0,
    )
    on_failure = on_failure_message(
        cast(KinesisMapping, mapping), SHARD, ranged, "RetryAttemptsExhausted", 6, None
    )
    stack.sqs.send_message(QueueUrl=stack.ref("OnFailureQueue"), MessageBody=json.dumps(on_failure))

    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": emulator_endpoint}
    env["KESTREL_RUN_DIR"] = str(tmp_path)
    packages = ("layers/core/python", "localstack", "training", "ops")
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in packages)  # this checkout's
    done = subprocess.run(
        [sys.executable, "-m", "kestrel_ops", "redrive", "--stack-name", stack.name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1, done.stderr
    summary = done.stderr.split("2 message(s) left because of an error or expiry:\n", 1)[-1]
    refusals = [line for line in summary.splitlines() if "refused" in line]
    assert len(refusals) == 2, done.stderr
    assert all(f"names stream {name} ({foreign})" in line for line in refusals)
    assert all(f"{stack.name}-transactions" in line for line in refusals)
    assert len(records_on(stack, name)) == 1  # nothing put on the foreign stream
    assert stack.bodies("PoisonDLQ") == [planted]  # left in place, unchanged
    assert stack.bodies("OnFailureQueue") == [on_failure]
    assert stack.stream_records() == []
