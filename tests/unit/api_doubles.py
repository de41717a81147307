"""Doubles and helpers shared by the scoring API route unit tests (chalice.test.Client)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pybreaker
import pytest
from chalice.test import Client, HTTPResponse
from openapi_schema_validator import OAS30Validator
from propensity_doubles import MemoryClicks, propensity_service
from serving_doubles import Registry
from stream_doubles import MemoryDecisions, shipped_scorer
from telemetry_doubles import FixedDepths, MemoryDrift, MemoryTelemetry

from kestrel import clients
from kestrel.decisions import DecisionRecord, Rules
from kestrel.events import Transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    TransactionPreview,
)
from kestrel.propensity_serving import PropensityService
from kestrel.serving import ScoringService
from kestrel.settings import Settings
from kestrel.telemetry import TelemetryService

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "functions" / "api"
KEY = "unit-test-api-key"
AUTH = {"x-api-key": KEY}
JSON_AUTH = {**AUTH, "content-type": "application/json"}
T0 = 1_795_857_302_123  # 2026-11-28T09:15:02.123Z
SERVER_TIMING = re.compile(r"^app;dur=(\d+\.\d+)$")
_loaded = itertools.count()

CUSTOMER = CustomerAggregates((3, 10, 40, 1, 2), (15_000, 52_000, 210_000, 5_719, 9_000), T0)
TERMINAL = TerminalAggregates((30, 200, 800), (0, 4, 8))
NO_CUSTOMER = CustomerAggregates((0,) * len(CUSTOMER_WINDOWS), (0,) * len(CUSTOMER_WINDOWS), None)
NO_TERMINAL = TerminalAggregates((0,) * len(TERMINAL_WINDOWS), (0,) * len(TERMINAL_WINDOWS))


def load_app() -> ModuleType:
    """A fresh functions/api/app.py module (own metrics, own cached service)."""
    if str(API_DIR) not in sys.path:
        sys.path.insert(0, str(API_DIR))
    spec = importlib.util.spec_from_file_location(
        f"kestrel_api_app_under_test_{next(_loaded)}", API_DIR / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MemoryReader:
    """FeatureReader double: known entities have history; `down` makes every call raise."""

    def __init__(self) -> None:
        self.known_customers = {"C-000042"}
        self.known_terminals = {"TERM-0007"}
        self.down: Exception | None = None
        self.calls: Counter[str] = Counter()

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self.down is not None:
            raise self.down

    def preview_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[TransactionPreview | Exception]:
        self._call("preview_transactions")
        return [
            TransactionPreview(
                CUSTOMER if t.customer_id in self.known_customers else NO_CUSTOMER,
                TERMINAL if t.terminal_id in self.known_terminals else NO_TERMINAL,
                t.customer_id in self.known_customers,
                t.terminal_id in self.known_terminals,
            )
            for t in transactions
        ]

    def customer_aggregates(
        self, customer_id: str, as_of_ms: int
    ) -> tuple[CustomerAggregates, bool]:
        self._call("customer_aggregates")
        known = customer_id in self.known_customers
        return (CUSTOMER if known else NO_CUSTOMER), known

    def terminal_aggregates(
        self, terminal_id: str, as_of_ms: int
    ) -> tuple[TerminalAggregates, bool]:
        self._call("terminal_aggregates")
        known = terminal_id in self.known_terminals
        return (TERMINAL if known else NO_TERMINAL), known

    def ping(self) -> None:
        self._call("ping")


class StoreDecisions(MemoryDecisions):
    """Decisions kept in the same store as the features: down when the reader is down."""

    def __init__(self, store: MemoryReader) -> None:
        super().__init__()
        self.store = store

    def decision(self, transaction_id: str) -> DecisionRecord | None:
        if self.store.down is not None:
            raise self.store.down
        return super().decision(transaction_id)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    """The app under test, its HTTP client, and the doubles behind its service."""

    module: ModuleType
    client: Client
    reader: MemoryReader
    decisions: StoreDecisions
    service: ScoringService
    stream: MemoryTelemetry
    depths: FixedDepths
    drift: MemoryDrift
    registry: Registry
    clock: Clock
    clicks: MemoryClicks
    propensity: PropensityService
    click_stream: MemoryTelemetry  # the clickstream's telemetry (ClickstreamFunction's)

    def post(self, path: str, body: Any, headers: Mapping[str, str] = JSON_AUTH) -> HTTPResponse:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.http.post(path, headers=dict(headers), body=raw)

    def get(self, path: str, headers: Mapping[str, str] = AUTH) -> HTTPResponse:
        return self.client.http.get(path, headers=dict(headers))


def serve_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The `api` fixture's body: the real app over a ScoringService built on the doubles."""
    reader, registry, clock = MemoryReader(), Registry(), Clock()
    decisions = StoreDecisions(reader)
    service = ScoringService(
        reader=reader,
        scorer=shipped_scorer(),
        decisions=decisions,
        rules=Rules(review_amount=150.0, night_review_amount=100.0, decline_amount=220.0),
        breaker=pybreaker.CircuitBreaker(fail_max=3, reset_timeout=60, name="redis"),
        registry_check=registry.check,
        monotonic=clock,
    )
    settings = Settings.from_env({"KESTREL_API_KEY": KEY})
    stream, depths, drift = MemoryTelemetry(), FixedDepths({"poison": 0}), MemoryDrift()
    telemetry = TelemetryService(stream, depths, drift)
    click_stream = MemoryTelemetry()
    click_telemetry = TelemetryService(click_stream)
    clicks = MemoryClicks(reader)  # the same Redis: down when the reader is down
    propensity = propensity_service(clicks)
    monkeypatch.setattr(clients, "settings", lambda: settings)
    monkeypatch.setattr(clients, "scoring_service", lambda: service)
    monkeypatch.setattr(clients, "propensity_service", lambda: propensity)
    monkeypatch.setattr(clients, "telemetry_service", lambda: telemetry)
    monkeypatch.setattr(clients, "click_telemetry_service", lambda: click_telemetry)
    module = load_app()
    with Client(module.app, project_dir=str(API_DIR)) as client:
        yield Api(
            module, client, reader, decisions, service, stream, depths, drift, registry, clock,
            clicks, propensity, click_stream,
        )  # fmt: skip


def transaction(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "transaction_id": "T-000101",
        "customer_id": "C-000042",
        "terminal_id": "TERM-0007",
        "amount": 57.19,
        "event_time": "2026-11-28T09:15:02.123Z",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


def header(response: HTTPResponse, name: str) -> str | None:
    """A response header, whatever its case."""
    found = [v for k, v in response.headers.items() if k.lower() == name.lower()]
    return str(found[0]) if found else None


def conforms(doc: Any, component: str) -> None:
    """Assert `doc` is valid for the served OpenAPI spec's component schema."""
    spec = sys.modules["chalicelib.openapi"].SPEC  # imported by app.py
    schema = {"components": spec["components"], "$ref": f"#/components/schemas/{component}"}
    errors = [e.message for e in OAS30Validator(schema).iter_errors(doc)]
    assert errors == [], errors
