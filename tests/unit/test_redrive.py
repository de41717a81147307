"""The redrive tool on in-memory doubles of the SQS and Kinesis calls it makes (no network)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from botocore.exceptions import ClientError

import kestrel_ops.__main__ as cli
from kestrel.adapters.sqs_dead_letters import message_body
from kestrel.codec import encode, schema_definition
from kestrel.ports import DeadLetter, UnknownSchemaVersion
from kestrel_local.esm_kinesis import KinesisMapping, on_failure_message
from kestrel_ops.redrive import (
    OnFailureBatch,
    Pacer,
    PoisonLetter,
    PutEntry,
    RedriveReport,
    move_dead_letters,
    parse_message,
    put_in_order,
    redrive,
)
from kestrel_ops.redrive_kinesis import MessageError

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/k-transactions"
LABELS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/k-labels"
SHARD = "shardId-000000000000"
QUEUE = "http://127.0.0.1:1/123456789012/k-on-failure"
PARK = "http://127.0.0.1:1/123456789012/k-parked"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def client_error(code: str, status: int = 400) -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(cast(Any, response), "Operation")


class FakeSqs:
    """SQS double: messages are visible or hidden; every mutating call is recorded."""

    def __init__(self) -> None:
        self.queues: dict[str, list[dict[str, Any]]] = {QUEUE: [], PARK: []}
        self.calls: list[str] = []
        self.sources: list[str] = []
        self.move_task_error: ClientError | None = client_error("500", 500)
        self.visibility: list[int] = []
        self.reappear_after: int | None = None  # receives after which hidden messages return
        self.receives = 0
        self._receipts = 0

    def add(self, body: str, url: str = QUEUE) -> str:
        message_id = str(uuid4())
        self.queues.setdefault(url, []).append(
            {"MessageId": message_id, "Body": body, "hidden": False, "ReceiptHandle": ""}
        )
        return message_id

    def visible(self, url: str = QUEUE) -> list[str]:
        return [m["Body"] for m in self.queues[url] if not m["hidden"]]

    def receive_message(self, **kw: Any) -> Mapping[str, Any]:
        self.receives += 1
        out: list[dict[str, Any]] = []
        for message in self.queues[kw["QueueUrl"]]:
            if self.reappear_after and self.receives - message.get("at", 0) > self.reappear_after:
                message["hidden"] = False  # its visibility timeout ran out
            if not message["hidden"] and len(out) < kw["MaxNumberOfMessages"]:
                self._receipts += 1
                message["hidden"], message["ReceiptHandle"] = True, f"r{self._receipts}"
                message["at"] = self.receives
                out.append({k: message[k] for k in ("MessageId", "Body", "ReceiptHandle")})
        return {"Messages": out} if out else {}

    def _find(self, url: str, receipt: str) -> dict[str, Any]:
        return next(m for m in self.queues[url] if m["ReceiptHandle"] == receipt)

    def delete_message(self, **kw: Any) -> Mapping[str, Any]:
        self.calls.append("delete")
        self.queues[kw["QueueUrl"]].remove(self._find(kw["QueueUrl"], kw["ReceiptHandle"]))
        return {}

    def send_message(self, **kw: Any) -> Mapping[str, Any]:
        self.calls.append("send")
        self.add(kw["MessageBody"], kw["QueueUrl"])
        self.queues[kw["QueueUrl"]][-1]["attributes"] = kw.get("MessageAttributes", {})
        return {}

    def change_message_visibility(self, **kw: Any) -> Mapping[str, Any]:
        self.visibility.append(kw["VisibilityTimeout"])
        if kw["VisibilityTimeout"] > 0:  # longer than the receive's: not back during a test
            self._find(kw["QueueUrl"], kw["ReceiptHandle"])["at"] = 10**9
        if kw["VisibilityTimeout"] == 0:
            self._find(kw["QueueUrl"], kw["ReceiptHandle"])["hidden"] = False
        return {}

    def get_queue_attributes(self, **kw: Any) -> Mapping[str, Any]:
        url = kw["QueueUrl"]
        return {
            "Attributes": {
                "QueueArn": "arn:aws:sqs:us-east-1:123456789012:dlq",
                "ApproximateNumberOfMessages": str(len(self.visible(url))),
            }
        }

    def list_dead_letter_source_queues(self, **kw: Any) -> Mapping[str, Any]:
        return {"queueUrls": self.sources}

    def start_message_move_task(self, **kw: Any) -> Mapping[str, Any]:
        self.calls.append("start_message_move_task")
        if self.move_task_error is not None:
            raise self.move_task_error
        return {"TaskHandle": "task-1"}


class FakeKinesis:
    """Kinesis double with one stream: shards of (sequence number, data, key) records."""

    def __init__(self, shards: int = 1) -> None:
        self.shards: dict[str, list[dict[str, Any]]] = {
            f"shardId-{n:012d}": [] for n in range(shards)
        }
        self.failing: dict[str, int] = {}  # partition key -> failures left (-1: always)
        self.put_calls = 0
        self._next = 100

    def append(self, data: bytes, key: str, shard: str = SHARD) -> dict[str, Any]:
        self._next += 1
        record = {
            "SequenceNumber": str(self._next),
            "Data": data,
            "PartitionKey": key,
            "ApproximateArrivalTimestamp": T0,
        }
        self.shards[shard].append(record)
        return record

    def get_shard_iterator(self, **kw: Any) -> Mapping[str, Any]:
        if kw["ShardId"] not in self.shards:
            raise client_error("ResourceNotFoundException")
        records = self.shards[kw["ShardId"]]
        start = int(kw["StartingSequenceNumber"])
        index = next((i for i, r in enumerate(records) if int(r["SequenceNumber"]) >= start), 0)
        return {"ShardIterator": f"{kw['ShardId']}:{index}"}

    def get_records(self, **kw: Any) -> Mapping[str, Any]:
        shard, index = kw["ShardIterator"].rsplit(":", 1)
        got = self.shards[shard][int(index) : int(index) + 2]  # small pages: several calls
        return {
            "Records": got,
            "NextShardIterator": f"{shard}:{int(index) + len(got)}",
            "MillisBehindLatest": 0,
        }

    def put_records(self, **kw: Any) -> Mapping[str, Any]:
        self.put_calls += 1
        results: list[dict[str, Any]] = []
        for entry in kw["Records"]:
            left = self.failing.get(entry["PartitionKey"], 0)
            if left:
                self.failing[entry["PartitionKey"]] = left - 1 if left > 0 else left
                results.append({"ErrorCode": "ProvisionedThroughputExceededException"})
            else:
                record = self.append(entry["Data"], entry["PartitionKey"])
                results.append({"SequenceNumber": record["SequenceNumber"], "ShardId": SHARD})
        failed = sum("ErrorCode" in r for r in results)
        return {"FailedRecordCount": failed, "Records": results}

    def describe_stream_summary(self, **kw: Any) -> Mapping[str, Any]:
        return {"StreamDescriptionSummary": {"RetentionPeriodHours": 24}}


class MemoryLookup:
    """SchemaLookup double: a dict of version id to definition."""

    def __init__(self, known: dict[UUID, str] | None = None) -> None:
        self.known = dict(known or {})

    def schema_for(self, version_id: UUID) -> str:
        if version_id not in self.known:
            raise UnknownSchemaVersion(version_id)
        return self.known[version_id]


def on_failure_body(batch: list[dict[str, Any]], shard: str = SHARD, at: float = 0.0) -> str:
    mapping = SimpleNamespace(
        spec=SimpleNamespace(arn="arn:aws:lambda:us-east-1:123456789012:function:k-tx"),
        source=SimpleNamespace(stream_arn=STREAM_ARN),
        clock=lambda: at or T0.timestamp(),
    )
    message = on_failure_message(
        cast(KinesisMapping, mapping), shard, batch, "RetryAttemptsExhausted", 6, None
    )
    return json.dumps(message)


def poison_body(payload: bytes, reason: str, key: str = "C-1", first_seen: datetime = T0) -> str:
    letter = DeadLetter(
        reason=reason,
        detail="d",
        payload_b64=base64.b64encode(payload).decode(),
        stream_arn=STREAM_ARN,
        shard_id=SHARD,
        sequence_number="7",
        partition_key=key,
        first_seen=first_seen.isoformat().replace("+00:00", "Z"),
    )
    return message_body(letter)


def tx(n: int, amount: float = 10.0) -> bytes:
    doc = {
        "transaction_id": f"T-{n}",
        "customer_id": f"C-{n % 2}",
        "terminal_id": "TERM-1",
        "amount": amount,
        "event_time": "2026-11-29T10:00:00Z",
    }
    return json.dumps(doc).encode()


def run(sqs: FakeSqs, kinesis: FakeKinesis, lookup: Any = None, **kw: Any) -> RedriveReport:
    return redrive(
        sqs, kinesis, lookup or MemoryLookup(), QUEUE, wait_time_s=0, sleep=lambda _: None, **kw
    )


def adds_up(report: RedriveReport) -> bool:
    return (
        report.messages_read == report.messages_deleted + report.messages_left
        and report.messages_deleted == report.redriven + report.parked
        and report.messages_left
        == report.still_poison + report.expired + report.errors + report.skipped
        and report.messages_read == sum(sum(row.values()) for row in report.per_reason.values())
    )


def test_parse_message_reads_the_aws_on_failure_shape() -> None:
    kinesis = FakeKinesis()
    batch = [kinesis.append(tx(n), "C-1") for n in range(3)]

    parsed = parse_message(on_failure_body(batch))

    assert isinstance(parsed, OnFailureBatch)
    assert (parsed.stream_arn, parsed.shard_id) == (STREAM_ARN, SHARD)
    assert (parsed.start, parsed.end, parsed.batch_size) == ("101", "103", 3)
    assert parsed.condition == "RetryAttemptsExhausted"
    assert parsed.failed_at == T0


def test_parse_message_reads_a_kestrel_poison_dead_letter() -> None:
    parsed = parse_message(poison_body(b"xyz", "undecodable", key="C-9"))

    assert isinstance(parsed, PoisonLetter)
    assert (parsed.reason, parsed.partition_key, parsed.stream_arn) == (
        "undecodable",
        "C-9",
        STREAM_ARN,
    )
    assert base64.b64decode(parsed.payload_b64) == b"xyz"
    assert parsed.first_seen == T0


@pytest.mark.parametrize(
    "body",
    ["not json", "[1]", '{"kind": "other"}', '{"KinesisBatchInfo": {"shardId": "s"}}'],
)
def test_parse_message_rejects_other_bodies(body: str) -> None:
    with pytest.raises(MessageError):
        parse_message(body)


def test_redrive_reputs_an_on_failure_range_in_order_and_deletes_the_message() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    records = [kinesis.append(tx(n), f"C-{n % 2}") for n in range(6)]
    sqs.add(on_failure_body(records[1:5]))

    report = run(sqs, kinesis)

    assert (report.redriven, report.records_reput, report.exit_code) == (1, 4, 0)
    reput = [(r["Data"], r["PartitionKey"]) for r in kinesis.shards[SHARD][6:]]
    for key in ("C-0", "C-1"):
        expected = [(r["Data"], key) for r in records[1:5] if r["PartitionKey"] == key]
        assert [e for e in reput if e[1] == key] == expected
    assert sqs.queues[QUEUE] == []


def test_redrive_dry_run_changes_nothing() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    records = [kinesis.append(tx(n), "C-1") for n in range(3)]
    sqs.add(on_failure_body(records))
    sqs.add(poison_body(tx(9), "invalid_field"))
    sqs.add(poison_body(tx(8, amount=-1), "invalid_field"))

    report = run(sqs, kinesis, dry_run=True, park_queue_url=PARK)

    assert kinesis.put_calls == 0
    assert sqs.calls == []  # no delete, no send
    assert len(sqs.visible()) == 3  # all visible again at once
    assert (report.redriven, report.parked, report.records_reput) == (2, 1, 4)
    assert report.dry_run
    assert "DRY RUN" in report.table()
    assert adds_up(report)


def test_redrive_leaves_a_message_whose_record_put_keeps_failing() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    records = [kinesis.append(tx(n), key) for n, key in enumerate(["A", "B", "A", "B"])]
    sqs.add(on_failure_body(records))
    later = [kinesis.append(tx(10), "C")]
    sqs.add(on_failure_body(later))
    kinesis.failing["B"] = -1

    report = run(sqs, kinesis, max_put_stalls=2)

    assert (report.errors, report.redriven, report.exit_code) == (1, 1, 1)
    assert (report.records_reput, report.records_failed) == (3, 2)  # A, A and C; both B's held
    assert "2 of 4 records could not be put" in report.problems[0]
    assert "ProvisionedThroughputExceededException" in report.problems[0]
    assert len(sqs.visible()) == 1
    assert parse_message(sqs.visible()[0]).start == records[0]["SequenceNumber"]  # type: ignore[union-attr]
    assert adds_up(report)


def test_put_in_order_retries_a_failed_entry_before_later_records_of_its_key() -> None:
    kinesis = FakeKinesis()
    kinesis.failing["A"] = 2
    entries = [PutEntry(f"{key}{n}".encode(), key) for n, key in enumerate("AABAB")]

    outcome = put_in_order(kinesis, "s", entries, sleep=lambda _: None)

    assert (outcome.put, outcome.failed) == (5, [])
    put = [(r["PartitionKey"], r["Data"]) for r in kinesis.shards[SHARD]]
    assert [d for k, d in put if k == "A"] == [b"A0", b"A1", b"A3"]
    assert [d for k, d in put if k == "B"] == [b"B2", b"B4"]


@pytest.mark.parametrize("case", ["unknown-shard", "trimmed-start"])
def test_redrive_counts_an_expired_range_and_keeps_the_message(case: str) -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    records = [kinesis.append(tx(n), "C-1") for n in range(3)]
    if case == "unknown-shard":
        sqs.add(on_failure_body(records, shard="shardId-000000000007"))
    else:
        sqs.add(on_failure_body([{**records[0], "SequenceNumber": "50"}, records[1]]))

    report = run(sqs, kinesis)

    assert (report.expired, report.exit_code, kinesis.put_calls) == (1, 1, 0)
    assert "past the stream's retention (24 h)" in report.problems[0]
    assert len(sqs.visible()) == 1


def test_redrive_keeps_a_paced_message_hidden_while_its_records_go_out() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    sqs.add(on_failure_body([kinesis.append(tx(n), f"C-{n}") for n in range(90)]))

    report = run(sqs, kinesis, rate=3.0, visibility_timeout_s=30)

    assert (report.redriven, report.records_reput) == (1, 90)
    assert sqs.visibility == [61]  # 30 s + 90 records at 3/s + 1
    assert kinesis.put_calls == 30  # at most one second's worth per call


def test_redrive_since_skips_messages_before_it() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    old = [kinesis.append(tx(1), "C-1")]
    new = [kinesis.append(tx(2), "C-1")]
    sqs.add(on_failure_body(old, at=(T0 - timedelta(hours=2)).timestamp()))
    sqs.add(on_failure_body(new, at=T0.timestamp()))
    sqs.add(poison_body(tx(3), "invalid_field", first_seen=T0 - timedelta(hours=1)))

    report = run(sqs, kinesis, since=T0 - timedelta(minutes=30))

    assert (report.skipped, report.redriven, report.records_reput) == (2, 1, 1)
    assert report.exit_code == 0
    assert len(sqs.visible()) == 2
    assert adds_up(report)


def test_redrive_handles_each_message_once_when_messages_come_back_during_the_run() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    for n in range(35):
        sqs.add(poison_body(tx(n, amount=-1), "invalid_field"))
    sqs.reappear_after = 2  # a run longer than the visibility timeout

    report = run(sqs, kinesis)

    assert (report.messages_read, report.still_poison) == (35, 35)
    assert len(sqs.visible()) == 35


def test_redrive_max_reads_at_most_n_messages() -> None:
    sqs, kinesis = FakeSqs(), FakeKinesis()
    for n in range(25):
        sqs.add(on_failure_body([kinesis.append(tx(n), "C-1")]))

    report = run(sqs, kinesis, max_messages=12)

    assert (report.messages_read, report.redriven) == (12, 12)
    assert len(sqs.visible()) == 13


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
    """Stands in for `AwsClients` in the command line tests."""

    sqs: FakeSqs
    kinesis: FakeKinesis

    def __init__(self, endpoint: str | None, region: str = "us-east-1") -> None:
        pass

    def client(self, service: str) -> Any:
        return {"sqs": self.sqs, "kinesis": self.kinesis}.get(service, object())


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

    exit_code = cli.main(["redrive", "--queue-url", QUEUE, "--queue", "on-failure"])

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

    assert cli.main(["redrive", "--queue-url", missing]) == 2
    assert "--queue-url" in capsys.readouterr().err


def _no_wait(function: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **{**kwargs, "wait_time_s": 0})

    return call
