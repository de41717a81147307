"""A real redis-server stopped mid-load and restarted: the API degrades, the stream loses nothing.

Its own redis-server (free loopback port, append-only file fsynced on every write, so the
data survives the restart) backs a fresh stack on the emulator (RedisUrl points at it), the
API server (``kestrel_local serve``, see test_scoring_api) and the local runtime running
TransactionsFunction. A thread drives POST /v1/score at a steady rate over one keep-alive
connection while the transactions are put on the stream; redis-server gets SIGTERM, stays
down for OUTAGE_S seconds and is started again on the same port and data directory.

The API's Redis budget is REDIS_BUDGET_MS=250 here instead of the default 20 ms. With the
emulator, the runtime's workers, the load and the server sharing two cores (and an fsync per
write), a read now and then takes over 20 ms; the API then degrades that request, as
designed, and three in a row open the breaker for BREAKER_RESET_S (2 s): with the default,
some runs saw it open again after the stream had drained. That is the budget at work, not
the outage, so this test gives the budget room and keeps its assertions exact: every
request is degraded while Redis is down, none before the outage or after recovery.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from api_harness import (
    ApiClient,
    ApiServer,
    decision_key,
    provision,
    put_transactions,
    running_api,
    transaction,
)
from esm_harness import wait_until

from bench.chaos_checks import feature_state
from bench.chaos_faults import PersistentRedis
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.redis_scripts import stored_transactions
from kestrel.events import transaction_from_mapping
from kestrel.settings import LocalSettings
from kestrel_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

N = 2_000  # transactions on the stream
CUSTOMERS, TERMINALS = 200, 97
RATE_PER_S = 150.0  # API load
BASELINE_S = 2.0  # load before the outage
OUTAGE_S = 4.0  # redis-server down
QUIET_S = 2.0  # load kept after the stream drained
API_ENV = {"REDIS_BUDGET_MS": "250"}  # see the module docstring
PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PersistentRedis]:
    """A dedicated, persistent redis-server; stopped at the end whatever happened."""
    server = PersistentRedis(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Sample:
    """One API request of the load: when it was sent and answered, and what came back."""

    route: str
    sent: float
    status: int | None
    degraded: bool | None
    reasons: tuple[str, ...]
    error: str | None
    answered: float


class ScoreLoad(threading.Thread):
    """POST /v1/score and /v1/propensity in turn (or /v1/score only) at a fixed rate over one
    keep-alive connection, every answer kept."""

    def __init__(self, server: ApiServer, now_ms: int, propensity: bool = True) -> None:
        super().__init__(name="score-load", daemon=True)
        self.server, self.now_ms, self.propensity = server, now_ms, propensity
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        client = ApiClient(self.server)
        period, next_at, n = 1.0 / RATE_PER_S, time.monotonic(), 0
        try:
            while not self.stopping.is_set():
                n += 1
                route, doc = self.request_of(n)
                sent = time.monotonic()
                try:
                    reply = client.request("POST", route, doc)
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    self.samples.append(
                        Sample(
                            route,
                            sent,
                            None,
                            None,
                            (),
                            f"{type(exc).__name__}: {exc}",
                            time.monotonic(),
                        )
                    )
                    client.close()
                    client = ApiClient(self.server)
                else:
                    body: dict[str, Any] = reply.json() if reply.status == 200 else {}
                    self.samples.append(
                        Sample(
                            route,
                            sent,
                            reply.status,
                            body.get("degraded"),
                            tuple(body.get("degraded_reasons", ())),
                            None if reply.status < 500 else reply.body.decode(errors="replace"),
                            time.monotonic(),
                        )
                    )
                next_at = max(next_at + period, time.monotonic())  # late: no catch-up burst
                self.stopping.wait(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()

    def request_of(self, n: int) -> tuple[str, dict[str, Any]]:
        """The n-th request: a transaction (odd n, or every n without `propensity`) or a
        product view (even n)."""
        if n % 2 or not self.propensity:
            return "/v1/score", transaction(
                f"L-{n:06d}",
                f"C-{n % CUSTOMERS}",
                f"TERM-{n % TERMINALS}",
                round(5 + n % 300 * 0.7, 2),
                self.now_ms,
            )
        user = f"U-{n % CUSTOMERS}"
        return "/v1/propensity", {
            "event_id": f"LC-{n:06d}", "user_id": user, "session_id": f"{user}-S1",
            "event_type": "product_view", "product_id": f"P-{n % 50}", "category": "shoes",
            "price": round(5 + n % 300 * 0.7, 2), "event_time": self.now_ms,
        }  # fmt: skip

    def answered_ok_since(self, moment: float) -> bool:
        """True once a request sent after `moment` got a non-degraded 200."""
        routes = {
            s.route
            for s in self.samples
            if s.sent > moment and s.status == 200 and s.degraded is False
        }
        return routes == ({"/v1/score", "/v1/propensity"} if self.propensity else {"/v1/score"})


def timeline(samples: list[Sample], origin: float, step_s: float = 0.5) -> str:
    """Per `step_s` from `origin`: requests, degraded, failed (for failure messages)."""
    buckets: dict[int, list[int]] = {}
    for s in samples:
        row = buckets.setdefault(int((s.sent - origin) // step_s), [0, 0, 0])
        row[0] += 1
        row[1] += s.degraded is True
        row[2] += s.status != 200
    return " ".join(f"{b * step_s:+.1f}s:{n}/{d}d/{f}f" for b, (n, d, f) in sorted(buckets.items()))


def test_redis_outage_degrades_the_api_without_errors_and_the_stream_loses_nothing(
    emulator_endpoint: str, redis_server: PersistentRedis, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    txs = [
        transaction(
            f"O-{i:06d}",
            f"C-{i % CUSTOMERS}",
            f"TERM-{(i * 7) % TERMINALS}",
            round(3.0 + (i * 37) % 400 * 0.61, 2),
            now_ms - (N - i) * 1_000,
        )
        for i in range(N)
    ]
    app, clients = provision(emulator_endpoint, redis_server.url(), prefix="out")
    stream = str(app.stack.physical["TransactionsStream"].ref)
    settings = LocalSettings.from_env(
        {
            "KESTREL_RUN_DIR": str(tmp_path / "run"),
            "AWS_ENDPOINT_URL": emulator_endpoint,
            "KESTREL_POLL_INTERVAL_S": "0.02",
        }
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction"], log_dir=tmp_path / "logs"
    )
    (mapping,) = runtime.kinesis
    store = redis.Redis.from_url(redis_server.url())

    def produce() -> None:  # N transactions over about 5 s, across the outage
        for start in range(0, N, 100):
            put_transactions(clients, stream, txs[start : start + 100])
            time.sleep(0.25)

    producer = threading.Thread(target=produce, name="producer", daemon=True)
    with running_api(app, emulator_endpoint, redis_server.url(), tmp_path / "api", API_ENV) as api:
        load = ScoreLoad(api, now_ms)
        warm = ApiClient(api)
        try:  # the propensity model loads now, not while the stream starts under load
            route, doc = load.request_of(0)
            assert warm.request("POST", route, doc).status == 200
        finally:
            warm.close()
        runtime.start()
        try:
            load.start()
            producer.start()
            started = time.monotonic()
            wait_until(  # the stream is running: the outage will hit it mid-flight
                lambda: mapping.stats.succeeded >= 300, timeout_s=60, what="300 records handled"
            )
            time.sleep(max(0.0, started + BASELINE_S - time.monotonic()))
            applied_before_outage = store.exists(
                *(decision_key(str(t["transaction_id"])) for t in txs)
            )
            assert redis_server.terminate() == 0, "redis-server did not shut down cleanly"
            down_at = time.monotonic()
            assert not redis_server.answers()
            time.sleep(max(0.0, down_at + OUTAGE_S / 2 - time.monotonic()))
            probe = ApiClient(api)
            try:  # a read with no fallback: 503, retry later
                user_down = probe.request("GET", "/v1/users/U-1/features")
            finally:
                probe.close()
            time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
            up_at = time.monotonic()
            redis_server.start()
            wait_until(
                lambda: load.answered_ok_since(up_at), timeout_s=30, what="a non-degraded answer"
            )
            producer.join(30)
            wait_until(
                lambda: mapping.stats.succeeded + mapping.stats.discarded >= N,
                timeout_s=90,
                what=f"{N} records handled ({mapping.stats.summary()})",
            )
            drained_at = time.monotonic()
            time.sleep(QUIET_S)
            load.stopping.set()
            load.join(10)
            probe = ApiClient(api)
            try:
                health = probe.request("GET", "/health").json()
                user_up = probe.request("GET", "/v1/users/U-1/features")
            finally:
                probe.close()
        finally:
            load.stopping.set()
            runtime.stop()

    samples = load.samples
    seen = timeline(samples, down_at)
    print(f"requests per 0.5 s from the outage (n/degraded/failed): {seen}")
    print(f"stream: {mapping.stats.summary()}")
    assert not load.is_alive() and not producer.is_alive()
    errors = [s for s in samples if s.error is not None]
    assert not errors, f"{len(errors)} of {len(samples)} requests failed: {errors[:5]}"
    assert all(s.status == 200 for s in samples), {s.status for s in samples}
    expected = RATE_PER_S * (drained_at + QUIET_S - started)
    assert len(samples) >= 0.6 * expected, f"only {len(samples)} requests (~{expected:.0f} due)"
    before = [s for s in samples if s.sent < down_at - 0.5]
    during = [s for s in samples if down_at < s.sent < up_at]
    recovering = [s for s in samples if up_at < s.sent < drained_at]
    quiet = [s for s in samples if s.sent > drained_at + 0.2]
    assert before and all(s.degraded is False for s in before), seen
    assert len(during) >= RATE_PER_S * OUTAGE_S * 0.5, len(during)
    assert all(s.degraded is True for s in during), f"scored by the model without Redis: {seen}"
    assert all(s.reasons == ("feature_store_unavailable",) for s in during)
    # The breaker half-opened, closed, and stays closed: the model answers again.
    assert any(s.degraded is False for s in recovering), seen
    assert len(quiet) >= RATE_PER_S * QUIET_S * 0.4, seen
    assert all(s.degraded is False for s in quiet), f"the breaker did not close: {seen}"
    for route in ("/v1/score", "/v1/propensity"):  # both routes ran in every phase
        assert all(any(s.route == route for s in phase) for phase in (before, during, quiet))
    assert user_down.status == 503 and user_down.headers["retry-after"] == "1", user_down.body
    assert user_down.json()["error"] == "feature_store_unavailable"
    assert user_up.status == 200 and user_up.json()["known"] is False, user_up.body
    assert health["checks"]["redis"]["ok"] is True, health
    assert health["checks"]["redis"]["breaker"] == "closed", health

    # The outage really hit the stream, and every transaction was applied exactly once.
    assert 0 < applied_before_outage < N, applied_before_outage
    assert mapping.stats.function_errors > 0, mapping.stats.summary()
    assert mapping.stats.discarded == 0, mapping.stats.summary()
    on_failure = clients.client("sqs").receive_message(
        QueueUrl=app.stack.physical["OnFailureQueue"].ref, WaitTimeSeconds=0
    )
    assert not on_failure.get("Messages"), on_failure
    for t in txs:
        held = stored_transactions(store, f"kestrel:{{c:{t['customer_id']}}}:log")
        assert held.get(str(t["transaction_id"])) == t["event_time"], t
    per_customer = sum(
        len(stored_transactions(store, f"kestrel:{{c:C-{c}}}:log")) for c in range(CUSTOMERS)
    )
    per_terminal = sum(
        len(stored_transactions(store, f"kestrel:{{t:TERM-{t}}}:log")) for t in range(TERMINALS)
    )
    assert per_customer == per_terminal == N
    decisions = list(store.scan_iter(match="kestrel:{d:*", count=1000))
    assert len(decisions) == N
    for t in txs:
        stored = store.get(decision_key(str(t["transaction_id"])))
        assert stored is not None and json.loads(stored)["source"] == "stream", t

    # Exactly once: the state equals one clean pass of the same transactions.
    clean = redis.Redis.from_url(redis_server.url(1))
    clean.flushdb()
    replay = RedisFeatureStore(clean).apply_transactions([transaction_from_mapping(t) for t in txs])
    assert not any(isinstance(r, Exception) for r in replay)
    assert feature_state(store) == feature_state(clean)
