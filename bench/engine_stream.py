"""The engine bench's input: simulated transactions as Avro frames, cut into Kinesis events."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from itertools import starmap
from typing import Any

from kestrel_training.simulator import SimulatorConfig, simulate

from bench.engine_parts import VERSION
from kestrel.codec import AvroEncoder, schema_definition
from kestrel.events import Label, Transaction

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/kestrel-transactions"
SHARD = "shardId-000000000000"
SEQ0 = 49657734271840271094355780390734429143347318398423810050


@dataclass
class Stream:
    """Simulated transactions (time order) with their Avro frames, fraud labels, cursors."""

    tx: list[Transaction]
    frames: list[bytes]
    labels: list[Label]
    cursor: int = 0
    label_cursor: int = 0
    sequence: int = SEQ0

    def take(self, n: int) -> range:
        """The next `n` transactions (fewer at the end), consumed."""
        span = range(self.cursor, min(len(self.tx), self.cursor + n))
        self.cursor = span.stop
        return span

    def due_labels(self, before_ms: int) -> list[Label]:
        """Fraud labels with a label time before `before_ms` not handed out yet."""
        start = self.label_cursor
        while self.label_cursor < len(self.labels):
            if self.labels[self.label_cursor].label_time_ms >= before_ms:
                break
            self.label_cursor += 1
        return self.labels[start : self.label_cursor]


def simulated_stream(n_days: int) -> Stream:
    """The default population over `n_days`, encoded as transaction.v2 Avro frames."""
    sim = simulate(SimulatorConfig(n_days=n_days))
    t = sim.transactions
    cols = ("transaction_id", "customer_id", "terminal_id", "amount", "event_time")
    tx = list(starmap(Transaction, zip(*(t[c].tolist() for c in cols), strict=True)))
    encode = AvroEncoder(schema_definition("transaction.v2"), VERSION)
    rows = zip(*(t[c] for c in cols), strict=True)
    frames = [encode(dict(zip(cols, row, strict=True))) for row in rows]
    f = sim.labels[sim.labels["is_fraud"].astype(bool)]
    cols = ("transaction_id", "customer_id", "terminal_id", "is_fraud", "label_time")
    f = f.assign(is_fraud=True)
    labels = list(starmap(Label, zip(*(f[c].tolist() for c in cols), strict=True)))
    return Stream(tx, frames, labels)


def kinesis_events(stream: Stream, span: range, batch: int) -> list[dict[str, Any]]:
    """Lambda Kinesis events (exact shape) of `batch` records each over `span`."""
    events, now = [], round(time.time(), 3)
    for start in range(span.start, span.stop, batch):
        records = []
        for i in range(start, min(span.stop, start + batch)):
            stream.sequence += 1
            seq = str(stream.sequence)
            records.append({
                "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": stream.tx[i].customer_id,
                            "sequenceNumber": seq, "approximateArrivalTimestamp": now,
                            "data": base64.b64encode(stream.frames[i]).decode("ascii")},
                "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": f"{SHARD}:{seq}",
                "eventName": "aws:kinesis:record", "awsRegion": "us-east-1",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/kestrel-TransactionsRole",
                "eventSourceARN": ARN,
            })  # fmt: skip
        events.append({"Records": records})
    return events
