"""Decisions on the Kinesis ``decisions`` stream: one JSON record per transaction.

Record: the `DecisionRecord.to_dict` JSON, UTF-8, partition key the transaction id (so a
transaction's decisions stay in order on one shard). PutRecords takes at most 500 records
per call; records Kinesis refuses (throttling, internal errors) are sent again up to
`attempts` times with a short backoff, and if some still fail, `publish` raises so the
stream batch is retried. Delivery is at least once: consumers key by transaction id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kestrel.decisions import DecisionRecord

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef

MAX_RECORDS_PER_CALL = 500


class DecisionPublishError(RuntimeError):
    """Some decisions could not be put on the stream after every attempt."""


class KinesisDecisionStream:
    """`DecisionSink` on a Kinesis stream.

    Args:
        client: A boto3 Kinesis client (one per container).
        stream_name: The decisions stream (``DECISIONS_STREAM``).
        attempts: PutRecords attempts for records Kinesis refuses.
        backoff_s: Sleep before the second attempt, doubled after each.
    """

    def __init__(
        self,
        client: KinesisClient,
        stream_name: str,
        attempts: int = 4,
        backoff_s: float = 0.05,
    ) -> None:
        if not stream_name:
            raise ValueError("DECISIONS_STREAM: the decisions stream name is not set")
        self._client = client
        self._stream = stream_name
        self._attempts = attempts
        self._backoff_s = backoff_s

    def publish(self, decisions: Sequence[DecisionRecord]) -> None:
        """Put every decision on the stream; raise `DecisionPublishError` if some fail."""
        entries: list[PutRecordsRequestEntryTypeDef] = [
            {
                "Data": d.json,
                "PartitionKey": d.transaction_id,
            }
            for d in decisions
        ]
        for start in range(0, len(entries), MAX_RECORDS_PER_CALL):
            self._put(entries[start : start + MAX_RECORDS_PER_CALL])

    def _put(self, entries: list[PutRecordsRequestEntryTypeDef]) -> None:
        pending, delay, last_error = entries, self._backoff_s, ""
        for attempt in range(self._attempts):
            if attempt:
                time.sleep(delay)
                delay *= 2
            reply = self._client.put_records(StreamName=self._stream, Records=pending)
            if not reply.get("FailedRecordCount"):
                return
            failed = []
            for entry, result in zip(pending, reply["Records"], strict=True):
                if "ErrorCode" in result:
                    failed.append(entry)
                    last_error = f"{result['ErrorCode']}: {result.get('ErrorMessage', '')}"
            pending = failed
        raise DecisionPublishError(
            f"{len(pending)} decisions not accepted by {self._stream} after "
            f"{self._attempts} attempts (last: {last_error})"
        )
