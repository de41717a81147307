"""The clickstream path: a Kinesis batch of clicks in, features applied once, events logged.

`ClickPath.run` follows `kestrel.streaming.TransactionPath`: it decodes every record
(poison goes to the dead-letter sink with its reason; an event dated more than
`max_future_s` after it reached the stream is poison too; when the schema registry cannot
answer, that record and the rest are retried), applies the valid events to the click store
in one batch, computes each event's feature vector (`kestrel.click_features`) and logs the
events with their vectors to the event log (``events/clicks/``), then says which records
must be retried. Nothing is scored yet: the propensity model comes with its own change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kestrel.click_events import ClickEvent, check_click_not_ahead_of_arrival
from kestrel.click_features import CLICK_FEATURE_SET_HASH, AppliedClick, click_feature_vector
from kestrel.events import DEFAULT_MAX_FUTURE_S, PoisonRecord, decode_base64
from kestrel.ports import DeadLetter, DeadLetterSink, EventLog, SchemaRegistryUnavailable
from kestrel.streaming import BatchOutcome, _registry_unavailable, batch_id


class ClickStore(Protocol):
    """The clickstream's online store (`kestrel.adapters.redis_clicks.RedisClickStore`)."""

    def apply_clicks(self, events: Sequence[ClickEvent]) -> list[AppliedClick | Exception]:
        """Apply each event once and return its aggregates (or its error), in input order."""
        ...


class ClickPath:
    """Clicks: decode, apply features once, log with their vectors, report retries."""

    def __init__(
        self,
        decode: Callable[[bytes], ClickEvent],
        store: ClickStore,
        dead_letters: DeadLetterSink,
        event_log: EventLog,
        clock: Callable[[], float] = time.time,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
    ) -> None:
        self._decode, self._store, self._dead_letters = decode, store, dead_letters
        self._event_log, self._clock, self._max_future_s = event_log, clock, max_future_s

    def run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Process one Kinesis batch (the event's Records list)."""
        outcome = BatchOutcome()
        if not records:
            return outcome
        decoded = self._decode_all(records, outcome)
        results = self._store.apply_clicks([event for _, event in decoded])
        now_ms = self._clock() * 1000
        logged = []
        for (record, event), result in zip(decoded, results, strict=True):
            kinesis = record["kinesis"]
            if isinstance(result, Exception):
                outcome.failures[kinesis["sequenceNumber"]] = f"click store: {result}"
                continue
            vector = click_feature_vector(
                event.event_type.value, event.price, event.event_time_ms, result.aggregates
            )
            outcome.vectors[kinesis["sequenceNumber"]] = vector
            if result.applied:
                outcome.applied += 1
            else:
                outcome.duplicates += 1
            outcome.arrival_lag_ms.append(now_ms - kinesis["approximateArrivalTimestamp"] * 1000)
            outcome.event_lag_ms.append(now_ms - event.event_time_ms)
            logged.append(
                {
                    "event_id": event.event_id,
                    "user_id": event.user_id,
                    "session_id": event.session_id,
                    "event_type": event.event_type.value,
                    "product_id": event.product_id,
                    "category": event.category,
                    "price": event.price,
                    "event_time": event.event_time_ms,
                    "features": vector,
                    "feature_set_hash": CLICK_FEATURE_SET_HASH,
                    "cold_start": not result.user_known,
                    "record_id": record["eventID"],
                }
            )
        if logged:
            # A failure here fails the whole batch: it is retried, and the store is idempotent.
            self._event_log.write_batch("clicks", batch_id(records), logged, "event_time")
        return outcome

    def _decode_all(
        self, records: Sequence[Mapping[str, Any]], outcome: BatchOutcome
    ) -> list[tuple[Mapping[str, Any], ClickEvent]]:
        """Decode and check each record; park poison (a sink failure: retry the record)."""
        decoded = []
        for index, record in enumerate(records):
            kinesis = record["kinesis"]
            try:
                event = self._decode(decode_base64(kinesis["data"]))
                arrival_ms = float(kinesis["approximateArrivalTimestamp"]) * 1000.0
                check_click_not_ahead_of_arrival(event, arrival_ms, self._max_future_s)
                decoded.append((record, event))
            except SchemaRegistryUnavailable as exc:
                _registry_unavailable(records[index:], exc, outcome)
                break
            except PoisonRecord as poison:
                try:
                    self._dead_letters.send(DeadLetter.from_kinesis_record(record, poison))
                    outcome.poisoned += 1
                except Exception as exc:  # noqa: BLE001 - never drop it: retry the record
                    outcome.failures[kinesis["sequenceNumber"]] = f"dead-letter send failed: {exc}"
        return decoded
