"""`TransactionPath` on batches longer than one store part: order, alignment, retries.

Parts ramp up: a quarter of `STORE_PART`, a half, then `STORE_PART` each."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from stream_doubles import MemoryDecisions, shipped_scorer
from test_streaming import T0, MemoryEventLog, MemorySink, RecordingStore, _record

from kestrel.events import Transaction, parse_transaction
from kestrel.ports import SchemaRegistryUnavailable
from kestrel.record_decoding import STORE_PART
from kestrel.streaming import TransactionPath

COUNT = 2 * STORE_PART + 37


def _records(poison: bool = True) -> list[dict[str, Any]]:
    """COUNT records, each its own amount; with `poison`, every 13th is not JSON."""
    records = []
    for n in range(COUNT):
        doc = {"transaction_id": f"T-{n}", "customer_id": f"C-{n % 7}", "terminal_id": "TERM-1",
               "amount": 1.0 + n, "event_time": T0 + n}  # fmt: skip
        data = b"{not json" if poison and n % 13 == 5 else json.dumps(doc).encode()
        records.append(_record(str(1000 + n), data))
    return records


def _path(
    store: RecordingStore, decode: Any = parse_transaction
) -> tuple[TransactionPath, MemoryEventLog, MemorySink, MemoryDecisions]:
    log, sink, decisions = MemoryEventLog(), MemorySink(), MemoryDecisions()
    path = TransactionPath(
        decode, store, sink, log, shipped_scorer(), [decisions], clock=lambda: T0 / 1000 + 1
    )
    return path, log, sink, decisions


def test_transaction_path_applies_a_long_batch_in_parts_in_order_and_keeps_rows_aligned() -> None:
    store = RecordingStore()
    path, log, sink, decisions = _path(store)
    records = _records()
    outcome = path.run(records)
    valid = [n for n in range(COUNT) if n % 13 != 5]
    ramp = [STORE_PART // 4, STORE_PART // 2, STORE_PART]
    sizes = [*ramp, len(valid) - sum(ramp)]
    assert [len(part) for part in store.transaction_calls] == sizes
    applied = [tx.transaction_id for part in store.transaction_calls for tx in part]
    assert applied == [f"T-{n}" for n in valid]
    assert [letter.sequence_number for letter in sink.letters] == [
        str(1000 + n) for n in range(COUNT) if n % 13 == 5
    ]
    assert (outcome.applied, outcome.poisoned, outcome.failures) == (
        len(valid),
        COUNT - len(valid),
        {},
    )
    assert [d.transaction_id for d in decisions.published] == [f"T-{n}" for n in valid]
    # Each row's vector, decision and record belong to the same transaction.
    assert {seq: vector[0] for seq, vector in outcome.vectors.items()} == {
        str(1000 + n): 1.0 + n for n in valid
    }
    ((_, _, rows, _),) = log.writes
    assert [(r["transaction_id"], r["features"][0], r["event_id"].split(":")[1]) for r in rows] == [
        (f"T-{n}", 1.0 + n, str(1000 + n)) for n in valid
    ]
    scores, _ = shipped_scorer().score_batch([r["features"] for r in rows])
    assert [d.score for d in decisions.published] == scores.tolist()


def test_transaction_path_retries_from_a_registry_failure_in_a_later_part(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing_at = STORE_PART + 30  # in the second part

    def decode(data: bytes) -> Transaction:
        transaction = parse_transaction(data)
        if int(transaction.transaction_id[2:]) >= failing_at:
            raise SchemaRegistryUnavailable("throttled", "Rate exceeded")
        return transaction

    store = RecordingStore()
    path, _, _, decisions = _path(store, decode)
    records = _records(poison=False)
    caplog.set_level(logging.WARNING)
    outcome = path.run(records)
    applied = [tx.transaction_id for part in store.transaction_calls for tx in part]
    assert applied == [f"T-{n}" for n in range(failing_at)]
    assert outcome.failures == {
        str(1000 + n): "schema registry throttled: Rate exceeded" for n in range(failing_at, COUNT)
    }
    assert len(decisions.published) == failing_at
    (logged,) = [r for r in caplog.records if r.name == "kestrel.record_decoding"]
    assert logged.getMessage().startswith(
        f"schema registry throttled: {COUNT - failing_at} records to retry from sequence number "
        f"{1000 + failing_at}"
    )
