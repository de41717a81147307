"""A Kinesis event-source mapping with AWS's documented semantics, polling any endpoint.

The mapping discovers shards (children after their parents) and runs a `ShardConsumer`
per shard. Delivery applies the error rules: BisectBatchOnFunctionError (a split is not a
retry), ReportBatchItemFailures (retry from the lowest failed sequence number),
MaximumRetryAttempts and MaximumRecordAgeInSeconds, then the on-failure message in AWS's
shape.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kestrel_local.aws import AwsClients
from kestrel_local.checkpoints import CheckpointStore
from kestrel_local.esm_common import MappingStats, failed_item_ids, iso_millis
from kestrel_local.functions import FunctionSpec, KinesisSource
from kestrel_local.invoker import FunctionPool, InvokeResult
from kestrel_local.kinesis_shard import Record, ShardConsumer, kinesis_event_record

log = logging.getLogger("kestrel_local.kinesis")


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
        short_read_pause_s: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source, self.spec, self.pool = source, spec, pool
        self.clients, self.checkpoints, self.stopping = clients, checkpoints, stopping
        self.backoff_s, self.poll_interval_s, self.clock = backoff_s, poll_interval_s, clock
        self.short_read_pause_s = short_read_pause_s
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
