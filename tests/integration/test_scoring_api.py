"""The scoring API over real HTTP against real Redis and the embedded emulator.

The API runs as ``python -m kestrel_local serve`` in its own process (what ``make serve``
runs), not in-process with `load_app`/`build_server`: the subprocess reads ApiFunction's
environment from the template exactly as a user's server does, serves through the real
`kestrel_local.api_http` server on a loopback socket, and keeps the app's import-time side effects
(`load_app` writes the function environment into ``os.environ`` and puts the layers on
``sys.path``; `build_server` rebinds the app's class; `kestrel.clients` caches clients)
out of the pytest process, where they would leak into other tests. A separate process is
also a real client/server split, which the Redis-outage test needs.

The stream path is the real one: records put on the provisioned ``transactions`` stream and
run by the local Lambda runtime's TransactionsFunction (worker processes), as
test_kestrel_stack does. The shared helpers (`provision`, `running_api`, `ApiClient`, ...)
live in api_harness, with test_api_schemathesis and test_redis_outage.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from api_harness import (
    ApiClient,
    ApiServer,
    Json,
    decision_key,
    prometheus_samples,
    provision,
    put_transactions,
    read_stream,
    redis_snapshot,
    running_api,
    transaction,
    writes_so_far,
)
from esm_harness import wait_until

from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp
from kestrel_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

API_PATHS = {
    "/v1/score",
    "/v1/score/batch",
    "/v1/customers/{customer_id}/features",
    "/v1/terminals/{terminal_id}/features",
    "/v1/decisions/{transaction_id}",
    "/v1/telemetry",
    "/v1/propensity",
    "/v1/users/{user_id}/features",
    "/health",
    "/metrics",
    "/openapi.json",
}
# The decision fields that must not depend on who decided (the API or the stream).
DECISION_FIELDS = (
    "transaction_id", "customer_id", "terminal_id", "score", "decision", "model_version",
    "feature_set_hash", "reasons", "degraded", "degraded_reasons", "cold_start",
)  # fmt: skip


# --- this module's stack --------------------------------------------------------------------


@dataclass
class ScoringStack:
    """The provisioned stack, the API server, the running stream path and its Redis."""

    app: LocalApp
    clients: AwsClients
    api: ApiServer
    runtime: LocalRuntime
    store: redis.Redis
    endpoint: str
    redis_url: str
    now_ms: int
    streamed: list[str] = field(default_factory=list)

    @property
    def transactions_stream(self) -> str:
        return str(self.app.stack.physical["TransactionsStream"].ref)

    @property
    def decisions_stream(self) -> str:
        return str(self.app.stack.physical["DecisionsStream"].ref)

    def stream(
        self,
        txs: Sequence[Mapping[str, Any]],
        partition_key: str | None = None,
        timeout_s: float = 60,
    ) -> None:
        """Send `txs` through the stream path; wait until each has its decision in Redis."""
        put_transactions(self.clients, self.transactions_stream, txs, partition_key)
        ids = [str(t["transaction_id"]) for t in txs]
        self.streamed += ids
        keys = [decision_key(i) for i in ids]
        wait_until(
            lambda: self.store.exists(*keys) == len(keys),
            timeout_s=timeout_s,
            what=f"decisions of {len(keys)} streamed transactions",
        )
        (mapping,) = self.runtime.kinesis
        wait_until(  # the batch also finished (decisions stream, event log)
            lambda: mapping.stats.succeeded >= len(self.streamed),
            timeout_s=timeout_s,
            what="every streamed record handled",
        )

    def logged_batch(self, transaction_id: str) -> list[Json]:
        """The event-log rows of the stream batch that handled `transaction_id`."""
        s3, bucket = self.clients.client("s3"), self.app.stack.physical["EventLogBucket"].ref
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="events/transactions/"
        ):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                rows = [json.loads(line) for line in gzip.decompress(body).splitlines()]
                if any(row["transaction_id"] == transaction_id for row in rows):
                    return rows
        raise AssertionError(f"{transaction_id} is not in the event log")


MINUTE_MS, DAY_MS = 60_000, 86_400_000


def history(now_ms: int) -> list[dict[str, Any]]:
    """Past transactions of customer C-EQ and terminal TERM-EQ (and their neighbours)."""
    txs = []
    # The customer: spread over 20 days, some in the last hour, at two terminals.
    for i, (age_ms, amount) in enumerate(
        [(20 * DAY_MS, 35.10), (15 * DAY_MS, 42.00), (9 * DAY_MS, 18.75), (5 * DAY_MS, 61.20),
         (2 * DAY_MS, 29.99), (DAY_MS, 55.00), (12 * 3_600_000, 47.50), (50 * MINUTE_MS, 88.00),
         (20 * MINUTE_MS, 120.00), (7 * MINUTE_MS, 140.25), (3 * MINUTE_MS, 160.80)]
    ):  # fmt: skip
        terminal = "TERM-EQ" if i % 2 else "TERM-OTHER"
        txs.append(transaction(f"H-C-{i:03d}", "C-EQ", terminal, amount, now_ms - age_ms))
    # The terminal: other customers, 8-27 days ago (terminal windows end 7 days back).
    for i in range(24):
        age_ms = 8 * DAY_MS + i * 19 * 3_600_000
        txs.append(
            transaction(f"H-T-{i:03d}", f"C-N{i % 6}", "TERM-EQ", 20.0 + 3.5 * i, now_ms - age_ms)
        )
    return txs


@pytest.fixture(scope="module")
def stack(
    emulator_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScoringStack]:
    """A fresh stack with the API served, TransactionsFunction running and history applied.

    Redis is database 6 of the session's redis-server, flushed before and after.
    """
    work = tmp_path_factory.mktemp("scoring-api")
    url = redis_url.rsplit("/", 1)[0] + "/6"
    store = redis.Redis.from_url(url)
    store.flushdb()
    app, clients = provision(emulator_endpoint, url)
    settings = LocalSettings.from_env(
        {
            "KESTREL_RUN_DIR": str(work / "run"),
            "AWS_ENDPOINT_URL": emulator_endpoint,
            "KESTREL_POLL_INTERVAL_S": "0.02",
        }
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction"], log_dir=work / "logs"
    )
    runtime.start()
    try:
        with running_api(app, emulator_endpoint, url, work / "api") as api:
            now_ms = int(time.time() * 1000)
            built = ScoringStack(app, clients, api, runtime, store, emulator_endpoint, url, now_ms)
            built.stream(history(built.now_ms))
            yield built
    finally:
        runtime.stop()
        store.flushdb()
        store.close()


@pytest.fixture
def client(stack: ScoringStack) -> Iterator[ApiClient]:
    """A keep-alive connection to the module's API."""
    api = ApiClient(stack.api)
    yield api
    api.close()


# --- tests -----------------------------------------------------------------------------------


def test_api_answers_every_route_over_one_keep_alive_connection(
    stack: ScoringStack, client: ApiClient
) -> None:
    at = stack.now_ms - 30_000
    known = transaction("R-1", "C-EQ", "TERM-EQ", 12.5, at)

    score = client.request("POST", "/v1/score", known)
    assert score.status == 200, score.body
    assert score.headers["content-type"] == "application/json"
    assert score.headers.get("connection", "").lower() != "close"
    decided = score.json()
    assert decided["transaction_id"] == "R-1" and decided["source"] == "api"
    assert decided["degraded"] is False and decided["model_version"] is not None
    assert 0.0 <= decided["score"] <= 1.0
    assert decided["decision"] in {"APPROVE", "REVIEW", "DECLINE"}
    assert "app;dur=" in score.headers["server-timing"]

    batch = [transaction(f"R-B{i}", "C-EQ", "TERM-EQ", 10.0 + i, at) for i in range(3)]
    answered = client.request("POST", "/v1/score/batch", {"transactions": batch})
    assert answered.status == 200, answered.body
    results = answered.json()["results"]
    assert [r["transaction_id"] for r in results] == ["R-B0", "R-B1", "R-B2"]

    too_many = [transaction(f"R-M{i}", "C-X", "T-X", 1.0, at) for i in range(101)]
    refused = client.request("POST", "/v1/score/batch", {"transactions": too_many})
    assert refused.status == 413, refused.body

    customer = client.request("GET", "/v1/customers/C-EQ/features")
    assert customer.status == 200, customer.body
    doc = customer.json()
    assert doc["customer_id"] == "C-EQ" and doc["known"] is True
    assert doc["features"]["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 11.0  # the whole history
    assert doc["features"]["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] == 4.0

    terminal = client.request("GET", "/v1/terminals/TERM-EQ/features")
    assert terminal.status == 200, terminal.body
    assert terminal.json()["known"] is True
    assert terminal.json()["features"]["TERMINAL_ID_NB_TX_30DAY_WINDOW"] > 0

    stored = client.request("GET", "/v1/decisions/H-C-000")
    assert stored.status == 200, stored.body
    assert stored.json()["source"] == "stream" and stored.json()["transaction_id"] == "H-C-000"
    missing = client.request("GET", "/v1/decisions/never-streamed")
    assert missing.status == 404 and missing.json()["field"] == "transaction_id"

    telemetry = client.request("GET", "/v1/telemetry?window=600")
    assert telemetry.status == 200, telemetry.body
    assert telemetry.json()["totals"]["applied"] == len(stack.streamed)  # the history
    assert telemetry.json()["model_version"] == decided["model_version"]

    stranger = client.request("GET", "/health", key=None)
    assert stranger.status == 200 and stranger.json() == {"status": "ok"}, stranger.body
    health = client.request("GET", "/health")
    assert health.status == 200, health.body
    checks = health.json()["checks"]
    assert health.json()["status"] == "ok", checks
    assert checks["redis"]["ok"] is True and checks["redis"]["breaker"] == "closed"
    assert checks["model"]["ok"] is True and checks["model"]["version"]
    assert checks["schema_registry"]["ok"] is True

    metrics = client.request("GET", "/metrics")
    assert metrics.status == 200, metrics.body
    assert metrics.headers["content-type"].startswith("text/plain")
    samples = prometheus_samples(metrics.body.decode())
    score_ok = (
        "kestrel_api_requests_total",
        (("method", "POST"), ("route", "/v1/score"), ("status", "200")),
    )
    assert samples[score_ok] >= 1
    assert samples[("kestrel_api_model_loaded", ())] == 1.0

    spec = client.request("GET", "/openapi.json", key=None)
    assert spec.status == 200, spec.body
    assert spec.json()["openapi"].startswith("3.") and set(spec.json()["paths"]) == API_PATHS

    invalid = client.request("POST", "/v1/score", {**known, "amount": -1})
    assert invalid.status == 400 and invalid.json()["field"] == "amount", invalid.body
    assert client.request("POST", "/v1/score", known, key=None).status == 403
    assert client.request("GET", "/metrics", key="wrong-key").status == 403

    assert client.reused_connection(), "the server closed the keep-alive connection"


def test_api_score_equals_stream_score_and_api_writes_nothing(
    stack: ScoringStack, client: ApiClient
) -> None:
    at = stack.now_ms - MINUTE_MS
    new = transaction("EQ-T", "C-EQ", "TERM-EQ", 245.37, at)
    cold = transaction("EQ-COLD", "C-EQ-NEW", "TERM-EQ-NEW", 245.37, at)

    before, writes_before = redis_snapshot(stack.store), writes_so_far(stack.store)
    api = client.score(new)
    batched = client.request(
        "POST", "/v1/score/batch", {"transactions": [cold, new, {**cold, "amount": 3.0}]}
    )
    after, writes_after = redis_snapshot(stack.store), writes_so_far(stack.store)

    assert writes_after == writes_before, "the API wrote to Redis"
    assert set(after) == set(before), f"keys changed: {set(after) ^ set(before)}"
    for key, (kind, content, dump, pttl) in before.items():
        assert after[key][:3] == (kind, content, dump), f"{key!r} changed"
        assert after[key][3] <= pttl, f"{key!r} had its TTL refreshed"
    assert batched.status == 200, batched.body
    in_batch = batched.json()["results"][1]
    assert {k: in_batch[k] for k in DECISION_FIELDS} == {k: api[k] for k in DECISION_FIELDS}
    # History matters: the same transaction on a new customer and terminal scores otherwise.
    assert batched.json()["results"][0]["score"] != api["score"]
    assert api["cold_start"] == {"customer": False, "terminal": False}

    # The stream scores the transaction in one batch with others (other entities, one
    # partition key, so one shard and one batch): its score must not depend on the batch.
    others = [transaction(f"EQ-O{i}", f"C-EQO{i}", f"TERM-EQO{i}", 9.0 * i, at) for i in range(8)]
    stack.stream([others[0], others[1], new, *others[2:]], partition_key="EQ")
    logged = stack.logged_batch("EQ-T")
    assert len(logged) == 9, [row["transaction_id"] for row in logged]
    stored = client.request("GET", "/v1/decisions/EQ-T")
    assert stored.status == 200, stored.body
    stream = stored.json()
    assert stream["source"] == "stream" and api["source"] == "api"
    assert stream["score"] == api["score"], (stream["score"], api["score"])
    assert stream["decision"] == api["decision"]
    assert stream["model_version"] == api["model_version"]
    assert {k: stream[k] for k in DECISION_FIELDS} == {k: api[k] for k in DECISION_FIELDS}
    assert next(r for r in logged if r["transaction_id"] == "EQ-T")["score"] == api["score"]


def test_api_flags_cold_start_for_unknown_customer_and_terminal(
    stack: ScoringStack, client: ApiClient
) -> None:
    at = stack.now_ms - 10_000

    def flags(customer: str, terminal: str) -> dict[str, bool]:
        decided = client.score(
            transaction(f"CS-{customer}-{terminal}", customer, terminal, 50.0, at)
        )
        assert decided["degraded"] is False and decided["score"] is not None
        flags: dict[str, bool] = decided["cold_start"]
        return flags

    assert flags("C-NOBODY", "TERM-NOWHERE") == {"customer": True, "terminal": True}
    assert flags("C-EQ", "TERM-EQ") == {"customer": False, "terminal": False}
    assert flags("C-EQ", "TERM-NOWHERE") == {"customer": False, "terminal": True}
    assert flags("C-NOBODY", "TERM-EQ") == {"customer": True, "terminal": False}
    unknown = client.request("GET", "/v1/customers/C-NOBODY/features")
    assert unknown.status == 200 and unknown.json()["known"] is False


def test_stream_publishes_a_decision_for_every_streamed_transaction(
    stack: ScoringStack,
) -> None:
    at = stack.now_ms - 5_000
    batch = [
        transaction(f"DS-{i:03d}", f"C-DS{i % 13}", f"TERM-DS{i % 5}", 5.0 + i, at + i)
        for i in range(150)
    ]
    stack.stream(batch)

    published = read_stream(stack.clients, stack.decisions_stream)
    by_id: dict[str, list[Json]] = {}
    for record in published:
        by_id.setdefault(record["transaction_id"], []).append(record)
    assert set(by_id) == set(stack.streamed)  # the history, other tests' and these
    for tid in stack.streamed:
        raw = stack.store.get(decision_key(tid))
        assert raw is not None, tid
        kept = json.loads(raw)
        for record in by_id[tid]:
            assert record["source"] == "stream"
            assert (record["score"], record["decision"], record["model_version"]) == (
                kept["score"],
                kept["decision"],
                kept["model_version"],
            ), tid


def test_api_score_of_an_unstorable_amount_does_not_open_the_breaker(
    stack: ScoringStack, tmp_path: Path
) -> None:
    # A schema-valid amount whose cents overflow is the caller's problem, not a store outage:
    # it must not degrade everybody else's scores (own server: its breaker is this test's).
    at = stack.now_ms - 10_000
    with running_api(stack.app, stack.endpoint, stack.redis_url, tmp_path / "api") as api:
        client = ApiClient(api)
        try:
            huge = [
                client.request(
                    "POST", "/v1/score", transaction(f"HUGE-{i}", "C-EQ", "T-1", 1e307, at)
                )
                for i in range(5)  # more than BREAKER_FAIL_MAX (3)
            ]
            assert all(r.status in {200, 400} for r in huge), [(r.status, r.body) for r in huge]
            after = client.score(transaction("AFTER-HUGE", "C-EQ", "TERM-EQ", 12.0, at))
            features = client.request("GET", "/v1/customers/C-EQ/features")
            health = client.request("GET", "/health").json()
        finally:
            client.close()
    assert after["degraded"] is False, after
    assert features.status == 200, features.body
    assert health["checks"]["redis"]["breaker"] == "closed", health


def redis_pings(store: redis.Redis) -> int:
    """PING commands the session's redis-server has answered so far (all clients)."""
    stats = store.info("commandstats").get("cmdstat_ping") or {}
    return int(stats.get("calls", 0))


def test_api_health_flood_reaches_redis_about_once_a_second(
    stack: ScoringStack, client: ApiClient
) -> None:
    before, started = redis_pings(stack.store), time.monotonic()
    for i in range(200):
        reply = client.request("GET", "/health", key=None if i % 2 else "")
        assert reply.status == 200, reply.body
        assert ("checks" in reply.json()) is (i % 2 == 0)  # details only with the key
    elapsed = time.monotonic() - started
    pinged = redis_pings(stack.store) - before
    print(f"200 x /health in {elapsed:.2f} s: {pinged} Redis PING")
    assert pinged <= math.ceil(elapsed) + 1


def test_api_decodes_path_parameters_once_as_api_gateway_does(client: ApiClient) -> None:
    # The local server hands the app decoded path parameters (API Gateway does), once only.
    encoded = client.request("GET", "/v1/customers/C%2DEQ/features")
    assert encoded.status == 200 and encoded.json()["known"] is True
    twice = client.request("GET", "/v1/customers/C%252DEQ/features")  # decodes to "C%2DEQ"
    assert twice.status == 400 and twice.json()["field"] == "customer_id"
