"""Ports: the interfaces the domain needs from the outside world, and the values they carry.

Handlers depend on these `Protocol`s, never on redis or boto3 directly; the adapters under
`kestrel.adapters` implement them, and unit tests pass small in-memory doubles instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kestrel.events import Increment, PoisonRecord


class EventCounter(Protocol):
    """Applies an event's counter increments exactly once per event id.

    The online store's most basic write. An implementation must make `apply` atomic and
    idempotent: the first call for an `event_id` adds every increment and returns True;
    any later call with the same `event_id` (a Kinesis retry, a producer resend, a redrive
    from a dead-letter queue) changes nothing and returns False. Either all increments of
    a call are applied or none are.

    Failures of the backing store must propagate as exceptions (never be swallowed and never
    be reported as a duplicate), so the caller can report the record as a batch item
    failure and the event source mapping retries it; idempotency makes that retry safe.
    """

    def apply(self, event_id: str, increments: Sequence[Increment]) -> bool:
        """Apply `increments` once for `event_id`; True if applied now, False if seen before.

        Args:
            event_id: The event's idempotency key, e.g. ``txn:<transaction_id>``.
            increments: Counter increments to add, each naming an entity and a field.

        Returns:
            True when this call applied the increments, False when `event_id` had
            already been applied (nothing changed).

        Raises:
            Exception: Any error of the backing store, unchanged.
        """
        ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A poison record with everything needed to inspect it and replay it.

    Attributes:
        reason: Stable reason code (`kestrel.events.PoisonReason` value).
        detail: Human-readable detail naming the field and the problem.
        payload_b64: The record's data exactly as received (base64, as in the Kinesis event).
        stream_arn: ARN of the stream the record came from.
        shard_id: Shard the record was read from, e.g. ``shardId-000000000000``.
        sequence_number: The record's sequence number within the shard.
        partition_key: The record's partition key, needed to put it back on the stream.
        first_seen: When the stream first received it (approximate arrival), ISO-8601 UTC.
    """

    reason: str
    detail: str
    payload_b64: str
    stream_arn: str
    shard_id: str
    sequence_number: str
    partition_key: str
    first_seen: str

    @classmethod
    def from_kinesis_record(cls, record: Mapping[str, Any], poison: PoisonRecord) -> DeadLetter:
        """Build the dead letter for one record of a Lambda Kinesis event (its raw dict shape).

        Args:
            record: One element of the event's ``Records`` list, as Lambda delivers it.
            poison: Why the record cannot be processed.
        """
        kinesis = record["kinesis"]
        arrival = datetime.fromtimestamp(float(kinesis["approximateArrivalTimestamp"]), UTC)
        return cls(
            reason=poison.reason.value,
            detail=poison.detail,
            payload_b64=str(kinesis["data"]),
            stream_arn=str(record["eventSourceARN"]),
            shard_id=str(record["eventID"]).split(":", 1)[0],
            sequence_number=str(kinesis["sequenceNumber"]),
            partition_key=str(kinesis["partitionKey"]),
            first_seen=arrival.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )

    def to_dict(self) -> dict[str, str]:
        """The dead letter as a flat JSON-ready mapping (the queue message body)."""
        return asdict(self)


class DeadLetterSink(Protocol):
    """Somewhere visible for records that can never be processed.

    `send` must be durable when it returns: once it returns, the record is the sink's
    responsibility, and the caller treats the record as handled (it is not retried).
    If the sink cannot accept the letter, `send` raises, and the caller reports the record
    as a batch item failure, so it is retried and, in the end, reaches the event source
    mapping's on-failure destination with its stream coordinates. Nothing is dropped.
    """

    def send(self, letter: DeadLetter) -> None:
        """Durably store one dead letter.

        Args:
            letter: The poison record: reason, detail, payload, stream coordinates and
                first-seen time.

        Raises:
            Exception: Any error of the backing queue, unchanged.
        """
        ...
