"""The engine benchmark's parts: its redis-server, and doubles of what is not the engine."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import redis

from kestrel.batch_outcome import BatchOutcome
from kestrel.codec import schema_definition
from kestrel.ports import DeadLetter
from kestrel.streaming import TransactionPath

VERSION = UUID("5e57c0de-0000-4000-8000-000000000002")  # transaction.v2, registered nowhere


class RedisServer:
    """redis-server on a free loopback port without persistence (optionally on one CPU)."""

    def __init__(self, cpu: int | None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        exe = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else "redis-server"
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, preexec_fn=pin,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port, socket_timeout=60)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                self.client.ping()
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def cpu_seconds(self) -> float:
        """used_cpu_user + used_cpu_sys (INFO cpu)."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def evalsha_usec(self) -> tuple[int, int]:
        """(calls, usec) of EVALSHA since the last CONFIG RESETSTAT (INFO commandstats)."""
        stat = self.client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stat.get("calls", 0)), int(stat.get("usec", 0))

    def stop(self) -> None:
        """SHUTDOWN NOSAVE; kill it if it lingers."""
        with contextlib.suppress(redis.RedisError):
            self.client.shutdown(nosave=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class MemoryLookup:
    """SchemaLookup: transaction.v2 under a fixed version id (nothing is registered)."""

    def schema_for(self, version_id: UUID) -> str:
        if version_id != VERSION:
            raise KeyError(version_id)
        return schema_definition("transaction.v2")


class MemoryS3:
    """The S3 client `S3EventLog` needs, keeping each object's bytes in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:
        self.objects[Key] = Body


class MemoryKinesis:
    """The PutRecords call of a boto3 Kinesis client, accepting everything (no network)."""

    def put_records(self, StreamName: str, Records: list[Any]) -> dict[str, Any]:
        return {"FailedRecordCount": 0, "Records": [{} for _ in Records]}


class NoDeadLetters:
    """DeadLetterSink that refuses: every record of the benchmark is valid."""

    def send(self, letter: DeadLetter) -> None:
        raise RuntimeError(f"unexpected poison record: {letter.reason} {letter.detail}")


class CountingPath(TransactionPath):
    """The real path, also summing outcomes so the benchmark can check nothing failed.

    `shadow_ms` sums the challenger's scoring calls (when one is set: `challenger`).
    """

    totals: ClassVar[dict[str, int]] = {"applied": 0, "duplicates": 0, "failed": 0}
    shadow_ms: float = 0.0

    def run(self, records: Any) -> BatchOutcome:
        outcome = super().run(records)
        self.totals["applied"] += outcome.applied
        self.totals["duplicates"] += outcome.duplicates
        self.totals["failed"] += len(outcome.failures) + outcome.poisoned
        if outcome.shadow is not None:
            if outcome.shadow.error is not None:
                self.totals["failed"] += outcome.applied + outcome.duplicates
            self.shadow_ms += outcome.shadow.ms
        return outcome


class FixedModelSource:
    """A `ModelSource` that serves one model and never changes (the bench's challenger)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def load(self) -> Any:
        return self._model

    def poll(self) -> None:
        return None


@dataclass
class Context:
    """The LambdaContext attributes the handler and Powertools read."""

    function_name: str = "kestrel-TransactionsFunction"
    function_version: str = "$LATEST"
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"
    log_group_name: str = f"/aws/lambda/{function_name}"
    log_stream_name: str = "2026/01/01/[$LATEST]bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000
