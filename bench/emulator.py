"""Benchmark the embedded emulator's Kinesis: PutRecords and GetRecords rates with one full shard.

Usage: ``python -m bench.emulator [--records 1000000] [--unpatched --max-seconds 300]``
(``python bench/emulator.py`` works too).
Starts its own emulator subprocess on a free loopback port, fills ONE shard with PutRecords
batches of 500 from a few producer threads, measures PutRecords records/s over the last
stretch of the fill and GetRecords records/s (Limit 10000) reading the newest records from
deep in the shard, and writes ``bench/results/emulator[_unpatched]-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/emulator.py
    sys.path.insert(0, str(REPO))
from bench.results_io import write_result  # noqa: E402

STREAM = "kestrel-bench-emulator"
BATCH = 500
READY_PREFIX = "kestrel emulator listening on "


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-emulator] {message}", file=sys.stderr, flush=True)


def size_label(n: int) -> str:
    """1_000_000 -> "1m", 200_000 -> "200k", other counts as digits."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


class Emulator:
    """The emulator as a subprocess on a free port; stopped with SIGTERM."""

    def __init__(self, patched: bool):
        """Start it and wait for its ready line."""
        cmd = [sys.executable, "-m", "kestrel_local.emulator", "--host", "127.0.0.1", "--port", "0"]
        if not patched:
            cmd.append("--no-patch")
        self.command = " ".join(cmd[1:])
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        self.url = ""
        for line in self.proc.stderr:
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].split()[0]
                break
            sys.stderr.write(line)
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"emulator did not start: {self.command}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        """Forward the server's stderr after start-up."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            sys.stderr.write(line)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(url: str) -> Any:
    """A Kinesis client for the emulator, no retries (a failure must surface, not duplicate)."""
    return boto3.client(
        "kinesis",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=600, connect_timeout=10),
    )


@dataclass
class Fill:
    """Shared state of the producer threads."""

    target: int
    deadline: float
    claimed: int = 0
    done: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)
    sequence_numbers: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> tuple[int, int]:
        """Reserve the next batch: (first record index, count); count 0 means stop."""
        with self.lock:
            if self.errors or time.monotonic() > self.deadline:
                return self.claimed, 0
            count = min(BATCH, self.target - self.claimed)
            first = self.claimed
            self.claimed += count
            return first, count


def payload(i: int) -> bytes:
    """A transaction-shaped record of about 200 bytes."""
    return json.dumps(
        {
            "event_id": f"evt-{i:012d}",
            "customer_id": f"cust-{i % 50_000:08d}",
            "terminal_id": f"term-{i % 10_000:06d}",
            "amount_cents": 1000 + i % 99_000,
            "currency": "EUR",
            "ts": 1_767_225_600_000 + i,
            "channel": "card_present",
        }
    ).encode()


def producer(url: str, fill: Fill, progress_every: int) -> None:
    """Put batches until the target or the deadline is reached."""
    kinesis = client(url)
    while True:
        first, count = fill.claim()
        if count == 0:
            return
        entries = [
            {"Data": payload(i), "PartitionKey": f"cust-{i % 50_000:08d}"}
            for i in range(first, first + count)
        ]
        try:
            response = kinesis.put_records(StreamName=STREAM, Records=entries)
        except Exception as exc:  # noqa: BLE001 - any failure stops the run and is reported
            with fill.lock:
                fill.errors.append(repr(exc))
            return
        numbers = [r.get("SequenceNumber", "") for r in response["Records"]]
        now = time.monotonic()
        with fill.lock:
            if response.get("FailedRecordCount"):
                fill.errors.append(f"{response['FailedRecordCount']} records failed")
            before = fill.done
            fill.done += count
            fill.timeline.append((now, fill.done))
            fill.sequence_numbers.update(numbers)
            if fill.done // progress_every != before // progress_every:
                recent = [p for p in fill.timeline if p[1] >= fill.done - progress_every]
                (t0, n0), (t1, n1) = recent[0], fill.timeline[-1]
                rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
                log(f"filled {fill.done:,} records ({rate:,.0f} records/s recently)")


def window_rate(timeline: list[tuple[float, int]], window: int) -> tuple[float, int, float]:
    """PutRecords records/s over the last `window` records: (rate, records, seconds)."""
    end_t, end_n = timeline[-1]
    start_t, start_n = timeline[0]
    for t, n in reversed(timeline):
        if end_n - n >= window:
            start_t, start_n = t, n
            break
    seconds = end_t - start_t
    return ((end_n - start_n) / seconds if seconds > 0 else 0.0), end_n - start_n, seconds


def read_back(url: str, after: int, count: int, limit: int) -> dict[str, Any]:
    """Read `count` records after sequence number `after` with GetRecords; time and check them."""
    kinesis = client(url)
    shard_id = kinesis.list_shards(StreamName=STREAM)["Shards"][0]["ShardId"]
    if after > 0:
        iterator = kinesis.get_shard_iterator(
            StreamName=STREAM,
            ShardId=shard_id,
            ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=str(after),
        )["ShardIterator"]
    else:
        iterator = kinesis.get_shard_iterator(
            StreamName=STREAM, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
    read, calls, gaps, expected = 0, 0, 0, after + 1
    started = time.perf_counter()
    while read < count:
        response = kinesis.get_records(ShardIterator=iterator, Limit=limit)
        calls += 1
        records = response["Records"]
        for record in records:
            number = int(record["SequenceNumber"])
            gaps += number != expected
            expected = number + 1
        read += len(records)
        iterator = response["NextShardIterator"]
        if not records:
            break
    seconds = time.perf_counter() - started
    return {"records": read, "calls": calls, "seconds": seconds, "gaps": gaps}


def run(args: argparse.Namespace) -> Path:
    """Run the benchmark once and write its result file."""
    patched = not args.unpatched
    emulator = Emulator(patched)
    log(f"emulator at {emulator.url} ({'patched' if patched else 'unpatched'})")
    try:
        admin = client(emulator.url)
        admin.create_stream(StreamName=STREAM, ShardCount=1)
        admin.get_waiter("stream_exists").wait(StreamName=STREAM)
        budget = args.max_seconds if args.max_seconds > 0 else float("inf")
        started = time.monotonic()
        fill = Fill(target=args.records, deadline=started + budget)
        threads = [
            threading.Thread(target=producer, args=(emulator.url, fill, args.progress_every))
            for _ in range(args.producers)
        ]
        cpu_before = emulator.cpu_seconds()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        fill_seconds = time.monotonic() - started
        fill_cpu = emulator.cpu_seconds() - cpu_before
        if fill.errors:
            raise RuntimeError(f"PutRecords failed: {fill.errors[:3]}")
        window = args.window if patched else min(args.window, max(BATCH, fill.done // 10))
        put_rate, put_window, put_seconds = window_rate(fill.timeline, window)
        lost = fill.done - len(fill.sequence_numbers)
        log(
            f"filled {fill.done:,} records in {fill_seconds:,.1f} s; last {put_window:,} at "
            f"{put_rate:,.0f} records/s; {lost} duplicate sequence numbers (records overwritten)"
        )
        after = max(0, fill.done - args.read_records)
        got = read_back(emulator.url, after, args.read_records, args.limit)
        get_rate = got["records"] / got["seconds"] if got["seconds"] > 0 else 0.0
        log(
            f"read {got['records']:,} records after #{after:,} in {got['seconds']:,.2f} s "
            f"({got['calls']} calls): {get_rate:,.0f} records/s, {got['gaps']} gaps"
        )
    finally:
        emulator.stop()

    label = size_label(fill.done)
    prefix = "emulator" if patched else "emulator_unpatched"
    params: dict[str, Any] = {
        "patched": patched,
        "server": emulator.command,
        "records_target": args.records,
        "fill_level": fill.done,
        "fill_seconds": round(fill_seconds, 1),
        "fill_server_cpu_seconds": round(fill_cpu, 1),
        "max_seconds": args.max_seconds,
        "producers": args.producers,
        "batch": BATCH,
        "shards": 1,
        "record_bytes": len(payload(0)),
        "put_window_records": put_window,
        "put_window_seconds": round(put_seconds, 2),
        "duplicate_sequence_numbers": lost,
        "get_limit": args.limit,
        "get_start_after_sequence_number": after,
        "get_records_read": got["records"],
        "get_calls": got["calls"],
        "get_seconds": round(got["seconds"], 2),
        "get_sequence_gaps": got["gaps"],
        "client": "boto3, one process, producer threads + one reader",
    }
    figures = {
        f"{prefix}.put_records_per_s_at_{label}": (round(put_rate, 1), "records/s"),
        f"{prefix}.get_records_per_s_at_{label}": (round(get_rate, 1), "records/s"),
    }
    path: Path = write_result(prefix, params, figures)
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the result path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=1_000_000, help="fill level (records)")
    parser.add_argument("--unpatched", action="store_true", help="benchmark moto as installed")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop filling after this many seconds (default: none patched, 300 unpatched)",
    )
    parser.add_argument("--producers", type=int, default=3, help="producer threads")
    parser.add_argument("--window", type=int, default=50_000, help="records in the put window")
    parser.add_argument("--read-records", type=int, default=250_000, help="records to read")
    parser.add_argument("--limit", type=int, default=10_000, help="GetRecords Limit")
    parser.add_argument("--progress-every", type=int, default=50_000, help="progress interval")
    args = parser.parse_args(argv)
    if args.max_seconds is None:
        args.max_seconds = 300.0 if args.unpatched else 0.0
    path = run(args)
    log(f"wrote {path}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
