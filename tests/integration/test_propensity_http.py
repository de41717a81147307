"""The propensity routes over real HTTP, with ClickstreamFunction running on the stream.

The API is ``python -m kestrel_local serve`` (as in test_scoring_api); clicks go through the
provisioned clickstream and the local Lambda runtime's ClickstreamFunction. A click scored
by the API before it is streamed gets the propensity the stream then stores for it, and
the API writes nothing to Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from api_harness import (
    ApiClient,
    ApiServer,
    provision,
    redis_snapshot,
    running_api,
    writes_so_far,
)
from esm_harness import wait_until

from kestrel.adapters.redis_telemetry import CLICK_TELEMETRY_PREFIX
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp
from kestrel_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

USER = "U-HTTP-1"


@dataclass
class ClickStack:
    """The provisioned stack, the API server, ClickstreamFunction running, and Redis."""

    app: LocalApp
    clients: AwsClients
    api: ApiServer
    store: redis.Redis
    now_ms: int
    streamed: int = 0

    def stream(self, clicks: Sequence[dict[str, Any]], timeout_s: float = 60) -> None:
        """Put `clicks` on the clickstream; wait until the last one's propensity is stored and
        its batch's telemetry written (the stream's last Redis write for the batch)."""
        kinesis = self.clients.client("kinesis")
        name = self.app.stack.physical["ClickstreamStream"].ref
        records = [{"Data": json.dumps(c).encode(), "PartitionKey": c["user_id"]} for c in clicks]
        assert kinesis.put_records(StreamName=name, Records=records)["FailedRecordCount"] == 0
        last = clicks[-1]

        def stored() -> bool:
            raw = self.store.hget(f"kestrel:{{u:{last['user_id']}}}:propensity", "event_id")
            return isinstance(raw, bytes) and raw.decode() == last["event_id"]

        wait_until(stored, timeout_s=timeout_s, what=f"propensity of {last['event_id']}")
        self.streamed += len(clicks)

        def counted() -> bool:
            totals = self.store.hgetall(CLICK_TELEMETRY_PREFIX + "totals")
            seen = sum(int(totals.get(k, 0)) for k in (b"applied", b"duplicates"))
            return seen >= self.streamed

        wait_until(counted, timeout_s=timeout_s, what=f"{self.streamed} clicks in the telemetry")


def click(event_id: str, user: str, kind: str, at_ms: int, product: str = "P-1") -> dict[str, Any]:
    """A clickstream event as the producer and the API take it."""
    doc: dict[str, Any] = {"event_id": event_id, "user_id": user, "session_id": f"{user}-S1",
                           "event_type": kind, "event_time": at_ms}  # fmt: skip
    if kind != "page_view":
        doc.update(product_id=product, category="shoes", price=59.99)
    return doc


@pytest.fixture(scope="module")
def stack(
    emulator_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClickStack]:
    """A fresh stack (Redis database 7) with the API served and ClickstreamFunction running."""
    work = tmp_path_factory.mktemp("propensity-api")
    url = redis_url.rsplit("/", 1)[0] + "/7"
    store = redis.Redis.from_url(url)
    store.flushdb()
    app, clients = provision(emulator_endpoint, url, prefix="pr")
    settings = LocalSettings.from_env(
        {
            "KESTREL_RUN_DIR": str(work / "run"),
            "AWS_ENDPOINT_URL": emulator_endpoint,
            "KESTREL_POLL_INTERVAL_S": "0.02",
        }
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["ClickstreamFunction"], log_dir=work / "logs"
    )
    runtime.start()
    try:
        with running_api(app, emulator_endpoint, url, work / "api") as api:
            yield ClickStack(app, clients, api, store, int(time.time() * 1000))
    finally:
        runtime.stop()
        store.flushdb()
        store.close()


@pytest.fixture
def client(stack: ClickStack) -> Iterator[ApiClient]:
    api = ApiClient(stack.api)
    yield api
    api.close()


def test_propensity_api_scores_a_click_as_the_stream_then_does_and_writes_nothing(
    stack: ClickStack, client: ApiClient
) -> None:
    t = stack.now_ms - 20 * 60_000
    history = [
        click("H-1", USER, "page_view", t),
        click("H-2", USER, "product_view", t + 30_000, "P-1"),
        click("H-3", USER, "product_view", t + 60_000, "P-2"),
        click("H-4", USER, "add_to_cart", t + 90_000, "P-2"),
    ]
    stack.stream(history)
    new = click("N-1", USER, "product_view", t + 120_000, "P-3")

    before, writes_before = redis_snapshot(stack.store), writes_so_far(stack.store)
    scored = client.request("POST", "/v1/propensity", new)
    cold = client.request("POST", "/v1/propensity", click("N-9", "U-HTTP-NEW", "page_view", t))
    features = client.request("GET", f"/v1/users/{USER}/features")
    after, writes_after = redis_snapshot(stack.store), writes_so_far(stack.store)
    assert writes_after == writes_before, "the API wrote to Redis"
    assert set(after) == set(before), f"keys changed: {set(after) ^ set(before)}"
    for key, (kind, content, dump, pttl) in before.items():
        assert after[key][:3] == (kind, content, dump), f"{key!r} changed"
        assert after[key][3] <= pttl, f"{key!r} had its TTL refreshed"

    assert scored.status == 200, scored.body
    body = scored.json()
    assert body["degraded"] is False and body["cold_start"] is False, body
    assert body["model_version"] is not None and 0.0 <= body["propensity"] <= 1.0
    assert body["features"]["SESSION_EVENTS"] == 5.0
    assert body["features"]["SESSION_DISTINCT_PRODUCTS"] == 3.0
    assert body["features"]["SESSION_CART_NET"] == 1.0
    assert "app;dur=" in scored.headers["server-timing"]
    assert cold.status == 200 and cold.json()["cold_start"] is True, cold.body

    assert features.status == 200, features.body
    doc = features.json()
    assert doc["known"] is True and doc["features"]["USER_PRODUCT_VIEWS_1HOUR_WINDOW"] == 2.0
    assert doc["propensity"]["event_id"] == "H-4"

    # Streamed now, the click gets the propensity the API gave it.
    stack.stream([new])
    stored = client.request("GET", f"/v1/users/{USER}/features").json()["propensity"]
    assert stored["event_id"] == "N-1" and stored["model_version"] == body["model_version"]
    assert abs(stored["propensity"] - body["propensity"]) <= 1e-9, (stored, body["propensity"])


def test_propensity_api_refuses_hostile_input_naming_the_field(client: ApiClient) -> None:
    cases = [
        ({"event_type": "page_view"}, "event_id"),
        ({**click("X-1", USER, "product_view", 1_795_857_302_123), "price": "1"}, "price"),
        ({**click("X-2", USER, "page_view", 1_795_857_302_123), "price": 3}, "price"),
        ([], "body"),
    ]
    for doc, field in cases:
        reply = client.request("POST", "/v1/propensity", doc)
        assert reply.status == 400 and reply.json()["field"] == field, (doc, reply.body)
    assert client.request("POST", "/v1/propensity", b'{"a":' * 5000).status == 400
    assert client.request("GET", "/v1/users/-x/features").json()["field"] == "user_id"
    assert client.request("GET", f"/v1/users/{USER}/features", key=None).status == 403
    assert client.reused_connection()
