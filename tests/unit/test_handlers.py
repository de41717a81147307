"""Unit tests for the Kinesis handlers against events/*.json with in-memory port doubles."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from kestrel import clients
from kestrel.events import Increment
from kestrel.ports import DeadLetter
from kestrel_local.events import load_event

REPO = Path(__file__).resolve().parents[2]


def _load_handler(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"{name}_app", REPO / "functions" / name / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRANSACTIONS = _load_handler("transactions")
LABELS = _load_handler("labels")


class MemoryCounter:
    """EventCounter double: idempotent per event id; raises a Redis error for `fail_on` ids."""

    def __init__(self, fail_on: Sequence[str] = ()) -> None:
        self.fail_on = set(fail_on)
        self.seen: set[str] = set()
        self.counts: Counter[tuple[str, str]] = Counter()

    def apply(self, event_id: str, increments: Sequence[Increment]) -> bool:
        if event_id in self.fail_on:
            raise RedisConnectionError("Connection refused (double)")
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        for inc in increments:
            self.counts[inc.entity, inc.field] += inc.by
        return True


class MemorySink:
    """DeadLetterSink double: keeps letters; raises when `broken`."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.letters: list[DeadLetter] = []

    def send(self, letter: DeadLetter) -> None:
        if self.broken:
            raise OSError("queue unavailable (double)")
        self.letters.append(letter)


@dataclass
class FakeContext:
    """The LambdaContext attributes Powertools reads."""

    function_name: str = "kestrel-TransactionsFunction"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:kestrel-TransactionsFunction"
    )
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"


def _event(name: str) -> dict[str, Any]:
    return load_event(REPO / "events" / name)


def _invoke(
    module: ModuleType, event: dict[str, Any], counter: MemoryCounter, sink: MemorySink
) -> dict[str, Any]:
    response: dict[str, Any] = module.lambda_handler(
        event, FakeContext(), counter=counter, sink=sink
    )
    return response


def _sequence(event: dict[str, Any], index: int) -> str:
    return str(event["Records"][index]["kinesis"]["sequenceNumber"])


def _set_data(record: dict[str, Any], doc: dict[str, Any]) -> None:
    record["kinesis"]["data"] = base64.b64encode(json.dumps(doc).encode()).decode()


def test_transactions_handler_counts_each_sample_transaction() -> None:
    counter, sink = MemoryCounter(), MemorySink()
    response = _invoke(TRANSACTIONS, _event("kinesis-transactions.json"), counter, sink)
    assert response == {"batchItemFailures": []}
    assert counter.counts == Counter(
        {
            ("cust:C-000042", "transactions"): 2,
            ("cust:C-000117", "transactions"): 1,
            ("term:TERM-0007", "transactions"): 2,
            ("term:TERM-0011", "transactions"): 1,
            ("global", "transactions_applied"): 3,
        }
    )
    assert sink.letters == []


def test_transactions_handler_counts_a_resent_transaction_once() -> None:
    event = _event("kinesis-transactions.json")
    resent = copy.deepcopy(event["Records"][0])  # producer retry: same data, new sequence number
    resent["kinesis"]["sequenceNumber"] = str(int(_sequence(event, 2)) + 1)
    event["Records"].append(resent)
    counter = MemoryCounter()
    response = _invoke(TRANSACTIONS, event, counter, MemorySink())
    assert response == {"batchItemFailures": []}
    assert counter.counts["global", "transactions_applied"] == 3
    assert counter.counts["cust:C-000042", "transactions"] == 2


def test_transactions_handler_sends_poison_to_sink_and_continues() -> None:
    event = _event("kinesis-poison.json")
    counter, sink = MemoryCounter(), MemorySink()
    response = _invoke(TRANSACTIONS, event, counter, sink)
    assert response == {"batchItemFailures": []}
    assert counter.seen == {"txn:T-000004"}
    poison = event["Records"][1]
    assert sink.letters == [
        DeadLetter(
            reason="undecodable",
            detail=sink.letters[0].detail,
            payload_b64=poison["kinesis"]["data"],
            stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-transactions",
            shard_id="shardId-000000000000",
            sequence_number=_sequence(event, 1),
            partition_key=poison["kinesis"]["partitionKey"],
            first_seen="2026-11-28T09:16:41.912Z",
        )
    ]
    assert "UTF-8" in sink.letters[0].detail


def test_transactions_handler_reports_redis_failure_with_its_sequence_number() -> None:
    event = _event("kinesis-transactions.json")
    counter = MemoryCounter(fail_on=["txn:T-000002"])
    response = _invoke(TRANSACTIONS, event, counter, MemorySink())
    assert response == {"batchItemFailures": [{"itemIdentifier": _sequence(event, 1)}]}
    assert counter.seen == {"txn:T-000001", "txn:T-000003"}


def test_transactions_handler_reports_every_record_when_redis_is_down() -> None:
    event = _event("kinesis-transactions.json")
    counter = MemoryCounter(fail_on=["txn:T-000001", "txn:T-000002", "txn:T-000003"])
    response = _invoke(TRANSACTIONS, event, counter, MemorySink())
    assert response == {
        "batchItemFailures": [{"itemIdentifier": _sequence(event, i)} for i in range(3)]
    }


def test_transactions_handler_reports_poison_as_failure_when_sink_fails() -> None:
    event = _event("kinesis-poison.json")
    counter = MemoryCounter()
    response = _invoke(TRANSACTIONS, event, counter, MemorySink(broken=True))
    assert response == {"batchItemFailures": [{"itemIdentifier": _sequence(event, 1)}]}
    assert counter.seen == {"txn:T-000004"}


def test_transactions_handler_defaults_to_the_client_factories(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter, sink = MemoryCounter(), MemorySink()
    monkeypatch.setattr(clients, "event_counter", lambda: counter)
    monkeypatch.setattr(clients, "dead_letter_sink", lambda: sink)
    response = TRANSACTIONS.lambda_handler(_event("kinesis-poison.json"), FakeContext())
    assert response == {"batchItemFailures": []}
    assert counter.seen == {"txn:T-000004"}
    assert [letter.reason for letter in sink.letters] == ["undecodable"]


def test_labels_handler_counts_fraud_labels_per_terminal() -> None:
    counter, sink = MemoryCounter(), MemorySink()
    response = _invoke(LABELS, _event("kinesis-labels.json"), counter, sink)
    assert response == {"batchItemFailures": []}
    assert counter.counts == Counter(
        {
            ("term:TERM-0007", "labels"): 2,
            ("term:TERM-0007", "fraud_labels"): 1,
            ("global", "labels_applied"): 2,
        }
    )
    assert counter.seen == {"label:T-000003", "label:T-000001"}


def test_labels_handler_sends_invalid_label_to_sink() -> None:
    event = _event("kinesis-labels.json")
    doc = json.loads(base64.b64decode(event["Records"][0]["kinesis"]["data"]))
    _set_data(event["Records"][0], {**doc, "is_fraud": "yes"})
    counter, sink = MemoryCounter(), MemorySink()
    response = _invoke(LABELS, event, counter, sink)
    assert response == {"batchItemFailures": []}
    assert [(x.reason, x.sequence_number) for x in sink.letters] == [
        ("invalid_field", _sequence(event, 0))
    ]
    assert sink.letters[0].detail.startswith("is_fraud:")
    assert sink.letters[0].stream_arn.endswith(":stream/kestrel-labels")
    assert counter.seen == {"label:T-000001"}


def test_labels_handler_dead_letters_transactions_from_the_wrong_stream() -> None:
    sink = MemorySink()
    response = _invoke(LABELS, _event("kinesis-transactions.json"), MemoryCounter(), sink)
    assert response == {"batchItemFailures": []}
    assert [x.reason for x in sink.letters] == ["missing_field"] * 3


def test_labels_handler_reports_redis_failure_with_its_sequence_number() -> None:
    event = _event("kinesis-labels.json")
    counter = MemoryCounter(fail_on=["label:T-000001"])
    response = _invoke(LABELS, event, counter, MemorySink())
    assert response == {"batchItemFailures": [{"itemIdentifier": _sequence(event, 1)}]}
    assert counter.counts["term:TERM-0007", "fraud_labels"] == 1
