"""Prometheus metrics of the scoring API, served as text at ``GET /metrics``.

The API's own metrics are per process (per Lambda container on AWS; CloudWatch gets the
stream's EMF metrics). Route labels are the route templates, so the label set stays small.
The stream's figures (`kestrel.adapters.prometheus_telemetry`) come from Redis at each
scrape, so they are the whole stream's, whichever process answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from kestrel.adapters.prometheus_telemetry import StreamCollector
from kestrel.decisions import DecisionRecord
from kestrel.telemetry import TelemetrySnapshot

LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip


class ApiMetrics:
    """The API's counters and histograms in their own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "kestrel_api_requests", "HTTP requests answered.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self._latency = Histogram(
            "kestrel_api_handler_seconds", "Time spent in the handler per request.",
            ["route"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self._decisions = Counter(
            "kestrel_api_decisions", "Transactions scored, by decision.",
            ["decision", "degraded"], registry=self.registry,
        )  # fmt: skip
        self._breaker_open = Gauge(
            "kestrel_api_feature_store_breaker_open",
            "1 while the feature store's circuit breaker is open or half-open.",
            registry=self.registry,
        )
        self._model = Gauge(
            "kestrel_api_model_loaded", "1 while a model is served.", registry=self.registry
        )
        self._propensity_breaker_open = Gauge(
            "kestrel_api_propensity_breaker_open",
            "1 while the click store's circuit breaker (/v1/propensity) is open or half-open.",
            registry=self.registry,
        )
        self._propensities = Counter(
            "kestrel_api_propensity_answers", "Propensities answered, by whether degraded.",
            ["degraded"], registry=self.registry,
        )  # fmt: skip
        self._propensity_children = {
            flag: self._propensities.labels(str(flag).lower()) for flag in (False, True)
        }
        # Label children by their labels, looked up once: `labels()` validates and locks.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._decision_children: dict[tuple[Any, bool], Counter] = {}

    def observe(self, route: str, method: str, status: int, elapsed_ms: float) -> None:
        """Count one request and its handler time."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # first time for these labels; a dict read from then on
            children = (
                self._requests.labels(route, method, str(status)),
                self._latency.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(elapsed_ms / 1000.0)

    def decided(self, records: Sequence[DecisionRecord]) -> None:
        """Count decisions by outcome and by whether they were degraded."""
        for record in records:
            key = (record.decision, bool(record.degraded))
            child = self._decision_children.get(key)
            if child is None:
                child = self._decisions.labels(key[0].value, str(key[1]).lower())
                self._decision_children[key] = child
            child.inc()

    def propensity(self, degraded: bool) -> None:
        """Count one propensity answer, degraded (the prior) or not."""
        self._propensity_children[bool(degraded)].inc()

    def track_propensity(self, breaker_state: Callable[[], str]) -> None:
        """Read the propensity service's breaker at each scrape."""
        self._propensity_breaker_open.set_function(
            lambda: 0.0 if breaker_state() == "closed" else 1.0
        )

    def track(self, breaker_state: Callable[[], str], model_loaded: Callable[[], bool]) -> None:
        """Read the breaker and the model state at each scrape."""
        self._breaker_open.set_function(lambda: 0.0 if breaker_state() == "closed" else 1.0)
        self._model.set_function(lambda: 1.0 if model_loaded() else 0.0)

    def track_stream(self, snapshot: Callable[[int], TelemetrySnapshot]) -> None:
        """Export the stream's telemetry at each scrape (call once)."""
        self.registry.register(StreamCollector(snapshot))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
