"""Unit tests for the Chalice scoring API (functions/api/app.py) through chalice.test.Client.

The app is the real one; only its service is replaced: `kestrel.clients.scoring_service`
returns a real `ScoringService` over an in-memory feature reader (no Redis), the shipped
ONNX model and in-memory decisions, and `kestrel.clients.settings` carries the API key.
No network: nothing here opens a socket.
"""

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
from prometheus_client.parser import text_string_to_metric_families
from stream_doubles import MemoryDecisions, shipped_scorer

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
from kestrel.serving import CUSTOMER_FEATURES, TERMINAL_FEATURES, ScoringService
from kestrel.settings import Settings

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


@dataclass
class Api:
    """The app under test, its HTTP client, and the doubles behind its service."""

    module: ModuleType
    client: Client
    reader: MemoryReader
    decisions: StoreDecisions
    service: ScoringService

    def post(self, path: str, body: Any, headers: Mapping[str, str] = JSON_AUTH) -> HTTPResponse:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.http.post(path, headers=dict(headers), body=raw)

    def get(self, path: str, headers: Mapping[str, str] = AUTH) -> HTTPResponse:
        return self.client.http.get(path, headers=dict(headers))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    reader = MemoryReader()
    decisions = StoreDecisions(reader)
    service = ScoringService(
        reader=reader,
        scorer=shipped_scorer(),
        decisions=decisions,
        rules=Rules(review_amount=150.0, night_review_amount=100.0, decline_amount=220.0),
        breaker=pybreaker.CircuitBreaker(fail_max=3, reset_timeout=60, name="redis"),
        registry_check=lambda: None,
    )
    settings = Settings.from_env({"KESTREL_API_KEY": KEY})
    monkeypatch.setattr(clients, "settings", lambda: settings)
    monkeypatch.setattr(clients, "scoring_service", lambda: service)
    module = load_app()
    with Client(module.app, project_dir=str(API_DIR)) as client:
        yield Api(module, client, reader, decisions, service)


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


PROTECTED = [
    ("POST", "/v1/score"),
    ("POST", "/v1/score/batch"),
    ("GET", "/v1/customers/C-000042/features"),
    ("GET", "/v1/terminals/TERM-0007/features"),
    ("GET", "/v1/decisions/T-000101"),
    ("GET", "/metrics"),
]


# --- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "key",
    [None, "", "wrong-key", KEY + "x", KEY.upper()],
    ids=["none", "empty", "wrong", "longer", "case"],
)
def test_api_refuses_a_missing_or_wrong_api_key_with_403(
    api: Api, method: str, path: str, key: str | None
) -> None:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    body = json.dumps({"transactions": [transaction()]} if "batch" in path else transaction())
    response = api.client.http.request(method, path, headers=headers, body=body.encode())
    assert response.status_code == 403
    assert response.json_body == {"message": "Forbidden"}
    assert api.reader.calls == Counter()  # refused before any work


@pytest.mark.parametrize("path", ["/health", "/openapi.json"])
def test_api_open_paths_need_no_api_key(api: Api, path: str) -> None:
    response = api.get(path, headers={})
    assert response.status_code == 200
    assert isinstance(response.json_body, dict)


def test_api_accepts_the_key_header_in_any_case(api: Api) -> None:
    response = api.get("/v1/customers/C-000042/features", headers={"X-Api-Key": KEY})
    assert response.status_code == 200


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (transaction(amount=...), "amount", "required field is missing"),
        (transaction(amount=None), "amount", "required field is missing"),
        (transaction(amount=-1), "amount", "must be a finite number of at least 0 (got -1)"),
        (transaction(amount="12.5"), "amount", "must be a number"),
        (transaction(amount=True), "amount", "must be a number"),
        (transaction(transaction_id=...), "transaction_id", "required field is missing"),
        (transaction(customer_id="-starts-with-dash"), "customer_id", "must be a string of"),
        (transaction(terminal_id="x" * 129), "terminal_id", "must be a string of"),
        (transaction(event_time=1_795_857_302), "event_time", "between 2000 and 2100"),
        (transaction(event_time="2026-11-28T09:15:02+01:00"), "event_time", "must be in UTC"),
        (transaction(event_time="yesterday"), "event_time", "ISO-8601"),
        (transaction(channel=""), "channel", "1-128 characters"),
        ([transaction()], "body", "must be a JSON object"),
        (b"", "body", "a JSON object is required"),
        (b"{not json", "body", "not valid JSON"),
        (b'{"amount": NaN}', "body", "not valid JSON"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_api_score_answers_400_naming_the_field_and_the_problem(
    api: Api, body: Any, field: str, problem: str
) -> None:
    response = api.post("/v1/score", body)
    assert response.status_code == 400
    got = response.json_body
    assert got["error"] == "validation_error"
    assert got["field"] == field
    assert problem in got["problem"]
    assert api.reader.calls == Counter()


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (
            {"transactions": [transaction(), transaction(), transaction(amount=-5)]},
            "transactions[2].amount",
            "at least 0",
        ),
        (
            {"transactions": [transaction(), transaction(customer_id=...)]},
            "transactions[1].customer_id",
            "required field is missing",
        ),
        ({"transactions": [transaction(), "T-2"]}, "transactions[1]", "must be a JSON object"),
        ({"transactions": []}, "transactions", "non-empty array"),
        ({"transactions": transaction()}, "transactions", "non-empty array"),
        ({}, "transactions", "non-empty array"),
        ([transaction()], "body", "must be a JSON object"),
        (b"[", "body", "not valid JSON"),
    ],
)
def test_api_score_batch_answers_400_naming_the_item_and_field(
    api: Api, body: Any, field: str, problem: str
) -> None:
    response = api.post("/v1/score/batch", body)
    assert response.status_code == 400
    got = response.json_body
    assert (got["error"], got["field"]) == ("validation_error", field)
    assert problem in got["problem"]
    assert api.reader.calls == Counter()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/customers/-C1/features", "customer_id"),
        ("/v1/customers/" + "c" * 129 + "/features", "customer_id"),
        ("/v1/terminals/_T1/features", "terminal_id"),
        ("/v1/terminals/T!1/features", "terminal_id"),
        ("/v1/decisions/.T1", "transaction_id"),
        ("/v1/decisions/T*1", "transaction_id"),
    ],
)
def test_api_answers_400_for_a_bad_id_in_the_path(api: Api, path: str, field: str) -> None:
    response = api.get(path)
    assert response.status_code == 400
    got = response.json_body
    assert (got["error"], got["field"]) == ("validation_error", field)
    assert "starting with a letter or digit" in got["problem"]
    assert api.reader.calls == Counter()


def test_api_score_batch_refuses_more_than_100_transactions_with_413(api: Api) -> None:
    many = [transaction(transaction_id=f"T-{i}") for i in range(101)]
    response = api.post("/v1/score/batch", {"transactions": many})
    assert response.status_code == 413
    got = response.json_body
    assert (got["error"], got["field"]) == ("too_many_transactions", "transactions")
    assert "at most 100" in got["problem"] and "101" in got["problem"]
    assert api.reader.calls == Counter()
    response = api.post("/v1/score/batch", {"transactions": many[:100]})
    assert response.status_code == 200
    assert [r["transaction_id"] for r in response.json_body["results"]] == [
        f"T-{i}" for i in range(100)
    ]


# --- 200 shapes --------------------------------------------------------------------------------


def test_api_score_answers_the_services_decision(api: Api) -> None:
    response = api.post("/v1/score", transaction(channel="card_present"))
    assert response.status_code == 200
    assert header(response, "content-type") == "application/json"
    body = response.json_body
    conforms(body, "Decision")
    tx = Transaction("T-000101", "C-000042", "TERM-0007", 57.19, T0, "card_present")
    (expected,) = api.service.score([tx])
    assert body == {**expected.to_dict(), "decided_at": body["decided_at"]}
    assert body["score"] == expected.score and 0.0 <= body["score"] <= 1.0
    assert body["model_version"] == shipped_scorer().model_version
    assert body["degraded"] is False and body["degraded_reasons"] == []
    assert body["cold_start"] == {"customer": False, "terminal": False}
    assert body["source"] == "api"
    assert api.reader.calls["preview_transactions"] == 2  # the request, and `expected`


def test_api_score_flags_cold_start_for_unknown_entities(api: Api) -> None:
    response = api.post("/v1/score", transaction(customer_id="C-new", terminal_id="TERM-new"))
    assert response.status_code == 200
    body = response.json_body
    conforms(body, "Decision")
    assert body["cold_start"] == {"customer": True, "terminal": True}
    assert body["degraded"] is False and body["score"] is not None


def test_api_score_batch_answers_one_decision_per_transaction_in_order(api: Api) -> None:
    docs = [
        transaction(transaction_id="T-1", event_time=T0),
        transaction(transaction_id="T-2", customer_id="C-9", amount=980.0),
        transaction(transaction_id="T-3", terminal_id="TERM-9", amount=0),
    ]
    response = api.post("/v1/score/batch", {"transactions": docs})
    assert response.status_code == 200
    body = response.json_body
    assert set(body) == {"results"}
    for result in body["results"]:
        conforms(result, "Decision")
    assert [r["transaction_id"] for r in body["results"]] == ["T-1", "T-2", "T-3"]
    assert [r["cold_start"] for r in body["results"]] == [
        {"customer": False, "terminal": False},
        {"customer": True, "terminal": False},
        {"customer": False, "terminal": True},
    ]
    assert api.reader.calls["preview_transactions"] == 1  # one store call for the batch


@pytest.mark.parametrize(
    ("path", "id_field", "names", "known"),
    [
        ("/v1/customers/C-000042/features", "customer_id", CUSTOMER_FEATURES, True),
        ("/v1/customers/C-new/features", "customer_id", CUSTOMER_FEATURES, False),
        ("/v1/terminals/TERM-0007/features", "terminal_id", TERMINAL_FEATURES, True),
        ("/v1/terminals/TERM-new/features", "terminal_id", TERMINAL_FEATURES, False),
    ],
)
def test_api_entity_features_answer_the_features_and_known(
    api: Api, path: str, id_field: str, names: tuple[str, ...], known: bool
) -> None:
    response = api.get(path)
    assert response.status_code == 200
    body = response.json_body
    assert set(body) == {id_field, "as_of", "known", "features"}
    assert body[id_field] == path.split("/")[3]
    assert body["known"] is known
    assert isinstance(body["as_of"], int)
    assert tuple(body["features"]) == names
    assert all(isinstance(v, int | float) for v in body["features"].values())


def test_api_decision_answers_the_stored_decision_or_404(api: Api) -> None:
    tx = Transaction("T-000101", "C-000042", "TERM-0007", 57.19, T0)
    api.decisions.publish(api.service.score([tx]))
    response = api.get("/v1/decisions/T-000101")
    assert response.status_code == 200
    conforms(response.json_body, "Decision")
    assert response.json_body == api.decisions.published[0].to_dict()

    response = api.get("/v1/decisions/T-unknown")
    assert response.status_code == 404
    got = response.json_body
    assert (got["error"], got["field"]) == ("not_found", "transaction_id")
    assert "T-unknown" in got["problem"]
    conforms(got, "Error")


def test_api_health_reports_each_check(api: Api) -> None:
    response = api.get("/health", headers={})
    assert response.status_code == 200
    body = response.json_body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"redis", "model", "schema_registry"}
    assert all(check["ok"] is True for check in body["checks"].values())


def test_api_openapi_serves_the_spec(api: Api) -> None:
    response = api.get("/openapi.json", headers={})
    assert response.status_code == 200
    assert response.json_body == api.module.SPEC
    assert response.json_body["openapi"].startswith("3.0")


# --- degradation -------------------------------------------------------------------------------


def test_api_store_outage_gives_503_for_reads_and_degraded_200_for_scores(api: Api) -> None:
    api.reader.down = ConnectionError("Connection refused")
    for path in (
        "/v1/customers/C-000042/features",
        "/v1/terminals/TERM-0007/features",
        "/v1/decisions/T-000101",
    ):
        response = api.get(path)
        assert response.status_code == 503, path
        assert header(response, "Retry-After") == "1"
        got = response.json_body
        assert got["error"] == "feature_store_unavailable"
        conforms(got, "Error")

    response = api.post("/v1/score", transaction(amount=230.0))
    assert response.status_code == 200
    body = response.json_body
    conforms(body, "Decision")
    assert body["degraded"] is True
    assert body["degraded_reasons"] == ["feature_store_unavailable"]
    assert body["score"] is None and body["model_version"] is None
    assert body["decision"] == "DECLINE"
    assert body["reasons"][0]["kind"] == "rule"

    response = api.post("/v1/score/batch", {"transactions": [transaction(), transaction()]})
    assert response.status_code == 200
    assert [r["degraded"] for r in response.json_body["results"]] == [True, True]

    response = api.get("/health", headers={})
    assert response.status_code == 200
    assert response.json_body["status"] == "degraded"
    assert response.json_body["checks"]["redis"]["ok"] is False
    assert api.service.breaker_state == "open"


# --- Server-Timing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/v1/score", transaction(), JSON_AUTH, 200),
        ("POST", "/v1/score", transaction(), {}, 403),
        ("POST", "/v1/score", transaction(amount=-1), JSON_AUTH, 400),
        ("POST", "/v1/score/batch", {"transactions": [transaction()] * 101}, JSON_AUTH, 413),
        ("POST", "/v1/score/batch", {"transactions": [transaction()]}, JSON_AUTH, 200),
        ("GET", "/v1/customers/C-1/features", None, AUTH, 200),
        ("GET", "/v1/terminals/T-1/features", None, AUTH, 200),
        ("GET", "/v1/decisions/T-404", None, AUTH, 404),
        ("GET", "/v1/decisions/-bad", None, AUTH, 400),
        ("GET", "/health", None, {}, 200),
        ("GET", "/metrics", None, AUTH, 200),
        ("GET", "/metrics", None, {}, 403),
        ("GET", "/openapi.json", None, {}, 200),
    ],
)
def test_api_every_response_carries_server_timing(
    api: Api,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
) -> None:
    raw = b"" if body is None else json.dumps(body).encode()
    response = api.client.http.request(method, path, headers=dict(headers), body=raw)
    assert response.status_code == status
    timing = header(response, "Server-Timing")
    assert timing is not None
    match = SERVER_TIMING.match(timing)
    assert match is not None, timing
    assert 0.0 <= float(match.group(1)) < 10_000


def test_api_server_timing_is_on_503_too(api: Api) -> None:
    api.reader.down = ConnectionError("Connection refused")
    response = api.get("/v1/customers/C-1/features")
    assert response.status_code == 503
    assert SERVER_TIMING.match(header(response, "Server-Timing") or "")


# --- metrics -----------------------------------------------------------------------------------


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics: (name, sorted labels) -> value."""
    response = api.get("/metrics")
    assert response.status_code == 200
    assert (header(response, "content-type") or "").startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def requests_counted(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float],
    route: str,
    method: str,
    status: int,
) -> float:
    labels = (("method", method), ("route", route), ("status", str(status)))
    return samples.get(("kestrel_api_requests_total", labels), 0.0)


def decisions_counted(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], decision: str, degraded: bool
) -> float:
    labels = (("decision", decision), ("degraded", str(degraded).lower()))
    return samples.get(("kestrel_api_decisions_total", labels), 0.0)


def test_api_metrics_count_requests_and_decisions_in_prometheus_text(api: Api) -> None:
    scored = [api.post("/v1/score", transaction(amount=a)).json_body for a in (5.0, 57.19)]
    batch = api.post("/v1/score/batch", {"transactions": [transaction(), transaction()]})
    api.post("/v1/score", transaction(), headers={})  # 403
    api.post("/v1/score", transaction(amount=-1))  # 400
    api.get("/v1/customers/C-000042/features")
    api.get("/v1/customers/C-other/features")
    api.get("/health", headers={})

    samples = scrape(api)
    assert requests_counted(samples, "/v1/score", "POST", 200) == 2
    assert requests_counted(samples, "/v1/score", "POST", 403) == 1
    assert requests_counted(samples, "/v1/score", "POST", 400) == 1
    assert requests_counted(samples, "/v1/score/batch", "POST", 200) == 1
    # Route labels are route templates, not the ids in the path.
    assert requests_counted(samples, "/v1/customers/{customer_id}/features", "GET", 200) == 2
    assert requests_counted(samples, "/health", "GET", 200) == 1
    assert not any("C-000042" in str(key) for key in samples)

    decided = Counter(r["decision"] for r in [*scored, *batch.json_body["results"]])
    for decision in ("APPROVE", "REVIEW", "DECLINE"):
        assert decisions_counted(samples, decision, False) == decided[decision]
    assert sum(decided.values()) == 4
    assert samples[("kestrel_api_handler_seconds_count", (("route", "/v1/score"),))] == 4
    assert samples[("kestrel_api_model_loaded", ())] == 1.0
    assert samples[("kestrel_api_feature_store_breaker_open", ())] == 0.0
    assert requests_counted(samples, "/metrics", "GET", 200) == 0  # counted after it answers
    assert requests_counted(scrape(api), "/metrics", "GET", 200) == 1


def test_api_metrics_count_degraded_decisions_and_the_open_breaker(api: Api) -> None:
    api.reader.down = ConnectionError("Connection refused")
    for _ in range(3):
        assert api.post("/v1/score", transaction(amount=230.0)).status_code == 200
    samples = scrape(api)
    assert decisions_counted(samples, "DECLINE", True) == 3
    assert decisions_counted(samples, "DECLINE", False) == 0
    assert samples[("kestrel_api_feature_store_breaker_open", ())] == 1.0


def test_api_without_a_configured_key_leaves_the_check_to_the_gateway(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On AWS the template's usage plan checks keys and KESTREL_API_KEY is never set.
    monkeypatch.setattr(clients, "settings", lambda: Settings.from_env({}))
    assert api.get("/v1/customers/C-000042/features", headers={}).status_code == 200
    assert api.post("/v1/score", transaction(), headers={}).status_code == 200
