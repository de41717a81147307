"""In-memory port doubles and invocation helpers shared by the Kinesis handler unit tests."""

from __future__ import annotations

import base64
import importlib.util
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from stream_doubles import AppliesInParts, MemoryDecisions, shipped_scorer

from kestrel.events import Label, Transaction, parse_label, parse_transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
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
FRESHNESS = tuple(
    f"Freshness{a}{b}" for a in ("Arrival", "EventTime") for b in ("P50", "P99", "Max")
)
UNITS = dict.fromkeys((*FRESHNESS, "ScoringLatency"), "Milliseconds") | {
    f"{prefix}{kind}": "Count"
    for prefix in ("Transactions", "Labels", "Clicks")
    for kind in ("Applied", "Duplicates", "Failed")
}
UNITS |= dict.fromkeys(
    ("PoisonRecords", "TransactionsProcessed", "LabelsReceived", "LabelsFrauds", "ClicksProcessed"),
    "Count",
)
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


class MemoryFeatureStore(AppliesInParts):
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
