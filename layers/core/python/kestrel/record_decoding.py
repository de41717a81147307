"""Records to events for the stream paths: decode, check, park poison (`BatchDecoder`).

Each path decodes its batch the same way: a record's bytes through the schema registry's
decoder, the family's check (an event dated more than `max_future_s` after its record
reached the stream is poison), poison to the dead-letter sink with its reason, and a batch
that the registry cannot serve retried from its first undecodable record.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kestrel.batch_outcome import BatchOutcome
from kestrel.events import PoisonRecord, decode_base64
from kestrel.ports import DeadLetter, DeadLetterSink, SchemaRegistryUnavailable

log = logging.getLogger(__name__)

# Events per part of a batch sent to the store: the store applies the next part while this
# one is scored, so the stream's Python and Redis overlap on two cores.
STORE_PART = 100

Pair = tuple[Mapping[str, Any], Any]  # a record and its decoded event


def _registry_unavailable(
    rest: Sequence[Mapping[str, Any]], exc: SchemaRegistryUnavailable, outcome: BatchOutcome
) -> None:
    """Mark `rest` for retry and log the registry's failure once for the batch."""
    for record in rest:
        outcome.failures[record["kinesis"]["sequenceNumber"]] = f"schema registry {exc}"
    level = logging.ERROR if exc.kind == "access_denied" else logging.WARNING
    log.log(
        level,
        "schema registry %s: %d records to retry from sequence number %s: %s",
        exc.kind,
        len(rest),
        rest[0]["kinesis"]["sequenceNumber"],
        exc.detail,
        extra={"registry_error": exc.kind, "records_to_retry": len(rest)},
    )


@dataclass(frozen=True)
class BatchDecoder:
    """How one path turns its batch's records into events (see the module)."""

    decode: Callable[[bytes], Any]
    dead_letters: DeadLetterSink
    max_future_s: float
    check: Callable[[Any, float, float], None]

    def parts(
        self, records: Sequence[Mapping[str, Any]], outcome: BatchOutcome, size: int
    ) -> Iterator[list[Pair]]:
        """Decode and check each record, yielding the valid ones `size` at a time (never an
        empty list), the first two parts a quarter and a half of it, so the store starts on
        the batch sooner; park poison in the sink (a sink failure: retry the record).

        An event dated more than `max_future_s` after its record reached the stream (its
        `approximateArrivalTimestamp`, not the wall clock, so replays stay valid) is poison.
        When the schema registry cannot answer (throttled, access denied, down), that record
        and every later one are retried (the shard's checkpoint stops at the first failure
        anyway) without asking the registry again, and the batch logs it once.
        """
        decode, check, max_future_s = self.decode, self.check, self.max_future_s
        decoded: list[Pair] = []
        sizes = itertools.chain((max(1, size // 4), max(1, size // 2)), itertools.repeat(size))
        part = next(sizes)
        for index, record in enumerate(records):
            kinesis = record["kinesis"]
            try:
                event = decode(decode_base64(kinesis["data"]))
                arrival_ms = float(kinesis["approximateArrivalTimestamp"]) * 1000.0
                check(event, arrival_ms, max_future_s)
                decoded.append((record, event))
            except SchemaRegistryUnavailable as exc:
                _registry_unavailable(records[index:], exc, outcome)
                break
            except PoisonRecord as poison:
                try:
                    self.dead_letters.send(DeadLetter.from_kinesis_record(record, poison))
                    outcome.poisoned += 1
                except Exception as exc:  # noqa: BLE001 - never drop it: retry the record instead
                    outcome.failures[kinesis["sequenceNumber"]] = f"dead-letter send failed: {exc}"
            if len(decoded) == part:
                yield decoded
                decoded, part = [], next(sizes)
        if decoded:
            yield decoded

    def all(self, records: Sequence[Mapping[str, Any]], outcome: BatchOutcome) -> list[Pair]:
        """`parts` of the whole batch at once."""
        return [pair for part in self.parts(records, outcome, len(records)) for pair in part]

    def parts_for_store(
        self, records: Sequence[Mapping[str, Any]], outcome: BatchOutcome
    ) -> tuple[deque[list[Pair]], Iterator[list[Any]]]:
        """The batch's valid events in parts of `STORE_PART` for a store's ``..._in_parts``
        (decoded as the store asks for them), and the queue where each part's (record,
        event) pairs wait, oldest first, until the store yields its results."""
        waiting: deque[list[Pair]] = deque()

        def events() -> Iterator[list[Any]]:
            for part in self.parts(records, outcome, STORE_PART):
                waiting.append(part)
                yield [event for _, event in part]

        return waiting, events()
