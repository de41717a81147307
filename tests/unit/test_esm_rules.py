"""The event-source-mapping rules of the local runtime, without any network."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from esm_doubles import NOW, QUEUE_ARN, STREAM_ARN, record

from kestrel_local.esm_common import failed_item_ids
from kestrel_local.esm_kinesis import KinesisMapping
from kestrel_local.functions import FunctionSpec, KinesisSource
from kestrel_local.invoker import InvokeResult
from kestrel_local.kinesis_shard import Progress, kinesis_event_record


def ok(payload: Any = None) -> InvokeResult:
    return InvokeResult("req", payload=payload)


def error() -> InvokeResult:
    return InvokeResult("req", error={"errorType": "RuntimeError", "errorMessage": "boom"})


@pytest.mark.parametrize(
    "payload",
    [None, {}, {"batchItemFailures": None}, {"batchItemFailures": []}],
)
def test_failed_item_ids_treats_empty_or_null_responses_as_success(payload: Any) -> None:
    assert failed_item_ids(ok(payload), True, {"1", "2"}) == []


@pytest.mark.parametrize(
    "payload",
    [
        "not an object",
        {"batchItemFailures": "oops"},
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"itemId": "1"}]},
        {"batchItemFailures": [{"itemIdentifier": "99"}]},
        {"batchItemFailures": ["1"]},
    ],
)
def test_failed_item_ids_fails_whole_batch_on_malformed_response(payload: Any) -> None:
    assert failed_item_ids(ok(payload), True, {"1", "2"}) is None


def test_failed_item_ids_returns_reported_ids() -> None:
    payload = {"batchItemFailures": [{"itemIdentifier": "2"}, {"itemIdentifier": "1"}]}
    assert failed_item_ids(ok(payload), True, {"1", "2", "3"}) == ["2", "1"]


def test_failed_item_ids_ignores_response_when_feature_disabled() -> None:
    payload = {"batchItemFailures": [{"itemIdentifier": "1"}]}
    assert failed_item_ids(ok(payload), False, {"1"}) == []
    assert failed_item_ids(ok("garbage"), False, {"1"}) == []


def test_failed_item_ids_function_error_fails_whole_batch() -> None:
    assert failed_item_ids(error(), True, {"1"}) is None
    assert failed_item_ids(error(), False, {"1"}) is None


def test_progress_checkpoint_moves_only_over_finished_prefix() -> None:
    progress = Progress()
    progress.fetched([1, 2, 3, 4, 5])
    assert progress.finished([2, 3]) is None
    assert progress.finished([1]) == 3
    assert progress.finished([5]) is None
    assert progress.finished([4]) == 5
    assert progress.backlog() == 0


class FakePool:
    """Answers invokes with a scripted function of the batch's sequence numbers."""

    def __init__(self, answer: Callable[[list[int]], InvokeResult]) -> None:
        self.answer = answer
        self.calls: list[list[int]] = []

    def invoke(self, event: dict[str, Any]) -> InvokeResult:
        seqs = [int(r["kinesis"]["sequenceNumber"]) for r in event["Records"]]
        self.calls.append(seqs)
        return self.answer(seqs)


class FakeSqs:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def get_queue_url(self, QueueName: str, QueueOwnerAWSAccountId: str) -> dict[str, str]:
        return {"QueueUrl": f"http://queue/{QueueOwnerAWSAccountId}/{QueueName}"}

    def send_message(self, QueueUrl: str, MessageBody: str) -> None:
        self.sent.append(json.loads(MessageBody))


class FakeClients:
    region = "us-east-1"

    def __init__(self) -> None:
        self.sqs = FakeSqs()

    def client(self, service: str) -> Any:
        assert service == "sqs"
        return self.sqs


class FakeShard:
    shard_id = "shardId-000000000000"

    def __init__(self) -> None:
        self.finished: list[int] = []

    def records_finished(self, records: list[dict[str, Any]]) -> None:
        self.finished.extend(int(r["SequenceNumber"]) for r in records)


def mapping(pool: FakePool, **source: Any) -> tuple[KinesisMapping, FakeClients]:
    spec = FunctionSpec(
        logical_id="F",
        name="stack-F",
        arn="arn:aws:lambda:us-east-1:123456789012:function:stack-F",
        handler="app.handler",
        code_dir=Path("."),
        runtime="python3.11",
        timeout_s=3,
        memory_mb=128,
        environment={},
        layer_dirs=(),
    )
    src = KinesisSource(
        function="F",
        name="Stream",
        stream_arn=STREAM_ARN,
        starting_position="TRIM_HORIZON",
        on_failure_arn=QUEUE_ARN,
        **source,
    )
    clients = FakeClients()
    esm = KinesisMapping(
        src,
        spec,
        cast(Any, pool),
        cast(Any, clients),
        checkpoints=cast(Any, None),
        stopping=threading.Event(),
        backoff_s=0.0,
        clock=lambda: NOW,
    )
    return esm, clients


def test_deliver_bisects_failed_batch_without_counting_retries() -> None:
    pool = FakePool(lambda seqs: error() if 3 in seqs else ok())
    esm, clients = mapping(pool, bisect=True, max_retries=0)
    shard = FakeShard()
    esm.deliver(shard, [record(i) for i in range(1, 5)])  # type: ignore[arg-type]
    assert pool.calls == [[1, 2, 3, 4], [1, 2], [3, 4], [3], [4]]
    assert sorted(shard.finished) == [1, 2, 3, 4]
    (message,) = clients.sqs.sent
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == "3"
    assert message["KinesisBatchInfo"]["batchSize"] == 1
    assert message["requestContext"]["approximateInvokeCount"] == 1


def test_deliver_retries_until_maximum_then_sends_on_failure_record() -> None:
    pool = FakePool(lambda seqs: error())
    esm, clients = mapping(pool, max_retries=2)
    shard = FakeShard()
    esm.deliver(shard, [record(7), record(8)])  # type: ignore[arg-type]
    assert pool.calls == [[7, 8]] * 3
    (message,) = clients.sqs.sent
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["approximateInvokeCount"] == 3
    assert message["requestContext"]["functionArn"] == esm.spec.arn
    assert message["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert message["version"] == "1.0"
    info = message["KinesisBatchInfo"]
    assert (info["shardId"], info["startSequenceNumber"], info["endSequenceNumber"]) == (
        "shardId-000000000000",
        "7",
        "8",
    )
    assert info["streamArn"] == STREAM_ARN
    assert info["approximateArrivalOfFirstRecord"] == "2027-01-15T08:00:00.000Z"
    assert "Records" not in json.dumps(message) and "data" not in json.dumps(message)
    assert shard.finished == [7, 8]


def test_deliver_partial_failure_checkpoints_before_lowest_failed_sequence() -> None:
    answers = iter(
        [
            ok({"batchItemFailures": [{"itemIdentifier": "5"}, {"itemIdentifier": "3"}]}),
            ok({"batchItemFailures": []}),
        ]
    )
    pool = FakePool(lambda seqs: next(answers))
    esm, clients = mapping(pool, report_item_failures=True, max_retries=3)
    shard = FakeShard()
    esm.deliver(shard, [record(i) for i in range(1, 6)])  # type: ignore[arg-type]
    assert pool.calls == [[1, 2, 3, 4, 5], [3, 4, 5]]
    assert shard.finished == [1, 2, 3, 4, 5]
    assert clients.sqs.sent == []


def test_deliver_discards_records_older_than_maximum_age() -> None:
    pool = FakePool(lambda seqs: ok())
    esm, clients = mapping(pool, max_record_age_s=60)
    shard = FakeShard()
    batch = [record(1, arrival=NOW - 120), record(2, arrival=NOW - 61), record(3, arrival=NOW - 5)]
    esm.deliver(shard, batch)  # type: ignore[arg-type]
    assert pool.calls == [[3]]
    (message,) = clients.sqs.sent
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["KinesisBatchInfo"]["batchSize"] == 2
    assert sorted(shard.finished) == [1, 2, 3]


def test_deliver_with_infinite_retries_leaves_batch_unfinished_on_stop() -> None:
    pool = FakePool(lambda seqs: error())
    esm, clients = mapping(pool, max_retries=-1)
    original_add = esm.stats.add

    def stop_after_five(**counts: int) -> None:
        original_add(**counts)
        if esm.stats.invokes >= 5:
            esm.stopping.set()

    esm.stats.add = stop_after_five  # type: ignore[method-assign]
    shard = FakeShard()
    esm.deliver(shard, [record(1)])  # type: ignore[arg-type]
    assert len(pool.calls) == 5
    assert shard.finished == []
    assert clients.sqs.sent == []


def test_kinesis_event_record_has_aws_shape() -> None:
    esm, _ = mapping(FakePool(lambda seqs: ok()))
    event = kinesis_event_record(
        record(42, key="cust-1"), "shardId-000000000003", esm.spec, STREAM_ARN, "us-east-1"
    )
    assert event == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "cust-1",
            "sequenceNumber": "42",
            "data": "eyJuIjogNDJ9",
            "approximateArrivalTimestamp": NOW,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000003:42",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/stack-F-role",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
    }
