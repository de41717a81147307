"""A simulated history, the stream paths that apply it, and key-by-key store snapshots."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pandas as pd
import redis
from kestrel_training.simulator import Simulation, SimulatorConfig, simulate

from kestrel.adapters.onnx_model import LayerModelSource
from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.s3_event_log import S3EventLog
from kestrel.codec import label_decoder, transaction_decoder
from kestrel.features import DAY_MS
from kestrel.ports import DeadLetter
from kestrel.scoring import Scorer
from kestrel.settings import default_model_dir
from kestrel.streaming import LabelPath, TransactionPath

# 100 customers, 20 terminals within reach of each other, 50 days: about 9,800
# transactions, and terminals busy enough that their retention drops entries (and labels).
# No compromised terminals (scenario 2): on 20 terminals they would make most transactions
# frauds, and a replay of the past reads every label since (about 1,100 frauds here).
CONFIG = SimulatorConfig(
    n_customers=100, n_terminals=20, n_days=50, radius=30.0, seed=5, fraud_scenarios=(1, 3)
)
TX_FIELDS = ("transaction_id", "customer_id", "terminal_id", "amount", "event_time")
LABEL_FIELDS = ("transaction_id", "customer_id", "terminal_id", "is_fraud", "label_time")

Snapshot = dict[bytes, tuple[bytes, Any, int]]


def history() -> Simulation:
    """The simulated history the backfill tests share."""
    return simulate(CONFIG)


class NoSchemas:
    """SchemaLookup for a stream of plain JSON records (nothing is ever looked up)."""

    def schema_for(self, version_id: UUID) -> str:
        raise KeyError(version_id)


class RefuseDeadLetters:
    """DeadLetterSink that fails the test: every simulated record is valid."""

    def send(self, letter: DeadLetter) -> None:
        raise AssertionError(f"unexpected poison record: {letter.reason} {letter.detail}")


def records(rows: Sequence[dict[str, Any]], first_seq: int) -> list[dict[str, Any]]:
    """Kinesis records (Lambda's shape) of JSON `rows`."""
    now = round(time.time(), 3)
    return [
        {
            "kinesis": {
                "partitionKey": str(row["customer_id"]),
                "sequenceNumber": str(first_seq + i),
                "approximateArrivalTimestamp": now,
                "data": base64.b64encode(json.dumps(row).encode()).decode(),
            },
            "eventID": f"shardId-000000000000:{first_seq + i}",
        }
        for i, row in enumerate(rows)
    ]


@dataclass
class Streamer:
    """TransactionsFunction's and LabelsFunction's paths on one Redis database."""

    client: redis.Redis
    s3: Any
    bucket: str
    sequence: int = 1_000_000

    def paths(self) -> tuple[TransactionPath, LabelPath]:
        store = RedisFeatureStore(self.client)
        log = S3EventLog(self.s3, self.bucket)
        scorer = Scorer(LayerModelSource(default_model_dir()))
        decisions = RedisDecisions(self.client, 30 * 86_400)
        tx = TransactionPath(
            transaction_decoder(NoSchemas()), store, RefuseDeadLetters(), log, scorer, [decisions]
        )
        return tx, LabelPath(label_decoder(NoSchemas()), store, RefuseDeadLetters(), log)

    def stream(self, sim: Simulation, start_ms: int, end_ms: int, batch: int = 250) -> None:
        """Transactions of [start, end) in batches; before each batch, the labels dated
        before its first transaction (as `make demo` feeds them back)."""
        tx_path, label_path = self.paths()
        tx = _between(sim.transactions, "event_time", start_ms, end_ms)
        labels = _between(sim.labels, "label_time", start_ms, end_ms)
        tx_rows = tx[list(TX_FIELDS)].to_dict("records")
        label_rows = labels[list(LABEL_FIELDS)].to_dict("records")
        due = 0
        for lo in range(0, len(tx_rows), batch):
            part = tx_rows[lo : lo + batch]
            first = part[0]["event_time"]
            end = due
            while end < len(label_rows) and label_rows[end]["label_time"] < first:
                end += 1
            self._run(label_path, label_rows[due:end])
            due = end
            self._run(tx_path, part)
        self._run(label_path, label_rows[due:])

    def _run(self, path: TransactionPath | LabelPath, rows: list[dict[str, Any]]) -> None:
        for lo in range(0, len(rows), 500):
            part = records(rows[lo : lo + 500], self.sequence)
            self.sequence += len(part)
            outcome = path.run(part)
            assert not outcome.failures and not outcome.poisoned, outcome.failures


def _between(frame: pd.DataFrame, column: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    return frame[(frame[column] >= start_ms) & (frame[column] < end_ms)]


def day(sim: Simulation, n: int) -> int:
    """Midnight UTC of the simulation's day `n`."""
    return sim.config.start_ms + n * DAY_MS


def snapshot(client: Any) -> Snapshot:
    """Every ``kestrel:*`` key: its type, content (the bytes of every field and value, member
    and score) and absolute expiry (ms; -1: none).

    Not DUMP: Redis serializes a large hash in its table's internal order, which moves as
    the table is rehashed a step at a time, by reads too, so equal hashes can DUMP apart.
    """
    out: Snapshot = {}
    for key in client.scan_iter(match="kestrel:*", count=1000):
        kind = client.type(key)
        content: Any
        if kind == b"hash":
            content = client.hgetall(key)
        elif kind == b"zset":
            content = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            content = client.get(key)
        else:
            raise AssertionError(f"{key!r}: unexpected type {kind!r}")
        out[key] = (kind, content, client.pexpiretime(key))
    return out


def decision_keys(snap: Snapshot) -> set[bytes]:
    """The decision keys of a snapshot."""
    return {key for key in snap if key.startswith(b"kestrel:{d:")}


def assert_same_state(streamed: Snapshot, loaded: Snapshot, expiry_slack_ms: int) -> None:
    """Every feature key in both, of the same type and content; both expire (within the
    slack: the runs happened at different wall times) or neither does."""
    features = set(streamed) - decision_keys(streamed)
    assert set(loaded) == features, (
        f"only streamed: {sorted(features - set(loaded))[:5]}, "
        f"only loaded: {sorted(set(loaded) - features)[:5]}"
    )
    for key in sorted(features):
        kind, content, expiry = streamed[key]
        other_kind, other_content, other_expiry = loaded[key]
        assert (other_kind, other_content) == (kind, content), key
        assert (expiry == -1) == (other_expiry == -1), key
        assert abs(expiry - other_expiry) <= expiry_slack_ms, key
