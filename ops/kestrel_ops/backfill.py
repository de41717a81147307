"""``python -m kestrel_ops backfill``: load history into the online store, as the stream would.

The source is a simulator folder (``--parquet DIR``) or the stack's S3 event log
(``--event-log``), cut to a time range (``--start``, ``--end``: transactions by event time,
labels by label time). Events go to Redis in the order of
`kestrel_ops.backfill_sources.order_key`, through `RedisFeatureStore.apply_in_order`: the
same scripts with the same arguments as the stream's `apply_transactions` and
`apply_labels`, in pipelines of ``--batch`` events, with no scoring and no decisions. A
store backfilled this way holds what a store that streamed the same events in time order
holds, key by key, except the decisions (``kestrel:{d:...}``), which only the stream writes.

Running it twice, or over a range the stream already applied, changes nothing: a replayed
transaction or label is found and left as it is. A range before what the store already
holds is applied as late events (exact, but slower), and anything older than an entity's
retention is not kept. Progress (events/s, ETA) goes to stderr, the summary to stdout.
Exit codes: 0 done; 1 rows refused by the parsers (skipped, the rest applied) or the store
failed part-way (rerun from the time given); 2 a usage or configuration error (no source,
bad range, Redis not answering).
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import redis
from redis.cluster import RedisCluster

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Transaction, epoch_ms, iso_ms
from kestrel.settings import LocalSettings, redact_url
from kestrel_ops.backfill_sources import (
    Chunk,
    Event,
    EventLogHistory,
    HistorySource,
    ParquetHistory,
    SourceError,
    describe_range,
    order_key,
)

DEFAULT_BATCH = 2000
BUCKET = "EventLogBucket"


class HistoryStore(Protocol):
    """The part of the online store a backfill writes through."""

    def apply_in_order(self, events: Sequence[Event]) -> list[bool | Exception]:
        """Apply `events` in order; per event whether it was new, or its error."""
        ...

    def ping(self) -> None:
        """Raise unless the store answers."""
        ...


class StoreFailed(Exception):
    """The store failed part-way; everything before `resume_ms` was applied."""

    def __init__(self, message: str, resume_ms: int) -> None:
        super().__init__(message)
        self.resume_ms = resume_ms


@dataclass
class BackfillReport:
    """What a backfill read and applied."""

    source: str = ""
    start_ms: int = 0
    end_ms: int = 0
    transactions: int = 0
    transactions_new: int = 0
    labels: int = 0
    frauds: int = 0
    frauds_new: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    until_ms: int = 0

    @property
    def events_per_s(self) -> float:
        """Transactions per second of wall time (the engine's unit; labels ride along)."""
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The closing lines."""
        lines = [
            f"backfill: {self.transactions:,} transactions ({self.transactions_new:,} new, "
            f"{self.transactions - self.transactions_new:,} already stored or past the "
            "retention) and "
            f"{self.labels:,} labels ({self.frauds:,} fraud, {self.frauds_new:,} new) "
            f"from {self.source} {describe_range(self.start_ms, self.end_ms)}",
            f"backfill: {self.seconds:.1f} s, {self.events_per_s:,.0f} events/s",
        ]
        if self.rejected:
            lines.append(f"backfill: {self.rejected:,} rows refused and skipped, e.g.:")
            lines += [f"  {reason}" for reason in self.reasons[:5]]
        return "\n".join(lines)


def _prefetched(chunks: Iterator[Chunk], depth: int = 2) -> Iterator[Chunk]:
    """`chunks`, read and parsed in a thread while the caller applies the previous ones."""
    box: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Chunk | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            put(exc)
            return
        put(None)

    reader = threading.Thread(target=read, name="backfill-reader", daemon=True)
    reader.start()
    try:
        while (item := box.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(5)


def backfill(
    store: HistoryStore,
    source: HistorySource,
    start_ms: int,
    end_ms: int,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[BackfillReport], None] | None = None,
) -> BackfillReport:
    """Apply the source's events of [start_ms, end_ms) to `store`, `batch` at a time, in order.

    Raises:
        StoreFailed: A batch failed (Redis down, a script error); events before its
            `resume_ms` are applied.
    """
    report = BackfillReport(source.description, start_ms, end_ms, until_ms=start_ms)
    started = time.perf_counter()
    for chunk in _prefetched(source.chunks(start_ms, end_ms)):
        report.rejected += chunk.rejected
        report.reasons += chunk.reasons[: max(0, 20 - len(report.reasons))]
        for lo in range(0, len(chunk.events), batch):
            part = chunk.events[lo : lo + batch]
            resume = order_key(part[0])[0]
            try:
                results = store.apply_in_order(part)
            except (redis.RedisError, OSError) as exc:
                report.seconds = time.perf_counter() - started
                raise StoreFailed(f"{type(exc).__name__}: {exc}", resume) from exc
            for event, result in zip(part, results, strict=True):
                if isinstance(result, Exception):
                    report.seconds = time.perf_counter() - started
                    raise StoreFailed(
                        f"{event.transaction_id}: {type(result).__name__}: {result}", resume
                    )
                if isinstance(event, Transaction):
                    report.transactions += 1
                    report.transactions_new += result
                else:
                    report.labels += 1
                    report.frauds += event.is_fraud
                    report.frauds_new += result
            report.seconds = time.perf_counter() - started
            report.until_ms = order_key(part[-1])[0]
            if progress:
                progress(report)
        report.until_ms = chunk.until_ms
        report.seconds = time.perf_counter() - started
        if progress:
            progress(report)
    report.seconds = time.perf_counter() - started
    return report


class ProgressLine:
    """Progress on stderr: rate, share done and ETA (redrawn in place on a terminal)."""

    def __init__(self, total: int | None, out: TextIO, every_s: float | None = None) -> None:
        self.total, self.out = total, out
        self.tty = out.isatty()
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 5.0)
        self._shown = -float("inf")

    def line(self, report: BackfillReport) -> str:
        """One progress line."""
        span = report.end_ms - report.start_ms
        if self.total:
            done = min(1.0, report.transactions / self.total)
        else:
            done = (report.until_ms - report.start_ms) / span if span > 0 else 1.0
        rate = report.events_per_s
        eta = report.seconds * (1 - done) / done if done > 0 else float("nan")
        eta_text = f"{eta:,.0f} s" if eta == eta else "-"
        return (
            f"backfill: up to {iso_ms(report.until_ms)[:16]}Z | "
            f"{report.transactions:,} transactions, {report.frauds:,} fraud labels | "
            f"{rate:,.0f} events/s | {done:.0%} | ETA {eta_text}"
        )

    def __call__(self, report: BackfillReport) -> None:
        """Show the line, at most every `every_s`."""
        now = time.monotonic()
        if now - self._shown < self.every_s:
            return
        self._shown = now
        text = self.line(report)
        self.out.write(f"\r\033[K{text}" if self.tty else f"{text}\n")
        self.out.flush()

    def finish(self, report: BackfillReport | None = None) -> None:
        """The last line (`report`'s), ending the line redrawn in place."""
        if report is not None:
            self._shown = -float("inf")
            self(report)
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def parse_time(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 date or time (UTC when it has no offset)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not epoch milliseconds or an ISO-8601 time (e.g. 2018-05-01 or "
            "2018-05-01T00:00:00Z)"
        ) from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return epoch_ms(moment)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_parser(sub: Any) -> None:
    """Add the ``backfill`` command to the subparsers of ``python -m kestrel_ops``."""
    cmd = sub.add_parser(
        "backfill", help="load history (simulator Parquet or the S3 event log) into Redis"
    )
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--parquet", metavar="DIR", help="a simulator folder (transactions/labels)")
    source.add_argument("--event-log", action="store_true", help="the stack's S3 event log")
    cmd.add_argument("--bucket", default=None, help="event-log bucket (default: the stack's)")
    cmd.add_argument("--prefix", default="events", help="event-log top folder (default events)")
    cmd.add_argument("--stack-name", default=None, help="default: KESTREL_STACK_NAME")
    cmd.add_argument("--template", "-t", default="template.yaml")
    cmd.add_argument("--region", default="us-east-1")
    cmd.add_argument(
        "--start", type=parse_time, default=None, help="first time (default: the source's)"
    )
    cmd.add_argument(
        "--end", type=parse_time, default=None, help="end time, exclusive (default: the source's)"
    )
    cmd.add_argument("--redis-url", default=None, help="default: the local stack's Redis")
    cmd.add_argument("--cluster", action="store_true", help="the URL is a Redis Cluster node")
    cmd.add_argument(
        "--batch",
        type=_positive_int,
        default=DEFAULT_BATCH,
        help=f"events per pipeline (default {DEFAULT_BATCH})",
    )


def _event_log(args: argparse.Namespace, settings: LocalSettings) -> EventLogHistory:
    """The event log named by --bucket, or the stack's EventLogBucket."""
    from kestrel_local.aws import AwsClients  # the AWS side only when it is the source
    from kestrel_local.provision import bind
    from kestrel_local.template import TemplateError

    clients = AwsClients(settings.endpoint, region=args.region)
    bucket = args.bucket
    if not bucket:
        stack_name = args.stack_name or settings.stack_name
        try:
            app, _ = bind(args.template, clients, stack_name)
        except (TemplateError, OSError) as exc:
            raise SourceError(f"--template {args.template}: {exc}") from None
        if BUCKET not in app.stack.physical:
            raise SourceError(f"--template {args.template}: no {BUCKET} resource")
        bucket = str(app.stack.physical[BUCKET].ref)
    return EventLogHistory(clients.client("s3"), bucket, args.prefix)


def open_store(url: str, cluster: bool) -> RedisFeatureStore:
    """The feature store at `url`, checked to answer (ValueError naming the URL if not)."""
    options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 120}
    client: redis.Redis | RedisCluster
    try:
        client = (
            RedisCluster.from_url(url, **options)
            if cluster
            else redis.Redis.from_url(url, **options)
        )
        store = RedisFeatureStore(client)
        store.ping()
    except (redis.RedisError, OSError) as exc:
        raise ValueError(
            f"Redis at {redact_url(url)} does not answer ({exc}): is it running? (make up)"
        ) from None
    return store


def resolve_range(
    source: HistorySource, start_ms: int | None, end_ms: int | None
) -> tuple[int, int]:
    """The range to load: the options, the source's own span where one is missing."""
    span = source.span() if start_ms is None or end_ms is None else None
    if span is None and (start_ms is None or end_ms is None):
        raise SourceError(f"{source.description} holds no events")
    lo = start_ms if start_ms is not None else span[0]  # type: ignore[index]
    hi = end_ms if end_ms is not None else span[1]  # type: ignore[index]
    if lo >= hi:
        raise SourceError(f"bad range: --start {iso_ms(lo)} is not before --end {iso_ms(hi)}")
    return lo, hi


def run_backfill(
    args: argparse.Namespace, settings: LocalSettings, out: TextIO, err: TextIO
) -> int:
    """Run the backfill command; returns the exit code (configuration errors raise)."""
    if args.parquet and (args.bucket or args.prefix != "events"):
        raise SourceError("--bucket and --prefix go with --event-log, not --parquet")
    source: HistorySource = (
        ParquetHistory(args.parquet) if args.parquet else _event_log(args, settings)
    )
    start_ms, end_ms = resolve_range(source, args.start, args.end)
    url = args.redis_url or settings.redis
    store = open_store(url, args.cluster)
    total = source.count(start_ms, end_ms)
    err.write(
        f"backfill: {source.description} {describe_range(start_ms, end_ms)} into "
        f"{redact_url(url)}" + (f" ({total:,} transactions)" if total is not None else "") + "\n"
    )
    progress = ProgressLine(total, err)
    try:
        report = backfill(store, source, start_ms, end_ms, args.batch, progress)
    except StoreFailed as exc:
        progress.finish()
        err.write(
            f"error: the store failed: {exc}\nEverything before {iso_ms(exc.resume_ms)} is "
            f"applied; the backfill is idempotent: rerun with --start {exc.resume_ms} (or "
            "the same range).\n"
        )
        return 1
    progress.finish(report)
    out.write(report.summary() + "\n")
    if report.transactions == 0 and report.labels == 0 and not report.rejected:
        span = source.span()
        held = describe_range(*span) if span else "nothing"
        err.write(f"backfill: no events in the range ({source.description} holds {held})\n")
        return 1
    return 1 if report.rejected else 0
