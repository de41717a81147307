"""The clickstream path: a Kinesis batch of clicks in, features applied once, events logged.

`ClickPath.run` follows `kestrel.streaming.TransactionPath`: it decodes every record
(poison goes to the dead-letter sink with its reason; an event dated more than
`max_future_s` after it reached the stream is poison too; when the schema registry cannot
answer, that record and the rest are retried), applies the valid events to the click store
in parts (`kestrel.record_decoding.BatchDecoder.parts_for_store`: the store applies the
next part while this one is handled), computes each event's feature vector
(`kestrel.click_features`), scores the vectors with the propensity model in one call
(`kestrel.propensity`), stores each user's latest propensity (`PropensitySink`), logs the
events with their vectors and propensities to the event log (``events/clicks/``), then says
which records must be retried.

Without a usable propensity model (none in the layer, or refused), the batch goes on
without scores: features are stored and events logged with ``propensity`` null, and one
warning says so (again only after a model has been served in between). The propensity is
an enrichment, so its absence must not hold the clickstream's features back (the fraud
path differs: a transaction needs its decision, so there no model means a retried batch).
A propensity store failure raises, so the batch is retried (the store is idempotent).

With a `TelemetrySink` (the clickstream's own, ``kestrel:{tmc}:``), each attempt adds its
figures (`kestrel.click_telemetry.click_figures`) best effort, as the fraud path does.
Freshness is measured once the propensities are stored: Kinesis arrival to propensity
visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from kestrel.batch_outcome import BatchOutcome, batch_id
from kestrel.click_events import ClickEvent, check_click_not_ahead_of_arrival
from kestrel.click_features import CLICK_FEATURE_SET_HASH, AppliedClick, click_feature_vector
from kestrel.click_telemetry import click_figures
from kestrel.events import DEFAULT_MAX_FUTURE_S
from kestrel.monitoring_ports import TelemetrySink
from kestrel.ports import DeadLetterSink, EventLog
from kestrel.propensity import Propensity, PropensitySink, latest_per_user
from kestrel.record_decoding import BatchDecoder
from kestrel.scoring import NoModelError, Scorer
from kestrel.streaming import _observed

logger = logging.getLogger(__name__)


class ClickStore(Protocol):
    """The clickstream's online store (`kestrel.adapters.redis_clicks.RedisClickStore`)."""

    def apply_clicks_in_parts(
        self, parts: Iterable[Sequence[ClickEvent]]
    ) -> Iterator[list[AppliedClick | Exception]]:
        """Apply each event once, part by part in order, yielding each part's aggregates (or
        errors) in input order; the next part may run while the caller works on this one."""
        ...


class ClickPath:
    """Clicks: decode, apply features once, score, store propensities, log, report retries.

    Without `scorer` (or `propensities`) nothing is scored (or stored): features and the
    event log only.
    """

    def __init__(
        self,
        decode: Callable[[bytes], ClickEvent],
        store: ClickStore,
        dead_letters: DeadLetterSink,
        event_log: EventLog,
        clock: Callable[[], float] = time.time,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        scorer: Scorer | None = None,
        propensities: PropensitySink | None = None,
        telemetry: TelemetrySink | None = None,
    ) -> None:
        self._decoder = BatchDecoder(
            decode, dead_letters, max_future_s, check_click_not_ahead_of_arrival
        )
        self._store, self._event_log, self._clock = store, event_log, clock
        self._scorer, self._propensities = scorer, propensities
        self._telemetry = telemetry
        self._warned = False  # the no-model warning was given (and no model served since)

    def run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """Process one Kinesis batch (the event's Records list)."""
        return _observed(self._run, records, self._telemetry, self._clock, click_figures)

    def _run(self, records: Sequence[Mapping[str, Any]]) -> BatchOutcome:
        """`run` without the telemetry."""
        outcome = BatchOutcome()
        if not records:
            return outcome
        # As in the fraud path: each part is handled here while the store applies the next.
        waiting, events = self._decoder.parts_for_store(records, outcome)
        logged, kept, vectors, arrivals_ms = [], [], [], []
        for results in self._store.apply_clicks_in_parts(events):
            now_ms = self._clock() * 1000
            for (record, event), result in zip(waiting.popleft(), results, strict=True):
                kinesis = record["kinesis"]
                if isinstance(result, Exception):
                    outcome.failures[kinesis["sequenceNumber"]] = f"click store: {result}"
                    continue
                vector = click_feature_vector(
                    event.event_type.value, event.price, event.event_time_ms, result.aggregates
                )
                outcome.vectors[kinesis["sequenceNumber"]] = vector
                kept.append(event)
                vectors.append(vector)
                if result.applied:
                    outcome.applied += 1
                else:
                    outcome.duplicates += 1
                arrivals_ms.append(kinesis["approximateArrivalTimestamp"] * 1000)
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
        scores, version = self._score(vectors, outcome)
        if scores is not None and version is not None:
            for entry, score in zip(logged, scores, strict=True):
                entry["propensity"], entry["model_version"] = score, version
            if self._propensities is not None:
                self._propensities.publish(
                    latest_per_user(
                        Propensity(e.user_id, e.session_id, e.event_id, e.event_time_ms, s, version)
                        for e, s in zip(kept, scores, strict=True)
                    )
                )
        else:
            for entry in logged:
                entry["propensity"], entry["model_version"] = None, None
        visible_ms = self._clock() * 1000  # features and propensities are stored
        outcome.arrival_lag_ms.extend(visible_ms - arrival for arrival in arrivals_ms)
        if logged:
            # A failure here fails the whole batch: it is retried, and the store is idempotent.
            self._event_log.write_batch("clicks", batch_id(records), logged, "event_time")
        return outcome

    def _score(
        self, vectors: Sequence[tuple[float, ...]], outcome: BatchOutcome
    ) -> tuple[list[float] | None, str | None]:
        """Propensities of the vectors in one model call, and the model version (None, None
        without a scorer, vectors or usable model)."""
        if self._scorer is None or not vectors:
            return None, None
        started = time.perf_counter()
        try:
            scores, manifest = self._scorer.score_batch(vectors)
        except NoModelError:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "no usable propensity model (PROPENSITY_MODEL_DIR, or the pointer in "
                    "MODEL_BUCKET): clicks keep their features and are logged without a "
                    "propensity until one is served"
                )
            return None, None
        self._warned = False
        outcome.scoring_ms = (time.perf_counter() - started) * 1000.0
        outcome.model_version = manifest.version
        values: list[float] = scores.tolist()
        outcome.scores.extend(values)
        return values, manifest.version
