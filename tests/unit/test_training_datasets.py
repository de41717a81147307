"""Unit tests for point-in-time training sets (late labels, ranges, event-log reading)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pandas as pd
import pytest
from kestrel_training.datasets import (
    build_dataset,
    day_number,
    fingerprint,
    load_event_log,
)

from kestrel.features import DAY_MS, FEATURE_NAMES, HOUR_MS

RISK = "TERMINAL_ID_RISK_7DAY_WINDOW"
DAY0 = day_number("2018-07-01") * DAY_MS
FRAUD_TIME = DAY0 + 10 * HOUR_MS  # a fraud at terminal T on 07-01 10:00


def tx(
    tid: str, customer: str, terminal: str, time_ms: int, amount: float = 10.0
) -> dict[str, Any]:
    """One transaction row."""
    return {
        "transaction_id": tid,
        "customer_id": customer,
        "terminal_id": terminal,
        "amount": amount,
        "event_time": time_ms,
    }


def terminal_history() -> pd.DataFrame:
    """The fraud at T on day 0, then one transaction at T at 09:00 on days 8..15."""
    rows = [tx("F", "C0", "T", FRAUD_TIME)]
    rows += [
        tx(f"D{day:02d}", f"C{day}", "T", DAY0 + day * DAY_MS + 9 * HOUR_MS) for day in range(8, 16)
    ]
    return pd.DataFrame(rows)


def labels(label_time: int) -> pd.DataFrame:
    """The fraud label of F, arriving at `label_time`."""
    return pd.DataFrame({"transaction_id": ["F"], "is_fraud": [True], "label_time": [label_time]})


def risk_by_day(label_time: int) -> dict[int, float]:
    """7-day terminal risk of the transactions at T on days 8..15, by day offset."""
    data = build_dataset(terminal_history(), labels(label_time), "2018-07-09", "2018-07-16")
    return {int(row.day - DAY0 // DAY_MS): float(row[RISK]) for _, row in data.iterrows()}


def test_build_dataset_uses_an_on_time_label_from_the_next_day() -> None:
    on_time = risk_by_day(FRAUD_TIME + 7 * DAY_MS)  # label on day 7: known from day 8
    # The 7-day window (t - 14d, t - 7d] holds the fraud for t in [day 7 10:00, day 14 10:00).
    assert on_time == {8: 1.0, 9: 1.0, 10: 1.0, 11: 1.0, 12: 1.0, 13: 1.0, 14: 1.0, 15: 0.0}


def test_build_dataset_ignores_a_late_label_before_its_arrival_day() -> None:
    late = risk_by_day(DAY0 + 11 * DAY_MS + 5 * HOUR_MS)  # label arrives day 11 at 05:00
    # Days 8..11 are scored before the label is known (label_time >= their day start).
    assert [late[d] for d in (8, 9, 10, 11)] == [0.0, 0.0, 0.0, 0.0]
    # From day 12 the label is known, and the fraud is still inside the 7-day window.
    assert [late[d] for d in (12, 13, 14)] == [1.0, 1.0, 1.0]
    assert late[15] == 0.0


def test_build_dataset_keeps_only_the_range_and_computes_history_features() -> None:
    data = build_dataset(terminal_history(), labels(FRAUD_TIME), "2018-07-10", "2018-07-12")
    assert list(data["transaction_id"]) == ["D09", "D10", "D11"]
    assert list(data.columns[-1:]) == ["is_fraud"] and set(FEATURE_NAMES) <= set(data.columns)
    # The terminal counts see the history before the range (the fraud on day 0).
    assert data["TERMINAL_ID_NB_TX_7DAY_WINDOW"].tolist() == [1.0, 1.0, 1.0]


def test_build_dataset_target_counts_only_labels_known_as_of() -> None:
    frame = terminal_history()
    label_time = FRAUD_TIME + 7 * DAY_MS
    known = build_dataset(frame, labels(label_time), "2018-07-01", "2018-07-01")
    early = build_dataset(frame, labels(label_time), "2018-07-01", "2018-07-01", label_time - 1)
    assert known["is_fraud"].tolist() == [1] and early["is_fraud"].tolist() == [0]


def test_fingerprint_changes_when_a_feature_value_changes() -> None:
    data = build_dataset(terminal_history(), labels(FRAUD_TIME), "2018-07-09", "2018-07-15")
    before = fingerprint(data)
    data.loc[0, "TX_AMOUNT"] += 0.01
    after = fingerprint(data)
    assert before["rows"] == after["rows"] == 7
    assert (before["first_day"], before["last_day"]) == ("2018-07-09", "2018-07-15")
    assert before["sha256"] != after["sha256"]


class FakeS3:
    """An in-memory stand-in for the two S3 calls the event-log reader makes."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = {
            key: gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
            for key, rows in objects.items()
        }

    def get_paginator(self, name: str) -> FakeS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
        keys = sorted(k for k in self.objects if k.startswith(Prefix))
        return [{"Contents": [{"Key": k} for k in keys]}] if keys else [{}]

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"Body": _Body(self.objects[Key])}


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


def test_load_event_log_reads_partitions_and_drops_duplicates() -> None:
    logged = {**tx("F", "C0", "T", FRAUD_TIME), "features": [0.0], "event_id": "e1"}
    later = tx("D09", "C9", "T", DAY0 + 9 * DAY_MS)
    label = {"transaction_id": "F", "is_fraud": True, "label_time": FRAUD_TIME + 7 * DAY_MS}
    s3 = FakeS3(
        {
            "events/transactions/dt=2018-07-01/a.jsonl.gz": [logged],
            "events/transactions/dt=2018-07-01/b.jsonl.gz": [logged],  # retried batch
            "events/transactions/dt=2018-07-10/a.jsonl.gz": [later],
            "events/transactions/dt=2018-09-01/a.jsonl.gz": [tx("Z", "C1", "T", 0)],
            "events/labels/dt=2018-07-08/a.jsonl.gz": [label, label],
        }
    )
    transactions, label_frame = load_event_log(s3, "bucket", "2018-07-09", "2018-07-10")
    assert transactions["transaction_id"].tolist() == ["F", "D09"]
    assert label_frame.to_dict("records") == [label]
    data = build_dataset(transactions, label_frame, "2018-07-09", "2018-07-10")
    assert data[RISK].tolist() == [1.0]


def test_load_event_log_labels_until_drops_later_labels() -> None:
    label = {"transaction_id": "F", "is_fraud": True, "label_time": DAY0 + 8 * DAY_MS}
    s3 = FakeS3({"events/labels/dt=2018-07-09/a.jsonl.gz": [label]})
    _, early = load_event_log(s3, "b", "2018-07-09", "2018-07-10", labels_until="2018-07-08")
    _, on_day = load_event_log(s3, "b", "2018-07-09", "2018-07-10", labels_until="2018-07-09")
    assert len(early) == 0 and len(on_day) == 1


@pytest.mark.parametrize("day", ["1970-01-01", "2018-07-25"])
def test_day_number_round_trips_iso_dates(day: str) -> None:
    from kestrel_training.datasets import day_date

    assert day_date(day_number(day)).isoformat() == day
