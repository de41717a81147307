"""The scoring API fails closed: no key means no access, and /health tells strangers nothing.

An empty KESTREL_API_KEY refuses every keyed route; only KESTREL_API_AUTH=gateway (set by
template.yaml, where API Gateway checks the key) turns the app's own check off. /health
answers ``ok`` or ``degraded`` to anyone, its details (hosts, ARNs, exceptions) only to a
caller with the app's key, and is checked at most once a second however often it is asked.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions
from api_doubles import AUTH, KEY, Api, serve_api, transaction
from propensity_doubles import click

from kestrel import clients
from kestrel.settings import Settings, SettingsError


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


def keyed_routes(api: Api) -> list[tuple[str, str]]:
    """(method, concrete path) of every route that declares api_key_required."""
    concrete = {"{customer_id}": "C-000042", "{terminal_id}": "TERM-0007",
                "{transaction_id}": "T-000101", "{user_id}": "U-000042"}  # fmt: skip
    routes = []
    for path, methods in api.module.app.routes.items():
        for method, entry in methods.items():
            if entry.api_key_required:
                for name, value in concrete.items():
                    path = path.replace(name, value)
                routes.append((method, path))
    return routes


def call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    if path == "/v1/propensity":
        body = json.dumps(click())
    else:
        body = json.dumps({"transactions": [transaction()]} if "batch" in path else transaction())
    sent = {"content-type": "application/json", **headers}
    return api.client.http.request(method, path, headers=sent, body=body.encode())


def use_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    monkeypatch.setattr(clients, "settings", lambda: settings)


def test_api_keyed_routes_are_every_route_but_the_open_ones(api: Api) -> None:
    declared = {
        path: entry.api_key_required
        for path, methods in api.module.app.routes.items()
        for entry in methods.values()
    }
    assert {p for p, keyed in declared.items() if not keyed} == set(api.module.web.OPEN_PATHS)
    assert len(keyed_routes(api)) == 9


@pytest.mark.parametrize("sent", [{}, {"x-api-key": ""}, {"x-api-key": KEY}, {"x-api-key": " "}])
def test_api_with_an_empty_configured_key_refuses_every_keyed_route(
    api: Api, monkeypatch: pytest.MonkeyPatch, sent: dict[str, str]
) -> None:
    use_settings(monkeypatch, {"KESTREL_API_KEY": ""})
    for method, path in keyed_routes(api):
        response = call(api, method, path, sent)
        assert (method, path, response.status_code) == (method, path, 403)
    assert api.reader.calls == Counter() and api.stream.reads == []
    assert api.clicks.calls == Counter()
    assert api.get("/health", headers={}).json_body == {"status": "ok"}
    assert api.get("/openapi.json", headers={}).status_code == 200


def test_api_with_an_empty_key_says_so_once_in_the_log(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_settings(monkeypatch, {})
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert api.get("/v1/customers/C-1/features").status_code == 403
    said = [r for r in caplog.records if "KESTREL_API_KEY is empty" in r.getMessage()]
    assert len(said) == 1


def test_api_behind_the_gateway_leaves_the_key_check_to_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On AWS (KESTREL_API_AUTH=gateway) API Gateway refused keyless requests already.
    use_settings(monkeypatch, {"KESTREL_API_AUTH": "gateway"})
    for method, path in keyed_routes(api):
        assert call(api, method, path, {}).status_code in {200, 404}, (method, path)
    # The app never sees a key it could check there: /health stays short for everyone.
    assert api.get("/health", headers=AUTH).json_body == {"status": "ok"}


def test_api_settings_refuse_an_unknown_auth_mode_and_a_key_behind_the_gateway() -> None:
    with pytest.raises(SettingsError, match=r"^KESTREL_API_AUTH: must be app .* or gateway"):
        Settings.from_env({"KESTREL_API_AUTH": "none"})
    with pytest.raises(SettingsError, match=r"^KESTREL_API_AUTH: gateway") as caught:
        Settings.from_env({"KESTREL_API_AUTH": "gateway", "KESTREL_API_KEY": "s3cret-key"})
    assert "s3cret-key" not in str(caught.value)
    assert Settings.from_env({}).api_auth == "app"


# --- /health ---------------------------------------------------------------------------------

LEAKS = ("redis.internal", "6379", "arn:aws", "123456789012", "ConnectionError",
         "AccessDenied", "glue:GetRegistry")  # fmt: skip


def break_everything(api: Api) -> None:
    api.reader.down = redis.exceptions.ConnectionError(
        "Error 111 connecting to redis.internal:6379. Connection refused."
    )
    api.registry.error = PermissionError(
        "AccessDeniedException: arn:aws:iam::123456789012:role/api is not authorized to "
        "perform glue:GetRegistry"
    )


@pytest.mark.parametrize(
    "sent", [{}, {"x-api-key": ""}, {"x-api-key": "wrong"}, {"x-api-key": KEY + " "}]
)
def test_api_health_without_the_key_says_only_degraded(api: Api, sent: dict[str, str]) -> None:
    break_everything(api)
    response = api.get("/health", headers=sent)
    assert response.status_code == 200
    assert response.json_body == {"status": "degraded"}
    assert not [leak for leak in LEAKS if leak in response.body.decode()]


def test_api_health_with_the_key_gives_the_details(api: Api) -> None:
    break_everything(api)
    body = api.get("/health", headers=AUTH).json_body
    assert body["status"] == "degraded"
    assert "redis.internal:6379" in body["checks"]["redis"]["detail"]
    assert "arn:aws:iam::123456789012" in body["checks"]["schema_registry"]["detail"]


def test_api_health_flood_reaches_the_store_and_registry_once_a_second(api: Api) -> None:
    for i in range(200):
        api.clock.now += 0.004  # 200 requests within 0.8 s
        sent = AUTH if i % 2 else {}
        assert api.get("/health", headers=sent).status_code == 200
    assert api.reader.calls == Counter({"ping": 1}) and api.registry.checks == 1
    api.clock.now += 0.25  # the cached answer is now over a second old
    assert api.get("/health", headers={}).json_body == {"status": "ok"}
    assert api.reader.calls == Counter({"ping": 2}) and api.registry.checks == 2
