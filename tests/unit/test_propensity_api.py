"""Unit tests for POST /v1/propensity and GET /v1/users/{user_id}/features (chalice.test.Client).

The app is the real one over a real `PropensityService` on an in-memory click reader and the
shipped propensity model (`propensity_doubles`); nothing here opens a socket.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions
from api_doubles import AUTH, JSON_AUTH, REPO, Api, conforms, serve_api
from openapi_schema_validator import OAS30Validator
from propensity_doubles import (
    HISTORY,
    KNOWN_USER,
    T0,
    click,
    shipped_propensity_scorer,
)

from kestrel.click_events import MAX_PRICE, ClickEvent, ClickType
from kestrel.click_features import CLICK_FEATURE_NAMES, click_feature_vector
from kestrel.propensity_serving import PROPENSITY_PRIOR, USER_FEATURES


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


def test_api_propensity_answers_the_models_propensity_for_the_previewed_vector(api: Api) -> None:
    response = api.post("/v1/propensity", click())
    assert response.status_code == 200
    body = response.json_body
    conforms(body, "Propensity")
    vector = click_feature_vector("product_view", 89.5, T0, HISTORY)
    scores, manifest = shipped_propensity_scorer().score_batch([vector])
    assert body["propensity"] == pytest.approx(float(scores[0]), abs=1e-12)
    assert 0.0 <= body["propensity"] <= 1.0
    assert body["model_version"] == manifest.version
    assert body["features"] == dict(zip(CLICK_FEATURE_NAMES, vector, strict=True))
    assert body["degraded"] is False and body["degraded_reasons"] == []
    assert body["cold_start"] is False and body["source"] == "api"
    assert body["reasons"] and {r["kind"] for r in body["reasons"]} == {"feature"}
    assert all(r["deviation"] > 0 for r in body["reasons"])
    assert api.clicks.calls["preview_history"] == 1


def test_api_propensity_flags_cold_start_for_a_user_without_history(api: Api) -> None:
    body = api.post("/v1/propensity", click(user_id="U-new")).json_body
    conforms(body, "Propensity")
    assert body["cold_start"] is True and body["degraded"] is False
    assert body["model_version"] is not None


def test_api_propensity_accepts_a_page_view_without_product_fields(api: Api) -> None:
    doc = click(event_type="page_view", product_id=..., category=..., price=None)
    body = api.post("/v1/propensity", doc).json_body
    conforms(body, "Propensity")
    assert body["features"]["IS_PAGE_VIEW"] == 1.0 and body["features"]["PRICE"] == 0.0


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (click(price=-1), "price"),
        (click(price="12"), "price"),
        (click(event_type="checkout"), "event_type"),
        (click(user_id="bad id"), "user_id"),
        (click(session_id=...), "session_id"),
        (click(event_time="yesterday"), "event_time"),
        (click(event_type="page_view"), "product_id"),
        (click(product_id=None), "product_id"),
        ([click()], "body"),
        ("x", "body"),
    ],
)
def test_api_propensity_answers_400_naming_the_field(api: Api, doc: Any, field: str) -> None:
    response = api.post("/v1/propensity", doc)
    assert response.status_code == 400, response.json_body
    conforms(response.json_body, "Error")
    assert response.json_body["field"] == field
    assert api.clicks.calls["preview_history"] == 0


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"\xff\xfe", b"[" * 10_000, b'{"event_id": 1e999}', b"null"]
)
def test_api_propensity_answers_400_for_any_unusable_body(api: Api, raw: bytes) -> None:
    response = api.client.http.post("/v1/propensity", headers=JSON_AUTH, body=raw)
    assert response.status_code == 400
    conforms(json.loads(response.body), "Error")


def test_api_propensity_without_the_key_is_403(api: Api) -> None:
    response = api.post("/v1/propensity", click(), headers={"content-type": "application/json"})
    assert response.status_code == 403
    assert api.clicks.calls["preview_history"] == 0


def test_api_propensity_with_the_store_down_answers_the_prior_degraded_then_opens_breaker(
    api: Api,
) -> None:
    api.reader.down = redis.exceptions.ConnectionError("connection refused")
    for _ in range(5):
        response = api.post("/v1/propensity", click())
        assert response.status_code == 200
        body = response.json_body
        conforms(body, "Propensity")
        assert body["propensity"] == PROPENSITY_PRIOR and body["model_version"] is None
        assert body["degraded"] is True
        assert body["degraded_reasons"] == ["feature_store_unavailable"]
        assert body["features"] is None
        assert [r["kind"] for r in body["reasons"]] == ["prior"]
    # The breaker opened after 3 failures: the store was not called again.
    assert api.clicks.calls["preview_history"] == 3
    assert api.propensity.breaker_state == "open"
    assert api.get(f"/v1/users/{KNOWN_USER}/features").status_code == 503


def test_api_propensity_without_a_model_answers_the_prior_with_the_features(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.propensity, "_scorer", None)
    body = api.post("/v1/propensity", click()).json_body
    conforms(body, "Propensity")
    assert body["propensity"] == PROPENSITY_PRIOR
    assert body["degraded_reasons"] == ["no_model"] and body["cold_start"] is False
    assert body["features"]["USER_PURCHASES_30DAY_WINDOW"] == 2.0


def test_api_propensity_with_a_failing_model_answers_the_prior(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def score_batch(self, rows: Any) -> Any:
            raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(api.propensity, "_scorer", Broken())
    body = api.post("/v1/propensity", click()).json_body
    assert body["degraded_reasons"] == ["model_error"]
    assert body["propensity"] == PROPENSITY_PRIOR


def test_api_user_features_answer_the_users_features_and_latest_propensity(api: Api) -> None:
    response = api.get(f"/v1/users/{KNOWN_USER}/features")
    assert response.status_code == 200
    body = response.json_body
    conforms(body, "UserFeatures")
    assert body["user_id"] == KNOWN_USER and body["known"] is True and body["as_of"] == T0
    assert sorted(body["features"]) == sorted(USER_FEATURES)
    assert body["features"]["USER_VIEWS_1HOUR_WINDOW"] == 12.0
    assert body["features"]["USER_SECONDS_SINCE_LAST_PURCHASE"] == 3600.0
    assert body["features"]["USER_CONVERSION_RATE_30DAY_WINDOW"] == 2 / 50
    assert body["propensity"]["propensity"] == 0.42
    assert body["propensity"]["event_id"] == "E-000003"


def test_api_user_features_of_an_unknown_user_are_empty_and_unknown(api: Api) -> None:
    body = api.get("/v1/users/U-nobody/features").json_body
    conforms(body, "UserFeatures")
    assert body["known"] is False and body["propensity"] is None
    assert body["features"]["USER_VIEWS_24HOUR_WINDOW"] == 0.0


@pytest.mark.parametrize("user", ["-lead", "x" * 129, "a b", "%E2%98%83"])
def test_api_user_features_refuse_a_bad_id_with_400(api: Api, user: str) -> None:
    response = api.get(f"/v1/users/{user}/features")
    assert response.status_code == 400
    assert response.json_body["field"] == "user_id"
    assert api.clicks.calls["user_aggregates"] == 0


def test_api_user_features_with_the_store_down_are_503(api: Api) -> None:
    api.clicks.down = redis.exceptions.TimeoutError("timed out")
    response = api.get(f"/v1/users/{KNOWN_USER}/features", headers=AUTH)
    assert response.status_code == 503
    assert response.json_body["error"] == "feature_store_unavailable"


def test_api_propensity_service_vector_is_the_streams_for_the_same_aggregates(api: Api) -> None:
    event = ClickEvent("E-9", KNOWN_USER, "S-1", ClickType.ADD_TO_CART, T0, "P-1", "shoes", 20.0)
    vector, cold = api.propensity.vector(event)
    assert vector == click_feature_vector("add_to_cart", 20.0, T0, HISTORY) and cold is False


CLICK_DOCS = [
    click(),
    click(event_type="page_view", product_id=..., category=..., price=...),
    click(event_type="page_view", product_id=None, category=None, price=None),
    click(event_type="page_view"),
    click(event_type="page_view", product_id=..., category=..., price=0),
    click(event_type="purchase", price=None),
    click(event_type="add_to_cart", category=...),
    click(price=MAX_PRICE + 1),
    click(event_time=1_795_857_302_123),
    click(event_type="checkout"),
]


@pytest.mark.parametrize("doc", CLICK_DOCS)
def test_api_propensity_spec_and_domain_agree_on_click_events(api: Api, doc: Any) -> None:
    spec = sys.modules["chalicelib.openapi"].SPEC
    schema = {"components": spec["components"], "$ref": "#/components/schemas/ClickEvent"}
    valid = not list(OAS30Validator(schema).iter_errors(doc))
    assert valid is (api.post("/v1/propensity", doc).status_code == 200), doc


def test_api_propensity_sample_event_is_a_valid_request(api: Api) -> None:
    sample = json.loads((REPO / "events" / "api-propensity.json").read_text())
    body = json.loads(sample["body"])
    conforms(body, "ClickEvent")
    assert api.post("/v1/propensity", body).status_code == 200


def test_api_health_reports_the_propensity_model_and_degrades_without_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = api.get("/health").json_body["checks"]["propensity_model"]
    assert check == {"ok": True, "version": shipped_propensity_scorer().model_version}
    monkeypatch.setattr(api.propensity, "_scorer", None)
    body = api.get("/health").json_body
    assert body["status"] == "degraded"
    assert body["checks"]["propensity_model"]["ok"] is False
    assert "prior" in body["checks"]["propensity_model"]["detail"]
    assert body["checks"]["model"]["ok"] is True  # the fraud model is still served
    assert api.get("/health", headers={}).json_body == {"status": "degraded"}
