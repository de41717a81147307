"""The backfill's sources, order, batching, progress and errors (no network, no Redis)."""

from __future__ import annotations

import argparse
import gzip
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pytest
from drift_doubles import FakeS3
from kestrel_training.simulator import SimulatorConfig, simulate
from redis.exceptions import ConnectionError as RedisConnectionError

from kestrel.adapters.s3_event_log import S3EventLog
from kestrel.events import Label, Transaction
from kestrel.features import DAY_MS
from kestrel.settings import LocalSettings
from kestrel_ops.__main__ import parser
from kestrel_ops.backfill import (
    BackfillReport,
    ProgressLine,
    StoreFailed,
    backfill,
    parse_time,
    resolve_range,
    run_backfill,
)
from kestrel_ops.backfill_sources import (
    Chunk,
    Event,
    EventLogHistory,
    ParquetHistory,
    SourceError,
    day_bounds,
    order_key,
)

T0 = 1_522_540_800_000  # 2018-04-01T00:00:00Z


class RecordingStore:
    """Keeps every batch it was given; fails the batch numbered `fail_at` if set."""

    def __init__(self, fail_at: int | None = None, error: Exception | None = None) -> None:
        self.batches: list[list[Event]] = []
        self.fail_at, self.error = fail_at, error
        self.seen: set[tuple[int, int, str]] = set()

    def apply_in_order(self, events: Sequence[Event]) -> list[bool | Exception]:
        if len(self.batches) == self.fail_at:
            if self.error is None:
                raise RedisConnectionError("Connection refused")
            return [self.error for _ in events]
        self.batches.append(list(events))
        out: list[bool | Exception] = []
        for event in events:
            key = order_key(event)
            new = key not in self.seen and (isinstance(event, Transaction) or event.is_fraud)
            self.seen.add(key)
            out.append(new)
        return out

    def ping(self) -> None:
        return None


class ListSource:
    """A HistorySource over fixed chunks."""

    description = "test source"

    def __init__(self, chunks: list[Chunk]) -> None:
        self._chunks = chunks

    def span(self) -> tuple[int, int] | None:
        return None

    def count(self, start_ms: int, end_ms: int) -> int | None:
        return None

    def chunks(self, start_ms: int, end_ms: int) -> Iterator[Chunk]:
        return iter(self._chunks)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten simulated days written as the simulator writes them."""
    out = tmp_path_factory.mktemp("sim")
    simulate(SimulatorConfig(n_customers=60, n_terminals=80, n_days=10, seed=3)).write(out)
    return out


def tx(n: int, at: int, customer: str = "C1") -> Transaction:
    return Transaction(f"T{n:04d}", customer, "TERM1", 10.0 + n, at)


def test_order_key_puts_transactions_before_labels_of_the_same_millisecond() -> None:
    label = Label("T0001", "C1", "TERM1", True, T0)
    events: list[Event] = [label, tx(2, T0), tx(1, T0), tx(3, T0 - 1)]
    assert sorted(events, key=order_key) == [tx(3, T0 - 1), tx(1, T0), tx(2, T0), label]


def test_day_bounds_cut_a_range_at_utc_midnights() -> None:
    assert list(day_bounds(T0 + 5, T0 + 2 * DAY_MS + 7)) == [
        (T0 + 5, T0 + DAY_MS),
        (T0 + DAY_MS, T0 + 2 * DAY_MS),
        (T0 + 2 * DAY_MS, T0 + 2 * DAY_MS + 7),
    ]
    assert list(day_bounds(T0, T0)) == []


def test_parquet_history_hands_out_the_range_in_order_a_day_at_a_time(folder: Path) -> None:
    source = ParquetHistory(folder)
    start, end = T0 + 6 * DAY_MS + 3_600_000, T0 + 10 * DAY_MS  # labels come 7 days later
    chunks = list(source.chunks(start, end))
    assert [c.until_ms for c in chunks] == [T0 + d * DAY_MS for d in (7, 8, 9, 10)]
    events = [e for c in chunks for e in c.events]
    assert events == sorted(events, key=order_key)
    times = [order_key(e)[0] for e in events]
    assert min(times) >= start and max(times) < end
    frame = pd.read_parquet(folder / "transactions.parquet")
    expected = frame[(frame["event_time"] >= start) & (frame["event_time"] < end)]
    got = [e for e in events if isinstance(e, Transaction)]
    assert [t.transaction_id for t in got] == expected["transaction_id"].tolist()
    assert source.count(start, end) == len(expected)
    labels = [e for e in events if isinstance(e, Label)]
    assert labels and all(start <= e.label_time_ms < end for e in labels)
    assert any(e.is_fraud for e in labels) or not frame["is_fraud"].any()
    assert sum(c.rejected for c in chunks) == 0


def test_parquet_history_skips_rows_the_stream_would_refuse(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {
            "transaction_id": ["A1", "A2", "bad id!"],
            "customer_id": ["C1", "C1", "C1"],
            "terminal_id": ["T1", "T1", "T1"],
            "amount": [1.5, -2.0, 3.0],
            "event_time": [T0, T0 + 1, T0 + 2],
        }
    )
    rows.to_parquet(tmp_path / "transactions.parquet")
    labels = pd.DataFrame(
        {"transaction_id": ["A1"], "customer_id": ["C1"], "terminal_id": ["T1"],
         "is_fraud": [True], "label_time": [T0 + DAY_MS]}
    )  # fmt: skip
    labels.to_parquet(tmp_path / "labels.parquet")
    chunks = list(ParquetHistory(tmp_path).chunks(T0, T0 + 2 * DAY_MS))
    events = [e for c in chunks for e in c.events]
    assert [e.transaction_id for e in events] == ["A1", "A1"]
    reasons = [r for c in chunks for r in c.reasons]
    assert sum(c.rejected for c in chunks) == 2
    assert "'A2'" in reasons[0] and "amount" in reasons[0]
    assert "transaction_id" in reasons[1]


def test_parquet_history_names_what_is_missing(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(SourceError, match="no such folder"):
        ParquetHistory(tmp_path / "nowhere")
    with pytest.raises(SourceError, match=r"transactions.parquet not found"):
        ParquetHistory(tmp_path)
    frame = pd.read_parquet(folder / "transactions.parquet")
    frame.drop(columns=["amount"]).to_parquet(tmp_path / "transactions.parquet")
    (tmp_path / "labels.parquet").write_bytes((folder / "labels.parquet").read_bytes())
    with pytest.raises(SourceError, match="no column amount"):
        ParquetHistory(tmp_path)
    frame.assign(event_time=pd.to_datetime(frame["event_time"], unit="ms")).to_parquet(
        tmp_path / "transactions.parquet"
    )
    with pytest.raises(SourceError, match="event_time must be integer epoch milliseconds"):
        ParquetHistory(tmp_path)


def event_log_with(rows: list[dict[str, object]], labels: list[dict[str, object]]) -> FakeS3:
    s3 = FakeS3()
    log = S3EventLog(s3, "bucket")
    log.write_batch("transactions", "shard-1-2", rows, "event_time")
    log.write_batch("transactions", "shard-1-2-retry", rows[:2], "event_time")  # a retried batch
    log.write_batch("labels", "shard-3-4", labels, "label_time")
    return s3


def row(n: int, at: int) -> dict[str, object]:
    return {"transaction_id": f"T{n}", "customer_id": "C1", "terminal_id": "TERM1",
            "amount": 12.5, "event_time": at, "features": [1.0], "score": 0.1}  # fmt: skip


def test_event_log_history_reads_partitions_drops_repeats_and_keeps_the_range() -> None:
    rows = [row(1, T0 + 10), row(2, T0 + DAY_MS + 5), row(3, T0 + 2 * DAY_MS + 1)]
    labels = [{"transaction_id": "T1", "customer_id": "C1", "terminal_id": "TERM1",
               "is_fraud": True, "label_time": T0 + DAY_MS + 5}]  # fmt: skip
    s3 = event_log_with(rows, labels)
    source = EventLogHistory(s3, "bucket")
    assert source.span() == (T0, T0 + 3 * DAY_MS)
    events = [e for c in source.chunks(T0 + 5, T0 + 2 * DAY_MS) for e in c.events]
    assert [(type(e).__name__, e.transaction_id) for e in events] == [
        ("Transaction", "T1"),
        ("Transaction", "T2"),
        ("Label", "T1"),
    ]
    assert source.count(T0, T0 + DAY_MS) is None


def test_event_log_history_refuses_broken_objects_and_lines() -> None:
    s3 = FakeS3()
    s3.put_object("bucket", "events/transactions/dt=2018-04-01/a.jsonl.gz", b"not gzip")
    body = gzip.compress(b'{"transaction_id": "T1"}\n[1]\n{oops\n')
    s3.put_object("bucket", "events/transactions/dt=2018-04-01/b.jsonl.gz", body)
    chunks = list(EventLogHistory(s3, "bucket").chunks(T0, T0 + DAY_MS))
    assert chunks[0].events == [] and chunks[0].rejected == 4
    text = "\n".join(chunks[0].reasons)
    assert "a.jsonl.gz: not gzip" in text and "not a JSON object" in text
    assert "missing_field" in text and "b.jsonl.gz line 3" in text


def test_backfill_applies_every_event_once_in_batches_and_in_order() -> None:
    first: list[Event] = [tx(1, T0), tx(2, T0 + 5), Label("T0001", "C1", "TERM1", True, T0 + 6)]
    second: list[Event] = [
        tx(3, T0 + DAY_MS),
        Label("T0002", "C1", "TERM1", False, T0 + DAY_MS + 1),
    ]
    source = ListSource([Chunk(first, T0 + DAY_MS), Chunk(second, T0 + 2 * DAY_MS, 1, ["x"])])
    store = RecordingStore()
    seen: list[int] = []
    report = backfill(
        store, source, T0, T0 + 2 * DAY_MS, batch=2, progress=lambda r: seen.append(r.until_ms)
    )
    assert store.batches == [first[:2], first[2:], second]
    assert (report.transactions, report.transactions_new) == (3, 3)
    assert (report.labels, report.frauds, report.frauds_new) == (2, 1, 1)
    assert (report.rejected, report.reasons) == (1, ["x"])
    assert seen[-1] == T0 + 2 * DAY_MS and seen == sorted(seen)
    again = backfill(store, source, T0, T0 + 2 * DAY_MS)
    assert (again.transactions_new, again.frauds_new) == (0, 0)


@pytest.mark.parametrize("error", [None, RuntimeError("OOM command not allowed")])
def test_backfill_stops_where_the_store_failed_and_says_from_when(
    error: Exception | None,
) -> None:
    events: list[Event] = [tx(1, T0), tx(2, T0 + 5), tx(3, T0 + 9)]
    store = RecordingStore(fail_at=1, error=error)
    with pytest.raises(StoreFailed) as failed:
        backfill(store, ListSource([Chunk(events, T0 + DAY_MS)]), T0, T0 + DAY_MS, batch=2)
    assert failed.value.resume_ms == T0 + 9
    assert ("Connection refused" if error is None else "OOM") in str(failed.value)


def test_progress_line_shows_rate_share_and_eta() -> None:
    report = BackfillReport("s", T0, T0 + 10 * DAY_MS, transactions=2500, seconds=2.0)
    report.until_ms = T0 + 5 * DAY_MS
    by_count = ProgressLine(10_000, io.StringIO()).line(report)
    assert "1,250 events/s" in by_count and "25%" in by_count and "ETA 6 s" in by_count
    by_time = ProgressLine(None, io.StringIO()).line(report)
    assert "50%" in by_time and "ETA 2 s" in by_time and "2018-04-06T00:00Z" in by_time
    out = io.StringIO()
    line = ProgressLine(None, out, every_s=3600)
    line(report)
    line(report)  # too soon: not shown again
    line.finish(report)  # the last line always is
    assert out.getvalue().count("\n") == 2


def test_parse_time_takes_epoch_ms_dates_and_iso_times() -> None:
    assert parse_time(str(T0)) == T0
    assert parse_time("2018-04-01") == T0
    assert parse_time("2018-04-01T02:00:00+02:00") == T0
    assert parse_time("2018-04-01T00:00:00Z") == T0
    with pytest.raises(argparse.ArgumentTypeError, match="not epoch milliseconds"):
        parse_time("yesterday")


def test_resolve_range_refuses_a_bad_range_and_an_empty_source() -> None:
    source = ListSource([])
    assert resolve_range(source, T0, T0 + 1) == (T0, T0 + 1)
    with pytest.raises(SourceError, match="bad range: --start 2018-04-02"):
        resolve_range(source, T0 + DAY_MS, T0)
    with pytest.raises(SourceError, match="holds no events"):
        resolve_range(source, None, T0)


def test_bucket_options_need_the_event_log(folder: Path) -> None:
    args = parser().parse_args(["backfill", "--parquet", str(folder), "--bucket", "b"])
    with pytest.raises(SourceError, match="--bucket and --prefix go with --event-log"):
        run_backfill(args, LocalSettings.from_env({}), io.StringIO(), io.StringIO())
