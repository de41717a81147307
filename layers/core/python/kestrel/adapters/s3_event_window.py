"""`DriftWindowSource` on the S3 event log that TransactionsFunction writes.

Layout and row format: `kestrel.adapters.s3_event_log` (one gzip JSON-lines object per batch
and UTC date, under ``events/transactions/dt=<YYYY-MM-DD>/``). Each row carries the
transaction's ``event_time`` (epoch ms), the ``features`` vector it was scored with, its
``feature_set_hash``, ``score`` and ``model_version``: exactly what the stream served.

`read` lists the date partitions the window touches, reads the objects (all of them, or
`max_objects` of them evenly spread in write order when there are more: each object is a
contiguous batch of one shard, so the sample is a set of batches across the window), keeps
rows whose event time is in the window, drops repeated transaction ids (a retried batch can
log a row twice), and returns the rows of the wanted feature set; the score of a row counts
when the wanted model version scored it.

Costs: one ListObjectsV2 per 1,000 objects in the touched partitions, one GetObject per
object read. A Lambda with the default settings (24 h window, 400 objects) reads at most
400 objects, about 200,000 rows at 500 records per batch.
"""

from __future__ import annotations

import gzip
import json
from array import array
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.drift import ScoredWindow
from kestrel.features import FEATURE_NAMES

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_MAX_OBJECTS = 400
KIND = "transactions"


def _date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def evenly_spaced(items: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most `most` of `items`, evenly spread over the list (all of them when they fit)."""
    if len(items) <= most:
        return items
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


class S3EventWindow:
    """Reads a time window of logged transactions (features and scores) from the event log.

    Args:
        client: A boto3 S3 client.
        bucket: The event-log bucket (EVENT_LOG_BUCKET).
        prefix: The log's top folder (default ``events``).
        max_objects: Most objects one `read` downloads (a sample beyond that).

    Raises:
        ValueError: If `bucket` is empty or `max_objects` is below 1.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "events",
        max_objects: int = DEFAULT_MAX_OBJECTS,
    ) -> None:
        if not bucket:
            raise ValueError("EVENT_LOG_BUCKET: the drift check reads the event log bucket")
        if max_objects < 1:
            raise ValueError("max_objects must be at least 1")
        self._client, self._bucket = client, bucket
        self._root = f"{prefix.strip('/')}/{KIND}/"
        self._max_objects = max_objects

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix
        ):
            found.extend(dict(item) for item in page.get("Contents", []))
        return found

    def _rows(self, key: str) -> list[dict[str, Any]]:
        body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in gzip.decompress(body).splitlines() if line]

    def read(
        self, start_ms: int, end_ms: int, feature_set_hash: str, model_version: str
    ) -> ScoredWindow:
        """The logged rows with event time in [start_ms, end_ms) (see the module docstring)."""
        objects: list[dict[str, Any]] = []
        day, last = _date(start_ms), _date(max(start_ms, end_ms - 1))
        while day <= last:
            objects += self._objects(f"{self._root}dt={day.isoformat()}/")
            day += timedelta(days=1)
        objects.sort(key=lambda item: (item["LastModified"], item["Key"]))
        chosen = evenly_spaced(objects, self._max_objects)
        width = len(FEATURE_NAMES)
        features, scores = array("d"), array("d")
        seen: set[str] = set()
        skipped = 0
        for item in chosen:
            for row in self._rows(item["Key"]):
                moment = int(row["event_time"])
                if not start_ms <= moment < end_ms or row["transaction_id"] in seen:
                    continue
                seen.add(row["transaction_id"])
                vector = row.get("features") or ()
                if row.get("feature_set_hash") != feature_set_hash or len(vector) != width:
                    skipped += 1
                    continue
                features.extend(float(v) for v in vector)
                if str(row.get("model_version")) == model_version and row.get("score") is not None:
                    scores.append(float(row["score"]))
        return ScoredWindow(
            start_ms=start_ms,
            end_ms=end_ms,
            features=np.frombuffer(features, dtype=np.float64).reshape(-1, width).copy(),
            scores=np.frombuffer(scores, dtype=np.float64).copy(),
            skipped=skipped,
            objects_read=len(chosen),
            objects_total=len(objects),
        )

    def latest_event_ms(self) -> int | None:
        """One ms after the newest event time in the newest object of the newest partition."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._root, Delimiter="/"
        )
        partitions = sorted(
            str(p["Prefix"]) for page in pages for p in page.get("CommonPrefixes", [])
        )
        for partition in reversed(partitions):
            objects = self._objects(partition)
            if objects:
                newest = max(objects, key=lambda item: (item["LastModified"], item["Key"]))
                times = [int(row["event_time"]) for row in self._rows(newest["Key"])]
                if times:
                    return max(times) + 1
        return None
