"""What happened to each record of one stream batch (`BatchOutcome`), shared by every path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kestrel.shadow import Shadow


class RecordFailed(Exception):
    """This record must be retried (its reason is the message)."""


@dataclass
class BatchOutcome:
    """What happened to each record of one batch, keyed by sequence number."""

    failures: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    poisoned: int = 0
    vectors: dict[str, tuple[float, ...]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    arrival_lag_ms: list[float] = field(default_factory=list)
    event_lag_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    model_version: str | None = None
    scoring_ms: float | None = None
    labels: int = 0
    frauds: int = 0
    shadow: Shadow | None = None  # the challenger's scores, when one is set (kestrel.shadow)

    def check(self, sequence_number: str) -> None:
        """Raise `RecordFailed` if the record with this sequence number must be retried."""
        reason = self.failures.get(sequence_number)
        if reason is not None:
            raise RecordFailed(reason)


def batch_id(records: Sequence[Mapping[str, Any]]) -> str:
    """A stable id for a batch: shard, first and last sequence numbers."""
    shard = str(records[0]["eventID"]).split(":", 1)[0]
    first, last = records[0]["kinesis"]["sequenceNumber"], records[-1]["kinesis"]["sequenceNumber"]
    return f"{shard}-{first}-{last}"
