"""The stream's telemetry as Prometheus metrics, read from a snapshot at each scrape.

One collector for every process that serves ``/metrics``: the scoring API and the local
Lambda runtime (``python -m kestrel_local run``). The figures come from Redis (what every
stream worker wrote), not from the serving process, so any process shows the whole stream:

- counters, all time (``rate()`` works on them): ``kestrel_stream_records_total{outcome}``
  (applied, duplicate, poison, failed), ``kestrel_stream_batches_total``,
  ``kestrel_stream_batch_errors_total``, ``kestrel_stream_decisions_total{decision}``,
  ``kestrel_labels_total``, ``kestrel_labels_fraud_total``;
- gauges over the last `window_s` seconds: ``kestrel_stream_events_per_second``,
  ``kestrel_stream_freshness_{p50,p99,max}_seconds``, ``kestrel_stream_fraud_rate``,
  ``kestrel_stream_window_scores{upper}`` (the score histogram);
- state: ``kestrel_dlq_depth{queue}``, ``kestrel_model_info{version}``,
  ``kestrel_drift_detected``, ``kestrel_drift_status{status}``,
  ``kestrel_stream_last_batch_timestamp_seconds``, ``kestrel_telemetry_window_seconds`` and
  ``kestrel_telemetry_up`` (0 when the snapshot could not be read: then nothing else).

A figure that is unknown (no event in the window, a queue not configured) has no sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kestrel.telemetry import DECISION_TYPES, TelemetrySnapshot, score_edges

log = logging.getLogger(__name__)

WINDOW_S = 60  # the window of the gauges


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


class StreamCollector(Collector):
    """Collects the stream's figures from `snapshot(window_s)` at each scrape.

    Args:
        snapshot: Returns the telemetry snapshot of the last `window_s` seconds (e.g.
            `kestrel.telemetry.TelemetryService.snapshot`); when it raises, only
            ``kestrel_telemetry_up 0`` is exported and the error is logged.
        window_s: The window of the gauges (seconds).
    """

    def __init__(
        self, snapshot: Callable[[int], TelemetrySnapshot], window_s: int = WINDOW_S
    ) -> None:
        self._snapshot, self._window_s = snapshot, window_s

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not read Redis (the names are listed in the module)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family of the module docstring, from one snapshot."""
        try:
            snap = self._snapshot(self._window_s)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails on telemetry
            log.warning("telemetry unavailable: %s: %s", type(exc).__name__, exc)
            yield _gauge("kestrel_telemetry_up", "1 when the stream telemetry was read.", 0)
            return
        yield _gauge("kestrel_telemetry_up", "1 when the stream telemetry was read.", 1)
        yield _gauge(
            "kestrel_telemetry_window_seconds", "Window of the stream gauges.", snap.window_s
        )
        yield from self._counters(snap)
        yield _gauge(
            "kestrel_stream_events_per_second",
            "Transactions processed per second (mean of the last complete seconds).",
            snap.events_per_s,
        )
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            yield _gauge(
                f"kestrel_stream_freshness_{label}_seconds",
                f"Freshness {label} over the window: handler time minus stream arrival.",
                _seconds(snap.freshness_ms(q)),
            )
        yield _gauge(
            "kestrel_stream_freshness_max_seconds",
            "Largest freshness over the window.",
            _seconds(snap.freshness_max_ms),
        )
        yield _gauge(
            "kestrel_stream_fraud_rate", "Frauds per label received in the window.",
            snap.fraud_rate,
        )  # fmt: skip
        scores = GaugeMetricFamily(
            "kestrel_stream_window_scores", "Scores in the window by bin (upper edge).",
            labels=["upper"],
        )  # fmt: skip
        for upper, count in zip(score_edges()[1:], snap.scores, strict=True):
            scores.add_metric([f"{upper:.2f}"], count)
        yield scores
        yield from self._state(snap)

    def _counters(self, snap: TelemetrySnapshot) -> Iterator[Metric]:
        totals = snap.totals
        records = CounterMetricFamily(
            "kestrel_stream_records", "Stream records handled, per attempt, by outcome.",
            labels=["outcome"],
        )  # fmt: skip
        for outcome, name in (
            ("applied", "applied"), ("duplicate", "duplicates"), ("poison", "poison"),
            ("failed", "failed"),
        ):  # fmt: skip
            records.add_metric([outcome], totals.get(name, 0))
        yield records
        yield CounterMetricFamily(
            "kestrel_stream_batches",
            "Stream batches attempted (transactions and labels).",
            totals.get("batches", 0),
        )
        yield CounterMetricFamily(
            "kestrel_stream_batch_errors", "Stream batch attempts that failed as a whole.",
            totals.get("batch_errors", 0),
        )  # fmt: skip
        decisions = CounterMetricFamily(
            "kestrel_stream_decisions", "Stream decisions by type.", labels=["decision"]
        )
        for decision in DECISION_TYPES:
            decisions.add_metric([decision], totals.get(f"decision:{decision}", 0))
        yield decisions
        yield CounterMetricFamily("kestrel_labels", "Labels received.", totals.get("labels", 0))
        yield CounterMetricFamily(
            "kestrel_labels_fraud", "Fraud labels received.", totals.get("frauds", 0)
        )

    def _state(self, snap: TelemetrySnapshot) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "kestrel_dlq_depth", "Messages in a dead-letter queue.", labels=["queue"]
        )
        for queue, value in sorted(snap.dlq.items()):
            if value is not None:
                depth.add_metric([queue], value)
        yield depth
        model = GaugeMetricFamily(
            "kestrel_model_info", "The model version of the last scored batch.",
            labels=["version"],
        )  # fmt: skip
        if snap.model_version is not None:
            model.add_metric([snap.model_version], 1)
        yield model
        status = str(snap.drift.get("status", "unknown"))
        yield _gauge(
            "kestrel_drift_detected", "1 while the drift job reports drift.",
            1 if status == "drift" else 0,
        )  # fmt: skip
        info = GaugeMetricFamily(
            "kestrel_drift_status", "The drift job's latest status.", labels=["status"]
        )
        info.add_metric([status], 1)
        yield info
        yield _gauge(
            "kestrel_stream_last_batch_timestamp_seconds",
            "When the last stream batch was handled (epoch seconds).",
            _seconds(snap.last_batch_ms),
        )
