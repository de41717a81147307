"""Unit tests for kestrel.streaming: batch outcomes, batch ids and Avro frames through a path."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import pytest
from stream_doubles import AppliesInParts, MemoryDecisions, shipped_scorer

from kestrel.batch_outcome import BatchOutcome, RecordFailed, batch_id
from kestrel.codec import AvroEncoder, schema_definition, transaction_decoder
from kestrel.events import Label, Transaction, parse_label, parse_transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    DAY_MS,
    FEATURE_SET_HASH,
    TERMINAL_WINDOWS,
    AppliedTransaction,
    CustomerAggregates,
    TerminalAggregates,
    feature_vector,
)
from kestrel.ports import DeadLetter, UnknownSchemaVersion
from kestrel.scoring import NoModelError, Scorer
from kestrel.streaming import LabelPath, TransactionPath

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-transactions"
SHARD = "shardId-000000000003"
V1 = UUID("11111111-1111-4111-8111-111111111111")
V2 = UUID("22222222-2222-4222-8222-222222222222")
UNKNOWN = UUID("99999999-9999-4999-8999-999999999999")
T0 = 1_795_857_302_123  # 2026-11-28T09:15:02.123Z
EMPTY = AppliedTransaction(
    customer=CustomerAggregates(
        counts=(1,) * len(CUSTOMER_WINDOWS),
        sums_cents=(0,) * len(CUSTOMER_WINDOWS),
        previous_time_ms=None,
    ),
    terminal=TerminalAggregates(
        counts=(0,) * len(TERMINAL_WINDOWS), frauds=(0,) * len(TERMINAL_WINDOWS)
    ),
    applied=True,
)


class MemoryLookup:
    """SchemaLookup double: the shipped transaction v1 and v2 schemas."""

    def __init__(self) -> None:
        self.definitions = {
            V1: schema_definition("transaction.v1"),
            V2: schema_definition("transaction.v2"),
        }

    def schema_for(self, version_id: UUID) -> str:
        try:
            return self.definitions[version_id]
        except KeyError:
            raise UnknownSchemaVersion(version_id) from None


class RecordingStore(AppliesInParts):
    """FeatureStore double: records every call; each transaction is new with empty history."""

    def __init__(self) -> None:
        self.transaction_calls: list[list[Transaction]] = []
        self.label_calls: list[list[Label]] = []

    def apply_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[AppliedTransaction | Exception]:
        self.transaction_calls.append(list(transactions))
        return [EMPTY for _ in transactions]

    def apply_labels(self, labels: Sequence[Label]) -> list[bool | Exception]:
        self.label_calls.append(list(labels))
        return [True for _ in labels]


class MemoryEventLog:
    """EventLog double: keeps each write as (kind, batch id, events, time field)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, list[dict[str, Any]], str]] = []

    def write_batch(
        self, kind: str, batch_id: str, events: Sequence[Mapping[str, Any]], time_field: str
    ) -> list[str]:
        self.writes.append((kind, batch_id, [dict(e) for e in events], time_field))
        return [f"memory://{kind}/{batch_id}"]


class MemorySink:
    """DeadLetterSink double: keeps letters."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


def _record(
    sequence_number: str, data: bytes, shard: str = SHARD, arrival_s: float = T0 / 1000 + 0.05
) -> dict[str, Any]:
    return {
        "kinesis": {
            "partitionKey": "C-1",
            "kinesisSchemaVersion": "1.0",
            "data": base64.b64encode(data).decode(),
            "sequenceNumber": sequence_number,
            "approximateArrivalTimestamp": arrival_s,
        },
        "eventSource": "aws:kinesis",
        "eventID": f"{shard}:{sequence_number}",
        "eventVersion": "1.0",
        "eventName": "aws:kinesis:record",
        "eventSourceARN": ARN,
        "awsRegion": "us-east-1",
    }


def test_batch_outcome_check_raises_only_for_failed_sequence_numbers() -> None:
    outcome = BatchOutcome(failures={"200": "feature store: boom"})
    outcome.check("100")
    outcome.check("300")
    with pytest.raises(RecordFailed, match=r"^feature store: boom$"):
        outcome.check("200")


def test_batch_outcome_check_passes_everything_without_failures() -> None:
    outcome = BatchOutcome()
    for sequence_number in ("1", "2", ""):
        outcome.check(sequence_number)


def test_batch_id_is_shard_first_and_last_sequence_numbers() -> None:
    records = [_record(s, b"{}") for s in ("4960001", "4960002", "4960009")]
    assert batch_id(records) == f"{SHARD}-4960001-4960009"
    assert batch_id(records[1:2]) == f"{SHARD}-4960002-4960002"
    assert batch_id([_record("7", b"{}", shard="shardId-000000000012")]) == (
        "shardId-000000000012-7-7"
    )


def test_transaction_path_decodes_v1_and_v2_frames_in_one_batch() -> None:
    v1 = AvroEncoder(schema_definition("transaction.v1"), V1)
    v2 = AvroEncoder(schema_definition("transaction.v2"), V2, compress=True)
    base = {"customer_id": "C-1", "terminal_id": "TERM-1", "amount": 12.5, "event_time": T0}
    records = [
        _record("101", v1({**base, "transaction_id": "T-1", "channel": "ignored by v1"})),
        _record("102", v2({**base, "transaction_id": "T-2", "channel": "web", "device_id": "D-9"})),
        _record("103", v2({**base, "transaction_id": "T-3", "event_time": T0 + 1})),
        _record(
            "104",
            AvroEncoder(schema_definition("transaction.v1"), UNKNOWN)(
                {**base, "transaction_id": "T-4"}
            ),
        ),
    ]
    store, log, sink = RecordingStore(), MemoryEventLog(), MemorySink()
    decisions = MemoryDecisions()
    path = TransactionPath(
        transaction_decoder(MemoryLookup()),
        store,
        sink,
        log,
        shipped_scorer(),
        [decisions],
        clock=lambda: T0 / 1000 + 1,
    )
    outcome = path.run(records)
    assert store.transaction_calls == [
        [
            Transaction("T-1", "C-1", "TERM-1", 12.5, T0),
            Transaction("T-2", "C-1", "TERM-1", 12.5, T0, channel="web", device_id="D-9"),
            Transaction("T-3", "C-1", "TERM-1", 12.5, T0 + 1),
        ]
    ]
    assert [(x.reason, x.sequence_number) for x in sink.letters] == [("unknown_schema", "104")]
    assert (outcome.applied, outcome.duplicates, outcome.poisoned) == (3, 0, 1)
    assert outcome.failures == {}
    assert outcome.arrival_lag_ms == pytest.approx([950.0] * 3)
    assert outcome.event_lag_ms == pytest.approx([1000.0, 1000.0, 999.0])
    expected = feature_vector(12.5, T0, EMPTY.customer, EMPTY.terminal)
    assert outcome.vectors == dict.fromkeys(("101", "102", "103"), expected)
    ((kind, logged_batch, events, time_field),) = log.writes
    assert (kind, logged_batch, time_field) == ("transactions", f"{SHARD}-101-104", "event_time")
    assert [(e["transaction_id"], e["channel"], e["device_id"]) for e in events] == [
        ("T-1", None, None),
        ("T-2", "web", "D-9"),
        ("T-3", None, None),
    ]
    assert events[1]["features"] == expected
    assert {e["feature_set_hash"] for e in events} == {FEATURE_SET_HASH}
    # One decision per valid transaction, scored by the model on the same vectors.
    scores, manifest = shipped_scorer().score_batch([expected] * 3)
    assert [d.transaction_id for d in decisions.published] == ["T-1", "T-2", "T-3"]
    assert [d.score for d in decisions.published] == scores.tolist()
    assert {d.model_version for d in decisions.published} == {manifest.version}
    assert [e["score"] for e in events] == scores.tolist()
    assert {d.source for d in decisions.published} == {"stream"}
    assert sum(outcome.decisions.values()) == 3


def test_transaction_path_writes_nothing_for_an_empty_batch() -> None:
    store, log, sink = RecordingStore(), MemoryEventLog(), MemorySink()
    decisions = MemoryDecisions()
    outcome = TransactionPath(
        transaction_decoder(MemoryLookup()), store, sink, log, shipped_scorer(), [decisions]
    ).run([])
    assert decisions.published == []
    assert outcome == BatchOutcome()
    assert (store.transaction_calls, log.writes, sink.letters) == ([], [], [])


def test_label_path_writes_nothing_for_an_empty_batch() -> None:
    store, log, sink = RecordingStore(), MemoryEventLog(), MemorySink()
    outcome = LabelPath(parse_label, store, sink, log).run([])
    assert outcome == BatchOutcome()
    assert (store.label_calls, log.writes, sink.letters) == ([], [], [])


class NoModelSource:
    """A model source with nothing to load."""

    def load(self) -> Any:
        raise FileNotFoundError("manifest.json: no such file")

    def poll(self) -> Any:
        return None


class FailingDecisions:
    """A decision sink that cannot store anything."""

    def publish(self, decisions: Sequence[Any]) -> None:
        raise ConnectionError("decisions stream unreachable")


def _one_json_transaction() -> list[dict[str, Any]]:
    doc = {"transaction_id": "T-1", "customer_id": "C-1", "terminal_id": "TERM-1",
           "amount": 12.5, "event_time": T0}  # fmt: skip
    return [_record("101", json.dumps(doc).encode())]


def test_transaction_path_fails_the_batch_without_a_model_instead_of_using_rules() -> None:
    store, log, sink, decisions = (
        RecordingStore(),
        MemoryEventLog(),
        MemorySink(),
        MemoryDecisions(),
    )
    path = TransactionPath(
        parse_transaction, store, sink, log, Scorer(NoModelSource()), [decisions]
    )
    with pytest.raises(NoModelError):
        path.run(_one_json_transaction())
    assert (decisions.published, log.writes) == ([], [])


def test_transaction_path_fails_the_batch_when_a_decision_cannot_be_stored() -> None:
    store, log, sink, kept = RecordingStore(), MemoryEventLog(), MemorySink(), MemoryDecisions()
    path = TransactionPath(
        parse_transaction, store, sink, log, shipped_scorer(), [kept, FailingDecisions()]
    )
    with pytest.raises(ConnectionError, match="decisions stream unreachable"):
        path.run(_one_json_transaction())
    assert log.writes == []  # retried whole: the event log is written after the decisions


def _json_transaction(transaction_id: str, event_time_ms: int) -> bytes:
    doc = {"transaction_id": transaction_id, "customer_id": "C-1", "terminal_id": "TERM-1",
           "amount": 12.5, "event_time": event_time_ms}  # fmt: skip
    return json.dumps(doc).encode()


def test_transaction_path_poisons_an_event_time_far_after_arrival_and_goes_on() -> None:
    records = [
        _record("101", _json_transaction("T-1", T0)),
        _record("102", _json_transaction("T-2", T0 + 2 * DAY_MS)),  # 2 days after arrival
        _record("103", _json_transaction("T-3", T0 + 1)),
    ]
    store, log, sink, decisions = (
        RecordingStore(),
        MemoryEventLog(),
        MemorySink(),
        MemoryDecisions(),
    )
    path = TransactionPath(
        parse_transaction, store, sink, log, shipped_scorer(), [decisions],
        clock=lambda: T0 / 1000 + 1,
    )  # fmt: skip
    outcome = path.run(records)
    ((letter),) = sink.letters
    assert (letter.reason, letter.sequence_number) == ("invalid_field", "102")
    assert letter.detail.startswith(
        "event_time: 2 days after the record reached the stream (limit 1 day; got "
    )
    assert letter.payload_b64 == records[1]["kinesis"]["data"]
    assert letter.first_seen == "2026-11-28T09:15:02.173Z"
    assert [tx.transaction_id for tx in store.transaction_calls[0]] == ["T-1", "T-3"]
    assert (outcome.applied, outcome.poisoned, outcome.failures) == (2, 1, {})
    assert [d.transaction_id for d in decisions.published] == ["T-1", "T-3"]


def test_transaction_path_accepts_a_replayed_old_record_whatever_the_wall_clock() -> None:
    # Arrived a year before the wall clock, dated an hour after it arrived: valid, as it was.
    arrival_s = (T0 - 365 * DAY_MS) / 1000
    records = [
        _record("101", _json_transaction("T-1", T0 - 365 * DAY_MS + 3_600_000), arrival_s=arrival_s)
    ]
    store, log, sink, decisions = (
        RecordingStore(),
        MemoryEventLog(),
        MemorySink(),
        MemoryDecisions(),
    )
    path = TransactionPath(
        parse_transaction, store, sink, log, shipped_scorer(), [decisions],
        clock=lambda: T0 / 1000,
    )  # fmt: skip
    outcome = path.run(records)
    assert sink.letters == []
    assert (outcome.applied, outcome.poisoned) == (1, 0)


def test_transaction_path_takes_its_future_limit_from_the_constructor() -> None:
    records = [_record("101", _json_transaction("T-1", T0 + 3_600_000))]  # 1 h after arrival
    lenient, strict = MemorySink(), MemorySink()
    for sink, limit in ((lenient, 2 * 3600.0), (strict, 600.0)):
        path = TransactionPath(
            parse_transaction, RecordingStore(), sink, MemoryEventLog(), shipped_scorer(),
            [MemoryDecisions()], max_future_s=limit,
        )  # fmt: skip
        path.run(records)
    assert lenient.letters == []
    assert [x.detail.split(" (")[0] for x in strict.letters] == [
        "event_time: 1 hour after the record reached the stream"
    ]


def test_label_path_poisons_a_label_time_far_after_arrival_and_goes_on() -> None:
    def label(transaction_id: str, label_time_ms: int) -> bytes:
        return json.dumps({"transaction_id": transaction_id, "customer_id": "C-1",
                           "terminal_id": "TERM-1", "is_fraud": True,
                           "label_time": label_time_ms}).encode()  # fmt: skip

    records = [
        _record("201", label("T-1", T0 + 30 * DAY_MS)),
        _record("202", label("T-2", T0)),
    ]
    store, log, sink = RecordingStore(), MemoryEventLog(), MemorySink()
    outcome = LabelPath(parse_label, store, sink, log).run(records)
    assert [(x.reason, x.sequence_number) for x in sink.letters] == [("invalid_field", "201")]
    assert sink.letters[0].detail.startswith("label_time: 30 days after the record reached")
    assert [lb.transaction_id for lb in store.label_calls[0]] == ["T-2"]
    assert (outcome.applied, outcome.poisoned) == (1, 1)
    ((_, _, events, _),) = log.writes
    assert [e["transaction_id"] for e in events] == ["T-2"]
