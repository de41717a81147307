"""The API benchmark's setup: the local stack, the seeded Redis history and the API server."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import starmap
from pathlib import Path

import redis
from kestrel_training.simulator import SimulatorConfig, simulate

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Label, Transaction
from kestrel.features import DAY_MS
from kestrel.settings import LocalSettings
from kestrel_local.processes import LOOPBACK, free_port, stop_child
from kestrel_local.services import status

REPO = Path(__file__).resolve().parent.parent
SERVE = ["-m", "kestrel_local", "serve"]  # the API server, after the interpreter
PREFIX = "bench."  # every id the benchmark writes starts with it


def log(message: str) -> None:
    """Progress to stderr, tagged with the benchmark's make target (bench-api, bench-click-api)."""
    tag = Path(sys.argv[0]).stem.replace("_", "-")
    print(f"[bench-{tag}] {message}", file=sys.stderr, flush=True)


def kestrel_local(*args: str) -> None:
    """Run ``python -m kestrel_local <args>``; raise with its output when it fails."""
    cmd = [sys.executable, "-m", "kestrel_local", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed:\n{done.stdout}{done.stderr}")


@contextlib.contextmanager
def local_stack(settings: LocalSettings) -> Iterator[tuple[bool, bool]]:
    """The local stack, up and provisioned. Yields (it was running, it will be stopped)."""
    before = [row.healthy for row in status(settings)]
    try:
        if not all(before):  # when only one service was up, both are left up at the end
            log("starting the local stack (python -m kestrel_local up)")
            kestrel_local("up")
        kestrel_local("provision")
        kestrel_local("register-schemas")  # as `make deploy-local`: /health checks the registry
        yield all(before), not any(before)
    finally:
        if not any(before):
            log("stopping the local stack this benchmark started (python -m kestrel_local down)")
            kestrel_local("down")


def remove_bench_keys(client: redis.Redis) -> int:
    """UNLINK every key holding a benchmark id; return how many."""
    n, batch = 0, []
    for key in client.scan_iter(match=f"*{PREFIX}*", count=10_000):
        batch.append(key)
        if len(batch) == 1000:
            n += int(client.unlink(*batch))
            batch = []
    return n + (int(client.unlink(*batch)) if batch else 0)


@dataclass
class History:
    """The seeded history: (customer, terminal, amount) of every transaction, to draw from."""

    rows: list[tuple[str, str, float]]
    transactions: int
    labels: int
    seconds: float

    def transaction(self, rng: random.Random, tx_id: str, event_time_ms: int) -> Transaction:
        """A new transaction of a seeded customer at one of its terminals."""
        customer, terminal, amount = rng.choice(self.rows)
        return Transaction(tx_id, customer, terminal, amount, event_time_ms)


def seed(store: RedisFeatureStore, config: SimulatorConfig, now_ms: int) -> History:
    """Apply the simulated history, shifted to end now, and the fraud labels known by now."""
    t0, sim = time.perf_counter(), simulate(config)
    shift = now_ms - (config.start_ms + config.n_days * DAY_MS)
    t = sim.transactions
    names = ("transaction_id", "customer_id", "terminal_id")
    cols = [[PREFIX + v for v in t[c].tolist()] for c in names]
    times = [v + shift for v in t["event_time"].tolist()]
    txs = list(starmap(Transaction, zip(*cols, t["amount"].tolist(), times, strict=True)))
    for start in range(0, len(txs), 2000):
        replies = store.apply_transactions(txs[start : start + 2000])
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"seeding failed: {failed[0]!r}")
        if start % 100_000 == 0:
            log(f"seeding: {start:,} of {len(txs):,} transactions")
    f = sim.labels[sim.labels["is_fraud"].astype(bool)]
    fraud = zip(*(f[c].tolist() for c in (*names, "label_time")), strict=True)
    labels = [
        Label(PREFIX + tx, PREFIX + c, PREFIX + term, True, when + shift)
        for tx, c, term, when in fraud
        if when + shift < now_ms
    ]
    for start in range(0, len(labels), 2000):
        store.apply_labels(labels[start : start + 2000])
    rows = list(zip(cols[1], cols[2], t["amount"].tolist(), strict=True))
    return History(rows, len(txs), len(labels), time.perf_counter() - t0)


def redis_cpu_seconds(client: redis.Redis) -> float:
    """The server's used_cpu_user + used_cpu_sys (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pin_threads(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of `pid` to `cpus`; return each thread's previous CPU set."""
    before = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        before[tid] = os.sched_getaffinity(tid)
        os.sched_setaffinity(tid, cpus)
    return before


def wait_healthy(
    proc: subprocess.Popen[bytes],
    port: int,
    log_path: Path,
    what: str,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``GET /health`` on `port` until it answers 200; stop `proc` and raise (with its
    log's tail) if it exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn.request("GET", "/health", headers=headers or {})
            if conn.getresponse().status == 200:
                conn.close()
                return
        conn.close()
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:]
    stop_child(proc, 10.0)
    raise RuntimeError(f"{what} did not become healthy:\n{tail}")


class ApiServer:
    """``python -m kestrel_local serve`` on a free loopback port (optionally on one CPU)."""

    def __init__(self, key: str, cpu: int | None, log_path: Path, redis_url: str = "") -> None:
        self.port, self.key, self.log_path = free_port(LOOPBACK), key, log_path
        self.command = [sys.executable, *SERVE, "--host", LOOPBACK, "--port", str(self.port)]
        if redis_url:  # the template's RedisUrl default is the `make up` Redis, not this one
            self.command += ["--parameter-overrides", f"RedisUrl={redis_url}"]
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=REPO, env={**os.environ, "KESTREL_API_KEY": key},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=pin, start_new_session=True,
            )  # fmt: skip

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        """Poll ``GET /health`` until it answers 200; raise if the server exits or times out."""
        wait_healthy(self.proc, self.port, self.log_path, "API server", timeout_s,
                     {"x-api-key": self.key})  # fmt: skip

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 10 s."""
        stop_child(self.proc, 10.0)
