"""The offline event log on S3: raw events, date-partitioned, one object per batch and day.

Layout::

    s3://<bucket>/events/<kind>/dt=<YYYY-MM-DD>/<batch id>.jsonl.gz

`kind` is `transactions` or `labels`, the date is the event's UTC date (a batch that spans
midnight writes one object per date), and each line is one event as JSON with its stream
coordinates. The batch id is built from the shard and the first and last sequence numbers,
so a retried batch overwrites its own object instead of adding a copy; a partially retried
batch can log an event twice, and readers drop duplicates by event id.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from kestrel.features import DAY_MS


class S3EventLog:
    """Writes batches of events to the event-log bucket with one PutObject per date.

    Args:
        client: a boto3 S3 client (created once per container).
        bucket: the event-log bucket (EVENT_LOG_BUCKET).
        prefix: the top folder of the log.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "events") -> None:
        if not bucket:
            raise ValueError("EVENT_LOG_BUCKET: the event log needs a bucket name")
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")

    def write_batch(
        self, kind: str, batch_id: str, events: Sequence[Mapping[str, Any]], time_field: str
    ) -> list[str]:
        """Write `events` (JSON-ready mappings with `time_field` in epoch ms); return the keys."""
        by_day: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for event in events:
            by_day[int(event[time_field]) // DAY_MS].append(event)
        keys = []
        for day, rows in sorted(by_day.items()):
            date = datetime.fromtimestamp(day * DAY_MS / 1000, tz=UTC).strftime("%Y-%m-%d")
            key = f"{self._prefix}/{kind}/dt={date}/{batch_id}.jsonl.gz"
            body = gzip.compress(
                b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows),
                compresslevel=1,  # CPU on the stream's hot path over a few % of S3 bytes
                mtime=0,
            )
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType="application/gzip"
            )
            keys.append(key)
        return keys
