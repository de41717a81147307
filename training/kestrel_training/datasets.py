"""Point-in-time training sets for a date range, from simulator Parquet or the S3 event log.

A training set holds one row per transaction of the range: its identifiers, its UTC day
number, the features of `kestrel.features` (computed by `offline_features`, the one offline
implementation of the shared definitions) and the target `is_fraud`.

Point in time: the features of a transaction use only the events before it and only the
fraud labels whose `label_time` is before the start of its UTC day (the shared rule, see
`kestrel.features`). To compute them exactly for the first day of the range, the builder
reads `TERMINAL_LOOKBACK_MS` (37 days) of history before it; the history rows are dropped.

The target is 1 when a fraud label exists for the transaction (known by `labels_as_of`
when given), else 0; a feed that sends only fraud labels is therefore handled too.

Sources:
- a simulator folder (`Simulation.write`): `load_simulation(folder)`;
- the event log: `load_event_log(s3_client, bucket, first_day, last_day)` reads
  ``events/transactions/dt=YYYY-MM-DD/*.jsonl.gz`` for the range and its history and
  ``events/labels/dt=.../*.jsonl.gz``, dropping duplicates by transaction id.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kestrel.features import DAY_MS, FEATURE_NAMES, TERMINAL_LOOKBACK_MS
from kestrel_training.offline_features import TRANSACTION_COLUMNS, offline_features
from kestrel_training.simulator import read_frame

LABEL_COLUMNS = ["transaction_id", "is_fraud", "label_time"]
ID_COLUMNS = ["transaction_id", "customer_id", "terminal_id", "event_time", "day"]
TARGET = "is_fraud"
HISTORY_DAYS = -(-TERMINAL_LOOKBACK_MS // DAY_MS)


def day_number(day: str | date) -> int:
    """The UTC day number (days since 1970-01-01) of an ISO date or a `date`."""
    value = date.fromisoformat(day) if isinstance(day, str) else day
    return (value - date(1970, 1, 1)).days


def day_date(number: int) -> date:
    """The `date` of a UTC day number."""
    return date(1970, 1, 1) + timedelta(days=number)


def load_simulation(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions and labels of a simulator folder written by `Simulation.write`."""
    return read_frame(folder, "transactions"), read_frame(folder, "labels")


def _read_jsonl_objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every JSON line of every gzip object under `prefix`."""
    rows: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            rows.extend(json.loads(line) for line in gzip.decompress(body).splitlines() if line)
    return rows


def load_event_log(
    s3: Any,
    bucket: str,
    first_day: str,
    last_day: str,
    prefix: str = "events",
    labels_until: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions (range plus history) and labels (up to `labels_until`) from the S3 log."""
    start, end = day_number(first_day) - HISTORY_DAYS, day_number(last_day)
    tx_rows: list[dict[str, Any]] = []
    for number in range(start, end + 1):
        tx_rows += _read_jsonl_objects(
            s3, bucket, f"{prefix}/transactions/dt={day_date(number).isoformat()}/"
        )
    transactions = pd.DataFrame(tx_rows, columns=TRANSACTION_COLUMNS)
    transactions = transactions.drop_duplicates("transaction_id", keep="first")
    label_rows = _read_jsonl_objects(s3, bucket, f"{prefix}/labels/")
    labels = pd.DataFrame(label_rows, columns=LABEL_COLUMNS)
    if labels_until is not None:
        labels = labels[labels["label_time"] < (day_number(labels_until) + 1) * DAY_MS]
    labels = labels.sort_values(["label_time", "transaction_id"], kind="stable")
    labels = labels.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)
    return transactions.reset_index(drop=True), labels


def build_dataset(
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    first_day: str,
    last_day: str,
    labels_as_of_ms: int | None = None,
) -> pd.DataFrame:
    """The point-in-time training set of the days `first_day`..`last_day` (inclusive)."""
    start_ms, end_ms = day_number(first_day) * DAY_MS, (day_number(last_day) + 1) * DAY_MS
    times = transactions["event_time"].to_numpy(dtype=np.int64)
    history = transactions[(times >= start_ms - TERMINAL_LOOKBACK_MS) & (times < end_ms)]
    history = history.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)
    usable = labels[labels["label_time"] < end_ms]  # later labels cannot change these features
    in_range = history["event_time"].to_numpy(dtype=np.int64) >= start_ms
    features = offline_features(history, usable, keep=in_range)
    columns = ["transaction_id", "customer_id", "terminal_id", "event_time"]
    table = history.loc[in_range, columns].reset_index(drop=True)
    table["day"] = table["event_time"].to_numpy(dtype=np.int64) // DAY_MS
    for name in FEATURE_NAMES:
        table[name] = features[name].to_numpy(dtype=np.float64)
    known = labels if labels_as_of_ms is None else labels[labels["label_time"] <= labels_as_of_ms]
    frauds = set(known.loc[known["is_fraud"].astype(bool), "transaction_id"])
    table[TARGET] = table["transaction_id"].isin(frauds).astype(np.int8)
    return table


def build_from_simulation(folder: str | Path, first_day: str, last_day: str) -> pd.DataFrame:
    """`build_dataset` over a simulator folder."""
    transactions, labels = load_simulation(folder)
    return build_dataset(transactions, labels, first_day, last_day)


def fingerprint(dataset: pd.DataFrame) -> dict[str, Any]:
    """Date range, row count, frauds and the sha256 of the feature table (ids, values, target)."""
    digest = hashlib.sha256()
    digest.update("\n".join(dataset["transaction_id"].astype(str)).encode())
    digest.update(np.ascontiguousarray(dataset[list(FEATURE_NAMES)].to_numpy(np.float64)).data)
    digest.update(np.ascontiguousarray(dataset[TARGET].to_numpy(np.int8)).data)
    days = dataset["day"].to_numpy(dtype=np.int64)
    return {
        "first_day": day_date(int(days.min())).isoformat() if len(days) else None,
        "last_day": day_date(int(days.max())).isoformat() if len(days) else None,
        "rows": len(dataset),
        "frauds": int(dataset[TARGET].sum()),
        "sha256": digest.hexdigest(),
    }


def utc_now_iso() -> str:
    """The current UTC time, ISO 8601 (seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
