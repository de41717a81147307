"""`kestrel.clients` with REDIS_CLUSTER=true on the session's 3-master cluster.

The factories build cluster clients (the API's with its budget), every adapter works
through them, a batch costs no more than its own commands (no per-command key lookup on
another node), and an API whose cluster is unreachable at cold start degrades.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis.cluster import ClusterNode, RedisCluster

from kestrel import clients
from kestrel.decisions import Degraded
from kestrel.events import Transaction
from kestrel.telemetry import TelemetryUnavailable, error_figures
from kestrel_local.processes import free_port


@pytest.fixture
def cluster_env(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    """The functions' environment for the session's cluster, an emptied cluster, and no
    cached clients either side."""
    monkeypatch.setenv("REDIS_URL", redis_cluster_url)
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.setenv("REDIS_BUDGET_MS", "250")
    for key in ("REDIS_PASSWORD", "REDIS_TLS_CA_CERTS", "MODEL_BUCKET"):
        monkeypatch.delenv(key, raising=False)
    admin = RedisCluster.from_url(redis_cluster_url)
    admin.flushall()
    clients.reset()
    yield monkeypatch
    clients.reset()
    admin.flushall()
    admin.close()


def primaries(cluster: RedisCluster) -> list[ClusterNode]:
    """The cluster's primaries (typed wrapper)."""
    nodes: list[ClusterNode] = cluster.get_primaries()  # type: ignore[no-untyped-call]
    return nodes


def command_calls(cluster: RedisCluster, command: str) -> int:
    """How many times the primaries ran `command` (INFO commandstats, e.g. evalsha)."""
    total = 0
    for node in primaries(cluster):
        stats = cluster.get_redis_connection(node).info("commandstats")
        total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return total


def sample(n: int, at_ms: int) -> list[Transaction]:
    """`n` transactions over 40 customers and 13 terminals, one second apart."""
    return [
        Transaction(f"K-{i}", f"C-{i % 40}", f"TERM-{i % 13}", 5.0 + i, at_ms + i * 1000)
        for i in range(n)
    ]


def test_cluster_clients_factories_build_cluster_clients_and_every_adapter_works(
    cluster_env: pytest.MonkeyPatch,
) -> None:
    stream, api = clients.redis_client(), clients.api_redis_client()
    assert isinstance(stream, RedisCluster) and isinstance(api, RedisCluster)
    assert len(primaries(stream)) == 3
    assert api.nodes_manager.connection_kwargs["socket_timeout"] == pytest.approx(0.25)
    now_ms = int(time.time() * 1000)
    txs = sample(200, now_ms - 300_000)
    applied = clients.feature_store().apply_transactions(txs)
    assert all(not isinstance(r, Exception) and r.applied for r in applied), applied[:3]
    decided = clients.scoring_service().score(txs[:20])
    assert all(not d.degraded for d in decided), decided[:3]
    clients.decision_store().publish(decided)
    assert clients.scoring_service().decision("K-3") == decided[3]
    clients.telemetry().record(error_figures(time.time()))
    snapshot = clients.telemetry_service().snapshot(60)
    assert snapshot.totals.get("batch_errors") == 1, snapshot.totals


def test_cluster_clients_batch_sends_only_its_own_commands(
    cluster_env: pytest.MonkeyPatch,
) -> None:
    store, client = clients.feature_store(), clients.redis_client()
    assert isinstance(client, RedisCluster)
    store.apply_transactions(sample(5, 1_700_000_000_000))  # scripts loaded
    evalsha, getkeys = command_calls(client, "evalsha"), command_calls(client, "command|getkeys")
    txs = sample(300, 1_700_000_100_000)
    assert not any(isinstance(r, Exception) for r in store.apply_transactions(txs))
    assert command_calls(client, "evalsha") - evalsha == 2 * len(txs)  # customer + terminal
    assert command_calls(client, "command|getkeys") == getkeys


def test_cluster_clients_api_degrades_when_the_cluster_is_unreachable_at_cold_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.delenv("MODEL_BUCKET", raising=False)
    clients.reset()
    try:
        service = clients.scoring_service()  # wiring connects to nothing
        (record,) = service.score(sample(1, int(time.time() * 1000)))
        assert record.degraded == (Degraded.FEATURE_STORE_UNAVAILABLE,)
        assert service.health()["checks"]["redis"]["ok"] is False
        with pytest.raises(TelemetryUnavailable, match="cannot be connected"):
            clients.telemetry_service().snapshot(60)
    finally:
        clients.reset()
