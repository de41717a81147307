"""The online store on a 3-master Redis Cluster gives exactly the offline features.

`test_feature_store.py` runs every scenario on the cluster too; this module adds proofs
that keys spread over every master, that each entity's keys share one slot, and that
scripts lost by a node are reloaded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest
from redis.cluster import ClusterNode, RedisCluster
from test_feature_store import START_MS, replay_online, synthetic

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.redis_scripts import customer_keys, terminal_keys
from kestrel.events import Transaction
from kestrel.features import feature_vector


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A cluster client on the session's 3-master cluster, emptied before and after."""
    client = RedisCluster.from_url(redis_cluster_url)
    assert len(primaries(client)) == 3
    client.flushall()  # on every primary
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def store(cluster: RedisCluster) -> RedisFeatureStore:
    """The feature store on the cluster client."""
    return RedisFeatureStore(cluster)


def primaries(cluster: RedisCluster) -> list[ClusterNode]:
    """The cluster's primaries (typed wrapper)."""
    nodes: list[ClusterNode] = cluster.get_primaries()  # type: ignore[no-untyped-call]
    return nodes


def slot(cluster: RedisCluster, key: str) -> int:
    """The hash slot of `key` (typed wrapper)."""
    return int(cluster.keyslot(key))  # type: ignore[no-untyped-call]


def node_keys(cluster: RedisCluster) -> dict[str, list[str]]:
    """Every key of the cluster, by the name (host:port) of the primary that holds it."""
    return {
        node.name: [k.decode() for k in cluster.get_redis_connection(node).scan_iter(count=1000)]
        for node in primaries(cluster)
    }


def test_cluster_keys_spread_over_every_master_and_one_entity_is_one_slot(
    cluster: RedisCluster, store: RedisFeatureStore
) -> None:
    tx, labels = synthetic(4, days=12)
    replay_online(store, tx, labels)
    by_node = node_keys(cluster)
    assert len(by_node) == 3
    for node in primaries(cluster):
        assert cluster.get_redis_connection(node).dbsize() > 0, node.name
    entity_slots: dict[str, set[int]] = defaultdict(set)
    entity_nodes: dict[str, set[str]] = defaultdict(set)
    for name, keys in by_node.items():
        for key in keys:
            tag = key[key.index("{") + 1 : key.index("}")]
            entity_slots[tag].add(slot(cluster, key))
            entity_nodes[tag].add(name)
    assert entity_slots.keys() == {
        *(f"c:{c}" for c in tx["customer_id"]),
        *(f"t:{t}" for t in tx["terminal_id"]),
    }
    assert all(len(slots) == 1 for slots in entity_slots.values()), entity_slots
    assert all(len(nodes) == 1 for nodes in entity_nodes.values()), entity_nodes
    for keys in (customer_keys("C001"), terminal_keys("TERM001")):
        assert len({slot(cluster, k) for k in keys}) == 1
    assert len({n for nodes in entity_nodes.values() for n in nodes}) == 3


def test_cluster_store_reloads_scripts_a_node_lost(
    cluster: RedisCluster, store: RedisFeatureStore
) -> None:
    """After SCRIPT FLUSH on every node, batches still run (NOSCRIPT -> load -> resend)."""
    updates = [
        Transaction(f"S{n}", f"C{n % 7}", f"TERM{n % 5}", 10.0 + n, START_MS + n * 60_000)
        for n in range(40)
    ]
    first = store.apply_transactions(updates)
    assert all(not isinstance(r, Exception) and r.applied for r in first), first
    masters = primaries(cluster)
    for node in masters:
        conn = cluster.get_redis_connection(node)
        assert all(conn.script_exists(store._customer.sha, store._terminal.sha))
        conn.script_flush()
        assert not any(conn.script_exists(store._customer.sha, store._terminal.sha))
    again = store.apply_transactions(updates)
    for update, before, after in zip(updates, first, again, strict=True):
        assert not isinstance(before, Exception) and not isinstance(after, Exception)
        assert not after.applied
        assert feature_vector(update.amount, update.event_time_ms, after.customer,
                              after.terminal) == feature_vector(
            update.amount, update.event_time_ms, before.customer, before.terminal)  # fmt: skip
    for node in masters:
        conn = cluster.get_redis_connection(node)
        assert all(conn.script_exists(store._customer.sha, store._terminal.sha))
