"""Ports: the interfaces the domain needs from the outside world, and the values they carry.

Handlers depend on these `Protocol`s, never on redis or boto3 directly; the adapters under
`kestrel.adapters` implement them, and unit tests pass small in-memory doubles instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from kestrel.events import Label, PoisonRecord, Transaction
from kestrel.features import (
    AppliedTransaction,
    CustomerAggregates,
    TerminalAggregates,
    TransactionPreview,
)

if TYPE_CHECKING:
    from kestrel.decisions import DecisionRecord


class FeatureStore(Protocol):
    """The online store behind `kestrel.features`: applies events once, returns aggregates.

    `apply_transactions` adds each transaction to its customer and its terminal and returns,
    for each, the aggregates as of its event time (`AppliedTransaction`). It must be
    idempotent per transaction id, atomically: a transaction applied before changes nothing
    and comes back with `applied=False` and the same aggregates. `apply_labels` records
    fraud labels once per transaction id, whichever of label and transaction comes first.

    Results are in input order. A failure that concerns one event is returned in its place
    as an exception; a failure of the whole store (connection lost) raises, so the caller
    fails the batch and the event source mapping retries it.
    """

    def apply_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[AppliedTransaction | Exception]:
        """Apply each transaction once and return its aggregates.

        Args:
            transactions: The batch's valid transactions, in stream order.
        """
        ...

    def apply_transactions_in_parts(
        self, parts: Iterable[Sequence[Transaction]]
    ) -> Iterator[list[AppliedTransaction | Exception]]:
        """`apply_transactions` on each part in order, yielding each part's results.

        The store may start on the next part while the caller works on this one's results
        (the stream overlaps its Python with the store's work this way). Parts are applied
        in order; a store failure raises from the iteration.

        Args:
            parts: The batch's valid transactions in stream order, cut into parts.
        """
        ...

    def apply_labels(self, labels: Sequence[Label]) -> list[bool | Exception]:
        """Record fraud labels once each; True where this call recorded the label.

        Args:
            labels: Fraud labels (labels that are not fraud change no feature).
        """
        ...


class FeatureReader(Protocol):
    """Read-only access to the online store, for the scoring API (writes nothing).

    `preview_transactions` returns, for each transaction, exactly what
    `FeatureStore.apply_transactions` would return as its aggregates if it ran now, and
    whether the customer and the terminal hold any other transaction. Failures follow
    `FeatureStore`: per-event errors in place, a store failure (connection, timeout) raises.
    """

    def preview_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[TransactionPreview | Exception]:
        """The aggregates each transaction would get if applied now.

        Args:
            transactions: Validated transactions (not necessarily new).
        """
        ...

    def customer_aggregates(
        self, customer_id: str, as_of_ms: int
    ) -> tuple[CustomerAggregates, bool]:
        """A customer's aggregates at a moment, with no transaction, and whether it is known.

        Args:
            customer_id: The customer.
            as_of_ms: The moment (epoch ms) the windows end at.
        """
        ...

    def terminal_aggregates(
        self, terminal_id: str, as_of_ms: int
    ) -> tuple[TerminalAggregates, bool]:
        """A terminal's aggregates at a moment, and whether it is known.

        Args:
            terminal_id: The terminal.
            as_of_ms: The moment (epoch ms) the delayed windows are measured from.
        """
        ...

    def ping(self) -> None:
        """Raise unless the store answers."""
        ...


class DecisionSink(Protocol):
    """Where decisions go (Redis for lookups, the decisions stream for consumers).

    `publish` must be durable when it returns and raise when any decision could not be
    stored, so the stream batch fails and is retried. Publishing the same decision twice
    is allowed (a retried batch does): consumers key decisions by transaction id.
    """

    def publish(self, decisions: Sequence[DecisionRecord]) -> None:
        """Store every decision or raise.

        Args:
            decisions: One record per scored transaction of a batch.
        """
        ...


class DecisionLookup(Protocol):
    """Finds the decision the stream made for a transaction."""

    def decision(self, transaction_id: str) -> DecisionRecord | None:
        """The stored decision, or None when the transaction has none (yet).

        Args:
            transaction_id: The transaction.
        """
        ...


class EventLog(Protocol):
    """The offline event log: raw events, date-partitioned, written once per batch.

    `write_batch` must be idempotent for the same `batch_id` (a retried batch replaces its
    own objects) and durable when it returns. Failures raise, so the batch is retried.
    """

    def write_batch(
        self, kind: str, batch_id: str, events: Sequence[Mapping[str, Any]], time_field: str
    ) -> list[str]:
        """Write one batch of JSON-ready events; return where they went.

        Args:
            kind: ``transactions`` or ``labels``.
            batch_id: Stable id of the batch (shard and sequence range).
            events: The events, each with `time_field` in epoch milliseconds.
            time_field: Which field dates the event (for partitioning).
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


class UnknownSchemaVersion(KeyError):
    """The schema registry has no schema version with this id (the `SchemaLookup` miss)."""

    def __init__(self, version_id: UUID) -> None:
        super().__init__(str(version_id))
        self.version_id = version_id

    def __str__(self) -> str:
        return f"schema version {self.version_id} is not registered"


class SchemaRegistryUnavailable(Exception):
    """The schema registry could not answer now: the record is retried, never dead-lettered.

    Attributes:
        kind: ``throttled``, ``access_denied`` or ``unavailable`` (server error, network).
        detail: What happened; for ``access_denied``, the exact permission that is missing.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class SchemaLookup(Protocol):
    """Finds the writer schema of a schema version id carried by an encoded record.

    The decoder calls `schema_for` for every version id it has not seen yet and caches
    the parsed result, so an implementation may be a plain remote call; caching in the
    implementation as well is allowed, and so is remembering misses for a bounded time.
    An id the registry does not know must raise a `KeyError` (preferably
    `UnknownSchemaVersion`), so the record is dead-lettered as ``unknown_schema``. When the
    registry cannot answer (throttling, missing permission, outage), raise
    `SchemaRegistryUnavailable`: the stream path retries that record and the rest of its
    batch. Any other error propagates unchanged and fails the whole batch.
    """

    def schema_for(self, version_id: UUID) -> str:
        """Return the schema definition (Avro JSON text) registered as `version_id`.

        Args:
            version_id: The schema version id from the record's header.

        Returns:
            The writer schema's definition, as registered.

        Raises:
            KeyError: The registry has no such version (`UnknownSchemaVersion`).
            SchemaRegistryUnavailable: The registry cannot answer now (retry later).
            Exception: Any other error of the backing registry, unchanged.
        """
        ...


class Model(Protocol):
    """One loaded fraud model: its manifest and a batch probability function.

    An implementation wraps one exported model version (``model.onnx`` + ``manifest.json``)
    and owns whatever runtime state scoring needs (an onnxruntime session), created once
    when the model is loaded, never per call. `kestrel.scoring.Scorer` validates the
    manifest before it serves the model, so an implementation need not.
    """

    @property
    def manifest(self) -> Mapping[str, Any]:
        """The model's ``manifest.json`` as parsed JSON (format: `kestrel.scoring`)."""
        ...

    def predict_proba(self, rows: Any) -> Any:
        """Fraud probabilities (class 1) for a batch of feature vectors.

        Args:
            rows: A float32 array of shape (n, len(feature_names)), columns in the order of
                the manifest's ``feature_names``.

        Returns:
            A float64 array of shape (n,): the probability of fraud for each row, in order.

        Raises:
            Exception: Any error of the runtime, unchanged (the caller fails the batch).
        """
        ...


class ModelSource(Protocol):
    """Where the scorer gets its models: one at cold start, newer ones while it runs.

    `load` returns the model to serve from the start (the model layer). `poll` asks the
    source whether another version has become active since the last model it returned
    and, if so, loads and returns it; it returns None when nothing changed. The scorer
    decides how often to call `poll` and whether to accept what it returns, so a source
    must not call `poll` itself, and it must offer each new version once (a refused
    version is not offered again unless the active version changes again). A source that
    may have no model at all (a challenger's) raises `kestrel.scoring.ModelWithdrawn`.
    """

    def load(self) -> Model:
        """The model to serve at cold start.

        Raises:
            kestrel.scoring.ModelWithdrawn: There is no model to serve (no challenger set).
            kestrel.scoring.RejectedModel: The files exist but cannot be used.
            Exception: The model cannot be read (missing files, I/O errors).
        """
        ...

    def poll(self) -> Model | None:
        """The newly activated model version, or None when the active version is unchanged.

        Raises:
            kestrel.scoring.ModelWithdrawn: The model served so far is no longer offered.
            kestrel.scoring.RejectedModel: The new version is refused (its manifest does not
                match the running feature definitions, or its files are unusable).
            Exception: The source cannot be reached (network, throttling); the caller keeps
                its model and asks again later.
        """
        ...
