"""Redrive puts records back only onto the stack's own streams; others are refused and stay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from redrive_doubles import (
    LABELS_ARN,
    QUEUE,
    STREAM_ARN,
    FakeKinesis,
    FakeSqs,
    adds_up,
    on_failure_body,
    poison_body,
    run,
    tx,
)

import kestrel_ops.__main__ as cli
from kestrel_local.provision import bind
from kestrel_ops.redrive import stack_streams

REPO = Path(__file__).resolve().parents[2]
FOREIGN = "arn:aws:kinesis:us-east-1:123456789012:stream/payments-ledger"


def foreign_poison() -> str:
    doc = json.loads(poison_body(tx(1), "invalid_field"))
    return json.dumps({**doc, "stream_arn": FOREIGN})


def foreign_on_failure(kinesis: FakeKinesis) -> str:
    doc = json.loads(on_failure_body([kinesis.append(tx(2), "C-0")]))
    doc["KinesisBatchInfo"]["streamArn"] = FOREIGN
    return json.dumps(doc)


class CountingKinesis(FakeKinesis):
    """FakeKinesis that also counts reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_shard_iterator(self, **kw: Any) -> Any:
        self.reads += 1
        return super().get_shard_iterator(**kw)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_redrive_refuses_dead_letters_naming_a_foreign_stream_and_leaves_them(
    dry_run: bool,
) -> None:
    sqs, kinesis = FakeSqs(), CountingKinesis()
    bodies = [foreign_poison(), foreign_on_failure(kinesis), poison_body(tx(3), "x", key="C-3")]
    for body in bodies:
        sqs.add(body)
    own_before = len(kinesis.shards["shardId-000000000000"])

    report = run(sqs, kinesis, dry_run=dry_run)

    assert (report.errors, report.redriven, report.exit_code) == (2, 1, 1)
    assert adds_up(report)
    refused = [p for p in report.problems if "refused" in p]
    assert len(refused) == 2
    assert all(
        f"names stream payments-ledger ({FOREIGN}), not one of this stack's streams "
        "(k-labels, k-transactions); left in the queue" in p
        for p in refused
    )
    assert kinesis.reads == 0  # the foreign range is not even read
    put = len(kinesis.shards["shardId-000000000000"]) - own_before
    assert put == (0 if dry_run else 1)  # only the own stream's letter
    assert sorted(sqs.visible(QUEUE)) == sorted(bodies if dry_run else bodies[:2])


def test_redrive_refuses_everything_with_an_empty_allowlist() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    sqs.add(poison_body(tx(3), "x"))
    report = run(sqs, kinesis, streams=())
    assert (report.errors, report.records_reput) == (1, 0)
    assert "not one of this stack's streams (none)" in report.problems[0]
    assert len(sqs.visible(QUEUE)) == 1


class FakeClients:
    """Stands in for `AwsClients` when the template is bound (no endpoint)."""

    sqs = FakeSqs()
    kinesis = FakeKinesis()

    def __init__(self, endpoint: str | None = None, region: str = "us-east-1") -> None:
        self.region = region

    def client(self, service: str) -> Any:
        return {"sqs": self.sqs, "kinesis": self.kinesis}.get(service, object())

    def account_id(self) -> str:
        return "123456789012"

    def queue_url_prefix(self) -> str:
        return "http://127.0.0.1:1"


def test_stack_streams_are_the_streams_the_stacks_functions_read() -> None:
    app, _ = bind(REPO / "template.yaml", FakeClients(), "k")  # type: ignore[arg-type]
    clicks = STREAM_ARN.replace("k-transactions", "k-clickstream")
    assert stack_streams(app) == {STREAM_ARN, LABELS_ARN, clicks}  # not k-decisions: an output


def test_main_refuses_a_foreign_stream_read_through_queue_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeClients.sqs, FakeClients.kinesis = FakeSqs(), FakeKinesis()
    FakeClients.sqs.add(foreign_poison())
    monkeypatch.setattr(cli, "AwsClients", FakeClients)
    argv = ["redrive", "--stack-name", "k", "--template", str(REPO / "template.yaml")]

    exit_code = cli.main([*argv, "--queue-url", QUEUE, "--queue", "poison"])

    out, err = capsys.readouterr()
    assert exit_code == 1
    assert "payments-ledger" in err
    assert FakeClients.kinesis.put_calls == 0
    assert len(FakeClients.sqs.visible(QUEUE)) == 1
    assert "messages read" in out
