"""One shard of a Kinesis event-source mapping: its reader, its lanes and its checkpoint.

The reader pulls records with GetRecords and hands them to ParallelizationFactor lanes by
partition key (order kept per key), each lane its share of a read in one piece. Each lane
gathers a batch (BatchSize, MaximumBatchingWindowInSeconds) and hands it to the mapping's
delivery rules: with no window, a batch is what the reads so far returned (up to BatchSize),
so batches stay large under load and records wait for nothing at low rates. The shard's
checkpoint advances over every finished record and is stored durably.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from kestrel_local.functions import FunctionSpec

if TYPE_CHECKING:
    from kestrel_local.esm_kinesis import KinesisMapping

log = logging.getLogger("kestrel_local.kinesis")
Record = dict[str, Any]


def kinesis_event_record(
    record: Record, shard_id: str, spec: FunctionSpec, stream_arn: str, region: str
) -> dict[str, Any]:
    """One GetRecords record in the exact shape Lambda passes to a handler."""
    arrival = record["ApproximateArrivalTimestamp"]
    account = stream_arn.split(":")[4]
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": record["SequenceNumber"],
            "data": base64.b64encode(record["Data"]).decode("ascii"),
            "approximateArrivalTimestamp": round(arrival.timestamp(), 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{record['SequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{account}:role/{spec.name}-role",
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }


class Progress:
    """Which fetched records are finished; yields the checkpoint over the finished prefix."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._lock = threading.Lock()

    def fetched(self, seqs: list[int]) -> None:
        with self._lock:
            self._order.extend(seqs)

    def finished(self, seqs: list[int]) -> int | None:
        """Mark records finished; return the new checkpoint if it moved."""
        with self._lock:
            self._done.update(seqs)
            moved = None
            while self._order and self._order[0] in self._done:
                moved = self._order.popleft()
                self._done.discard(moved)
            return moved

    def backlog(self) -> int:
        with self._lock:
            return len(self._order)


class ShardConsumer:
    """Reads one shard and runs its lanes until the shard closes or the mapping stops."""

    def __init__(self, mapping: KinesisMapping, shard_id: str) -> None:
        self.mapping = mapping
        self.shard_id = shard_id
        self.source = mapping.source
        self.progress = Progress()
        self.lanes = [Lane(self, i) for i in range(self.source.parallelization)]
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"kinesis:{shard_id}", daemon=True)

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        for lane in self.lanes:
            lane.join(timeout)

    def _iterator(self) -> str:
        kinesis = self.mapping.clients.client("kinesis")
        store, mapping_id = self.mapping.checkpoints, self.mapping.mapping_id
        position = store.get(mapping_id, self.shard_id)
        args: dict[str, Any] = {"StreamName": self.mapping.stream_name, "ShardId": self.shard_id}
        if position is None and self.mapping.is_initial_shard(self.shard_id):
            if self.source.starting_position == "LATEST":
                position = f"@{time.time()}"
                store.put(mapping_id, self.shard_id, position)
            elif self.source.starting_position == "AT_TIMESTAMP":
                position = f"@{self.source.starting_timestamp}"
        if position is None:
            args["ShardIteratorType"] = "TRIM_HORIZON"
        elif position.startswith("@"):
            args.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=float(position[1:]))
        else:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=position)
        return str(kinesis.get_shard_iterator(**args)["ShardIterator"])

    def _read(self) -> None:
        kinesis = self.mapping.clients.client("kinesis")
        stop = self.mapping.stopping
        limit = min(10000, max(self.source.batch_size * self.source.parallelization * 2, 1000))
        high_water = limit * 4
        iterator: str | None = self._iterator()
        last_seq: str | None = None
        while iterator is not None and not stop.is_set():
            if self.progress.backlog() >= high_water:
                stop.wait(self.mapping.poll_interval_s)
                continue
            try:
                response = kinesis.get_records(ShardIterator=iterator, Limit=limit)
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code == "ExpiredIteratorException":
                    iterator = self._resume_after(last_seq)
                    continue
                log.warning(
                    "%s %s: GetRecords failed (%s); retrying",
                    self.source.mapping_id,
                    self.shard_id,
                    code,
                )
                stop.wait(max(self.mapping.backoff_s, 1.0))
                continue
            except Exception:
                log.exception("%s: GetRecords failed; retrying", self.shard_id)
                stop.wait(max(self.mapping.backoff_s, 1.0))
                continue
            records = response.get("Records", [])
            iterator = response.get("NextShardIterator")
            if records:
                last_seq = records[-1]["SequenceNumber"]
                self.progress.fetched([int(r["SequenceNumber"]) for r in records])
                self.mapping.stats.add(received=len(records))
                shares: list[list[Record]] = [[] for _ in self.lanes]
                for record in records:
                    shares[zlib.crc32(record["PartitionKey"].encode()) % len(shares)].append(record)
                for lane, share in zip(self.lanes, shares, strict=True):
                    if share:
                        lane.inbox.put(share)
                if len(records) < limit:
                    # Caught up: let records gather instead of calling GetRecords again at once.
                    # AWS polls a shard about once a second; KESTREL_SHORT_READ_PAUSE_S trades
                    # the emulator's CPU per record for freshness (README, "Freshness").
                    stop.wait(self.mapping.short_read_pause_s)
            else:
                stop.wait(self.mapping.poll_interval_s)
        for lane in self.lanes:
            lane.inbox.put(None)
        for lane in self.lanes:
            lane.join()
        if iterator is None and self.progress.backlog() == 0:
            log.info("%s: shard %s closed and drained", self.source.mapping_id, self.shard_id)
            self.finished.set()

    def _resume_after(self, last_seq: str | None) -> str:
        if last_seq is None:
            return self._iterator()
        response = self.mapping.clients.client("kinesis").get_shard_iterator(
            StreamName=self.mapping.stream_name,
            ShardId=self.shard_id,
            ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=last_seq,
        )
        return str(response["ShardIterator"])

    def records_finished(self, records: list[Record]) -> None:
        moved = self.progress.finished([int(r["SequenceNumber"]) for r in records])
        if moved is not None:
            self.mapping.checkpoints.put(self.mapping.mapping_id, self.shard_id, str(moved))


class Lane(threading.Thread):
    """One of ParallelizationFactor concurrent batch streams of a shard."""

    def __init__(self, shard: ShardConsumer, index: int) -> None:
        super().__init__(name=f"kinesis:{shard.shard_id}:lane{index}", daemon=True)
        self.shard = shard
        self.mapping = shard.mapping
        self.source = shard.source
        # The lane's share of each read, in order; None: the reader stopped.
        self.inbox: queue.Queue[list[Record] | None] = queue.Queue()
        self._carry: deque[Record] = deque()  # received, not yet in a batch
        self._closed = False

    def run(self) -> None:
        while not self._closed or self._carry:
            batch = self._gather()
            if batch and not self.mapping.stopping.is_set():
                self.mapping.deliver(self.shard, batch)

    def _gather(self) -> list[Record]:
        """The next batch: at most BatchSize records, gathered for at most the window."""
        if not self._carry:
            first = self.inbox.get()
            if first is None:
                self._closed = True
                return []
            self._carry.extend(first)
        size = self.source.batch_size
        deadline = time.monotonic() + self.source.window_s
        batch = self._take(size)
        while len(batch) < size and not self._closed:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                self._closed = True
                break
            self._carry.extend(item)
            batch.extend(self._take(size - len(batch)))
        return batch

    def _take(self, count: int) -> list[Record]:
        carry = self._carry
        return [carry.popleft() for _ in range(min(count, len(carry)))]
