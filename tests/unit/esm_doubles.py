"""Kinesis records and constants shared by the event-source-mapping unit tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/s"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:failures"
NOW = 1_800_000_000.0


def record(seq: int, key: str = "k", arrival: float = NOW) -> dict[str, Any]:
    return {
        "SequenceNumber": str(seq),
        "PartitionKey": key,
        "Data": json.dumps({"n": seq}).encode(),
        "ApproximateArrivalTimestamp": datetime.fromtimestamp(arrival, tz=UTC),
    }
