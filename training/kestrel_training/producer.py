"""Stream simulator transactions (or labels) to a Kinesis stream with PutRecords.

Records go out in input order, in batches of at most 500 records / 5 MiB, with partition key
``customer_id``. Ordering per partition key is kept under partial failures: a batch never holds
two records of the same key (a later one waits for a later batch), and the failed entries of a
batch are resent, with exponential backoff and full jitter, before the next batch is sent. No
record is dropped: when the endpoint keeps failing (``max_retries`` rounds in a row without any
record accepted), `produce` raises `DeliveryError` saying how many records were not delivered.

Payloads come from a pluggable `Encoder` (record dict -> bytes); the default is compact JSON of
`TRANSACTION_FIELDS` or `LABEL_FIELDS`. ``--encoder`` takes a registered name or a
``module:factory`` path, where ``factory(kind)`` returns an `Encoder` for ``kind`` in
{"transactions", "labels"}, so another encoding (e.g. Avro) plugs in without changing this file.

Pacing: as fast as the endpoint allows, at ``rate`` records/s, or ``speedup`` times faster than
the records' own clock (``event_time``, or ``label_time`` for labels).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kestrel_local.aws import apply_local_endpoint_defaults, endpoint_session

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

Encoder = Callable[[dict[str, Any]], bytes]
EncoderFactory = Callable[[str], Encoder]
Pacer = Callable[[int, dict[str, Any]], float]

TRANSACTION_FIELDS = ("transaction_id", "customer_id", "terminal_id", "amount", "event_time")
LABEL_FIELDS = ("transaction_id", "customer_id", "terminal_id", "is_fraud", "label_time")
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
BATCH_WINDOW_S = 0.1  # a paced batch holds the records due within this window
MAX_DEFERRED = 10_000  # records held back (same key already in the batch) before sending anyway
RETRYABLE_CODES = frozenset(
    {
        *("ProvisionedThroughputExceededException", "ThrottlingException"),
        *("LimitExceededException", "RequestLimitExceeded", "KMSThrottlingException"),
        *("InternalFailure", "InternalFailureException", "InternalServerError"),
        *("ServiceUnavailable", "ServiceUnavailableException"),
    }
)


class DeliveryError(RuntimeError):
    """The stream kept refusing records; `undelivered` of them were taken but not delivered."""

    def __init__(self, message: str, sent: int, undelivered: int) -> None:
        super().__init__(message)
        self.sent = sent
        self.undelivered = undelivered


@dataclass
class ProduceReport:
    """What one `produce` call delivered."""

    sent: int = 0
    failed_then_retried: int = 0
    retry_rounds: int = 0
    batches: int = 0
    seconds: float = 0.0
    last_sequence_numbers: dict[str, str] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        """Delivered records per second of wall time."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def json_encoder(fields: Iterable[str]) -> Encoder:
    """An encoder writing compact JSON of `fields` (in that order) of each record."""
    names = tuple(fields)

    def encode(record: dict[str, Any]) -> bytes:
        """The record's fields as compact JSON."""
        return json.dumps({k: record[k] for k in names}, separators=(",", ":")).encode()

    return encode


def _json_factory(kind: str) -> Encoder:
    """The JSON encoder for transactions or labels."""
    return json_encoder(LABEL_FIELDS if kind == "labels" else TRANSACTION_FIELDS)


def _avro_factory(kind: str) -> Encoder:
    from kestrel_training.avro_encoding import avro_encoder  # needs the registry: load late

    return avro_encoder(kind)


ENCODERS: dict[str, EncoderFactory] = {"json": _json_factory, "avro": _avro_factory}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Make `factory` available as ``--encoder NAME``."""
    ENCODERS[name] = factory


def resolve_encoder(spec: str, kind: str) -> Encoder:
    """The encoder for a registered name or a ``module:factory`` path, for `kind`."""
    if spec in ENCODERS:
        return ENCODERS[spec](kind)
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"unknown encoder {spec!r}: use one of {sorted(ENCODERS)} or module:attr")
    factory: EncoderFactory = getattr(importlib.import_module(module), attr)
    return factory(kind)


def kinesis_client() -> KinesisClient:
    """A Kinesis client for ``AWS_ENDPOINT_URL`` (or AWS); retries are left to `produce`."""
    config = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2)
    return endpoint_session().client("kinesis", config=config)


def rate_pacer(rate: float) -> Pacer:
    """Record i is due at i / rate seconds."""
    return lambda index, _record: index / rate


def speedup_pacer(time_field: str, speedup: float) -> Pacer:
    """A record is due (its time - the first record's time) / speedup after the start."""
    first: list[float] = []

    def due(_index: int, record: dict[str, Any]) -> float:
        """Seconds after the start at which the record is due."""
        t = float(record[time_field]) / 1000.0
        if not first:
            first.append(t)
        return max(0.0, (t - first[0]) / speedup)

    return due


@dataclass
class _Entry:
    """One encoded record waiting to be put."""

    data: bytes
    key: str
    due: float

    @property
    def size(self) -> int:
        """Bytes the entry counts towards the PutRecords request limit."""
        return len(self.data) + len(self.key.encode())


class _Batcher:
    """Cuts the input into batches with at most one record per partition key."""

    def __init__(self, entries: Iterator[_Entry], max_records: int, paced: bool) -> None:
        self.entries = entries
        self.max_records = max_records
        self.paced = paced
        self.pending: deque[_Entry] = deque()

    def _next(self) -> _Entry | None:
        """The oldest held-back entry, else the next input entry."""
        return self.pending.popleft() if self.pending else next(self.entries, None)

    def held(self) -> int:
        """Records taken from the input but not yet in a batch."""
        return len(self.pending)

    def next_batch(self) -> list[_Entry]:
        """The next batch (empty when the input is exhausted)."""
        batch: list[_Entry] = []
        keys: set[str] = set()
        deferred: deque[_Entry] = deque()
        blocked: set[str] = set()
        size = 0
        while len(batch) < self.max_records and len(deferred) < MAX_DEFERRED:
            entry = self._next()
            if entry is None:
                break
            if self.paced and batch and entry.due > batch[0].due + BATCH_WINDOW_S:
                deferred.append(entry)
                break
            if entry.key in keys or entry.key in blocked or size + entry.size > MAX_BATCH_BYTES:
                deferred.append(entry)
                blocked.add(entry.key)
                continue
            batch.append(entry)
            keys.add(entry.key)
            size += entry.size
        deferred.extend(self.pending)
        self.pending = deferred
        return batch


def produce(
    records: Iterable[dict[str, Any]],
    stream: str,
    *,
    client: KinesisClient | None = None,
    encoder: Encoder | None = None,
    partition_key: str = "customer_id",
    pacer: Pacer | None = None,
    max_records_per_batch: int = MAX_BATCH_RECORDS,
    max_retries: int = 8,
    backoff_base_s: float = 0.1,
    backoff_cap_s: float = 5.0,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ProduceReport:
    """Put `records` on `stream` in order (per partition key), retrying until delivered."""
    client = client or kinesis_client()
    encode = encoder or json_encoder(TRANSACTION_FIELDS)
    report = ProduceReport()
    start = time.monotonic()
    last_progress = start

    def entries() -> Iterator[_Entry]:
        """The input records, encoded, keyed and timed."""
        for i, record in enumerate(records):
            data = encode(record)
            if len(data) + len(str(record[partition_key]).encode()) > MAX_RECORD_BYTES:
                raise ValueError(f"record {i} is larger than 1 MiB once encoded")
            yield _Entry(data, str(record[partition_key]), pacer(i, record) if pacer else 0.0)

    batcher = _Batcher(
        entries(), max(1, min(max_records_per_batch, MAX_BATCH_RECORDS)), bool(pacer)
    )
    while batch := batcher.next_batch():
        wait = start + batch[0].due - time.monotonic()
        if wait > 0:
            sleep(wait)
        report.batches += 1
        _deliver(
            client,
            stream,
            batch,
            report,
            batcher,
            max_retries,
            backoff_base_s,
            backoff_cap_s,
            sleep,
        )
        now = time.monotonic()
        if progress and now - last_progress >= 1.0:
            last_progress = now
            progress(_progress_line(report, now - start))
    report.seconds = time.monotonic() - start
    return report


def _deliver(
    client: KinesisClient,
    stream: str,
    batch: list[_Entry],
    report: ProduceReport,
    batcher: _Batcher,
    max_retries: int,
    base: float,
    cap: float,
    sleep: Callable[[float], None],
) -> None:
    """Put one batch, resending its failed entries (in order) until all are accepted."""
    remaining = batch
    rounds = stalled = 0
    while remaining:
        failed, reason = _put(client, stream, remaining, report)
        report.sent += len(remaining) - len(failed)
        if not failed:
            return
        stalled = stalled + 1 if len(failed) == len(remaining) else 0
        if stalled > max_retries:
            undelivered = len(failed) + batcher.held()
            raise DeliveryError(
                f"gave up on stream {stream!r} after {max_retries} retries without progress "
                f"({reason}): {undelivered} records taken from the input were not delivered "
                f"({report.sent} delivered); later input records were not sent",
                sent=report.sent,
                undelivered=undelivered,
            )
        rounds += 1
        report.retry_rounds += 1
        report.failed_then_retried += len(failed)
        sleep(random.uniform(0, min(cap, base * 2 ** (rounds - 1))))
        remaining = failed


def _put(
    client: KinesisClient, stream: str, entries: list[_Entry], report: ProduceReport
) -> tuple[list[_Entry], str]:
    """One PutRecords call: the entries that failed (in order) and why."""
    try:
        response = client.put_records(
            StreamName=stream,
            Records=[{"Data": e.data, "PartitionKey": e.key} for e in entries],
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code not in RETRYABLE_CODES and status < 500:
            raise DeliveryError(
                f"PutRecords to {stream!r} failed ({code}): {exc}; "
                f"{len(entries)} records in the batch were not delivered",
                sent=report.sent,
                undelivered=len(entries),
            ) from exc
        return entries, code
    except BotoCoreError as exc:  # endpoint unreachable, timeouts
        return entries, type(exc).__name__
    failed: list[_Entry] = []
    codes: set[str] = set()
    for entry, result in zip(entries, response["Records"], strict=True):
        if "ErrorCode" in result:
            failed.append(entry)
            codes.add(result["ErrorCode"])
        else:
            report.last_sequence_numbers[result["ShardId"]] = result["SequenceNumber"]
    return failed, ",".join(sorted(codes))


def _progress_line(report: ProduceReport, elapsed: float) -> str:
    """One progress line: sent, rate, retries, batches, elapsed."""
    rate = report.sent / elapsed if elapsed > 0 else 0.0
    return (
        f"sent {report.sent:,}  rate {rate:,.0f}/s  retries {report.failed_then_retried:,} "
        f"({report.retry_rounds} rounds)  batches {report.batches:,}  elapsed {elapsed:.1f}s"
    )


def frame_records(frame: Any, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a DataFrame as dicts of plain Python values, in frame order."""
    head = frame if limit is None else frame.iloc[:limit]
    columns = [str(c) for c in head.columns]
    for values in zip(*(head[c].tolist() for c in columns), strict=True):
        yield dict(zip(columns, values, strict=True))


def _load(args: argparse.Namespace, kind: str) -> Any:
    """The frame to stream: read from --from, or simulated for --rate x --duration records."""
    from kestrel_training import simulator  # pandas/numpy only when the CLI needs them

    if args.source is not None:
        return simulator.read_frame(args.source, kind)
    wanted = int(args.rate * args.duration) if args.limit is None else args.limit
    config = simulator.SimulatorConfig(seed=args.seed)
    per_day = max(1.0, simulator.expected_transactions_per_day(config))
    days = max(1, math.ceil(wanted * 1.1 / per_day) + 1)
    say(f"simulating {days} days for {wanted:,} records")
    sim = simulator.simulate(dataclasses.replace(config, n_days=days))
    frame = sim.labels if kind == "labels" else sim.transactions
    return frame.iloc[:wanted]


def say(line: str) -> None:
    """Print a progress or summary line on stderr."""
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: stream a simulator folder (or a fresh simulation) to a Kinesis stream."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.producer")
    parser.add_argument("--stream", required=True, help="Kinesis stream name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", type=Path, help="simulator output folder")
    source.add_argument("--duration", type=float, help="simulate and send for S seconds")
    parser.add_argument("--labels", action="store_true", help="send labels, not transactions")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="target records per second")
    pace.add_argument("--speedup", type=float, help="replay X times faster than event time")
    parser.add_argument("--limit", type=int, help="send at most N records")
    parser.add_argument("--encoder", default="json", help="registered name or module:factory")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (with --duration)")
    parser.add_argument("--max-retries", type=int, default=8)
    args = parser.parse_args(argv)
    apply_local_endpoint_defaults()  # region and test credentials for a loopback endpoint
    if args.duration is not None and not args.rate:
        parser.error("--duration needs --rate")
    if (args.rate is not None and args.rate <= 0) or (
        args.speedup is not None and args.speedup <= 0
    ):
        parser.error("--rate and --speedup must be positive")
    kind = "labels" if args.labels else "transactions"
    frame = _load(args, kind)
    total = len(frame) if args.limit is None else min(len(frame), args.limit)
    pacer: Pacer | None = None
    if args.rate:
        pacer = rate_pacer(args.rate)
    elif args.speedup:
        pacer = speedup_pacer("label_time" if args.labels else "event_time", args.speedup)
    say(f"streaming {total:,} {kind} to {args.stream!r}")
    try:
        report = produce(
            frame_records(frame, args.limit),
            args.stream,
            encoder=resolve_encoder(args.encoder, kind),
            pacer=pacer,
            max_records_per_batch=max(1, int(args.rate * BATCH_WINDOW_S)) if args.rate else 500,
            max_retries=args.max_retries,
            progress=say,
        )
    except DeliveryError as exc:
        say(f"error: {exc}")
        say(f"error: {total - exc.sent:,} of {total:,} records not delivered")
        return 1
    say(_progress_line(report, report.seconds).replace("sent", "done: sent", 1))
    say(f"shards: {json.dumps(report.last_sequence_numbers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
