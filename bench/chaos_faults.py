"""The chaos run's faulty services: redis-server (SIGKILL, restart), the runtime (SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kestrel_local.processes import LOOPBACK, free_port, stop_child
from kestrel_local.services import redis_command, redis_healthy

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "tests" / "fixtures" / "chaos" / "template.yaml"
FUNCTION = "CrashyTransactionsFunction"
PERSISTENCE = ["--appendonly", "yes", "--appendfsync", "always"]
STATS = re.compile(
    rf"{FUNCTION}\.\w+: received=(?P<received>\d+) succeeded=(?P<succeeded>\d+) "
    r"invokes=(?P<invokes>\d+) errors=(?P<function_errors>\d+) partial=(?P<partial>\d+) "
    r"retries=(?P<retries>\d+) bisections=(?P<bisections>\d+) discarded=(?P<discarded>\d+)"
)


class PersistentRedis:
    """redis-server on a fixed loopback port and data folder: killed and restarted at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.data_dir = directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = directory / "redis.log"
        self.argv = [*redis_command(self.port, self.data_dir), *PERSISTENCE]
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """The URL of database `db`."""
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait until it answers PING (after loading its append-only file)."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for(self.answers, timeout_s, f"redis-server on port {self.port}")

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (a clean shutdown: the append-only file is flushed); its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final flush (every acknowledged write is already fsynced)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def answers(self) -> bool:
        """True when PING succeeds."""
        return redis_healthy(self.url(), timeout_s=1.0)

    def stop(self) -> None:
        """Stop it if it runs (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            stop_child(self.process, 10.0)


class Runtime:
    """``python -m kestrel_local run`` on the chaos stack, in its own process; restartable."""

    def __init__(
        self, endpoint: str, stack: str, overrides: str, run_dir: Path, backoff_s: float
    ) -> None:
        self.run_dir = run_dir
        self.argv = [
            sys.executable,
            "-m",
            "kestrel_local",
            "run",
            "--template",
            str(TEMPLATE),
            "--stack-name",
            stack,
            "--parameter-overrides",
            overrides,
        ]
        self.env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "KESTREL_RUN_DIR": str(run_dir),
            "KESTREL_RETRY_BACKOFF_S": str(backoff_s),
            "KESTREL_POLL_INTERVAL_S": "0.02",
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.logs: list[Path] = []
        self.checkpoint_db = run_dir / "checkpoints" / f"{stack}.db"

    def start(self) -> None:
        """Start a new runtime process (it resumes after the stored checkpoints)."""
        self.starts += 1
        log_path = self.run_dir / f"runtime-{self.starts}.log"
        self.logs.append(log_path)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def sigterm(self, timeout_s: float = 90.0) -> int:
        """SIGTERM to the runtime (it finishes in-flight batches and stops); its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            stop_child(self.process, 5.0)  # anything left of its group

    def stop(self) -> None:
        """Stop it if it runs."""
        if self.process is not None:
            stop_child(self.process, 30.0)

    def alive(self) -> bool:
        """True while the current process runs."""
        return self.process is not None and self.process.poll() is None

    def checkpoints(self) -> dict[str, int]:
        """Shard id -> checkpointed sequence number (empty before the first checkpoint)."""
        if not self.checkpoint_db.exists():
            return {}
        try:
            db = sqlite3.connect(f"file:{self.checkpoint_db}?mode=ro", uri=True, timeout=5)
            try:
                rows = db.execute("SELECT shard, position FROM checkpoints").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return {}
        return {str(s): int(p) for s, p in rows if str(p).isdigit()}

    def stats(self) -> Counter[str]:
        """The mapping's counters, summed over every stopped runtime (from their logs)."""
        total: Counter[str] = Counter()
        for path in self.logs:
            for match in STATS.finditer(path.read_text(errors="replace")):
                total.update({k: int(v) for k, v in match.groupdict().items()})
        return total


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` until true, or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)
