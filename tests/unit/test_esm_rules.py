"""The event-source-mapping rules of the local runtime, without any network."""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from kestrel_local.esm_common import MappingStats, failed_item_ids
from kestrel_local.esm_kinesis import KinesisMapping
from kestrel_local.functions import FunctionSpec, KinesisSource
from kestrel_local.invoker import InvokeResult
from kestrel_local.kinesis_shard import Lane, Progress, ShardConsumer, kinesis_event_record

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/s"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:failures"
NOW = 1_800_000_000.0


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


def record(seq: int, key: str = "k", arrival: float = NOW) -> dict[str, Any]:
    return {
        "SequenceNumber": str(seq),
        "PartitionKey": key,
        "Data": json.dumps({"n": seq}).encode(),
        "ApproximateArrivalTimestamp": datetime.fromtimestamp(arrival, tz=UTC),
    }


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


class LaneShard:
    """Just enough of a shard consumer for a lane to gather batches."""

    shard_id = "shardId-000000000000"

    def __init__(self, **source: Any) -> None:
        self.mapping = type("M", (), {"stopping": threading.Event()})()
        self.source = KinesisSource(
            function="F",
            name="S",
            stream_arn=STREAM_ARN,
            starting_position="TRIM_HORIZON",
            **source,
        )


def gather_with_late_arrivals(**source: Any) -> list[int]:
    lane = Lane(cast(Any, LaneShard(**source)), 0)
    lane.inbox.put([record(1)])

    def arrive() -> None:
        for n in (2, 3):
            lane.inbox.put([record(n)])

    late = threading.Timer(0.1, arrive)
    late.start()
    try:
        return [int(r["SequenceNumber"]) for r in lane._gather()]
    finally:
        late.join()


def test_lane_without_window_invokes_with_what_is_there() -> None:
    assert gather_with_late_arrivals(batch_size=10, window_s=0.0) == [1]


def test_lane_batching_window_gathers_records_arriving_within_it() -> None:
    assert gather_with_late_arrivals(batch_size=10, window_s=2.0) == [1, 2, 3]


def test_lane_stops_gathering_at_batch_size() -> None:
    assert gather_with_late_arrivals(batch_size=2, window_s=2.0) == [1, 2]


def batches_of(lane: Lane) -> list[list[int]]:
    """Every batch the lane gathers until its inbox is closed."""
    out = []
    while not lane._closed or lane._carry:
        batch = lane._gather()
        if batch:
            out.append([int(r["SequenceNumber"]) for r in batch])
    return out


def test_lane_without_window_makes_one_batch_of_each_read() -> None:
    # Without a window a batch is what the reads returned so far: one read is never split
    # into smaller invocations, and reads queued while a batch ran share the next one.
    lane = Lane(cast(Any, LaneShard(batch_size=100, window_s=0.0)), 0)
    lane.inbox.put([record(n) for n in range(1, 6)])
    assert [int(r["SequenceNumber"]) for r in lane._gather()] == [1, 2, 3, 4, 5]
    lane.inbox.put([record(6), record(7)])
    lane.inbox.put([record(8)])
    lane.inbox.put(None)
    assert batches_of(lane) == [[6, 7, 8]]


def test_lane_splits_a_large_read_at_batch_size_in_order() -> None:
    lane = Lane(cast(Any, LaneShard(batch_size=2, window_s=0.0)), 0)
    lane.inbox.put([record(n) for n in range(1, 6)])
    lane.inbox.put(None)
    assert batches_of(lane) == [[1, 2], [3, 4], [5]]


def test_lane_with_window_fills_its_batch_from_the_carry_first() -> None:
    lane = Lane(cast(Any, LaneShard(batch_size=3, window_s=5.0)), 0)
    lane.inbox.put([record(n) for n in range(1, 5)])
    lane.inbox.put([record(5), record(6)])
    lane.inbox.put(None)
    # Full batches go at once (no waiting out the window); the rest when the reader stops.
    assert batches_of(lane) == [[1, 2, 3], [4, 5, 6]]


class RecordingEvent(threading.Event):
    """A stop event that remembers how long the reader asked to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        return super().wait(0)


class ScriptedKinesis:
    """GetRecords answers from a script; the last one closes the shard."""

    def __init__(self, reads: list[list[dict[str, Any]]]) -> None:
        self.reads = list(reads)
        self.limits: list[int] = []

    def get_shard_iterator(self, **_: Any) -> dict[str, str]:
        return {"ShardIterator": "it-0"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        self.limits.append(Limit)
        records = self.reads.pop(0)
        return {"Records": records, "NextShardIterator": "it" if self.reads else None}


def run_reader(
    reads: list[list[dict[str, Any]]], **source: Any
) -> tuple[list[tuple[str, list[int]]], RecordingEvent, ScriptedKinesis]:
    """Run one ShardConsumer over scripted reads; return (lane, batch) deliveries and waits."""
    kinesis = ScriptedKinesis(reads)
    delivered: list[tuple[str, list[int]]] = []
    lock = threading.Lock()

    kinesis_source = KinesisSource(
        function="F", name="S", stream_arn=STREAM_ARN, starting_position="TRIM_HORIZON", **source
    )

    class Mapping:
        clients = type("C", (), {"client": staticmethod(lambda service: kinesis)})()
        checkpoints = type("S", (), {"get": lambda *a: None, "put": lambda *a: None})()
        mapping_id, stream_name = "F.S@arn#1", "s"
        stopping = RecordingEvent()
        poll_interval_s, short_read_pause_s, backoff_s = 0.05, 0.1, 0.2
        stats = MappingStats()

        def __init__(self) -> None:
            self.source = kinesis_source

        def is_initial_shard(self, shard_id: str) -> bool:
            return True

        def deliver(self, shard: ShardConsumer, batch: list[dict[str, Any]]) -> None:
            with lock:
                delivered.append(
                    (threading.current_thread().name, [int(r["SequenceNumber"]) for r in batch])
                )
            shard.records_finished(batch)

    mapping = Mapping()
    consumer = ShardConsumer(cast(Any, mapping), "shardId-000000000000")
    consumer.start()
    consumer.join(5.0)
    assert consumer.finished.is_set()
    return delivered, mapping.stopping, kinesis


def test_reader_hands_each_lane_its_share_of_a_read_in_one_piece() -> None:
    reads = [
        [record(n, key=f"customer-{n % 6}") for n in range(1, 31)],
        [record(n, key=f"customer-{n % 6}") for n in range(31, 35)],
    ]
    delivered, stopping, kinesis = run_reader(
        reads, batch_size=500, window_s=0.0, parallelization=2
    )

    def share(read: list[dict[str, Any]], lane: int) -> list[int]:
        return [
            int(r["SequenceNumber"])
            for r in read
            if zlib.crc32(r["PartitionKey"].encode()) % 2 == lane
        ]

    assert all(share(reads[0], lane) for lane in (0, 1)), "the keys must reach both lanes"
    for name, batch in delivered:
        lane = int(name.rsplit("lane", 1)[1])
        first, second = share(reads[0], lane), share(reads[1], lane)
        # A lane's share of a read is never split; reads queued behind a batch may join.
        assert batch in (first, second, first + second), (lane, batch)
    assert sorted(n for _, batch in delivered for n in batch) == list(range(1, 35))
    # The shard was caught up after each short read: the reader paused the setting's time.
    assert stopping.waits == [0.1, 0.1]
    assert kinesis.limits == [2000, 2000]


def test_lane_split_batches_never_mix_lanes_or_break_key_order() -> None:
    reads = [[record(n, key=f"k{n % 5}") for n in range(1, 41)]]
    delivered, _, _ = run_reader(reads, batch_size=4, window_s=0.0, parallelization=3)
    assert all(len(batch) <= 4 for _, batch in delivered)
    per_key: dict[int, list[int]] = {}
    for _, batch in delivered:
        for n in batch:
            per_key.setdefault(n % 5, []).append(n)
    assert all(seqs == sorted(seqs) for seqs in per_key.values())
    assert sorted(n for _, batch in delivered for n in batch) == list(range(1, 41))
