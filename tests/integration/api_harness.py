"""The scoring API harness: a fresh Kestrel stack and ``kestrel_local serve`` over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from kestrel.adapters.glue_registry import GlueSchemaRegistry, register_all
from kestrel_local.aws import AwsClients
from kestrel_local.processes import LOOPBACK, free_port, stop_child
from kestrel_local.provision import LocalApp, bind

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = ROOT / "template.yaml"
READY = re.compile(r"warm-up score answered (\d+)")
SERVE_START_TIMEOUT_S = 60.0

Json = dict[str, Any]


def provision(
    endpoint: str,
    redis_url: str,
    prefix: str = "api",
    parameters: Mapping[str, str] | None = None,
) -> tuple[LocalApp, AwsClients]:
    """Kestrel's template as a fresh stack on the emulator, its schemas registered.

    `parameters` are template parameters beyond RedisUrl (e.g. RedisCluster).
    """
    clients = AwsClients(endpoint)
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    app, _ = bind(
        TEMPLATE, clients, name, {"RedisUrl": redis_url, **(parameters or {})}, create=True
    )
    register_all(GlueSchemaRegistry(clients.client("glue"), name))
    return app, clients


@dataclass
class ApiServer:
    """A running ``kestrel_local serve`` process on a loopback port."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    key: str
    log_file: Path

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT."""
        return f"http://{self.host}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output (for failure messages)."""
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-chars:]


@contextmanager
def running_api(
    app: LocalApp,
    endpoint: str,
    redis_url: str,
    run_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    parameters: Mapping[str, str] | None = None,
) -> Iterator[ApiServer]:
    """`python -m kestrel_local serve` for `app`'s stack, ready (warm-up answered 200).

    `parameters` are template parameters beyond RedisUrl, as `provision` took them.

    The server is stopped (SIGTERM to its process group, SIGKILL after 10 s) on exit,
    whatever happened.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    key = secrets.token_urlsafe(18)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # The packages this test session imports (a checkout's own, not an installed copy).
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "AWS_ENDPOINT_URL": endpoint,
        "KESTREL_RUN_DIR": str(run_dir),
        "KESTREL_API_KEY": key,
        **(extra_env or {}),
    }
    if os.environ.get("PYTHONPATH"):  # the server runs the same code as this process
        env.setdefault("PYTHONPATH", os.environ["PYTHONPATH"])
    command = [
        sys.executable, "-m", "kestrel_local", "serve",
        "--template", str(TEMPLATE),
        "--stack-name", app.stack.stack_name,
        "--host", LOOPBACK,
        "--port", str(port),
        "--parameter-overrides",
        " ".join(f"{k}={v}" for k, v in {"RedisUrl": redis_url, **(parameters or {})}.items()),
    ]  # fmt: skip
    log_file = run_dir / "serve.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ApiServer(process, LOOPBACK, port, key, log_file)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_child(process, 10.0)


def _wait_ready(server: ApiServer) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = READY.search(server.log_tail(100_000))
        if found:
            assert found.group(1) == "200", (
                f"warm-up answered {found.group(1)}:\n{server.log_tail()}"
            )
            return
        if server.process.poll() is not None:
            raise AssertionError(
                f"serve exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        time.sleep(0.05)
    raise AssertionError(f"serve not ready in {SERVE_START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class ApiClient:
    """One keep-alive HTTP/1.1 connection to the API (`reused_connection` tells a reconnect)."""

    def __init__(self, server: ApiServer, timeout_s: float = 10.0) -> None:
        self.server = server
        self.connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout_s)
        self.connection.connect()
        self.socket = self.connection.sock

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = "",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request; `key` "" means the server's key, None means no key header."""
        sent = dict(headers or {})
        if key is not None:
            sent["x-api-key"] = key or self.server.key
        payload: bytes | None = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("content-type", "application/json")
        self.connection.request(method, path, payload, sent)
        response = self.connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def score(self, tx: Mapping[str, Any]) -> Json:
        """POST /v1/score; the decision (asserts 200)."""
        reply = self.request("POST", "/v1/score", tx)
        assert reply.status == 200, (reply.status, reply.body)
        body: Json = reply.json()
        return body

    def reused_connection(self) -> bool:
        """True while every request so far went over the first TCP connection."""
        return self.connection.sock is self.socket and self.socket is not None

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def transaction(
    tid: str, customer: str, terminal: str, amount: float, at_ms: int
) -> dict[str, Any]:
    """A transaction as the producer and the API take it (event_time in epoch ms)."""
    return {
        "transaction_id": tid,
        "customer_id": customer,
        "terminal_id": terminal,
        "amount": amount,
        "event_time": at_ms,
    }


def put_transactions(
    clients: AwsClients,
    stream: str,
    txs: Sequence[Mapping[str, Any]],
    partition_key: str | None = None,
) -> None:
    """PutRecords (JSON; partition key customer_id unless given), in order, 500 a call."""
    kinesis = clients.client("kinesis")
    records = [
        {"Data": json.dumps(t).encode(), "PartitionKey": partition_key or str(t["customer_id"])}
        for t in txs
    ]
    for start in range(0, len(records), 500):
        reply = kinesis.put_records(StreamName=stream, Records=records[start : start + 500])
        assert reply["FailedRecordCount"] == 0


def read_stream(clients: AwsClients, stream: str) -> list[Json]:
    """Every record of every shard of `stream`, from the start, decoded as JSON."""
    kinesis = clients.client("kinesis")
    out: list[Json] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            reply = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            out += [json.loads(r["Data"]) for r in reply["Records"]]
            if not reply["Records"]:
                break
            iterator = reply.get("NextShardIterator")
    return out


def decision_key(transaction_id: str) -> str:
    """Where the stream stores a transaction's decision."""
    return f"kestrel:{{d:{transaction_id}}}"


def redis_snapshot(client: redis.Redis) -> dict[bytes, tuple[Any, ...]]:
    """Every key: its type, content (type-aware read), DUMP bytes and PTTL."""
    snapshot: dict[bytes, tuple[Any, ...]] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"zset":
            content: Any = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            content = client.hgetall(key)
        elif kind == b"string":
            content = client.get(key)
        else:
            content = None
        snapshot[key] = (kind, content, client.dump(key), client.pttl(key))
    return snapshot


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Sample = tuple[str, tuple[tuple[str, str], ...]]


def prometheus_samples(text: str) -> dict[Sample, float]:
    """Prometheus text exposition: (name, sorted labels) -> value."""
    samples: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = SAMPLE.match(line)
        assert found, f"not a Prometheus sample line: {line!r}"
        name, labels, value = found.groups()
        pairs = tuple(sorted(LABEL.findall(labels or "")))
        samples[(name, pairs)] = float(value)
    return samples


def writes_so_far(client: redis.Redis) -> int:
    """The server's count of writes (INFO persistence rdb_changes_since_last_save)."""
    return int(client.info("persistence")["rdb_changes_since_last_save"])
