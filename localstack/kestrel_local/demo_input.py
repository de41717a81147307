"""What `make demo` streams (simulated transactions, their delayed labels, a few poison records)
and the simulated history it backfills first."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from kestrel_training.producer import LABEL_FIELDS, TRANSACTION_FIELDS, frame_records
from kestrel_training.simulator import (
    Simulation,
    SimulatorConfig,
    expected_transactions_per_day,
    simulate,
)

DAY_MS = 86_400_000
# The poison records the demo injects: payload maker and the reason the poison DLQ will give.
POISON_KINDS: dict[str, str] = {
    "garbage_bytes": "undecodable",
    "broken_json": "invalid_json",
    "negative_amount": "invalid_field",
    "bad_customer_id": "invalid_field",
    "missing_amount": "missing_field",
    "unregistered_schema": "unknown_schema",
}


@dataclass(frozen=True)
class DemoInput:
    """The transactions to stream (event-time order), the labels, each with its due time,
    and the simulated history before the stream (what the demo backfills)."""

    transactions: pd.DataFrame
    labels: pd.DataFrame
    label_due_s: np.ndarray[Any, np.dtype[np.float64]]
    start_ms: int
    stream_start_ms: int = 0
    history_days: int = 0
    simulation: Simulation | None = None
    fraud_labels: pd.DataFrame | None = None  # every fraud label fed back by the end

    @property
    def days(self) -> float:
        """Simulated days the transactions span."""
        first, last = self.transactions["event_time"].iloc[[0, -1]]
        return float(last - first) / DAY_MS


def simulated_input(events: int, rate: float, seed: int, history_days: int = 0) -> DemoInput:
    """`events` transactions of the book's simulator (5,000 customers) after `history_days`
    simulated days of history, and the labels the stream feeds back.

    The stream starts at midnight after the history. A label is due once the transaction
    stream, paced at `rate`, reaches its `label_time` (the simulator dates each chargeback 7
    days after its transaction), so feedback arrives in the stream's own clock; labels
    dated before the stream belong to the history, labels dated after the last transaction
    are not sent.
    """
    config = SimulatorConfig(seed=seed)
    days = history_days + max(
        2, math.ceil(events * 1.1 / expected_transactions_per_day(config)) + 1
    )
    sim = simulate(dataclasses.replace(config, n_days=days))
    stream_start = config.start_ms + history_days * DAY_MS
    times = sim.transactions["event_time"]
    tx = sim.transactions[times >= stream_start].head(events).reset_index(drop=True)
    if len(tx) < events:
        raise RuntimeError(f"the simulation made {len(tx)} transactions, not {events}")
    last_time = int(tx["event_time"].iloc[-1])
    known_ids = set(tx["transaction_id"]) | set(
        sim.transactions["transaction_id"][times < stream_start]
    )
    fed = sim.labels[
        sim.labels["transaction_id"].isin(known_ids) & (sim.labels["label_time"] <= last_time)
    ]
    labels = fed[fed["label_time"] >= stream_start].reset_index(drop=True)
    position = np.searchsorted(tx["event_time"].to_numpy(), labels["label_time"].to_numpy())
    return DemoInput(
        tx,
        labels,
        position.astype(np.float64) / rate,
        config.start_ms,
        stream_start,
        history_days,
        sim,
        fed[fed["is_fraud"].astype(bool)].reset_index(drop=True),
    )


def transaction_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Producer records (the stream's fields only) of a transactions frame."""
    return list(frame_records(frame[list(TRANSACTION_FIELDS)]))


def label_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Producer records of a labels frame."""
    return list(frame_records(frame[list(LABEL_FIELDS)]))


def poison_payload(kind: str, index: int, template: dict[str, Any]) -> bytes:
    """A poison record of `kind`, otherwise shaped like the transaction `template`."""
    doc = {**template, "transaction_id": f"DEMO-POISON-{index:03d}"}
    builders: dict[str, Callable[[], bytes]] = {
        "garbage_bytes": lambda: b"\xff\xfe\x00" + doc["transaction_id"].encode(),
        "broken_json": lambda: json.dumps(doc).encode()[:-1] + b',"x":',
        "negative_amount": lambda: json.dumps({**doc, "amount": -12.5}).encode(),
        "bad_customer_id": lambda: json.dumps({**doc, "customer_id": "not an id!"}).encode(),
        "missing_amount": lambda: json.dumps(
            {k: v for k, v in doc.items() if k != "amount"}
        ).encode(),
        # Glue's wire format (version 3, no compression) naming a schema version nobody
        # registered: the record cannot be read until that schema exists.
        "unregistered_schema": lambda: bytes([3, 0]) + uuid.UUID(int=index + 1).bytes + b"\x00",
    }
    return builders[kind]()


def poison_entries(count: int, template: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """`count` poison records cycling through the kinds: (kind, payload, partition key)."""
    kinds = list(POISON_KINDS)
    return [
        (kinds[i % len(kinds)], poison_payload(kinds[i % len(kinds)], i, template), f"poison-{i}")
        for i in range(count)
    ]
