"""A Kinesis event-source mapping with AWS's documented semantics, polling any endpoint.

Per shard, a reader thread pulls records with GetRecords and hands them to
ParallelizationFactor lanes by partition key (order kept per key). Each lane gathers a
batch (BatchSize, MaximumBatchingWindowInSeconds), invokes the function and applies the
error rules: BisectBatchOnFunctionError (a split is not a retry), ReportBatchItemFailures
(retry from the lowest failed sequence number), MaximumRetryAttempts and
MaximumRecordAgeInSeconds, then the on-failure message in AWS's shape. The shard's
checkpoint advances over every finished record and is stored durably.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from kestrel_local.aws import AwsClients
from kestrel_local.checkpoints import CheckpointStore
from kestrel_local.esm_common import MappingStats, failed_item_ids, iso_millis
from kestrel_local.functions import FunctionSpec, KinesisSource
from kestrel_local.invoker import FunctionPool, InvokeResult

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


class _Progress:
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
        self.progress = _Progress()
        self.lanes = [_Lane(self, i) for i in range(self.source.parallelization)]
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
                for record in records:
                    index = zlib.crc32(record["PartitionKey"].encode()) % len(self.lanes)
                    self.lanes[index].inbox.put(record)
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


class _Lane(threading.Thread):
    """One of ParallelizationFactor concurrent batch streams of a shard."""

    def __init__(self, shard: ShardConsumer, index: int) -> None:
        super().__init__(name=f"kinesis:{shard.shard_id}:lane{index}", daemon=True)
        self.shard = shard
        self.mapping = shard.mapping
        self.source = shard.source
        self.inbox: queue.Queue[Record | None] = queue.Queue()
        self._closed = False

    def run(self) -> None:
        while not self._closed:
            batch = self._gather()
            if batch and not self.mapping.stopping.is_set():
                self.mapping.deliver(self.shard, batch)

    def _gather(self) -> list[Record]:
        first = self.inbox.get()
        if first is None:
            self._closed = True
            return []
        batch, deadline = [first], time.monotonic() + self.source.window_s
        while len(batch) < self.source.batch_size:
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
            batch.append(item)
        return batch


class KinesisMapping:
    """One Kinesis event source of one function: shard discovery, delivery rules, on-failure."""

    def __init__(
        self,
        source: KinesisSource,
        spec: FunctionSpec,
        pool: FunctionPool,
        clients: AwsClients,
        checkpoints: CheckpointStore,
        stopping: threading.Event,
        backoff_s: float = 0.2,
        poll_interval_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source, self.spec, self.pool = source, spec, pool
        self.clients, self.checkpoints, self.stopping = clients, checkpoints, stopping
        self.backoff_s, self.poll_interval_s, self.clock = backoff_s, poll_interval_s, clock
        self.stats = MappingStats()
        self.mapping_id = source.mapping_id
        # Stream names, not ARNs, in shard-iterator calls: moto loses the ARN in its iterators.
        self.stream_name = source.stream_arn.split("/", 1)[1]
        self.consumers: dict[str, ShardConsumer] = {}
        self._initial_shards: set[str] = set()
        self._thread = threading.Thread(
            target=self._discover, name=f"esm:{source.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        for consumer in list(self.consumers.values()):
            consumer.join(timeout)

    def is_initial_shard(self, shard_id: str) -> bool:
        return shard_id in self._initial_shards

    def _discover(self) -> None:
        kinesis = self.clients.client("kinesis")
        first = True
        while not self.stopping.is_set():
            if first:
                # A recreated stream (e.g. a restarted emulator) restarts its sequence numbers,
                # so checkpoints are keyed by the stream's creation time too.
                try:
                    summary = kinesis.describe_stream_summary(StreamName=self.stream_name)
                except Exception:
                    log.exception("%s: DescribeStreamSummary failed", self.source.mapping_id)
                    self.stopping.wait(max(self.backoff_s, 1.0))
                    continue
                created = summary["StreamDescriptionSummary"]["StreamCreationTimestamp"]
                self.mapping_id = f"{self.source.mapping_id}#{created.timestamp():.3f}"
            try:
                shards = kinesis.list_shards(StreamName=self.stream_name)["Shards"]
            except Exception:
                log.exception("%s: ListShards failed", self.source.mapping_id)
                self.stopping.wait(max(self.backoff_s, 1.0))
                continue
            known = {s["ShardId"] for s in shards}
            if first:
                self._initial_shards = {
                    s["ShardId"] for s in shards if s.get("ParentShardId") not in known
                }
                first = False
            for shard in shards:
                shard_id = shard["ShardId"]
                parents = [shard.get("ParentShardId"), shard.get("AdjacentParentShardId")]
                waiting = any(p in known and not self._done(p) for p in parents if p)
                if shard_id not in self.consumers and not waiting:
                    consumer = ShardConsumer(self, shard_id)
                    self.consumers[shard_id] = consumer
                    consumer.start()
            self.stopping.wait(10.0)

    def _done(self, shard_id: str) -> bool:
        consumer = self.consumers.get(shard_id)
        return consumer is not None and consumer.finished.is_set()

    def deliver(self, shard: ShardConsumer, records: list[Record]) -> None:
        """Invoke the function on a batch, applying AWS's retry, bisect and discard rules."""
        pending: deque[tuple[list[Record], int]] = deque([(records, 0)])
        while pending:
            batch, retries = pending.popleft()
            batch = self._drop_expired(shard, batch, retries)
            if not batch:
                continue
            if self.stopping.is_set():
                return  # not finished: re-read after the checkpoint on restart
            result = self._invoke(shard, batch)
            failed = failed_item_ids(
                result, self.source.report_item_failures, {r["SequenceNumber"] for r in batch}
            )
            if failed == []:
                self.stats.add(succeeded=len(batch))
                shard.records_finished(batch)
                continue
            if failed is None and self.source.bisect and len(batch) > 1:
                middle = len(batch) // 2
                pending.extendleft([(batch[middle:], retries), (batch[:middle], retries)])
                self.stats.add(bisections=1)
                continue
            if failed:
                lowest = min(int(s) for s in failed)
                index = next(i for i, r in enumerate(batch) if int(r["SequenceNumber"]) == lowest)
                self.stats.add(partial_failures=1, succeeded=index)
                shard.records_finished(batch[:index])
                batch = batch[index:]
            if 0 <= self.source.max_retries <= retries:
                self._discard(shard, batch, "RetryAttemptsExhausted", retries + 1, result)
                continue
            self.stats.add(retries=1)
            self.stopping.wait(min(self.backoff_s * (2 ** min(retries, 6)), 30.0))
            pending.appendleft((batch, retries + 1))

    def _invoke(self, shard: ShardConsumer, batch: list[Record]) -> InvokeResult:
        event = {
            "Records": [
                kinesis_event_record(
                    r, shard.shard_id, self.spec, self.source.stream_arn, self.clients.region
                )
                for r in batch
            ]
        }
        result = self.pool.invoke(event)
        self.stats.add(invokes=1, function_errors=int(result.function_error))
        return result

    def _drop_expired(
        self, shard: ShardConsumer, batch: list[Record], retries: int
    ) -> list[Record]:
        if self.source.max_record_age_s < 0:
            return batch
        cutoff = self.clock() - self.source.max_record_age_s
        arrivals = [r["ApproximateArrivalTimestamp"].timestamp() for r in batch]
        keep_from = bisect.bisect_right(arrivals, cutoff)
        if keep_from:
            self._discard(shard, batch[:keep_from], "RecordAgeExceeded", retries, None)
        return batch[keep_from:]

    def _discard(
        self,
        shard: ShardConsumer,
        batch: list[Record],
        condition: str,
        invoke_count: int,
        last: InvokeResult | None,
    ) -> None:
        """Send the on-failure record for a batch (if configured) and move past it."""
        self.stats.add(discarded=len(batch))
        log.warning(
            "%s %s: discarding %d record(s) %s..%s (%s)",
            self.source.mapping_id,
            shard.shard_id,
            len(batch),
            batch[0]["SequenceNumber"],
            batch[-1]["SequenceNumber"],
            condition,
        )
        if self.source.on_failure_arn is not None:
            message = on_failure_message(self, shard.shard_id, batch, condition, invoke_count, last)
            self._send_on_failure(message)
        shard.records_finished(batch)

    def _send_on_failure(self, message: dict[str, Any]) -> None:
        arn = str(self.source.on_failure_arn)
        body = json.dumps(message)
        while True:
            try:
                if arn.split(":")[2] == "sqs":
                    sqs = self.clients.client("sqs")
                    name, account = arn.split(":")[5], arn.split(":")[4]
                    url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
                    sqs.send_message(QueueUrl=url["QueueUrl"], MessageBody=body)
                else:
                    self.clients.client("sns").publish(TopicArn=arn, Message=body)
                return
            except Exception:
                log.exception(
                    "%s: cannot deliver on-failure record to %s; retrying",
                    self.source.mapping_id,
                    arn,
                )
                if self.stopping.wait(max(self.backoff_s, 1.0)):
                    raise


def on_failure_message(
    mapping: KinesisMapping,
    shard_id: str,
    batch: list[Record],
    condition: str,
    invoke_count: int,
    last: InvokeResult | None,
) -> dict[str, Any]:
    """The record Lambda sends to an on-failure destination for a Kinesis batch (no payloads)."""
    arrivals = [r["ApproximateArrivalTimestamp"].timestamp() for r in batch]
    failed_call = last is not None and last.function_error
    return {
        "requestContext": {
            "requestId": last.request_id if last else "",
            "functionArn": mapping.spec.arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled" if failed_call else "",
        },
        "version": "1.0",
        "timestamp": iso_millis(mapping.clock()),
        "KinesisBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": batch[0]["SequenceNumber"],
            "endSequenceNumber": batch[-1]["SequenceNumber"],
            "approximateArrivalOfFirstRecord": iso_millis(arrivals[0]),
            "approximateArrivalOfLastRecord": iso_millis(arrivals[-1]),
            "batchSize": len(batch),
            "streamArn": mapping.source.stream_arn,
        },
    }
