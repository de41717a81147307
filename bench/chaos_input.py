"""The chaos run's input: simulated good transactions, poison records, duplicated PutRecords."""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kestrel_training.producer import TRANSACTION_FIELDS, json_encoder
from kestrel_training.simulator import (
    SimulatorConfig,
    expected_transactions_per_day,
    simulate,
)

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

# Poison kinds: how the record is broken, and the reason the poison DLQ must give.
POISON_KINDS: dict[str, str] = {
    "not_utf8": "undecodable",
    "broken_json": "invalid_json",
    "json_array": "invalid_json",
    "no_amount": "missing_field",
    "negative_amount": "invalid_field",
    "bad_customer_id": "invalid_field",
    "event_time_2200": "invalid_field",
}


def good_transactions(events: int, seed: int) -> list[dict[str, Any]]:
    """`events` simulated transactions (in event-time order), as producer records."""
    config = SimulatorConfig(
        n_customers=max(200, min(5000, events // 20)),
        n_terminals=max(400, min(10000, events // 10)),
        seed=seed,
    )
    days = max(2, math.ceil(events * 1.15 / expected_transactions_per_day(config)) + 1)
    sim = simulate(dataclasses.replace(config, n_days=days))
    frame = sim.transactions.head(events)
    if len(frame) < events:
        raise RuntimeError(f"the simulation made {len(frame)} transactions, not {events}")
    fields = list(TRANSACTION_FIELDS)
    records: list[dict[str, Any]] = frame[fields].to_dict("records")
    for r in records:
        r["amount"], r["event_time"] = float(r["amount"]), int(r["event_time"])
    return records


def poison_payload(kind: str, index: int, template: dict[str, Any]) -> bytes:
    """A poison record of `kind`, unique by `index`, otherwise shaped like `template`."""
    doc = {k: template[k] for k in TRANSACTION_FIELDS}
    transaction_id = f"POISON-{index:07d}"
    doc["transaction_id"] = transaction_id
    if kind == "not_utf8":
        return b"\xff\xfe" + transaction_id.encode()
    if kind == "broken_json":
        return json.dumps(doc).encode()[:-1] + b',"x":'
    if kind == "json_array":
        return json.dumps([doc]).encode()
    if kind == "no_amount":
        del doc["amount"]
    elif kind == "negative_amount":
        doc["amount"] = -abs(float(doc["amount"])) - 1.0
    elif kind == "bad_customer_id":
        doc["customer_id"] = f"bad id {index}!"
    elif kind == "event_time_2200":
        doc["event_time"] = 7_258_118_400_000 + index  # 2200-01-01
    else:
        raise ValueError(kind)
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Poison:
    """One poison record: its payload and the reason the DLQ must give."""

    kind: str
    payload: bytes
    reason: str


def mix(
    good: list[dict[str, Any]], count: int, seed: int
) -> tuple[list[dict[str, Any]], dict[bytes, Poison]]:
    """The producer's input: `good` with `count` poison records at random places."""
    rng = random.Random(seed)
    kinds = sorted(POISON_KINDS)
    poison: dict[bytes, Poison] = {}
    slots = sorted(rng.sample(range(len(good)), count))
    out: list[dict[str, Any]] = []
    next_slot = 0
    for i, record in enumerate(good):
        while next_slot < len(slots) and slots[next_slot] == i:
            kind = kinds[next_slot % len(kinds)]
            payload = poison_payload(kind, next_slot, record)
            poison[payload] = Poison(kind, payload, POISON_KINDS[kind])
            out.append({"customer_id": record["customer_id"], "_raw": payload})
            next_slot += 1
        out.append(record)
    return out, poison


def encoder() -> Callable[[dict[str, Any]], bytes]:
    """JSON for good records; the raw bytes of poison records."""
    good = json_encoder(TRANSACTION_FIELDS)

    def encode(record: dict[str, Any]) -> bytes:
        raw = record.get("_raw")
        return raw if isinstance(raw, bytes) else good(record)

    return encode


class DuplicatingKinesis:
    """A Kinesis client whose PutRecords is sometimes sent twice (a retry after a lost reply).

    It also remembers every accepted record's shard and sequence number, so the run can tell
    how far the runtime's checkpoints are.
    """

    def __init__(self, client: KinesisClient, rate: float, seed: int, poison: set[bytes]) -> None:
        self.client, self.rate, self.rng, self.poison = client, rate, random.Random(seed), poison
        self.lock = threading.Lock()
        self.seqs: dict[str, list[int]] = {}
        self.accepted = 0
        self.duplicates = 0
        self.duplicates_of_poison = 0

    def put_records(self, **request: Any) -> Any:
        """PutRecords; `rate` of the calls are sent a second time after they succeeded."""
        response = self.client.put_records(**request)
        self._note(response)
        if self.rng.random() < self.rate:
            again = self.client.put_records(**request)
            for entry, result in zip(request["Records"], again["Records"], strict=True):
                if "ErrorCode" not in result:
                    with self.lock:
                        self.duplicates += 1
                        self.duplicates_of_poison += bytes(entry["Data"]) in self.poison
            self._note(again)
        return response

    def _note(self, response: Any) -> None:
        with self.lock:
            for result in response["Records"]:
                if "ErrorCode" not in result:
                    self.accepted += 1
                    bisect.insort(
                        self.seqs.setdefault(result["ShardId"], []), int(result["SequenceNumber"])
                    )

    def finished(self, checkpoints: dict[str, int]) -> int:
        """How many accepted records are at or before their shard's checkpoint."""
        with self.lock:
            return sum(
                bisect.bisect_right(seqs, checkpoints.get(shard, -1))
                for shard, seqs in self.seqs.items()
            )
