"""A throwaway Redis Cluster of real redis-server processes on loopback, for tests.

`running_cluster` starts N masters and R replicas of each on free 127.0.0.1 ports, each
in its own directory under a given one, with cluster mode on and persistence off; joins
them with `redis-cli --cluster create`; waits until every node reports
`cluster_state:ok` and every replica is in sync with its master; yields a `LocalCluster`
(the nodes, their URLs, and what a failover test needs: each node's role, killing a
node, waiting for its replica to take over); and stops every node on exit, whatever
happened in between. `running_redis_cluster` is the same without replicas, yielding only
the URLs (any one is a valid startup node for `redis.cluster.RedisCluster.from_url`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
        replicas: a master's replicas' ports (set once the cluster is in sync).
    """

    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes]
    replicas: tuple[int, ...] = ()

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


def cluster_node_command(
    port: int,
    bus_port: int,
    directory: Path,
    node_timeout_ms: int = NODE_TIMEOUT_MS,
) -> list[str]:
    """Return the argv of one loopback-only, cluster-enabled redis-server without persistence.

    `node_timeout_ms` is how long a master may not answer before its replica takes over.

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
        "--cluster-node-timeout", str(node_timeout_ms),
        "--repl-diskless-sync-delay", "0",  # a replica's first sync starts at once
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip


def _start_node(parent: Path, node_timeout_ms: int) -> ClusterNode:
    port, bus_port = free_port(), free_port()
    while bus_port == port:
        bus_port = free_port()
    directory = parent / f"node-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        cluster_node_command(port, bus_port, directory, node_timeout_ms),
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


def _create(nodes: list[ClusterNode], replicas: int, timeout_s: float) -> None:
    addresses = [f"{LOOPBACK}:{n.port}" for n in nodes]
    argv = [find_redis_cli(), "--cluster", "create", *addresses,
            "--cluster-replicas", str(replicas), "--cluster-yes"]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"redis-cli --cluster create timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-10:]
        raise ServiceError(f"redis-cli --cluster create failed ({done.returncode}): {output}")


@dataclass(frozen=True, slots=True)
class NodeRole:
    """A node's place in the cluster, as a live node's CLUSTER NODES reports it.

    Attributes:
        port: the node's client port.
        primary: True for a master.
        master_port: a replica's master (None for a master).
        failed: flagged ``fail`` (the cluster agreed it is down).
        slots: how many hash slots it serves.
    """

    port: int
    primary: bool
    master_port: int | None
    failed: bool
    slots: int


def cluster_roles(text: str) -> dict[int, NodeRole]:
    """Each node's role from CLUSTER NODES `text`, by client port."""
    ids: dict[str, int] = {}
    rows: list[list[str]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        ids[parts[0]] = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1])
        rows.append(parts)
    roles: dict[int, NodeRole] = {}
    for parts in rows:
        flags = set(parts[2].split(","))
        slots = 0
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = item.partition("-")
            slots += int(high or low) - int(low) + 1
        port = ids[parts[0]]
        master = ids.get(parts[3]) if parts[3] != "-" else None
        roles[port] = NodeRole(port, "master" in flags, master, "fail" in flags, slots)
    return roles


@dataclass(slots=True)
class LocalCluster:
    """The nodes of a cluster started by `running_cluster`, and failover helpers.

    Attributes:
        nodes: every node, masters and replicas.
        killed: the ports of the nodes `kill` stopped.
    """

    nodes: list[ClusterNode]
    killed: set[int] = field(default_factory=set)

    @property
    def urls(self) -> list[str]:
        """Every node's `redis://` URL."""
        return [node.url for node in self.nodes]

    def node(self, port: int) -> ClusterNode:
        """The node listening on `port`."""
        return next(node for node in self.nodes if node.port == port)

    def roles(self) -> dict[int, NodeRole]:
        """Every node's role as the first live node that answers sees it.

        Raises:
            ServiceError: no live node answered.
        """
        for node in self.nodes:
            if node.port in self.killed:
                continue
            client = _client(node)
            try:
                text = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
                return cluster_roles(str(text))
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        raise ServiceError("no node of the cluster answers")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL `node` (no shutdown, no last write to its replicas) and reap it."""
        self.killed.add(node.port)
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(STOP_TIMEOUT_S)

    def wait_failover(self, dead: ClusterNode, timeout_s: float = CLUSTER_TIMEOUT_S) -> int:
        """Wait until a replica of `dead` is a master and every live node reports
        `cluster_state:ok`; return the promoted replica's port.

        Raises:
            ServiceError: not within `timeout_s` (the message holds the roles seen last).
        """
        deadline = time.monotonic() + timeout_s
        roles: dict[int, NodeRole] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(ServiceError):
                roles = self.roles()
                promoted = [
                    r.port
                    for r in roles.values()
                    if r.primary and r.slots and r.port not in self.killed
                    and r.port in dead.replicas
                ]  # fmt: skip
                if promoted and self._all_ok():
                    return promoted[0]
            time.sleep(0.02)
        raise ServiceError(f"no replica of {dead.port} took over in {timeout_s:.0f} s: {roles}")

    def _all_ok(self) -> bool:
        for node in self.nodes:
            if node.port in self.killed:
                continue
            client = _client(node)
            try:
                if _cluster_state(client) != "ok":
                    return False
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
        return True


def _wait_replicas(cluster: LocalCluster, replicas: int, deadline: float) -> None:
    """Wait until each master has `replicas` replicas in sync; note them on the masters."""
    while True:
        roles = cluster.roles()
        masters = [r for r in roles.values() if r.primary]
        synced = all(_in_sync(cluster.node(r.port)) for r in roles.values() if not r.primary)
        counts = {m.port: [r.port for r in roles.values() if r.master_port == m.port]
                  for m in masters}  # fmt: skip
        if synced and all(len(ports) == replicas for ports in counts.values()):
            for port, ports in counts.items():
                cluster.node(port).replicas = tuple(ports)
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"replicas not in sync in time: {roles}")
        time.sleep(0.05)


def _in_sync(node: ClusterNode) -> bool:
    client = _client(node)
    try:
        info = client.info("replication")
        return bool(info.get("master_link_status") == "up")
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@contextlib.contextmanager
def running_cluster(
    directory: Path,
    masters: int = 3,
    replicas: int = 0,
    *,
    node_timeout_ms: int = NODE_TIMEOUT_MS,
    timeout_s: float = CLUSTER_TIMEOUT_S,
) -> Iterator[LocalCluster]:
    """Run a fresh Redis Cluster of `masters` masters with `replicas` replicas each.

    Each node listens on a free 127.0.0.1 port (and a free cluster bus port), keeps its
    cluster config file and log in `directory/node-<port>/`, and has persistence off.
    Yields once every node reports `cluster_state:ok` and every replica is in sync; every
    node is stopped (and reaped) on exit, also when startup fails.

    Raises:
        ServiceError: redis-server or redis-cli is missing, a node exited or did not
            answer, or the cluster was not created, ok and in sync within `timeout_s`.
    """
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    deadline = time.monotonic() + timeout_s
    nodes: list[ClusterNode] = []
    try:
        for _ in range(masters * (1 + replicas)):
            nodes.append(_start_node(directory, node_timeout_ms))
        _wait(nodes, "ping", deadline)
        _create(nodes, replicas, max(1.0, deadline - time.monotonic()))
        _wait(nodes, "ok", deadline)
        cluster = LocalCluster(nodes)
        _wait_replicas(cluster, replicas, deadline)
        yield cluster
    finally:
        for node in nodes:
            node.stop()


@contextlib.contextmanager
def running_redis_cluster(
    directory: Path, masters: int = 3, timeout_s: float = CLUSTER_TIMEOUT_S
) -> Iterator[list[str]]:
    """Run a fresh `masters`-node Redis Cluster (no replicas) on loopback in `directory`.

    Yields the nodes' `redis://127.0.0.1:<port>` URLs once every node reports
    `cluster_state:ok` (see `running_cluster`).

    Raises:
        ServiceError: as `running_cluster`.
    """
    with running_cluster(directory, masters, timeout_s=timeout_s) as cluster:
        yield cluster.urls
