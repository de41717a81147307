"""The stream paths: a Kinesis batch in, features applied once, events logged, poison parked.

`TransactionPath.run` decodes every record (poison goes to the dead-letter sink with its
reason; a record dated more than `max_future_s` after it reached the stream is poison too),
applies the valid ones to the feature store in parts of `STORE_PART` (the store runs the
next part while this one is scored), and publishes a decision for each (Redis, the
decisions stream) in one batch, logs them with
their features and decisions to the event log, and returns which records must be retried.
`LabelPath` does the same for fraud labels. Both only talk to ports; the handlers wire the
adapters.

The stream never falls back to rules: without a model (`NoModelError`) or when a decision
cannot be stored, `run` raises, so the whole batch is retried (features are idempotent).

With a `TelemetrySink`, each attempt also adds its figures (`kestrel.telemetry`) to the
telemetry, best effort: a telemetry error is logged and never fails the batch. With DEBUG
logging on (e.g. Powertools' sampled debug), each decided transaction is logged with its id
as ``correlation_id``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kestrel.decisions import DecisionRecord, decide_with_model
from kestrel.events import (
    DEFAULT_MAX_FUTURE_S,
    Label,
    PoisonRecord,
    Transaction,
    check_not_ahead_of_arrival,
    decode_base64,
)
from kestrel.features import FEATURE_SET_HASH, cold_start, feature_vector
from kestrel.monitoring_ports import TelemetrySink
from kestrel.ports import (
    DeadLetter,
    DeadLetterSink,
    DecisionSink,
    EventLog,
    FeatureStore,
    SchemaRegistryUnavailable,
)
from kestrel.scoring import Scorer
from kestrel.shadow import Shadow, shadow_score
from kestrel.telemetry import BatchFigures, error_figures, label_figures, transaction_figures

log = logging.getLogger(__name__)


class RecordFailed(Exception):
    """This record must be retried (its reason is the message)."""


@dataclass
class BatchOutcome:
    """What happened to each record of one batch, keyed by sequence number."""

    failures: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    poisoned: int = 0
    vectors: dict[str, tuple[float, ...]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    arrival_lag_ms: list[float] = field(default_factory=list)
    event_lag_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    model_version: str | None = None
    scoring_ms: float | None = None
    labels: int = 0
    frauds: int = 0
    shadow: Shadow | None = None  # the challenger's scores, when one is set (kestrel.shadow)

    def check(self, sequence_number: str) -> None:
        """Raise `RecordFailed` if the record with this sequence number must be retried."""
        reason = self.failures.get(sequence_number)
        if reason is not None:
            raise RecordFailed(reason)


def batch_id(records: Sequence[Mapping[str, Any]]) -> str:
    """A stable id for a batch: shard, first and last sequence numbers."""
    shard = str(records[0]["eventID"]).split(":", 1)[0]
    first, last = records[0]["kinesis"]["sequenceNumber"], records[-1]["kinesis"]["sequenceNumber"]
    return f"{shard}-{first}-{last}"


def _record(sink: TelemetrySink | None, figures: Callable[[], BatchFigures]) -> None:
    """Add a batch's figures to the telemetry; log (never raise) when that fails."""
    if sink is None:
        return
    try:
        sink.record(figures())
    except Exception as exc:  # noqa: BLE001 - telemetry never fails a batch
        log.warning("telemetry not recorded: %s: %s", type(exc).__name__, exc)


def _observed(
    run: Callable[[Sequence[Mapping[str, Any]]], BatchOutcome],
    records: Sequence[Mapping[str, Any]],
    sink: TelemetrySink | None,
    clock: Callable[[], float],
    figures_of: Callable[[BatchOutcome, float], BatchFigures],
) -> BatchOutcome:
    """`run(records)`, with its figures (or a failed batch's) added to the telemetry."""
    if not records:
        return BatchOutcome()
    try:
        outcome = run(records)
    except Exception:
        _record(sink, lambda: error_figures(clock()))
        raise
    _record(sink, lambda: figures_of(outcome, clock()))
    return outcome


def _debug_decided(logged: Sequence[Mapping[str, Any]]) -> None:
    """One DEBUG line per decided transaction, its id as correlation id (only if enabled)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    for row in logged:
        tid = row["transaction_id"]
        log.debug(
            "transaction decided",
            extra={"transaction_id": tid, "correlation_id": tid, "decision": row["decision"],
                   "score": row["score"], "model_version": row["model_version"],
                   "event_id": row["event_id"]},
        )  # fmt: skip


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


def _decode_parts(
    records: Sequence[Mapping[str, Any]],
    decode: Callable[[bytes], Any],
    dead_letters: DeadLetterSink,
    outcome: BatchOutcome,
    max_future_s: float,
    size: int,
    check: Callable[[Any, float, float], None],
) -> Iterator[list[tuple[Mapping[str, Any], Any]]]:
    """Decode and check each record, yielding the valid ones `size` at a time (never an
    empty list), the first two parts a quarter and a half of it, so the store starts on
    the batch sooner; park poison in the sink (a sink failure: retry the record).

    An event dated more than `max_future_s` after its record reached the stream (its
    `approximateArrivalTimestamp`, not the wall clock, so replays stay valid) is poison
    (`check` says so for the event's family). When the schema registry cannot answer
    (throttled, access denied, down), that record and every later one are retried (the
    shard's checkpoint stops at the first failure anyway) without asking the registry
    again, and the batch logs it once.
    """
    decoded: list[tuple[Mapping[str, Any], Any]] = []
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
                dead_letters.send(DeadLetter.from_kinesis_record(record, poison))
                outcome.poisoned += 1
            except Exception as exc:  # noqa: BLE001 - never drop it: retry the record instead
                outcome.failures[kinesis["sequenceNumber"]] = f"dead-letter send failed: {exc}"
        if len(decoded) == part:
            yield decoded
            decoded, part = [], next(sizes)
    if decoded:
        yield decoded


def parts_for_store(
    records: Sequence[Mapping[str, Any]],
    decode: Callable[[bytes], Any],
    dead_letters: DeadLetterSink,
    outcome: BatchOutcome,
    max_future_s: float,
    check: Callable[[Any, float, float], None],
) -> tuple[deque[list[tuple[Mapping[str, Any], Any]]], Iterator[list[Any]]]:
    """The batch's valid events in parts of `STORE_PART` for a store's ``..._in_parts``
    (`_decode_parts`, decoded as the store asks for them), and the queue where each part's
    (record, event) pairs wait, oldest first, until the store yields its results."""
    waiting: deque[list[tuple[Mapping[str, Any], Any]]] = deque()

    def events() -> Iterator[list[Any]]:
        for part in _decode_parts(
            records, decode, dead_letters, outcome, max_future_s, STORE_PART, check
        ):
            waiting.append(part)
            yield [event for _, event in part]

    return waiting, events()


def _decode_all(
    records: Sequence[Mapping[str, Any]],
    decode: Callable[[bytes], Any],
    dead_letters: DeadLetterSink,
    outcome: BatchOutcome,
    max_future_s: float,
) -> list[tuple[Mapping[str, Any], Any]]:
    """`_decode_parts` of the whole batch at once."""
    parts = _decode_parts(
        records, decode, dead_letters, outcome, max_future_s, len(records),
        check_not_ahead_of_arrival,
    )  # fmt: skip
    return [pair for part in parts for pair in part]


# Transactions per part of a batch sent to the store: the store applies the next part while
# this one is scored, so the stream's Python and Redis overlap on two cores.
STORE_PART = 100


class TransactionPath:
    """Transactions: decode, apply features once, score, decide, log, report retries.

    With a `challenger`, each batch is also shadow-scored (`kestrel.shadow`): one more
    scoring call on the same vectors once the decisions are published, its scores logged as
    ``shadow_score`` / ``shadow_model_version``; decisions always come from `scorer`.
    """

    def __init__(
        self,
        decode: Callable[[bytes], Transaction],
        store: FeatureStore,
        dead_letters: DeadLetterSink,
        event_log: EventLog,
        scorer: Scorer,
        decisions: Sequence[DecisionSink],
        clock: Callable[[], float] = time.time,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        telemetry: TelemetrySink | None = None,
        challenger: Scorer | None = None,
    ) -> None:
        self._decode, self._store, self._dead_letters = decode, store, dead_letters
        self._event_log, self._clock = event_log, clock
        self._scorer, self._decisions = scorer, tuple(decisions)
        self._max_future_s, self._telemetry = max_future_s, telemetry
        self.challenger = challenger  # shadow-scores every batch (None: no shadow work)

    def run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Process one Kinesis batch (the event's Records list)."""
        return _observed(self._run, records, self._telemetry, self._clock, transaction_figures)

    def _run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """`run` without the telemetry."""
        outcome = BatchOutcome()
        # While the store applies the next part, this one is scored.
        waiting, transactions = parts_for_store(
            records, self._decode, self._dead_letters, outcome, self._max_future_s,
            check_not_ahead_of_arrival,
        )  # fmt: skip
        scored: list[tuple[Mapping[str, Any], Transaction]] = []
        vectors: list[tuple[float, ...]] = []
        decisions: list[DecisionRecord] = []
        scoring_s = 0.0
        for part_results in self._store.apply_transactions_in_parts(transactions):
            part = waiting.popleft()
            now_ms = self._clock() * 1000
            first = len(scored)
            cold = []
            for (record, tx), result in zip(part, part_results, strict=True):
                kinesis = record["kinesis"]
                if isinstance(result, Exception):
                    outcome.failures[kinesis["sequenceNumber"]] = f"feature store: {result}"
                    continue
                vector = feature_vector(
                    tx.amount, tx.event_time_ms, result.customer, result.terminal
                )
                outcome.vectors[kinesis["sequenceNumber"]] = vector
                if result.applied:
                    outcome.applied += 1
                else:
                    outcome.duplicates += 1
                outcome.arrival_lag_ms.append(
                    now_ms - kinesis["approximateArrivalTimestamp"] * 1000
                )
                outcome.event_lag_ms.append(now_ms - tx.event_time_ms)
                scored.append((record, tx))
                vectors.append(vector)
                cold.append(cold_start(result.customer_known, result.terminal_known))
            # No model, or a decision not stored: raise, so the whole batch is retried.
            started = time.perf_counter()
            decisions += decide_with_model(
                self._scorer, [tx for _, tx in scored[first:]], vectors[first:], "stream", cold
            )
            scoring_s += time.perf_counter() - started
        if decisions:
            outcome.scoring_ms = scoring_s * 1000.0
            outcome.model_version = decisions[0].model_version
        for sink in self._decisions:
            sink.publish(decisions)
        # The challenger scores the same vectors once the champion's decisions are out.
        outcome.shadow = shadow = shadow_score(self.challenger, vectors)
        shadow_version, shadow_scores = None, None
        if shadow is not None and shadow.error is None:
            shadow_version, shadow_scores = shadow.model_version, shadow.scores
        logged = []
        for index, ((record, tx), vector, decision) in enumerate(
            zip(scored, vectors, decisions, strict=True)
        ):
            outcome.decisions[decision.decision.value] = (
                outcome.decisions.get(decision.decision.value, 0) + 1
            )
            if decision.score is not None:
                outcome.scores.append(decision.score)
            logged.append(
                {
                    "transaction_id": tx.transaction_id,
                    "customer_id": tx.customer_id,
                    "terminal_id": tx.terminal_id,
                    "amount": tx.amount,
                    "event_time": tx.event_time_ms,
                    "channel": tx.channel,
                    "device_id": tx.device_id,
                    "features": vector,
                    "feature_set_hash": FEATURE_SET_HASH,
                    "score": decision.score,
                    "decision": decision.decision.value,
                    "model_version": decision.model_version,
                    "event_id": record["eventID"],
                }
            )
            if shadow_scores is not None:
                logged[-1]["shadow_model_version"] = shadow_version
                logged[-1]["shadow_score"] = shadow_scores[index]
        if logged:
            # A failure here fails the whole batch: it is retried, and the store is idempotent.
            self._event_log.write_batch("transactions", batch_id(records), logged, "event_time")
            _debug_decided(logged)
        return outcome


class LabelPath:
    """Fraud labels: decode, record fraud on the terminal once, log, report retries."""

    def __init__(
        self,
        decode: Callable[[bytes], Label],
        store: FeatureStore,
        dead_letters: DeadLetterSink,
        event_log: EventLog,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        telemetry: TelemetrySink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._decode, self._store, self._dead_letters = decode, store, dead_letters
        self._event_log, self._max_future_s = event_log, max_future_s
        self._telemetry, self._clock = telemetry, clock

    def run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Process one Kinesis batch of labels (labels that are not fraud change no feature)."""
        return _observed(self._run, records, self._telemetry, self._clock, label_figures)

    def _run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """`run` without the telemetry."""
        outcome = BatchOutcome()
        decoded = _decode_all(
            records, self._decode, self._dead_letters, outcome, self._max_future_s
        )
        frauds = [(record, label) for record, label in decoded if label.is_fraud]
        results = self._store.apply_labels([label for _, label in frauds])
        failed = set()
        for (record, _), result in zip(frauds, results, strict=True):
            sequence_number = record["kinesis"]["sequenceNumber"]
            if isinstance(result, Exception):
                outcome.failures[sequence_number] = f"feature store: {result}"
                failed.add(sequence_number)
            elif result:
                outcome.applied += 1
            else:
                outcome.duplicates += 1
        logged = [
            {
                "transaction_id": label.transaction_id,
                "customer_id": label.customer_id,
                "terminal_id": label.terminal_id,
                "is_fraud": label.is_fraud,
                "label_time": label.label_time_ms,
                "event_id": record["eventID"],
            }
            for record, label in decoded
            if record["kinesis"]["sequenceNumber"] not in failed
        ]
        if logged:
            self._event_log.write_batch("labels", batch_id(records), logged, "label_time")
        outcome.labels = len(logged)
        outcome.frauds = sum(1 for row in logged if row["is_fraud"])
        return outcome
