"""Unit tests for the Kinesis handlers against events/*.json with in-memory port doubles."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from stream_doubles import MemoryDecisions, shipped_scorer

from kestrel import clients
from kestrel.events import Label, Transaction, parse_label, parse_transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    FEATURE_NAMES,
    FEATURE_SET_HASH,
    NO_PREVIOUS_S,
    TERMINAL_WINDOWS,
    AppliedTransaction,
    CustomerAggregates,
    TerminalAggregates,
    cents,
)
from kestrel.ports import DeadLetter
from kestrel.streaming import LabelPath, TransactionPath
from kestrel_local.events import load_event

REPO = Path(__file__).resolve().parents[2]
SHARD = "shardId-000000000000"
TRANSACTIONS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-transactions"
LABELS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-labels"
# The handlers' clock: ten seconds after the first sample transaction arrived.
NOW_S = 1_795_857_312.173
FRESHNESS = tuple(f"Freshness{a}{b}" for a in ("Arrival", "EventTime") for b in ("P50", "Max"))
UNITS = dict.fromkeys(FRESHNESS, "Milliseconds") | {
    f"{prefix}{kind}": "Count"
    for prefix in ("Transactions", "Labels")
    for kind in ("Applied", "Duplicates", "Failed")
}
UNITS["PoisonRecords"] = "Count"
UNITS |= {f"Decisions{d}": "Count" for d in ("Approve", "Review", "Decline")}


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


class MemoryFeatureStore:
    """FeatureStore double: idempotent per transaction id, with simple running aggregates.

    Every customer window holds all of the customer's transactions so far, every terminal
    window all of the terminal's, and terminal frauds are the fraud labels recorded on it.
    Ids in `fail_on` come back as exceptions in their place; `down` raises for the batch.
    """

    def __init__(self, fail_on: Iterable[str] = (), down: bool = False) -> None:
        self.fail_on = set(fail_on)
        self.down = down
        self.applied: Counter[str] = Counter()  # transaction id -> times applied
        self.results: dict[str, AppliedTransaction] = {}
        self.customers: dict[str, list[tuple[int, int]]] = {}  # (event time, cents)
        self.terminals: Counter[str] = Counter()
        self.frauds: dict[str, set[str]] = {}  # terminal -> fraudulent transaction ids
        self.labels_received: list[Label] = []

    def apply_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[AppliedTransaction | Exception]:
        if self.down:
            raise ConnectionError("feature store unreachable (double)")
        out: list[AppliedTransaction | Exception] = []
        for tx in transactions:
            if tx.transaction_id in self.fail_on:
                out.append(RuntimeError(f"script error for {tx.transaction_id} (double)"))
                continue
            known = self.results.get(tx.transaction_id)
            if known is not None:
                out.append(replace(known, applied=False))
                continue
            history = self.customers.setdefault(tx.customer_id, [])
            previous = history[-1][0] if history else None
            history.append((tx.event_time_ms, cents(tx.amount)))
            count, total = len(history), sum(c for _, c in history)
            self.terminals[tx.terminal_id] += 1
            frauds = len(self.frauds.get(tx.terminal_id, ()))
            result = AppliedTransaction(
                customer=CustomerAggregates(
                    counts=(count,) * len(CUSTOMER_WINDOWS),
                    sums_cents=(total,) * len(CUSTOMER_WINDOWS),
                    previous_time_ms=previous,
                ),
                terminal=TerminalAggregates(
                    counts=(self.terminals[tx.terminal_id],) * len(TERMINAL_WINDOWS),
                    frauds=(frauds,) * len(TERMINAL_WINDOWS),
                ),
                applied=True,
            )
            self.results[tx.transaction_id] = result
            self.applied[tx.transaction_id] += 1
            out.append(result)
        return out

    def apply_labels(self, labels: Sequence[Label]) -> list[bool | Exception]:
        if self.down:
            raise ConnectionError("feature store unreachable (double)")
        self.labels_received.extend(labels)
        out: list[bool | Exception] = []
        for label in labels:
            if label.transaction_id in self.fail_on:
                out.append(RuntimeError(f"script error for {label.transaction_id} (double)"))
                continue
            frauds = self.frauds.setdefault(label.terminal_id, set())
            out.append(label.transaction_id not in frauds)
            frauds.add(label.transaction_id)
        return out


@dataclass
class LogWrite:
    """One `EventLog.write_batch` call."""

    kind: str
    batch_id: str
    events: list[dict[str, Any]]
    time_field: str


class MemoryEventLog:
    """EventLog double: keeps every write; raises when `broken`."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.writes: list[LogWrite] = []

    def write_batch(
        self, kind: str, batch_id: str, events: Sequence[Mapping[str, Any]], time_field: str
    ) -> list[str]:
        if self.broken:
            raise OSError("bucket unavailable (double)")
        self.writes.append(LogWrite(kind, batch_id, [dict(e) for e in events], time_field))
        return [f"memory://{kind}/{batch_id}.jsonl"]


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
class Ports:
    """The doubles behind one path."""

    store: MemoryFeatureStore
    log: MemoryEventLog
    sink: MemorySink
    decisions: MemoryDecisions = field(default_factory=MemoryDecisions)


def _ports(
    store: MemoryFeatureStore | None = None,
    log: MemoryEventLog | None = None,
    sink: MemorySink | None = None,
) -> Ports:
    return Ports(store or MemoryFeatureStore(), log or MemoryEventLog(), sink or MemorySink())


def _transaction_path(ports: Ports) -> TransactionPath:
    return TransactionPath(
        parse_transaction,
        ports.store,
        ports.sink,
        ports.log,
        shipped_scorer(),
        [ports.decisions],
        lambda: NOW_S,
    )


def _label_path(ports: Ports) -> LabelPath:
    return LabelPath(parse_label, ports.store, ports.sink, ports.log)


@dataclass
class FakeContext:
    """The LambdaContext attributes Powertools reads."""

    function_name: str = "kestrel-TransactionsFunction"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:kestrel-TransactionsFunction"
    )
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace template.yaml sets (the handlers' Metrics read it at import time)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    for module in (TRANSACTIONS, LABELS):
        monkeypatch.setattr(module.metrics.provider, "namespace", "Kestrel")


def _event(name: str) -> dict[str, Any]:
    return load_event(REPO / "events" / name)


def _invoke_transactions(event: dict[str, Any], ports: Ports) -> dict[str, Any]:
    response: dict[str, Any] = TRANSACTIONS.lambda_handler(
        event, FakeContext(), path=_transaction_path(ports)
    )
    return response


def _invoke_labels(event: dict[str, Any], ports: Ports) -> dict[str, Any]:
    response: dict[str, Any] = LABELS.lambda_handler(
        event, FakeContext(function_name="kestrel-LabelsFunction"), path=_label_path(ports)
    )
    return response


def _sequence(event: dict[str, Any], index: int) -> str:
    return str(event["Records"][index]["kinesis"]["sequenceNumber"])


def _failures(event: dict[str, Any], *indexes: int) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": _sequence(event, i)} for i in indexes]}


def _set_data(record: dict[str, Any], doc: dict[str, Any]) -> None:
    record["kinesis"]["data"] = base64.b64encode(json.dumps(doc).encode()).decode()


def _doc(record: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.b64decode(record["kinesis"]["data"]))
    return doc


def _emf(captured: str) -> dict[str, float]:
    """The one EMF blob `@metrics.log_metrics` printed, as metric name -> its single value."""
    blobs = [
        doc
        for doc in (json.loads(line) for line in captured.splitlines() if line.startswith("{"))
        if "_aws" in doc
    ]
    assert len(blobs) == 1, captured
    (directive,) = blobs[0]["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Kestrel"
    values: dict[str, float] = {}
    for metric in directive["Metrics"]:
        assert metric["Unit"] == UNITS[metric["Name"]], metric
        (values[metric["Name"]],) = blobs[0][metric["Name"]]  # one value per batch
    return values


def test_transactions_handler_applies_each_sample_transaction_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ports = _ports()
    response = _invoke_transactions(_event("kinesis-transactions.json"), ports)
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000001": 1, "T-000002": 1, "T-000003": 1})
    assert ports.sink.letters == []
    emf = _emf(capsys.readouterr().out)
    assert (emf["TransactionsApplied"], emf["TransactionsDuplicates"]) == (3, 0)
    assert (emf["TransactionsFailed"], emf["PoisonRecords"]) == (0, 0)


def test_transactions_handler_reports_freshness_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _invoke_transactions(_event("kinesis-transactions.json"), _ports())
    emf = _emf(capsys.readouterr().out)
    # Clock 1795857312.173 s; arrivals .302.173, .307.530, .309.052; events .302.123,
    # .307.480, .309.002.
    assert emf["FreshnessArrivalMax"] == pytest.approx(10_000, abs=0.01)
    assert emf["FreshnessArrivalP50"] == pytest.approx(4_643, abs=0.01)
    assert emf["FreshnessEventTimeMax"] == pytest.approx(10_050, abs=0.01)
    assert emf["FreshnessEventTimeP50"] == pytest.approx(4_693, abs=0.01)


def test_transactions_handler_reports_a_resent_transaction_as_duplicate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-transactions.json")
    resent = copy.deepcopy(event["Records"][0])  # producer retry: same data, new sequence number
    resent["kinesis"]["sequenceNumber"] = str(int(_sequence(event, 2)) + 1)
    resent["eventID"] = f"{SHARD}:{resent['kinesis']['sequenceNumber']}"
    event["Records"].append(resent)
    ports = _ports()
    response = _invoke_transactions(event, ports)
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000001": 1, "T-000002": 1, "T-000003": 1})
    emf = _emf(capsys.readouterr().out)
    assert (emf["TransactionsApplied"], emf["TransactionsDuplicates"]) == (3, 1)
    logged = ports.log.writes[0].events
    assert [e["transaction_id"] for e in logged] == ["T-000001", "T-000002", "T-000003", "T-000001"]
    assert logged[3]["features"] == logged[0]["features"]  # a replay sees the same aggregates


def test_transactions_handler_sends_poison_to_sink_and_continues(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-poison.json")
    ports = _ports()
    response = _invoke_transactions(event, ports)
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000004": 1})
    poison = event["Records"][1]
    assert ports.sink.letters == [
        DeadLetter(
            reason="undecodable",
            detail=ports.sink.letters[0].detail,
            payload_b64=poison["kinesis"]["data"],
            stream_arn=TRANSACTIONS_ARN,
            shard_id=SHARD,
            sequence_number=_sequence(event, 1),
            partition_key=poison["kinesis"]["partitionKey"],
            first_seen="2026-11-28T09:16:41.912Z",
        )
    ]
    assert "UTF-8" in ports.sink.letters[0].detail
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000004"]
    emf = _emf(capsys.readouterr().out)
    assert (emf["PoisonRecords"], emf["TransactionsFailed"]) == (1, 0)


def test_transactions_handler_dead_letters_an_invalid_transaction() -> None:
    event = _event("kinesis-transactions.json")
    _set_data(event["Records"][1], {**_doc(event["Records"][1]), "amount": -3})
    ports = _ports()
    response = _invoke_transactions(event, ports)
    assert response == {"batchItemFailures": []}
    assert [(x.reason, x.sequence_number) for x in ports.sink.letters] == [
        ("invalid_field", _sequence(event, 1))
    ]
    assert ports.sink.letters[0].detail.startswith("amount:")
    assert ports.sink.letters[0].payload_b64 == event["Records"][1]["kinesis"]["data"]
    assert ports.store.applied == Counter({"T-000001": 1, "T-000003": 1})


def test_transactions_handler_reports_a_store_error_with_its_sequence_number(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-transactions.json")
    ports = _ports(store=MemoryFeatureStore(fail_on=["T-000002"]))
    response = _invoke_transactions(event, ports)
    assert response == _failures(event, 1)
    assert ports.store.applied == Counter({"T-000001": 1, "T-000003": 1})
    # The failed record is retried, so it is not logged now.
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000001", "T-000003"]
    emf = _emf(capsys.readouterr().out)
    assert (emf["TransactionsApplied"], emf["TransactionsFailed"]) == (2, 1)


def test_transactions_handler_reports_every_record_when_every_item_fails() -> None:
    event = _event("kinesis-transactions.json")
    ports = _ports(store=MemoryFeatureStore(fail_on=["T-000001", "T-000002", "T-000003"]))
    response = _invoke_transactions(event, ports)
    assert response == _failures(event, 0, 1, 2)
    assert ports.log.writes == []


def test_transactions_handler_raises_when_the_whole_store_fails() -> None:
    ports = _ports(store=MemoryFeatureStore(down=True))
    with (
        pytest.raises(ConnectionError, match="unreachable"),
        pytest.warns(UserWarning, match="No application metrics"),
    ):
        _invoke_transactions(_event("kinesis-transactions.json"), ports)
    assert ports.log.writes == []


def test_transactions_handler_raises_when_the_event_log_fails() -> None:
    ports = _ports(log=MemoryEventLog(broken=True))
    with (
        pytest.raises(OSError, match="bucket unavailable"),
        pytest.warns(UserWarning, match="No application metrics"),
    ):
        _invoke_transactions(_event("kinesis-transactions.json"), ports)


def test_transactions_handler_reports_poison_as_failure_when_sink_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-poison.json")
    ports = _ports(sink=MemorySink(broken=True))
    response = _invoke_transactions(event, ports)
    assert response == _failures(event, 1)
    assert ports.store.applied == Counter({"T-000004": 1})
    emf = _emf(capsys.readouterr().out)
    assert (emf["PoisonRecords"], emf["TransactionsFailed"]) == (0, 1)


def test_transactions_handler_logs_the_batch_once_with_features() -> None:
    event = _event("kinesis-transactions.json")
    ports = _ports()
    _invoke_transactions(event, ports)
    assert len(ports.log.writes) == 1
    write = ports.log.writes[0]
    assert (write.kind, write.time_field) == ("transactions", "event_time")
    assert write.batch_id == f"{SHARD}-{_sequence(event, 0)}-{_sequence(event, 2)}"
    assert write.events[0] == {
        "transaction_id": "T-000001",
        "customer_id": "C-000042",
        "terminal_id": "TERM-0007",
        "amount": 57.19,
        "event_time": 1_795_857_302_123,
        "channel": None,
        "device_id": None,
        "features": write.events[0]["features"],
        "feature_set_hash": FEATURE_SET_HASH,
        "score": ports.decisions.published[0].score,
        "decision": ports.decisions.published[0].decision.value,
        "model_version": shipped_scorer().model_version,
        "event_id": event["Records"][0]["eventID"],
    }
    assert [d.transaction_id for d in ports.decisions.published] == [
        e["transaction_id"] for e in write.events
    ]
    assert all(e["feature_set_hash"] == FEATURE_SET_HASH for e in write.events)
    second = dict(zip(FEATURE_NAMES, write.events[1]["features"], strict=True))
    assert second["TX_AMOUNT"] == 12.5
    assert second["TX_DURING_WEEKEND"] == 1.0  # 2026-11-28 is a Saturday
    assert second["TX_DURING_NIGHT"] == 0.0  # 09:15 UTC
    assert second["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2.0  # C-000042: T-000001 and this one
    assert second["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx((57.19 + 12.5) / 2)
    assert second["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == pytest.approx(5.357)
    assert second["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1.0  # the store's first on TERM-0011
    first = dict(zip(FEATURE_NAMES, write.events[0]["features"], strict=True))
    assert first["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_S


def test_transactions_handler_defaults_to_the_client_factory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = _ports()
    monkeypatch.setattr(clients, "transaction_path", lambda: _transaction_path(ports))
    response = TRANSACTIONS.lambda_handler(_event("kinesis-poison.json"), FakeContext())
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000004": 1})
    assert [letter.reason for letter in ports.sink.letters] == ["undecodable"]


def test_labels_handler_applies_only_fraud_labels(capsys: pytest.CaptureFixture[str]) -> None:
    event = _event("kinesis-labels.json")
    ports = _ports()
    response = _invoke_labels(event, ports)
    assert response == {"batchItemFailures": []}
    assert [label.transaction_id for label in ports.store.labels_received] == ["T-000003"]
    assert ports.store.frauds == {"TERM-0007": {"T-000003"}}
    assert ports.sink.letters == []
    emf = _emf(capsys.readouterr().out)
    assert (emf["LabelsApplied"], emf["LabelsDuplicates"], emf["LabelsFailed"]) == (1, 0, 0)
    assert emf["PoisonRecords"] == 0
    assert not set(FRESHNESS) & set(emf)  # labels carry no freshness
    # Both labels, fraud or not, reach the event log in one write.
    assert len(ports.log.writes) == 1
    write = ports.log.writes[0]
    assert (write.kind, write.time_field) == ("labels", "label_time")
    assert write.batch_id == f"{SHARD}-{_sequence(event, 0)}-{_sequence(event, 1)}"
    assert [(e["transaction_id"], e["is_fraud"]) for e in write.events] == [
        ("T-000003", True),
        ("T-000001", False),
    ]
    assert write.events[0]["label_time"] == 1_796_479_331_000


def test_labels_handler_reports_a_repeated_fraud_label_as_duplicate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-labels.json")
    ports = _ports()
    _invoke_labels(event, ports)
    capsys.readouterr()
    response = _invoke_labels(event, ports)  # the whole batch again, as on a retry
    assert response == {"batchItemFailures": []}
    emf = _emf(capsys.readouterr().out)
    assert (emf["LabelsApplied"], emf["LabelsDuplicates"]) == (0, 1)


def test_labels_handler_sends_invalid_label_to_sink() -> None:
    event = _event("kinesis-labels.json")
    _set_data(event["Records"][0], {**_doc(event["Records"][0]), "is_fraud": "yes"})
    ports = _ports()
    response = _invoke_labels(event, ports)
    assert response == {"batchItemFailures": []}
    assert [(x.reason, x.sequence_number) for x in ports.sink.letters] == [
        ("invalid_field", _sequence(event, 0))
    ]
    letter = ports.sink.letters[0]
    assert letter.detail.startswith("is_fraud:")
    assert letter.stream_arn == LABELS_ARN
    assert letter.payload_b64 == event["Records"][0]["kinesis"]["data"]
    assert ports.store.labels_received == []  # the other label is not fraud
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000001"]


def test_labels_handler_dead_letters_transactions_from_the_wrong_stream() -> None:
    ports = _ports()
    response = _invoke_labels(_event("kinesis-transactions.json"), ports)
    assert response == {"batchItemFailures": []}
    assert [x.reason for x in ports.sink.letters] == ["missing_field"] * 3
    assert ports.log.writes == []


def test_labels_handler_reports_a_store_error_with_its_sequence_number() -> None:
    event = _event("kinesis-labels.json")
    ports = _ports(store=MemoryFeatureStore(fail_on=["T-000003"]))
    response = _invoke_labels(event, ports)
    assert response == _failures(event, 0)
    assert ports.store.frauds == {}
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000001"]


def test_labels_handler_raises_when_the_whole_store_fails() -> None:
    ports = _ports(store=MemoryFeatureStore(down=True))
    with (
        pytest.raises(ConnectionError),
        pytest.warns(UserWarning, match="No application metrics"),
    ):
        _invoke_labels(_event("kinesis-labels.json"), ports)
    assert ports.log.writes == []


def test_labels_handler_reports_poison_as_failure_when_sink_fails() -> None:
    event = _event("kinesis-labels.json")
    _set_data(event["Records"][1], {"transaction_id": "T-000001"})
    ports = _ports(sink=MemorySink(broken=True))
    response = _invoke_labels(event, ports)
    assert response == _failures(event, 1)
    assert ports.store.frauds == {"TERM-0007": {"T-000003"}}


def test_labels_handler_defaults_to_the_client_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = _ports()
    monkeypatch.setattr(clients, "label_path", lambda: _label_path(ports))
    response = LABELS.lambda_handler(
        _event("kinesis-labels.json"), FakeContext(function_name="kestrel-LabelsFunction")
    )
    assert response == {"batchItemFailures": []}
    assert ports.store.frauds == {"TERM-0007": {"T-000003"}}
