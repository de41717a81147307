"""A test harness: the fixture template (not Kestrel's) bound to the real emulator."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp, bind
from kestrel_local.runtime import LocalRuntime

FIXTURE_TEMPLATE = Path(__file__).resolve().parent.parent / "fixtures" / "esm" / "template.yaml"


class EsmHarness:
    """Provisions a fresh copy of the fixture stack and drives the local runtime against it."""

    def __init__(self, endpoint: str, workdir: Path) -> None:
        self.observe_dir = workdir / "observed"
        self.observe_dir.mkdir(parents=True)
        self.clients = AwsClients(endpoint)
        self.stack_name = f"esm{uuid.uuid4().hex[:10]}"
        self.app: LocalApp
        self.app, _ = bind(
            FIXTURE_TEMPLATE,
            self.clients,
            self.stack_name,
            {"ObserveDir": str(self.observe_dir)},
            create=True,
        )
        self.settings = LocalSettings.from_env(
            {
                "KESTREL_RUN_DIR": str(workdir / "run"),
                "AWS_ENDPOINT_URL": endpoint,
                "KESTREL_RETRY_BACKOFF_S": "0.05",
                "KESTREL_POLL_INTERVAL_S": "0.02",
            }
        )

    def stream(self, logical_id: str) -> str:
        return self.app.stack.physical[logical_id].ref

    def queue_url(self, logical_id: str) -> str:
        return self.app.stack.physical[logical_id].ref

    def put(self, logical_id: str, payloads: list[dict[str, Any]], key: str = "k") -> list[str]:
        """Put records in order (one partition key unless payloads carry 'pk'); return seqs."""
        records = [
            {"Data": json.dumps(p).encode(), "PartitionKey": str(p.get("pk", key))}
            for p in payloads
        ]
        seqs: list[str] = []
        kinesis = self.clients.client("kinesis")
        for start in range(0, len(records), 500):
            response = kinesis.put_records(
                StreamName=self.stream(logical_id), Records=records[start : start + 500]
            )
            assert response["FailedRecordCount"] == 0
            seqs += [r["SequenceNumber"] for r in response["Records"]]
        return seqs

    @contextmanager
    def running(self, *functions: str) -> Iterator[LocalRuntime]:
        runtime = LocalRuntime(self.app, self.clients, self.settings, only=list(functions))
        runtime.start()
        try:
            yield runtime
        finally:
            runtime.stop()

    def observed(self, log_name: str) -> list[dict[str, Any]]:
        path = self.observe_dir / f"{log_name}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def drain_queue(self, logical_id: str, expect: int, timeout_s: float = 20) -> list[str]:
        """Receive (and delete) messages until `expect` arrived or the time is up."""
        sqs = self.clients.client("sqs")
        bodies: list[str] = []
        deadline = time.monotonic() + timeout_s
        while len(bodies) < expect and time.monotonic() < deadline:
            response = sqs.receive_message(
                QueueUrl=self.queue_url(logical_id), MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in response.get("Messages", []):
                bodies.append(message["Body"])
                sqs.delete_message(
                    QueueUrl=self.queue_url(logical_id), ReceiptHandle=message["ReceiptHandle"]
                )
        return bodies


def wait_until(check: Callable[[], bool], timeout_s: float = 30, what: str = "condition") -> None:
    """Poll `check` until true; fail with `what` when the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
