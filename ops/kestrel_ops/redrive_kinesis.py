"""Kinesis side of the redrive: parse dead-letter messages, re-read ranges, put in order.

`read_range` re-reads an on-failure message's records from their shard (``AT_SEQUENCE_NUMBER``
from the start to the end sequence number, inclusive) and tells an expired range apart.
`put_in_order` puts records back with their partition keys, retrying failed entries while
keeping the order per key; `Pacer` limits the rate.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError

from kestrel.adapters.sqs_dead_letters import MESSAGE_KIND

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
EXPIRED_CODES = frozenset({"InvalidArgumentException", "ResourceNotFoundException"})
RETRYABLE_PUT_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "InternalFailure"}
)


class KinesisApi(Protocol):
    """The boto3 ``kinesis`` client operations the redrive tool calls (keyword arguments only)."""

    def get_shard_iterator(self, **kwargs: Any) -> Mapping[str, Any]:
        """GetShardIterator."""
        ...

    def get_records(self, **kwargs: Any) -> Mapping[str, Any]:
        """GetRecords."""
        ...

    def put_records(self, **kwargs: Any) -> Mapping[str, Any]:
        """PutRecords."""
        ...

    def describe_stream_summary(self, **kwargs: Any) -> Mapping[str, Any]:
        """DescribeStreamSummary."""
        ...


class MessageError(ValueError):
    """A queue message that is neither an on-failure message nor a Kestrel dead letter."""


class RangeExpired(Exception):
    """The records of an on-failure message can no longer be read (past retention, or gone)."""


class RedriveFailure(Exception):
    """A message could not be redriven now (it stays in the queue); the text says why."""


@dataclass(frozen=True, slots=True)
class PutEntry:
    """One record to put back: its bytes, its partition key and where it came from."""

    data: bytes
    partition_key: str
    sequence_number: str = ""


@dataclass(frozen=True, slots=True)
class OnFailureBatch:
    """An on-failure message's batch: the stream, shard and inclusive sequence range."""

    stream_arn: str
    shard_id: str
    start: str
    end: str
    batch_size: int
    condition: str
    failed_at: datetime
    first_arrival: str


@dataclass(frozen=True, slots=True)
class PoisonLetter:
    """A Kestrel dead letter: one record's payload, reason and stream coordinates.

    A payload too large for the queue is in the stack's bucket: then `payload_b64` is empty
    and `payload_s3` names the object, whose text has the SHA-256 `payload_sha256`.
    """

    reason: str
    detail: str
    payload_b64: str
    stream_arn: str
    shard_id: str
    sequence_number: str
    partition_key: str
    first_seen: datetime
    payload_s3: str = ""
    payload_sha256: str = ""


def _time(value: Any, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise MessageError(f"{name}: {value!r} is not an ISO-8601 time") from None
    if moment.utcoffset() is None:
        raise MessageError(f"{name}: {value!r} has no UTC offset")
    return moment


def parse_message(body: str) -> OnFailureBatch | PoisonLetter:
    """Parse a message body by its shape: an on-failure message or a poison dead letter.

    Raises:
        MessageError: The body is not JSON, or has neither shape, or lacks a field.
    """
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise MessageError(f"body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise MessageError("body is not a JSON object")
    try:
        if "KinesisBatchInfo" in doc:
            info = doc["KinesisBatchInfo"]
            return OnFailureBatch(
                stream_arn=str(info["streamArn"]),
                shard_id=str(info["shardId"]),
                start=str(info["startSequenceNumber"]),
                end=str(info["endSequenceNumber"]),
                batch_size=int(info["batchSize"]),
                condition=str((doc.get("requestContext") or {}).get("condition", "")),
                failed_at=_time(doc["timestamp"], "timestamp"),
                first_arrival=str(info.get("approximateArrivalOfFirstRecord", "")),
            )
        if doc.get("kind") == MESSAGE_KIND:
            stored = "payload_s3" in doc and "payload_b64" not in doc
            return PoisonLetter(
                reason=str(doc["reason"]),
                detail=str(doc.get("detail", "")),
                payload_b64="" if stored else str(doc["payload_b64"]),
                payload_s3=str(doc["payload_s3"]) if stored else "",
                payload_sha256=str(doc["payload_sha256"]) if stored else "",
                stream_arn=str(doc["stream_arn"]),
                shard_id=str(doc.get("shard_id", "")),
                sequence_number=str(doc.get("sequence_number", "")),
                partition_key=str(doc["partition_key"]),
                first_seen=_time(doc["first_seen"], "first_seen"),
            )
    except (KeyError, TypeError) as exc:
        raise MessageError(f"missing or malformed field {exc}") from None
    raise MessageError("neither an on-failure message (KinesisBatchInfo) nor a kestrel.poison")


def stream_name(stream_arn: str) -> str:
    """The stream name in a Kinesis stream ARN (``arn:aws:kinesis:r:a:stream/<name>``)."""
    return stream_arn.rsplit("/", 1)[-1] if "/" in stream_arn else stream_arn


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError ("" when it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _retention(kinesis: KinesisApi, stream: str) -> str:
    try:
        summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    except (ClientError, BotoCoreError) as exc:
        return f"unknown: the stream cannot be described ({type(exc).__name__}), it may be deleted"
    return f"{summary.get('RetentionPeriodHours', '?')} h"


def _expired(kinesis: KinesisApi, batch: OnFailureBatch, why: str) -> RangeExpired:
    stream = stream_name(batch.stream_arn)
    return RangeExpired(
        f"expired: stream {stream} shard {batch.shard_id} sequence numbers "
        f"{batch.start}..{batch.end} ({batch.batch_size} records, first arrived "
        f"{batch.first_arrival or '?'}) cannot be read ({why}); the range is past the stream's "
        f"retention ({_retention(kinesis, stream)}) or the shard is gone. "
        "The message stays in the queue"
    )


def read_range(
    kinesis_client: KinesisClient | KinesisApi,
    batch: OnFailureBatch,
    max_empty_polls: int = 20,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PutEntry]:
    """Re-read the records of `batch` from its shard, start to end inclusive, in order.

    With ``ParallelizationFactor`` above 1 the range also holds records of other partition
    keys than the failed batch's; they are returned too (re-putting them is a duplicate).

    Raises:
        RangeExpired: The shard or the start record is gone (GetShardIterator refuses it,
            or the first record read is after the start).
        RedriveFailure: The range ends early or holds fewer records than the batch had.
        botocore.exceptions.ClientError: Any other Kinesis error.
    """
    kinesis = cast(KinesisApi, kinesis_client)
    stream, start, end = stream_name(batch.stream_arn), int(batch.start), int(batch.end)
    try:
        iterator: str | None = kinesis.get_shard_iterator(
            StreamName=stream,
            ShardId=batch.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=batch.start,
        )["ShardIterator"]
    except ClientError as exc:
        if error_code(exc) in EXPIRED_CODES:
            raise _expired(kinesis, batch, f"{error_code(exc)}: {exc}") from None
        raise
    entries: list[PutEntry] = []
    empty = 0
    while iterator:
        answer = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
        records = answer.get("Records", [])
        if not entries and records and int(records[0]["SequenceNumber"]) != start:
            why = f"the oldest record left is {records[0]['SequenceNumber']}"
            raise _expired(kinesis, batch, why)
        for record in records:
            if int(record["SequenceNumber"]) > end:
                iterator = None
                break
            entries.append(
                PutEntry(
                    bytes(record["Data"]), str(record["PartitionKey"]), record["SequenceNumber"]
                )
            )
        if iterator is None or (entries and int(entries[-1].sequence_number) == end):
            break
        if not records:
            empty += 1
            if int(answer.get("MillisBehindLatest", 0)) == 0 or empty >= max_empty_polls:
                break
            sleep(0.2)
        iterator = answer.get("NextShardIterator")
    if not entries:
        raise _expired(kinesis, batch, "no record at or after the start is left in the shard")
    if int(entries[-1].sequence_number) != end:
        raise RedriveFailure(
            f"stream {stream} shard {batch.shard_id}: the range {batch.start}..{batch.end} ends "
            f"at {entries[-1].sequence_number} (the end record is missing)"
        )
    if len(entries) < batch.batch_size:
        raise RedriveFailure(
            f"stream {stream} shard {batch.shard_id}: the range {batch.start}..{batch.end} holds "
            f"{len(entries)} records, fewer than the batch's {batch.batch_size}"
        )
    return entries


class Pacer:
    """Spaces puts so that at most `rate` records per second go out (None: no limit)."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._start: float | None = None
        self._sent = 0

    @property
    def batch_limit(self) -> int:
        """Records per PutRecords call: at most one second's worth, at most 500."""
        return (
            MAX_PUT_RECORDS if self.rate is None else max(1, min(MAX_PUT_RECORDS, int(self.rate)))
        )

    def wait(self, records: int) -> None:
        """Block until `records` more records may be put."""
        if self.rate is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        delay = self._start + self._sent / self.rate - now
        if delay > 0:
            self._sleep(delay)
        self._sent += records


@dataclass
class PutOutcome:
    """What `put_in_order` achieved: records accepted, records given up on, and why."""

    put: int
    failed: list[PutEntry]
    reason: str = ""


def _chunks(wave: Sequence[PutEntry], limit: int) -> Iterator[list[PutEntry]]:
    chunk: list[PutEntry] = []
    size = 0
    for entry in wave:
        entry_size = len(entry.data) + len(entry.partition_key.encode())
        if chunk and (len(chunk) >= limit or size + entry_size > MAX_PUT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry_size
    if chunk:
        yield chunk


def put_in_order(
    kinesis_client: KinesisClient | KinesisApi,
    stream: str,
    entries: Sequence[PutEntry],
    pacer: Pacer | None = None,
    max_stalls: int = 5,
    backoff_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> PutOutcome:
    """Put `entries` on `stream` with their partition keys, keeping their order per key.

    Each PutRecords call carries at most one record per partition key (the oldest not yet
    accepted), so a failed entry is retried before any later record of its key is sent.
    Failed entries are retried with backoff; after `max_stalls` rounds in a row with no
    progress, or on an error that no retry fixes, the rest is returned as failed.
    """
    kinesis = cast(KinesisApi, kinesis_client)
    pacer = pacer or Pacer(None)
    pending: dict[str, deque[PutEntry]] = {}
    for entry in entries:
        pending.setdefault(entry.partition_key, deque()).append(entry)
    put, stalls, reason = 0, 0, ""
    while pending:
        wave = [queue[0] for queue in pending.values()]
        accepted: set[str] = set()
        codes: set[str] = set()
        fatal = False
        for chunk in _chunks(wave, pacer.batch_limit):
            pacer.wait(len(chunk))
            try:
                answer = kinesis.put_records(
                    StreamName=stream,
                    Records=[{"Data": e.data, "PartitionKey": e.partition_key} for e in chunk],
                )
            except ClientError as exc:
                codes.add(error_code(exc))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if error_code(exc) not in RETRYABLE_PUT_CODES and status < 500:
                    fatal = True
                    break
                continue
            except BotoCoreError as exc:
                codes.add(type(exc).__name__)
                continue
            for entry, result in zip(chunk, answer["Records"], strict=True):
                if "ErrorCode" in result:
                    codes.add(str(result["ErrorCode"]))
                else:
                    accepted.add(entry.partition_key)
        for key in accepted:
            pending[key].popleft()
            if not pending[key]:
                del pending[key]
        put += len(accepted)
        reason = ",".join(sorted(codes)) or reason
        if fatal:
            break
        if not codes:
            continue
        stalls = 0 if accepted else stalls + 1
        if stalls > max_stalls:
            break
        sleep(min(2.0, backoff_s * 2 ** max(stalls - 1, 0)))
    failed = [entry for queue in pending.values() for entry in queue]
    return PutOutcome(put, failed, reason if failed else "")
