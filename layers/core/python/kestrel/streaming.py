"""The stream paths: a Kinesis batch in, features applied once, events logged, poison parked.

`TransactionPath.run` decodes every record (poison goes to the dead-letter sink with its
reason; a record dated more than `max_future_s` after it reached the stream is poison too),
applies the valid ones to the feature store in parts (`kestrel.record_decoding`: the store runs the
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

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kestrel.batch_outcome import BatchOutcome, batch_id
from kestrel.decisions import DecisionRecord, decide_with_model
from kestrel.events import (
    DEFAULT_MAX_FUTURE_S,
    Label,
    Transaction,
    check_not_ahead_of_arrival,
)
from kestrel.features import FEATURE_SET_HASH, cold_start, feature_vector
from kestrel.monitoring_ports import TelemetrySink
from kestrel.ports import (
    DeadLetterSink,
    DecisionSink,
    EventLog,
    FeatureStore,
)
from kestrel.record_decoding import BatchDecoder
from kestrel.scoring import Scorer
from kestrel.shadow import shadow_score
from kestrel.telemetry import BatchFigures, error_figures, label_figures, transaction_figures

log = logging.getLogger(__name__)


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
        self._decoder = BatchDecoder(decode, dead_letters, max_future_s, check_not_ahead_of_arrival)
        self._store, self._event_log, self._clock = store, event_log, clock
        self._scorer, self._decisions = scorer, tuple(decisions)
        self._telemetry = telemetry
        self.challenger = challenger  # shadow-scores every batch (None: no shadow work)

    def run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Process one Kinesis batch (the event's Records list)."""
        return _observed(self._run, records, self._telemetry, self._clock, transaction_figures)

    def _run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """`run` without the telemetry."""
        outcome = BatchOutcome()
        # While the store applies the next part, this one is scored.
        waiting, transactions = self._decoder.parts_for_store(records, outcome)
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
        self._decoder = BatchDecoder(decode, dead_letters, max_future_s, check_not_ahead_of_arrival)
        self._store, self._event_log = store, event_log
        self._telemetry, self._clock = telemetry, clock

    def run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Process one Kinesis batch of labels (labels that are not fraud change no feature)."""
        return _observed(self._run, records, self._telemetry, self._clock, label_figures)

    def _run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """`run` without the telemetry."""
        outcome = BatchOutcome()
        decoded = self._decoder.all(records, outcome)
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
