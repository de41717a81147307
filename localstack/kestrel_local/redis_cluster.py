"""A throwaway Redis Cluster of real redis-server processes on loopback, for tests.

`running_redis_cluster` starts N masters (no replicas) on free 127.0.0.1 ports, each in
its own directory under a given one, with cluster mode on and persistence off; joins
them with `redis-cli --cluster create`; waits until every node reports
`cluster_state:ok`; yields the nodes' `redis://` URLs (any one is a valid startup node
for `redis.cluster.RedisCluster.from_url`); and stops every node on exit, whatever
happened in between.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from kestrel_local.processes import LOOPBACK, free_port, stop_child
from kestrel_local.services import ServiceError, find_redis_server, redis_command

CLUSTER_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
NODE_TIMEOUT_MS = 5000


@dataclass(slots=True)
class ClusterNode:
    """One redis-server of the cluster, started by `running_redis_cluster`.

    Attributes:
        port: the client port on 127.0.0.1.
        bus_port: the cluster bus port on 127.0.0.1 (chosen free, not port + 10000).
        directory: the node's working directory (cluster config file and log).
        process: the server process, in its own session.
    """

    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The node's `redis://` URL."""
        return f"redis://{LOOPBACK}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Where the node writes its log."""
        return self.directory / "redis.log"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the node (SIGTERM, SIGKILL after `timeout_s`) and reap it."""
        stop_child(self.process, timeout_s)


def find_redis_cli() -> str:
    """Return the path of redis-cli: from PATH, else next to redis-server.

    Raises:
        ServiceError: redis-cli (or redis-server) is not installed.
    """
    found = shutil.which("redis-cli")
    if found:
        return found
    candidate = Path(find_redis_server()).with_name("redis-cli")
    if candidate.is_file():
        return str(candidate)
    raise ServiceError("redis-cli is not installed (it comes with the redis-server package)")


def cluster_node_command(port: int, bus_port: int, directory: Path) -> list[str]:
    """Return the argv of one loopback-only, cluster-enabled redis-server without persistence.

    Raises:
        ServiceError: redis-server is not installed.
    """
    # Later options win in redis-server's argv: the standalone server's, plus cluster mode.
    return [
        *redis_command(port, directory),
        "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf",
        "--cluster-port", str(bus_port),
        "--cluster-announce-ip", LOOPBACK,
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip


def _start_node(parent: Path) -> ClusterNode:
    port, bus_port = free_port(), free_port()
    while bus_port == port:
        bus_port = free_port()
    directory = parent / f"node-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        cluster_node_command(port, bus_port, directory),
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return ClusterNode(port, bus_port, directory, process)


def _client(node: ClusterNode) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=node.port, socket_timeout=1.0,
                       socket_connect_timeout=1.0, decode_responses=True)  # fmt: skip


def _cluster_state(client: redis.Redis) -> str:
    """The node's `cluster_state` from CLUSTER INFO (redis-py parses the reply to a dict)."""
    info = client.cluster("INFO")
    if not isinstance(info, dict):
        info = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
    return str(info.get("cluster_state", "")).strip()


def _failure(node: ClusterNode, what: str) -> ServiceError:
    try:
        tail = node.log_file.read_text(errors="replace").splitlines()[-5:]
    except OSError:
        tail = []
    return ServiceError(f"redis cluster node {node.port}: {what}; log {node.log_file}: {tail}")


def _wait(nodes: list[ClusterNode], ready: str, deadline: float) -> None:
    """Wait until every node answers PING ("ping") or reports cluster_state:ok ("ok")."""
    for node in nodes:
        client = _client(node)
        try:
            while True:
                if node.process.poll() is not None:
                    raise _failure(node, f"exited with code {node.process.returncode}")
                with contextlib.suppress(redis.RedisError, OSError):
                    if ready == "ping" and client.ping():
                        break
                    if ready == "ok" and _cluster_state(client) == "ok":
                        break
                if time.monotonic() > deadline:
                    raise _failure(node, f"not {ready} in time")
                time.sleep(0.05)
        finally:
            client.close()


def _create(nodes: list[ClusterNode], timeout_s: float) -> None:
    addresses = [f"{LOOPBACK}:{n.port}" for n in nodes]
    argv = [find_redis_cli(), "--cluster", "create", *addresses,
            "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"redis-cli --cluster create timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-10:]
        raise ServiceError(f"redis-cli --cluster create failed ({done.returncode}): {output}")


@contextlib.contextmanager
def running_redis_cluster(
    directory: Path, masters: int = 3, timeout_s: float = CLUSTER_TIMEOUT_S
) -> Iterator[list[str]]:
    """Run a fresh `masters`-node Redis Cluster (no replicas) on loopback in `directory`.

    Each node listens on a free 127.0.0.1 port (and a free cluster bus port), keeps its
    cluster config file and log in `directory/node-<port>/`, and has persistence off.
    Yields the nodes' `redis://127.0.0.1:<port>` URLs once every node reports
    `cluster_state:ok`; every node is stopped (and reaped) on exit, also when startup
    fails.

    Raises:
        ServiceError: redis-server or redis-cli is missing, a node exited or did not
            answer, or the cluster was not created and ok within `timeout_s`.
    """
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    deadline = time.monotonic() + timeout_s
    nodes: list[ClusterNode] = []
    try:
        for _ in range(masters):
            nodes.append(_start_node(directory))
        _wait(nodes, "ping", deadline)
        _create(nodes, max(1.0, deadline - time.monotonic()))
        _wait(nodes, "ok", deadline)
        yield [node.url for node in nodes]
    finally:
        for node in nodes:
            node.stop()
