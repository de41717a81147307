"""Unit tests for the scoring API's key check, request validation, degradation and Server-Timing."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from api_doubles import (
    AUTH,
    JSON_AUTH,
    KEY,
    SERVER_TIMING,
    Api,
    conforms,
    header,
    serve_api,
    transaction,
)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


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

    api.clock.now += 1.0  # past the cached /health answer
    response = api.get("/health")
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


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", "text/plain"])
def test_api_refuses_a_body_that_is_not_json_with_415_whatever_its_bytes(
    api: Api, content_type: str
) -> None:
    headers = {"content-type": content_type, "x-api-key": KEY}
    response = api.client.http.post("/v1/score", headers=headers, body=b"\xff\xfe\x00{")
    assert response.status_code == 415
    assert "Unsupported media type" in response.json_body["Message"]
    assert api.reader.calls == Counter()
