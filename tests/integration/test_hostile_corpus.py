"""Hostile records end to end: TransactionsFunction on the real emulator and redis-server.

The corpus (events/kinesis-hostile.json) goes through `python -m kestrel_local invoke`, what
`make invoke` runs: no batch item fails, and every record is parked with its reason, the
one at the stream's 1 MiB limit through the bucket. Then a record at the limit makes the
whole trip: parked through the bucket, redriven from it, applied once, and parked no more.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kestrel.adapters.glue_registry import GlueSchemaRegistry, register_all
from kestrel.adapters.redis_scripts import stored_transactions
from kestrel.adapters.s3_dead_letter_payloads import S3DeadLetterPayloads, payload_sha256
from kestrel.adapters.sqs_dead_letters import MAX_MESSAGE_BYTES, message_body, message_size
from kestrel.ports import DeadLetter
from kestrel_local.aws import AwsClients
from kestrel_local.invoker import FunctionPool, function_environment
from kestrel_local.kinesis_shard import kinesis_event_record
from kestrel_local.provision import LocalApp, bind
from kestrel_ops.redrive import redrive, stack_streams

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import hostile_corpus  # noqa: E402

SHARD = "shardId-000000000000"
LIMIT = 1024 * 1024  # a Kinesis record: data plus partition key


class Stack:
    """Kestrel's template on the emulator (one shard per stream), schemas registered."""

    def __init__(self, endpoint: str, redis_url: str) -> None:
        self.clients = AwsClients(endpoint)
        self.name = f"hc{uuid.uuid4().hex[:8]}"
        overrides = {"RedisUrl": redis_url, "ShardCount": "1"}
        self.app: LocalApp
        self.app, _ = bind(ROOT / "template.yaml", self.clients, self.name, overrides, create=True)
        self.registry = GlueSchemaRegistry(self.clients.client("glue"), self.name)
        register_all(self.registry)  # as make deploy-local does before make invoke
        self.sqs = self.clients.client("sqs")
        self.s3 = self.clients.client("s3")
        self.kinesis = self.clients.client("kinesis")

    def ref(self, logical_id: str) -> str:
        return str(self.app.stack.physical[logical_id].ref)

    def drain(self, logical_id: str, wait_s: float = 10.0) -> list[dict[str, Any]]:
        """Every message body of a queue (received once, hidden for the rest of the test)."""
        bodies: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while True:
            answer = self.sqs.receive_message(
                QueueUrl=self.ref(logical_id), MaxNumberOfMessages=10, VisibilityTimeout=600
            )
            got = answer.get("Messages", [])
            bodies += [json.loads(m["Body"]) for m in got]
            if not got and (bodies or time.monotonic() > deadline):
                return bodies
            if not got:
                time.sleep(0.2)

    def peek(self, logical_id: str) -> list[dict[str, Any]]:
        """The message bodies a receive sees now, left visible (VisibilityTimeout 0)."""
        answer = self.sqs.receive_message(
            QueueUrl=self.ref(logical_id),
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            WaitTimeSeconds=1,
        )
        return [json.loads(m["Body"]) for m in answer.get("Messages", [])]

    def payload(self, body: dict[str, Any]) -> str:
        """A dead letter's payload: inline, or read back from the bucket."""
        if "payload_b64" in body:
            return str(body["payload_b64"])
        return S3DeadLetterPayloads(self.s3, self.ref("EventLogBucket")).get(body["payload_s3"])

    def stream_records(self) -> list[dict[str, Any]]:
        iterator = self.kinesis.get_shard_iterator(
            StreamName=self.ref("TransactionsStream"),
            ShardId=SHARD,
            ShardIteratorType="TRIM_HORIZON",
        )["ShardIterator"]
        return list(self.kinesis.get_records(ShardIterator=iterator, Limit=100)["Records"])

    def invoke(self, records: list[dict[str, Any]], **environment: str) -> Any:
        """TransactionsFunction on `records` as the event source mapping sends them."""
        spec = self.app.function("TransactionsFunction")
        stream_arn = str(self.app.stack.physical["TransactionsStream"].attributes["Arn"])
        event = {
            "Records": [
                kinesis_event_record(r, SHARD, spec, stream_arn, self.clients.region)
                for r in records
            ]
        }
        env = function_environment(spec, self.clients.credentials_env()) | environment
        pool = FunctionPool(spec, env, 1)
        try:
            result = pool.invoke(event)
        finally:
            pool.close()
        assert not result.function_error, result.error
        return result.payload


@pytest.fixture
def stack(emulator_endpoint: str, redis_url: str) -> Iterator[Stack]:
    yield Stack(emulator_endpoint, redis_url)
    redis.Redis.from_url(redis_url).flushdb()


def test_hostile_corpus_is_parked_record_by_record_through_make_invoke(
    stack: Stack, redis_url: str, emulator_endpoint: str, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": emulator_endpoint}
    env |= {"KESTREL_RUN_DIR": str(tmp_path)}
    if "PYTHONPATH" in os.environ:  # a checkout's packages first, as for this process
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [sys.executable, "-m", "kestrel_local", "invoke", "TransactionsFunction"]
    command += ["--event", "events/kinesis-hostile.json", "--stack-name", stack.name]
    command += ["--parameter-overrides", f"RedisUrl={redis_url} ShardCount=1"]

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout) == {"batchItemFailures": []}
    expected = hostile_corpus.expected()
    parked = {body["sequence_number"]: body for body in stack.drain("PoisonDLQ")}
    assert sorted(parked) == sorted(expected)
    event = json.loads((ROOT / "events" / "kinesis-hostile.json").read_text())
    own = f"s3://{stack.ref('EventLogBucket')}/dead-letters/"
    for record in (r["kinesis"] for r in event["Records"]):
        body = parked[record["sequenceNumber"]]
        reason, field = expected[record["sequenceNumber"]]
        assert (body["reason"], body["partition_key"]) == (reason, record["partitionKey"])
        assert body["detail"].startswith(f"{field}: "), body["detail"]
        assert stack.payload(body) == record["data"]
        # In the bucket exactly when the letter with its payload inline would not fit.
        fields = {k: body[k] for k in DeadLetter.__dataclass_fields__ if k in body}
        inline = message_body(DeadLetter(**{**fields, "payload_b64": record["data"]}))
        too_large = message_size(inline, {"reason": {"DataType": "String", "StringValue": reason}})
        assert ("payload_s3" in body) is (too_large > MAX_MESSAGE_BYTES), record["partitionKey"]
        assert body.get("payload_s3", own).startswith(own)
    in_bucket = sorted(body["partition_key"] for body in parked.values() if "payload_s3" in body)
    assert "at-stream-limit-1mib" in in_bucket
    assert stack.drain("OnFailureQueue", wait_s=0) == []
    assert redis.Redis.from_url(redis_url).keys("kestrel:{c:*") == []


def test_record_at_the_stream_limit_is_parked_in_the_bucket_and_redriven_once(
    stack: Stack, redis_url: str
) -> None:
    key = "C-LIMIT"
    doc = {
        "transaction_id": "T-LIMIT",
        "customer_id": key,
        "terminal_id": "TERM-LIMIT",
        "amount": 42.0,
        "event_time": int(time.time() * 1000) + 2 * 3_600_000,  # 2 hours after its arrival
        "note": "",
    }
    empty = json.dumps(doc).encode()
    data = empty.replace(
        b'"note": ""', b'"note": "' + b"n" * (LIMIT - len(key) - len(empty)) + b'"'
    )
    assert len(data) + len(key) == LIMIT
    answer = stack.kinesis.put_records(
        StreamName=stack.ref("TransactionsStream"), Records=[{"Data": data, "PartitionKey": key}]
    )
    assert answer["FailedRecordCount"] == 0

    # A deployment that refuses events dated over an hour after arrival parks it ...
    strict = stack.invoke(stack.stream_records(), MAX_FUTURE_S="3600")

    assert strict == {"batchItemFailures": []}
    (letter,) = stack.peek("PoisonDLQ")
    assert letter["reason"] == "invalid_field" and letter["detail"].startswith("event_time: ")
    assert len(json.dumps(letter)) < MAX_MESSAGE_BYTES
    bucket = stack.ref("EventLogBucket")
    listed = stack.s3.list_objects_v2(Bucket=bucket, Prefix="dead-letters/")["Contents"]
    assert [f"s3://{bucket}/{o['Key']}" for o in listed] == [letter["payload_s3"]]
    stored = stack.s3.get_object(Bucket=bucket, Key=listed[0]["Key"])["Body"].read().decode()
    assert base64.b64decode(stored) == data
    assert payload_sha256(stored) == letter["payload_sha256"]

    # ... the default rule (1 day) accepts it: the redrive reads it back and puts it back ...
    payloads = S3DeadLetterPayloads(stack.s3, bucket)
    report = redrive(
        stack.sqs, stack.kinesis, stack.registry, stack.ref("PoisonDLQ"), "poison",
        wait_time_s=0, payloads=payloads, streams=stack_streams(stack.app),
    )  # fmt: skip

    assert (report.redriven, report.records_reput, report.exit_code) == (1, 1, 0)
    _, again = stack.stream_records()
    assert (again["Data"], again["PartitionKey"]) == (data, key)

    # ... and the function applies it once, parking nothing: no loop.
    assert stack.invoke([again]) == {"batchItemFailures": []}
    client = redis.Redis.from_url(redis_url)
    assert list(stored_transactions(client, f"kestrel:{{c:{key}}}:log")) == ["T-LIMIT"]
    assert stack.peek("PoisonDLQ") == []
    assert stack.drain("OnFailureQueue", wait_s=0) == []
    rerun = redrive(
        stack.sqs, stack.kinesis, stack.registry, stack.ref("PoisonDLQ"), "poison",
        wait_time_s=0, payloads=payloads, streams=stack_streams(stack.app),
    )  # fmt: skip
    assert (rerun.messages_read, len(stack.stream_records())) == (0, 2)
