"""Unit tests for the Chalice scoring API (functions/api/app.py) through chalice.test.Client.

The app is the real one; only its service is replaced: `kestrel.clients.scoring_service`
returns a real `ScoringService` over an in-memory feature reader (no Redis), the shipped
ONNX model and in-memory decisions, and `kestrel.clients.settings` carries the API key.
No network: nothing here opens a socket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

import pytest
from api_doubles import (
    T0,
    Api,
    conforms,
    header,
    serve_api,
    transaction,
)
from prometheus_client.parser import text_string_to_metric_families
from stream_doubles import shipped_scorer

from kestrel.events import Transaction
from kestrel.serving import CUSTOMER_FEATURES, TERMINAL_FEATURES


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


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
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json_body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"redis", "model", "schema_registry", "propensity_model"}
    assert all(check["ok"] is True for check in body["checks"].values())


def test_api_openapi_serves_the_spec(api: Api) -> None:
    response = api.get("/openapi.json", headers={})
    assert response.status_code == 200
    assert response.json_body == api.module.SPEC
    assert response.json_body["openapi"].startswith("3.0")


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
