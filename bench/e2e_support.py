"""The end-to-end benchmark's instruments: backlog monitor, Redis checks, per-process CPU."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from kestrel.adapters.redis_scripts import decision_key

DECIDED_AT = re.compile(rb'"decided_at":(-?\d+)')
CHUNK = 1000


class Monitor:
    """Samples (seconds since `mark`, put - finished) every `interval_s` in its own thread."""

    def __init__(
        self, put: Callable[[], int], finished: Callable[[], int], interval_s: float = 0.25
    ) -> None:
        self.put, self.finished, self.interval_s = put, finished, interval_s
        self.samples: list[tuple[float, float]] = []
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-monitor", daemon=True)
        self._thread.start()

    def backlog(self) -> int:
        """Records put but not finished, now (never negative)."""
        return max(0, self.put() - self.finished())

    def mark(self) -> None:
        """Start a new series of samples, timed from now."""
        with self._lock:
            self._t0 = time.monotonic()
            self.samples = []

    def series(self) -> list[tuple[float, float]]:
        """The samples since the last `mark`."""
        with self._lock:
            return list(self.samples)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            point = (time.monotonic() - self._t0, float(self.backlog()))
            with self._lock:
                self.samples.append(point)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class GetRecordsCounter:
    """Counts the runtime's GetRecords calls and the records they returned (botocore hook)."""

    def __init__(self, kinesis_client: Any) -> None:
        self.calls = self.records = 0
        self._lock = threading.Lock()
        kinesis_client.meta.events.register("after-call.kinesis.GetRecords", self._count)

    def _count(self, parsed: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.calls += 1
            self.records += len(parsed.get("Records", []))

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.calls, self.records


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def missing_decisions(
    client: redis.Redis, ids: Sequence[str], show: int = 10
) -> tuple[int, list[str]]:
    """How many of `ids` have no decision in Redis, and the first `show` of them.

    Counts with multi-key EXISTS (one command per 1,000 ids); only a chunk that comes up
    short is looked at id by id.
    """
    missing, examples = 0, list[str]()
    for chunk in _chunks(ids):
        keys = [decision_key(i) for i in chunk]
        found = int(client.exists(*keys))
        if found == len(keys):
            continue
        missing += len(keys) - found
        if len(examples) < show:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            examples += [i for i, ok in zip(chunk, pipe.execute(), strict=True) if not ok]
    return missing, examples[:show]


def decided_at_ms(client: redis.Redis, ids: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Each id's decision time (`decided_at`, epoch ms) from Redis; NaN where none is stored."""
    out = np.full(len(ids), np.nan)
    at = 0
    for chunk in _chunks(ids):
        for value in client.mget([decision_key(i) for i in chunk]):
            if isinstance(value, bytes):
                match = DECIDED_AT.search(value)
                if match:
                    out[at] = float(match.group(1))
            at += 1
    return out


def forget_decisions(client: redis.Redis, ids: Sequence[str]) -> None:
    """UNLINK the decisions of `ids` (keeps Redis memory flat across a long run)."""
    for chunk in _chunks(ids):
        client.unlink(*[decision_key(i) for i in chunk])


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


class CpuMeter:
    """Cores busy per named process between `start` and `stop`; this process's other children
    (the Lambda worker processes) are summed under `children_name`."""

    def __init__(self, named: dict[str, int | None], children_name: str = "Lambda workers") -> None:
        self.named = {k: v for k, v in named.items() if v}
        self.children_name = children_name
        self._before: dict[str, float] = {}
        self._t0 = 0.0

    def _now(self) -> dict[str, float]:
        out = {name: v for name, pid in self.named.items() if (v := cpu_seconds(pid)) is not None}
        known = set(self.named.values())
        for child in children(os.getpid()):
            if child in known or "resource_tracker" in _cmdline(child):
                continue  # multiprocessing's bookkeeping process, not a worker
            if (v := cpu_seconds(child)) is not None:
                out[f"{self.children_name} #{child}"] = v
        return out

    def start(self) -> None:
        self._t0, self._before = time.monotonic(), self._now()

    def stop(self) -> dict[str, Any]:
        """Cores busy per process (children summed) over the interval, and the total."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        after = self._now()
        used: dict[str, float] = {}
        workers = 0
        for key, value in after.items():
            if key in self._before:
                name = key.split(" #")[0]
                workers += name == self.children_name
                used[name] = used.get(name, 0.0) + (value - self._before[key]) / elapsed
        return {
            "seconds": round(elapsed, 1),
            "cores_by_process": {k: round(v, 3) for k, v in used.items()},
            "cores_total": round(sum(used.values()), 3),
            "worker_processes": workers,
        }
