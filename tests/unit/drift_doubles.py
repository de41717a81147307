"""Doubles and builders for the drift tests: in-memory S3 and SQS, references, windows."""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from botocore.exceptions import ClientError
from kestrel_training.manifest import reference_distributions

from kestrel.drift import Reference, ScoredWindow
from kestrel.features import DAY_MS, FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.settings import default_model_dir

N = len(FEATURE_NAMES)
END_MS = 1_534_291_200_000  # 2018-08-15T00:00:00Z, the time of events/schedule-drift.json


def shipped_manifest() -> dict[str, Any]:
    """The model layer's manifest, as shipped."""
    loaded: dict[str, Any] = json.loads(Path(default_model_dir(), "manifest.json").read_text())
    return loaded


def synthetic_rows(seed: int, n: int, scale: float = 1.0) -> np.ndarray:
    """Rows of N independent features (continuous, counts and a flag), amounts times `scale`."""
    rng = np.random.default_rng(seed)
    columns = []
    for i in range(N):
        if i % 3 == 0:
            columns.append(rng.gamma(2.0, 25.0, n) * scale)
        elif i % 3 == 1:
            columns.append(rng.poisson(3.0, n).astype(np.float64))
        else:
            columns.append((rng.random(n) < 0.25).astype(np.float64))
    return np.column_stack(columns)


def synthetic_manifest(rows: int = 20_000) -> dict[str, Any]:
    """A manifest whose reference is `synthetic_rows(0, rows)`, scores U(0, 1)."""
    frame = pd.DataFrame(synthetic_rows(0, rows), columns=list(FEATURE_NAMES))
    scores = np.random.default_rng(1).random(rows)
    manifest = copy.deepcopy(shipped_manifest())
    manifest["reference_distributions"] = reference_distributions(
        frame, FEATURE_NAMES, scores=scores
    )
    return manifest


def window_of(
    rows: np.ndarray, scores: np.ndarray | None = None, span_ms: int = 7 * DAY_MS
) -> ScoredWindow:
    """A window ending at END_MS holding `rows` (scores: U(0, 1) unless given)."""
    if scores is None:
        scores = np.random.default_rng(len(rows)).random(len(rows))
    return ScoredWindow(END_MS - span_ms, END_MS, rows, scores)


def reference() -> Reference:
    """The synthetic reference."""
    return Reference.from_manifest(synthetic_manifest())


class FakeBody:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self) -> bytes:
        return self._data


class FakePaginator:
    def __init__(self, s3: FakeS3) -> None:
        self._s3 = s3

    def paginate(self, Bucket: str, Prefix: str, Delimiter: str = "") -> Iterator[dict[str, Any]]:
        keys = sorted(k for (b, k) in self._s3.objects if b == Bucket and k.startswith(Prefix))
        if Delimiter:
            folders = sorted(
                {Prefix + k[len(Prefix) :].split(Delimiter)[0] + Delimiter for k in keys}
            )
            yield {"CommonPrefixes": [{"Prefix": f} for f in folders]}
            return
        for start in range(0, len(keys), 2):  # small pages, so paging is exercised
            yield {
                "Contents": [
                    {"Key": k, "LastModified": self._s3.modified[(Bucket, k)]}
                    for k in keys[start : start + 2]
                ]
            }


class FakeS3:
    """The S3 calls the drift adapters make, in memory (objects dated by write order)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.modified: dict[tuple[str, str], datetime] = {}
        self.gets = 0

    @property
    def as_client(self) -> Any:
        """This double where an adapter wants a boto3 S3 client."""
        return self

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        self.objects[(Bucket, Key)] = Body
        self.modified[(Bucket, Key)] = datetime.fromtimestamp(1e9 + len(self.modified), UTC)
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        self.gets += 1
        return {"Body": FakeBody(self.objects[(Bucket, Key)])}

    def get_paginator(self, name: str) -> FakePaginator:
        assert name == "list_objects_v2"
        return FakePaginator(self)

    def json(self, bucket: str, key: str) -> Any:
        return json.loads(self.objects[(bucket, key)])


def logged_row(
    tx_id: str,
    event_time: int,
    vector: np.ndarray,
    score: float,
    model_version: str = "1",
    feature_set_hash: str = FEATURE_SET_HASH,
) -> dict[str, Any]:
    """One event-log row as TransactionPath logs it (the fields the drift check reads)."""
    return {
        "transaction_id": tx_id,
        "customer_id": "C1",
        "terminal_id": "T1",
        "amount": float(vector[0]),
        "event_time": event_time,
        "features": [float(v) for v in vector],
        "feature_set_hash": feature_set_hash,
        "score": score,
        "decision": "APPROVE",
        "model_version": model_version,
    }


def gz_lines(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as the event log stores them (gzip JSON lines)."""
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


class FakeSqs:
    """GetQueueAttributes of queues by URL; a URL in `broken` fails."""

    def __init__(self, depths: Mapping[str, int], broken: frozenset[str] = frozenset()) -> None:
        self._depths, self._broken = dict(depths), broken

    @property
    def as_client(self) -> Any:
        """This double where an adapter wants a boto3 SQS client."""
        return self

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        if QueueUrl in self._broken:
            raise ClientError({"Error": {"Code": "AccessDenied"}}, "GetQueueAttributes")
        return {"Attributes": {"ApproximateNumberOfMessages": str(self._depths[QueueUrl])}}
