"""The redrive tool on poison letters, parking, its report, SQS move tasks and its CLI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from botocore.exceptions import ClientError
from redrive_doubles import (
    LABELS_ARN,
    PARK,
    QUEUE,
    SHARD,
    STREAM_ARN,
    FakeKinesis,
    FakeSqs,
    MemoryLookup,
    adds_up,
    client_error,
    on_failure_body,
    poison_body,
    run,
    tx,
)

import kestrel_ops.__main__ as cli
from kestrel.codec import encode, schema_definition
from kestrel_ops.redrive import (
    Pacer,
    RedriveReport,
    move_dead_letters,
    redrive,
)

REPO = Path(__file__).resolve().parents[2]


def test_redrive_reputs_poison_once_its_schema_is_registered() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    version, definition = uuid4(), schema_definition("transaction.v2")
    frame = encode(json.loads(tx(4)), definition, version)
    sqs.add(poison_body(frame, "unknown_schema", key="C-4"))
    lookup = MemoryLookup()

    before = run(sqs, kinesis, lookup)
    lookup.known[version] = definition
    after = run(sqs, kinesis, lookup)

    assert (before.still_poison, before.records_reput, before.exit_code) == (1, 0, 0)
    assert (after.redriven, after.records_reput) == (1, 1)
    assert [(r["Data"], r["PartitionKey"]) for r in kinesis.shards[SHARD]] == [(frame, "C-4")]
    assert sqs.queues[QUEUE] == []


def test_redrive_validates_poison_from_a_label_stream_as_labels() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    label = {
        "transaction_id": "T-1",
        "customer_id": "C-1",
        "terminal_id": "TERM-1",
        "is_fraud": True,
        "label_time": "2026-11-29T10:00:00Z",
    }
    body = json.loads(poison_body(json.dumps(label).encode(), "invalid_field"))
    sqs.add(json.dumps({**body, "stream_arn": LABELS_ARN}))
    sqs.add(json.dumps({**body, "stream_arn": STREAM_ARN}))  # not a transaction

    report = run(sqs, kinesis, label_streams=[LABELS_ARN])

    assert (report.redriven, report.still_poison) == (1, 1)


def test_redrive_parks_poison_that_still_fails() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    sqs.add(poison_body(tx(1, amount=-3), "invalid_field"))
    sqs.add(poison_body(b"\x03\x00short", "undecodable"))

    report = run(sqs, kinesis, park_queue_url=PARK)

    assert (report.parked, report.still_poison, report.exit_code) == (2, 0, 0)
    assert sqs.queues[QUEUE] == []
    assert sqs.calls == ["send", "delete", "send", "delete"]  # send first, then delete
    reasons = [m["attributes"]["reason"]["StringValue"] for m in sqs.queues[PARK]]
    assert reasons == ["invalid_field", "undecodable"]


def test_redrive_report_figures_add_up_and_name_each_reason() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    ok = [kinesis.append(tx(1), "C-1")]
    sqs.add(on_failure_body(ok))
    sqs.add(on_failure_body(ok, shard="shardId-000000000005"))
    sqs.add(poison_body(tx(2, amount=-1), "invalid_field"))
    sqs.add(poison_body(tx(3), "invalid_field"))
    sqs.add("garbage")

    report = run(sqs, kinesis)

    assert adds_up(report)
    assert (report.messages_read, report.messages_deleted, report.messages_left) == (5, 2, 3)
    assert (report.expired, report.errors, report.still_poison) == (1, 1, 1)
    assert report.per_reason["invalid_field"]["redriven"] == 1
    assert report.per_reason["RetryAttemptsExhausted"]["expired"] == 1
    table = report.table()
    for line in ("messages read", "records re-put", "RetryAttemptsExhausted", "unreadable"):
        assert line in table
    merged = RedriveReport()
    merged.merge(report)
    merged.merge(report)
    assert (merged.messages_read, merged.per_reason["invalid_field"]["still_poison"]) == (10, 2)
    assert adds_up(merged)


def test_pacer_spaces_puts_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(100.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        pacer.wait(pacer.batch_limit)

    assert pacer.batch_limit == 100
    assert now[0] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Pacer(0)


def test_move_dead_letters_falls_back_when_move_tasks_are_unsupported() -> None:
    sqs = FakeSqs()
    source = "http://127.0.0.1:1/123456789012/source"
    sqs.queues[source] = []
    sqs.add("one")
    sqs.add("two")

    report = move_dead_letters(sqs, QUEUE, [source], wait_time_s=0)

    assert sqs.calls[0] == "start_message_move_task"
    assert [m["Body"] for m in sqs.queues[source]] == ["one", "two"]
    assert (sqs.queues[QUEUE], report.redriven, report.move_tasks) == ([], 2, [])


def test_move_dead_letters_uses_a_move_task_where_supported() -> None:
    sqs = FakeSqs()
    sqs.move_task_error = None
    sqs.add("one")

    report = move_dead_letters(sqs, QUEUE, ["http://127.0.0.1:1/1/source"], wait_time_s=0)

    assert report.move_tasks == ["task-1"]
    assert len(sqs.visible()) == 1  # the task moves it, not us


def test_move_dead_letters_raises_other_errors() -> None:
    sqs = FakeSqs()
    sqs.move_task_error = client_error("AccessDenied", 403)

    with pytest.raises(ClientError):
        move_dead_letters(sqs, QUEUE, ["http://127.0.0.1:1/1/source"], wait_time_s=0)


class FakeClients:
    """Stands in for `AwsClients` in the command line tests (the template binds to it)."""

    sqs: FakeSqs
    kinesis: FakeKinesis

    def __init__(self, endpoint: str | None, region: str = "us-east-1") -> None:
        self.region = region

    def client(self, service: str) -> Any:
        return {"sqs": self.sqs, "kinesis": self.kinesis}.get(service, object())

    def account_id(self) -> str:
        return "123456789012"

    def queue_url_prefix(self) -> str:
        return "http://127.0.0.1:1"


# The real template bound to stack "k": its streams are k-transactions and k-labels, the
# streams of redrive_doubles' STREAM_ARN and LABELS_ARN.
STACK = ["--stack-name", "k", "--template", str(REPO / "template.yaml")]


@pytest.mark.parametrize(
    "argv",
    [
        ["redrive", "--max", "0"],
        ["redrive", "--rate", "-1"],
        ["redrive", "--since", "yesterday"],
        ["redrive", "--queue", "both"],
        ["redrive", "--queue-url", "not-a-url"],
    ],
)
def test_main_exits_2_on_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    option = argv[1]
    assert option in capsys.readouterr().err


@pytest.mark.parametrize(("expired", "code"), [(False, 0), (True, 1)])
def test_main_exit_code_says_whether_something_was_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], expired: bool, code: int
) -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    record = kinesis.append(tx(1), "C-1")
    sqs.add(on_failure_body([record], shard="shardId-000000000009" if expired else SHARD))
    FakeClients.sqs, FakeClients.kinesis = sqs, kinesis
    monkeypatch.setattr(cli, "AwsClients", FakeClients)
    monkeypatch.setattr(cli, "redrive", _no_wait(redrive))

    exit_code = cli.main(["redrive", *STACK, "--queue-url", QUEUE, "--queue", "on-failure"])

    out, err = capsys.readouterr()
    assert exit_code == code
    assert "messages read" in out
    assert "1/1 messages" in err  # the progress line
    assert ("shardId-000000000009" in err) is expired


def test_main_exits_2_naming_the_option_when_the_queue_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    FakeClients.sqs, FakeClients.kinesis = FakeSqs(), FakeKinesis()
    monkeypatch.setattr(cli, "AwsClients", FakeClients)
    missing = "http://127.0.0.1:1/123456789012/missing"

    def no_queue(**kw: Any) -> Mapping[str, Any]:
        raise client_error("AWS.SimpleQueueService.NonExistentQueue")

    monkeypatch.setattr(FakeClients.sqs, "get_queue_attributes", no_queue)

    assert cli.main(["redrive", *STACK, "--queue-url", missing]) == 2
    assert "--queue-url" in capsys.readouterr().err


def _no_wait(function: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **{**kwargs, "wait_time_s": 0})

    return call
