"""How the runtime's shard lanes gather batches and its reader splits reads (no network)."""

from __future__ import annotations

import threading
import zlib
from typing import Any, cast

from esm_doubles import STREAM_ARN, record

from kestrel_local.esm_common import MappingStats
from kestrel_local.functions import KinesisSource
from kestrel_local.kinesis_shard import Lane, ShardConsumer


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
