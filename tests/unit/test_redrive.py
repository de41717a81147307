"""The redrive tool on on-failure batches: parsing, re-putting in order, pacing, limits."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from redrive_doubles import (
    PARK,
    QUEUE,
    SHARD,
    STREAM_ARN,
    T0,
    FakeKinesis,
    FakeSqs,
    adds_up,
    on_failure_body,
    poison_body,
    run,
    tx,
)

from kestrel_ops.redrive import (
    OnFailureBatch,
    PoisonLetter,
    PutEntry,
    parse_message,
    put_in_order,
)
from kestrel_ops.redrive_kinesis import MessageError


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
