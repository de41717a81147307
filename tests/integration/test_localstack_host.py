"""LocalStack Community in host mode, no Docker: deploy the built template, run Kestrel on it.

Slow (`make test-localstack`, kept out of `make test`): it starts a real LocalStack 4.14.0
from `.venv-localstack` (installed on first use with a Python 3.13) on a free loopback port,
deploys `make build`'s template the way `make deploy-localstack` does (after a first create
that fails on the functions, as LocalStack's own Lambda does without Docker), runs Kestrel's
runtime against the stack, streams 1,000 Avro transactions (no Glue: the shipped schemas'
fixed ids) and poison, checks decisions, the event log, the poison queue and a redrive, and
stops LocalStack, leaving its port free. It skips only when no Python 3.13 is found.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from esm_harness import wait_until
from kestrel_training.avro_encoding import avro_encoders
from kestrel_training.producer import produce

from kestrel.adapters.glue_fallback import NO_REGISTRY_WARNING
from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink
from kestrel.codec import encode
from kestrel.ports import DeadLetter
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.cfn_deploy import DeployError
from kestrel_local.localstack_deploy import (
    FAILED_CREATE_STATES,
    docker_available,
    parse_args,
    run,
    runtime_command,
    stack_status,
)
from kestrel_local.localstack_host import (
    INSTALL_HINT,
    HostConfig,
    HostError,
    down,
    find_python,
    port_open,
    up,
)
from kestrel_local.provision import bind
from kestrel_local.queue_stats import queue_stats
from kestrel_local.runtime import LocalRuntime
from kestrel_ops.redrive import redrive, stack_streams

# The build, LocalStack's start and its Kinesis (100-600 records/s) take minutes on 2 cores.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
STACK = "klocal"
EVENTS = 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostConfig]:
    """A LocalStack in host mode on a free loopback port; stopped, its port free, at the end."""
    python = os.environ.get("LOCALSTACK_PYTHON") or find_python()
    if python is None:
        pytest.skip(INSTALL_HINT)
    venv = Path(os.environ.get("LOCALSTACK_VENV") or REPO / ".venv-localstack")
    port = _free_port()
    config = HostConfig(
        f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("localstack"), venv, python
    )
    try:
        print(up(config))
    except HostError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield config
    finally:
        print(down(config))
    assert not port_open(port), f"127.0.0.1:{port} still answers after down"


def _transactions(tag: str) -> list[dict[str, object]]:
    return [
        {
            "transaction_id": f"{tag}-T{n:04d}",
            "customer_id": f"{tag}-C{n % 40}",
            "terminal_id": f"{tag}-TERM{n % 25}",
            "amount": 5.0 + (n % 97),
            "event_time": 1_795_000_000_000 + n * 1000,
        }
        for n in range(EVENTS)
    ]


def _poison(tag: str) -> list[tuple[bytes, str]]:
    """Records no retry can fix, each with the reason it must be parked with."""
    unknown_id = uuid.uuid4()  # no registry here: an id that is not a shipped schema's
    frame = encode({"transaction_id": "x"}, '{"type":"record","name":"X","fields":[]}', unknown_id)
    return [
        (b"{not json", "invalid_json"),
        (json.dumps({"transaction_id": f"{tag}-P1", "amount": 3}).encode(), "missing_field"),
        (frame, "unknown_schema"),
    ]


def _decided(decisions: RedisDecisions, ids: list[str]) -> int:
    return sum(1 for i in ids if decisions.decision(i) is not None)


class EventLogReader:
    """The transaction ids in the stack's S3 event log, each object read once."""

    def __init__(self, clients: AwsClients, bucket: str) -> None:
        self._s3, self._bucket = clients.client("s3"), bucket
        self._read: set[str] = set()
        self.ids: set[str] = set()

    def has(self, wanted: set[str]) -> bool:
        """Read the objects not read yet; True when every id in `wanted` is logged."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix="events/"
        )
        for item in (item for page in pages for item in page.get("Contents", [])):
            if item["Key"] in self._read:
                continue
            obj = self._s3.get_object(Bucket=self._bucket, Key=item["Key"])
            for line in gzip.decompress(obj["Body"].read()).splitlines():
                self.ids.add(str(json.loads(line).get("transaction_id")))
            self._read.add(item["Key"])
        return wanted <= self.ids


def test_localstack_without_docker_deploys_and_runs_kestrel(
    localstack: HostConfig,
    lambda_build: Path,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint = localstack.endpoint
    clients = AwsClients(endpoint)
    base = ["--template", str(lambda_build), "--stack-name", STACK, "--parameter-overrides"]
    base += [f"RedisUrl={redis_url}", "Stage=local"]
    docker = docker_available()
    if not docker:  # the functions as LocalStack would create them: the create fails
        with pytest.raises(DeployError, match=r"CREATE_FAILED|ROLLBACK"):
            run(parse_args([*base, "--lambda", "docker"]), endpoint)
        assert stack_status(clients, STACK) in FAILED_CREATE_STATES
    assert run(parse_args(base), endpoint) == 0
    said = capsys.readouterr()
    assert f"stack {STACK}: CREATE_COMPLETE" in said.out
    assert said.err.count(NO_REGISTRY_WARNING) == 1
    if not docker:
        assert "by a failed create: deleted it first" in said.err
        assert said.err.count(runtime_command(endpoint)) == 1
        assert "left out TransactionsFunction: AWS::Lambda::Function" in said.out

    app, _ = bind(TEMPLATE, clients, STACK, {"RedisUrl": redis_url}, create=False)
    physical = app.stack.physical
    stream, poison_url = str(physical["TransactionsStream"].ref), str(physical["PoisonDLQ"].ref)
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(tmp_path), "AWS_ENDPOINT_URL": endpoint}
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction"], log_dir=tmp_path / "logs"
    )
    decisions = RedisDecisions(redis.Redis.from_url(redis_url), 3600)
    sqs, kinesis = clients.client("sqs"), clients.client("kinesis")
    registry = GlueSchemaRegistry(clients.client("glue"), STACK)
    encoders = avro_encoders(registry)
    transactions = _transactions(STACK)
    ids = [str(t["transaction_id"]) for t in transactions]
    poison = _poison(STACK)
    runtime.start()
    try:
        report = produce(
            iter(transactions), stream, client=kinesis, encoder=encoders["transactions"]
        )
        assert report.sent == EVENTS
        put = kinesis.put_records(
            StreamName=stream, Records=[{"Data": d, "PartitionKey": "poison"} for d, _ in poison]
        )
        assert put["FailedRecordCount"] == 0
        wait_until(
            lambda: _decided(decisions, ids) == EVENTS, timeout_s=240.0, what="1,000 decisions"
        )
        wait_until(lambda: queue_stats(sqs, poison_url).depth == len(poison), what="poison parked")
        messages = sqs.receive_message(
            QueueUrl=poison_url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )["Messages"]
        assert sorted(json.loads(m["Body"])["reason"] for m in messages) == sorted(
            r for _, r in poison
        )
        log = EventLogReader(clients, str(physical["EventLogBucket"].ref))
        wait_until(lambda: log.has(set(ids)), 120.0, what="every transaction in the event log")

        # A redrive: a record dead-lettered earlier but valid now goes back to the stream and
        # is decided; the three that are still poison go to a parking queue.
        late = {**transactions[0], "transaction_id": f"{STACK}-LATE"}
        SqsDeadLetterSink(sqs, poison_url).send(
            DeadLetter(
                reason="invalid_field",
                detail="redrive check",
                payload_b64=base64.b64encode(encoders["transactions"](late)).decode(),
                stream_arn=str(physical["TransactionsStream"].attributes["Arn"]),
                shard_id="shardId-000000000000",
                sequence_number="1",
                partition_key=str(late["customer_id"]),
                first_seen="2026-12-07T00:00:00Z",
            )
        )
        park = sqs.create_queue(QueueName=f"{STACK}-park")["QueueUrl"]
        done = redrive(
            sqs, kinesis, registry, poison_url, "poison", streams=stack_streams(app),
            park_queue_url=park,
        )  # fmt: skip
        assert (done.redriven, done.parked, done.errors) == (1, len(poison), 0), done.problems
        wait_until(lambda: decisions.decision(f"{STACK}-LATE") is not None, what="redriven")
        assert queue_stats(sqs, poison_url).depth == 0
        assert queue_stats(sqs, park).depth == len(poison)
    finally:
        runtime.stop()
    assert runtime.kinesis[0].stats.discarded == 0
    assert queue_stats(sqs, str(physical["OnFailureQueue"].ref)).depth == 0
