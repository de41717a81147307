"""Redis Cluster in production: REDIS_CLUSTER, the template parameter, slots and routing.

No network: the settings are parsed from dicts, hash slots computed with redis-py's CRC16,
the cluster's routing checked on a double that records what the pipeline was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from kestrel.adapters.redis_scripts import (
    customer_fraud_key,
    customer_keys,
    decision_key,
    terminal_keys,
)
from kestrel.adapters.redis_telemetry import TOTALS_KEY, bucket_key
from kestrel.adapters.redis_wire import Command, send_batch
from kestrel.connections import Deferred
from kestrel.settings import Settings, SettingsError
from kestrel_local.redis_cluster import NodeRole, cluster_roles
from kestrel_local.template import load_template

TEMPLATE = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
ids = st.text(min_size=0, max_size=40)  # any id, braces, colons and newlines included


def slots(keys: Sequence[str]) -> set[int]:
    """The hash slots of `keys`."""
    return {key_slot(key.encode()) for key in keys}


def test_redis_cluster_setting_defaults_to_one_server() -> None:
    assert Settings.from_env({}).redis_cluster is False


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("TRUE", True), ("false", False)])
def test_redis_cluster_setting_reads_true_and_false(raw: str, expected: bool) -> None:
    env = {"REDIS_URL": "rediss://clustercfg.kestrel.abc.use1.cache.amazonaws.com:6379"}
    assert Settings.from_env({**env, "REDIS_CLUSTER": raw}).redis_cluster is expected


@pytest.mark.parametrize("raw", ["yes", "1", "on", "cluster"])
def test_redis_cluster_setting_refuses_other_values_naming_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_CLUSTER: must be true or false"):
        Settings.from_env({"REDIS_CLUSTER": raw})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("unix:///run/redis.sock", "not a socket"),
        ("redis://:hunter2@cache:6379/3", "database 0 only"),
        ("redis://cache:6379?db=2", "database 0 only"),
    ],
)
def test_redis_cluster_setting_refuses_urls_a_cluster_cannot_use(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=rf"^REDIS_CLUSTER: .*{problem}") as caught:
        Settings.from_env({"REDIS_URL": url, "REDIS_CLUSTER": "true"})
    assert "hunter2" not in str(caught.value)


def test_redis_cluster_setting_accepts_database_zero_and_none() -> None:
    for url in ("redis://cache:6379", "redis://cache:6379/0", "rediss://u:p@cache:6379/"):
        assert Settings.from_env({"REDIS_URL": url, "REDIS_CLUSTER": "true"}).redis_cluster


def test_redis_cluster_template_parameter_reaches_every_function() -> None:
    parameter = TEMPLATE["Parameters"]["RedisCluster"]
    assert parameter["Default"] == "false"
    assert parameter["AllowedValues"] == ["true", "false"]
    env = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert env["REDIS_CLUSTER"] == {"Ref": "RedisCluster"}
    for name, resource in TEMPLATE["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            own = resource["Properties"].get("Environment", {}).get("Variables", {})
            assert "REDIS_CLUSTER" not in own and "REDIS_URL" not in own, name


@given(ids)
def test_redis_cluster_each_script_call_touches_one_slot(entity: str) -> None:
    assert len(slots(customer_keys(entity))) == 1
    assert len(slots(terminal_keys(entity))) == 1
    assert len(slots([customer_fraud_key(entity), *customer_keys(entity)])) == 1
    assert len(slots([decision_key(entity)])) == 1


@given(st.integers(min_value=0, max_value=2**40))
def test_redis_cluster_telemetry_script_keys_share_a_slot(second: int) -> None:
    assert slots([bucket_key(second), TOTALS_KEY]) == slots([TOTALS_KEY])


class PipelineDouble:
    """Records what a cluster pipeline is asked to run, and answers each command with 'OK'."""

    def __init__(self) -> None:
        self.queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.queued.append((args, options))

    def execute(self, raise_on_error: bool = True) -> list[str]:
        assert raise_on_error is False
        return ["OK"] * len(self.queued)


class ClusterDouble:
    """A cluster client's routing: slot from the command's keys, primary from the slot."""

    def __init__(self) -> None:
        self.pipe = PipelineDouble()
        self.nodes_manager = self

    def pipeline(self, transaction: bool) -> PipelineDouble:
        assert transaction is False
        return self.pipe

    def determine_slot(self, *command: Any) -> int:
        keys = command[3 : 3 + int(command[2])] if command[0] == "EVALSHA" else command[1:2]
        assert len(slots(keys)) == 1, command
        return key_slot(str(keys[0]).encode())

    def get_node_from_slot(self, slot: int) -> str:
        return f"primary-of-{slot}"


def test_redis_cluster_batch_routes_every_command_to_its_slots_primary() -> None:
    cluster = ClusterDouble()
    keys = terminal_keys("TERM-7")
    commands: list[Command] = [
        ("EVALSHA", "abc", len(keys), *keys, "apply", "t1"),
        ("SET", decision_key("t1"), "{}", "NX", "EX", 60),
    ]
    assert send_batch(cluster, commands) == ["OK", "OK"]
    routed = [(args, options["target_nodes"]) for args, options in cluster.pipe.queued]
    assert routed == [
        (commands[0], f"primary-of-{key_slot(keys[0].encode())}"),
        (commands[1], f"primary-of-{key_slot(decision_key('t1').encode())}"),
    ]


def test_redis_cluster_deferred_adapter_builds_in_its_first_call_and_after_a_failure() -> None:
    built: list[str] = []

    def build() -> str:
        built.append("try")
        if len(built) == 1:
            raise ConnectionError("cluster unreachable")
        return "adapter"

    deferred: Deferred[str] = Deferred(build)
    upper = deferred.upper  # reaching a method builds nothing yet
    assert built == []
    with pytest.raises(ConnectionError):
        upper()
    assert upper() == "ADAPTER"
    assert deferred.lower() == "adapter"
    assert built == ["try", "try"]


NODES = """\
07c3 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002 master,fail - 1700000000000 1700000000000 2 disconnected
292f 127.0.0.1:30003@40003 master - 0 1700000000000 3 connected 10923-16383 [5461->-67ed]
e7d1 127.0.0.1:30004@40004,host.example master - 0 1700000000000 4 connected 5461-10922
6ec2 127.0.0.1:30005@40005 slave 07c3 0 1700000000000 1 connected
"""


def test_redis_cluster_roles_read_from_cluster_nodes() -> None:
    roles = cluster_roles(NODES)
    assert roles[30001] == NodeRole(30001, True, None, False, 5461)
    assert roles[30002] == NodeRole(30002, True, None, True, 0)
    assert roles[30003] == NodeRole(30003, True, None, False, 5461)  # migrating slot left out
    assert roles[30004] == NodeRole(30004, True, None, False, 5462)
    assert roles[30005] == NodeRole(30005, False, 30001, False, 0)
    assert cluster_roles("") == {}
