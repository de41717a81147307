"""The emulator launcher as a real server subprocess on a free loopback port, driven by boto3."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from kestrel_local.emulator.server import (
    HEALTH_PATH,
    NonLoopbackHostError,
    ensure_loopback,
    health_middleware,
)

READY = "kestrel emulator listening on "


class Server:
    """``python -m kestrel_local.emulator --port 0`` as a subprocess."""

    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kestrel_local.emulator",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready_line = self.wait_for(READY)
        self.url = self.ready_line[len(READY) :].split()[0]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The first stderr line starting with `prefix`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise AssertionError(f"emulator never printed {prefix!r}") from None
            if line.startswith(prefix):
                return line

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and return its exit status (killed after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture()
def kinesis(server: Server) -> Any:
    return boto3.client(
        "kinesis",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


def new_stream(kinesis: Any) -> tuple[str, str]:
    """A fresh one-shard stream: (name, shard id)."""
    name = f"it-{uuid.uuid4().hex[:12]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=name)
    shard_id = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
    return name, shard_id


def read_all(kinesis: Any, iterator: str, limit: int = 500) -> list[dict[str, Any]]:
    """Every record from `iterator` to the current end of the shard."""
    records: list[dict[str, Any]] = []
    while True:
        response = kinesis.get_records(ShardIterator=iterator, Limit=limit)
        records.extend(response["Records"])
        iterator = response["NextShardIterator"]
        if not response["Records"]:
            return records


def iterator_for(kinesis: Any, name: str, shard_id: str, kind: str, **extra: str) -> str:
    """A shard iterator of the given type."""
    response = kinesis.get_shard_iterator(
        StreamName=name, ShardId=shard_id, ShardIteratorType=kind, **extra
    )
    return str(response["ShardIterator"])


@pytest.mark.integration
def test_emulator_ready_line_and_health_check_report_patched(server: Server) -> None:
    assert server.ready_line.endswith("(patched)")
    assert server.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(server.url + HEALTH_PATH, timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok", "patched": True, "moto": "5.2.5"}


@pytest.mark.integration
def test_emulator_reads_back_records_in_order_with_every_iterator_type(kinesis: Any) -> None:
    name, shard_id = new_stream(kinesis)
    sent = [f"record-{i}".encode() for i in range(1200)]
    numbers: list[str] = []
    for start in range(0, len(sent), 500):
        chunk = sent[start : start + 500]
        response = kinesis.put_records(
            StreamName=name, Records=[{"Data": d, "PartitionKey": "pk"} for d in chunk]
        )
        assert response["FailedRecordCount"] == 0
        numbers.extend(r["SequenceNumber"] for r in response["Records"])

    got = read_all(kinesis, iterator_for(kinesis, name, shard_id, "TRIM_HORIZON"), limit=333)
    assert [r["Data"] for r in got] == sent
    assert [r["SequenceNumber"] for r in got] == numbers

    after = iterator_for(
        kinesis, name, shard_id, "AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=numbers[599]
    )
    assert [r["Data"] for r in read_all(kinesis, after)] == sent[600:]

    latest = iterator_for(kinesis, name, shard_id, "LATEST")
    first = kinesis.get_records(ShardIterator=latest, Limit=100)
    assert first["Records"] == []
    more = [f"late-{i}".encode() for i in range(5)]
    kinesis.put_records(StreamName=name, Records=[{"Data": d, "PartitionKey": "k"} for d in more])
    assert [r["Data"] for r in read_all(kinesis, first["NextShardIterator"])] == more


@pytest.mark.integration
def test_emulator_concurrent_producers_lose_and_reorder_nothing(server: Server) -> None:
    def client() -> Any:
        return boto3.client(
            "kinesis",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}),
        )

    name, shard_id = new_stream(client())
    producers, calls, per_call = 6, 8, 250
    errors: list[BaseException] = []

    def produce(p: int) -> None:
        kinesis = client()
        try:
            for c in range(calls):
                records = [
                    {"Data": f"{p}:{c * per_call + i}".encode(), "PartitionKey": f"p{p}"}
                    for i in range(per_call)
                ]
                response = kinesis.put_records(StreamName=name, Records=records)
                assert response["FailedRecordCount"] == 0
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    kinesis = client()
    got = read_all(kinesis, iterator_for(kinesis, name, shard_id, "TRIM_HORIZON"), limit=1000)
    total = producers * calls * per_call
    numbers = [int(r["SequenceNumber"]) for r in got]
    assert numbers == list(range(1, total + 1))
    payloads = [r["Data"].decode() for r in got]
    assert len(set(payloads)) == total
    for p in range(producers):
        mine = [int(d.split(":")[1]) for d in payloads if d.startswith(f"{p}:")]
        assert mine == list(range(calls * per_call))


@pytest.mark.integration
def test_emulator_exits_cleanly_on_sigint() -> None:
    running = Server("--no-patch")
    assert running.ready_line.endswith("(unpatched)")
    assert running.stop(signal.SIGINT) == 0
    assert running.wait_for("kestrel emulator stopped")


@pytest.mark.integration
def test_emulator_refuses_a_non_loopback_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kestrel_local.emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to bind the AWS emulator to '0.0.0.0'" in result.stderr


def test_ensure_loopback_accepts_only_loopback_addresses() -> None:
    for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost"]:
        assert ensure_loopback(host) == host
    for host in ["0.0.0.0", "192.168.1.10", "::", "example.com", ""]:
        with pytest.raises(NonLoopbackHostError, match="loopback"):
            ensure_loopback(host)


def test_health_middleware_answers_health_path_and_passes_the_rest() -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("404 Not Found", [])
        return [b"inner"]

    wrapped = health_middleware(app, patched=False)
    statuses: list[str] = []
    body = wrapped(
        {"PATH_INFO": HEALTH_PATH, "REQUEST_METHOD": "GET"}, lambda s, h: statuses.append(s)
    )
    assert json.loads(b"".join(body)) == {"status": "ok", "patched": False, "moto": "5.2.5"}
    assert (
        b"".join(wrapped({"PATH_INFO": "/", "REQUEST_METHOD": "POST"}, lambda s, h: None))
        == b"inner"
    )
    assert statuses == ["200 OK"]
    assert calls == ["/"]
