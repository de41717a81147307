"""Where the backfill reads history: the simulator's Parquet or the S3 event log.

Both sources hand out the events of a time range [start, end) a day at a time, in the order
the backfill applies them (`order_key`): by time (a transaction's event time, a label's label
time), a transaction before a label of the same millisecond, then by transaction id. That is
the order a stream fed in time order applies them in, so each entity sees the same sequence
of script calls either way.

Rows are checked by the stream's own parsers (`transaction_from_mapping`,
`label_from_mapping`): a row they refuse is skipped and reported with its reason, as the
stream would park it. The event log can hold a row twice (a retried batch), so repeated
transaction ids are dropped, as its other readers do.

- `ParquetHistory`: a folder the simulator wrote (``transactions.parquet`` and
  ``labels.parquet``, `kestrel_training.simulator`), read with the range as a filter.
- `EventLogHistory`: the S3 event log the stream writes (`kestrel.adapters.s3_event_log`):
  gzip JSON lines under ``<prefix>/<kind>/dt=<YYYY-MM-DD>/``, one date partition per day.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from kestrel.events import (
    Label,
    PoisonRecord,
    Transaction,
    iso_ms,
    label_from_mapping,
    transaction_from_mapping,
)
from kestrel.features import DAY_MS

Event = Transaction | Label
TRANSACTION_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "amount", "event_time")
OPTIONAL_COLUMNS = ("channel", "device_id")
LABEL_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "is_fraud", "label_time")
MAX_REASONS = 20  # rejected rows whose reasons a chunk keeps (all are counted)


class SourceError(ValueError):
    """The source cannot be read: the message names the folder, file, bucket or column."""


def order_key(event: Event) -> tuple[int, int, str]:
    """Where an event goes in a backfill: (time, transactions before labels, id)."""
    if isinstance(event, Transaction):
        return (event.event_time_ms, 0, event.transaction_id)
    return (event.label_time_ms, 1, event.transaction_id)


@dataclass
class Chunk:
    """One day (or less) of a range: its events in backfill order, and the rows refused."""

    events: list[Event]
    until_ms: int  # every event before this time has been handed out
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        """Count a refused row (keeping the first reasons)."""
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)


class HistorySource(Protocol):
    """A store of past transactions and labels a backfill can read."""

    description: str

    def span(self) -> tuple[int, int] | None:
        """First and last + 1 ms the source holds events for (None: it holds none)."""
        ...

    def count(self, start_ms: int, end_ms: int) -> int | None:
        """How many transactions the range holds, when that is cheap to know."""
        ...

    def chunks(self, start_ms: int, end_ms: int) -> Iterator[Chunk]:
        """The range's events, a day at a time, in backfill order."""
        ...


def day_bounds(start_ms: int, end_ms: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut at UTC midnights."""
    lo = start_ms
    while lo < end_ms:
        hi = min(end_ms, lo - lo % DAY_MS + DAY_MS)
        yield lo, hi
        lo = hi


def _parse_rows(
    rows: Iterable[Mapping[str, Any]],
    parse: Callable[[Mapping[str, Any]], Event],
    where: str,
    chunk: Chunk,
) -> list[Event]:
    """Each row through the stream's parser; refused rows counted in `chunk`."""
    out: list[Event] = []
    for row in rows:
        try:
            out.append(parse(row))
        except PoisonRecord as exc:
            chunk.reject(f"{where} {row.get('transaction_id')!r}: {exc}")
    return out


def _ordered(chunk: Chunk, transactions: list[Event], labels: list[Event]) -> Chunk:
    chunk.events = sorted([*transactions, *labels], key=order_key)
    return chunk


class ParquetHistory:
    """A simulator folder: ``transactions.parquet`` and ``labels.parquet`` (epoch-ms times).

    Raises:
        SourceError: If the folder, a file or a needed column is missing, or a time
            column is not integer epoch milliseconds.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.description = f"Parquet {self.folder}"
        if not self.folder.is_dir():
            raise SourceError(f"--parquet {self.folder}: no such folder")
        self._files = {
            "transactions": (self.folder / "transactions.parquet", "event_time"),
            "labels": (self.folder / "labels.parquet", "label_time"),
        }
        for kind, (path, time_column) in self._files.items():
            if not path.is_file():
                raise SourceError(
                    f"--parquet {self.folder}: {path.name} not found (a simulator folder "
                    "holds transactions.parquet and labels.parquet: python -m "
                    "kestrel_training.simulator --out DIR)"
                )
            schema = pq.read_schema(path)
            needed = TRANSACTION_COLUMNS if kind == "transactions" else LABEL_COLUMNS
            missing = [c for c in needed if c not in schema.names]
            if missing:
                raise SourceError(f"{path}: no column {', '.join(missing)}")
            kind_type = schema.field(time_column).type
            if not pa.types.is_integer(kind_type):
                raise SourceError(
                    f"{path}: {time_column} must be integer epoch milliseconds, is {kind_type}"
                )

    def _read(self, kind: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        path, time_column = self._files[kind]
        names = pq.read_schema(path).names
        wanted = TRANSACTION_COLUMNS + OPTIONAL_COLUMNS if kind == "transactions" else LABEL_COLUMNS
        frame = pd.read_parquet(
            path,
            columns=[c for c in wanted if c in names],
            filters=[(time_column, ">=", start_ms), (time_column, "<", end_ms)],
        )
        return frame.sort_values(time_column, kind="stable", ignore_index=True)

    def span(self) -> tuple[int, int] | None:
        """The earliest and last + 1 ms of either file (row-group statistics when present)."""
        lows, highs = [], []
        for path, time_column in self._files.values():
            times = pq.read_table(path, columns=[time_column]).column(0)
            if len(times):
                lows.append(int(pa.compute.min(times).as_py()))
                highs.append(int(pa.compute.max(times).as_py()) + 1)
        return (min(lows), max(highs)) if lows else None

    def count(self, start_ms: int, end_ms: int) -> int | None:
        """Transactions in the range (reads the time column only)."""
        path, column = self._files["transactions"]
        times = pq.read_table(path, columns=[column]).column(0).to_numpy()
        return int(np.count_nonzero((times >= start_ms) & (times < end_ms)))

    def chunks(self, start_ms: int, end_ms: int) -> Iterator[Chunk]:
        """The range a day at a time (both files are read once, filtered to the range)."""
        tx = self._read("transactions", start_ms, end_ms)
        labels = self._read("labels", start_ms, end_ms)
        tx_times, label_times = tx["event_time"].to_numpy(), labels["label_time"].to_numpy()
        for lo, hi in day_bounds(start_ms, end_ms):
            chunk = Chunk([], hi)
            a, b = np.searchsorted(tx_times, [lo, hi])
            c, d = np.searchsorted(label_times, [lo, hi])
            if a == b and c == d:
                yield chunk
                continue
            rows = _records(tx.iloc[a:b])
            txs = _parse_rows(rows, transaction_from_mapping, "transaction", chunk)
            rows = _records(labels.iloc[c:d])
            found = _parse_rows(rows, label_from_mapping, "label", chunk)
            yield _ordered(chunk, txs, found)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as plain Python values (numpy scalars would fail the stream's type checks)."""
    columns = list(frame.columns)
    values = [frame[c].tolist() for c in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


class EventLogHistory:
    """The stream's S3 event log: ``<prefix>/transactions/`` and ``<prefix>/labels/``.

    Args:
        client: a boto3 S3 client.
        bucket: the event-log bucket.
        prefix: the log's top folder (default ``events``).

    Raises:
        SourceError: If the bucket does not exist (on first use).
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "events") -> None:
        self._client, self._bucket = client, bucket
        self._prefix = prefix.strip("/")
        self.description = f"event log s3://{bucket}/{self._prefix}/"

    def _list(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        kwargs = {"Bucket": self._bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from self._client.get_paginator("list_objects_v2").paginate(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise SourceError(f"s3://{self._bucket}: no such bucket") from None
            raise

    def _dates(self, kind: str) -> list[date]:
        found = []
        for page in self._list(f"{self._prefix}/{kind}/", "/"):
            for common in page.get("CommonPrefixes", []):
                name = str(common["Prefix"]).rstrip("/").rsplit("/", 1)[-1]
                try:
                    found.append(date.fromisoformat(name.removeprefix("dt=")))
                except ValueError:
                    continue  # not a date partition
        return found

    def span(self) -> tuple[int, int] | None:
        """The first and last + 1 ms of the date partitions (whole UTC days)."""
        dates = self._dates("transactions") + self._dates("labels")
        if not dates:
            return None
        epoch = date(1970, 1, 1)
        return (min(dates) - epoch).days * DAY_MS, ((max(dates) - epoch).days + 1) * DAY_MS

    def count(self, start_ms: int, end_ms: int) -> int | None:
        """Unknown without reading every object: progress goes by time instead."""
        return None

    def _rows(self, kind: str, day: date, chunk: Chunk) -> list[dict[str, Any]]:
        """Every row of one kind's date partition (unreadable objects and lines refused)."""
        rows: list[dict[str, Any]] = []
        partition = f"{self._prefix}/{kind}/dt={day.isoformat()}/"
        keys = sorted(
            str(o["Key"]) for page in self._list(partition) for o in page.get("Contents", [])
        )
        for key in keys:
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"].read()
            try:
                lines = gzip.decompress(body).splitlines()
            except (OSError, EOFError, zlib.error) as exc:
                chunk.reject(f"s3://{self._bucket}/{key}: not gzip ({exc})")
                continue
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    chunk.reject(f"s3://{self._bucket}/{key} line {number}: {exc}")
                    continue
                if not isinstance(row, dict):
                    chunk.reject(f"s3://{self._bucket}/{key} line {number}: not a JSON object")
                    continue
                rows.append(row)
        return rows

    def chunks(self, start_ms: int, end_ms: int) -> Iterator[Chunk]:
        """The range one date partition at a time; repeated rows dropped."""
        for lo, hi in day_bounds(start_ms, end_ms):
            chunk = Chunk([], hi)
            day = _date(lo)
            tx_rows = _unique(self._rows("transactions", day, chunk), labels=False)
            label_rows = _unique(self._rows("labels", day, chunk), labels=True)
            txs = _parse_rows(tx_rows, transaction_from_mapping, "transaction", chunk)
            found = _parse_rows(label_rows, label_from_mapping, "label", chunk)
            yield _ordered(chunk, _within(txs, lo, hi), _within(found, lo, hi))


def _within(events: list[Event], lo: int, hi: int) -> list[Event]:
    """The events whose time is in [lo, hi)."""
    return [e for e in events if lo <= order_key(e)[0] < hi]


def _unique(rows: Sequence[dict[str, Any]], labels: bool) -> list[dict[str, Any]]:
    """The first row of each transaction id (labels: of each id, verdict and label time)."""
    seen: set[Any] = set()
    out = []
    for row in rows:
        key: Any = row.get("transaction_id")
        if labels:
            key = (key, row.get("is_fraud"), row.get("label_time"))
        try:
            if key in seen:
                continue
            seen.add(key)
        except TypeError:  # an unhashable id: the parser refuses it
            pass
        out.append(row)
    return out


def describe_range(start_ms: int, end_ms: int) -> str:
    """``[start, end)`` as ISO-8601 UTC."""
    return f"[{iso_ms(start_ms)}, {iso_ms(end_ms)})"
