"""The Feast benchmark's HTTP side: ``feast serve`` under our control and its responses."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.api_stack import wait_healthy
from bench.loadgen_stats import LoadResult
from kestrel_local.processes import LOOPBACK, free_port, stop_child


class FeastServer:
    """``feast serve`` of the driver's repo on a free loopback port (optionally on one CPU)."""

    def __init__(self, venv: Path, repo: Path, cpu: int | None, serve_args: str) -> None:
        self.port, self.log_path = free_port(LOOPBACK), repo / "feast-serve.log"
        self.command = [str(venv / "bin" / "feast"), "serve", "--host", LOOPBACK,
                        "--port", str(self.port), *serve_args.split()]  # fmt: skip
        pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=repo, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True,
            )  # fmt: skip

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Poll ``GET /health`` until it answers 200; raise if the server exits or times out."""
        wait_healthy(self.proc, self.port, self.log_path, "feast serve", timeout_s)

    def stop(self) -> None:
        """SIGTERM its process group (gunicorn and its worker), SIGKILL after 10 s."""
        stop_child(self.proc, 10.0)


def bodies_for(refs: list[str], pairs: list[tuple[str, str]]) -> list[bytes]:
    """One ``/get-online-features`` body per (customer, terminal) pair."""
    return [
        json.dumps(
            {"features": refs, "entities": {"customer_id": [c], "terminal_id": [t]}},
            separators=(",", ":"),
        ).encode()
        for c, t in pairs
    ]


def incomplete(result: LoadResult, n_values: int) -> int:
    """2xx responses without `n_values` results all PRESENT (keys and features)."""
    bad = 0
    for i, body in enumerate(result.bodies):
        if result.is_error(i):
            continue
        try:
            rows = json.loads(body)["results"]
            bad += len(rows) != n_values or any(s != "PRESENT" for r in rows for s in r["statuses"])
        except (ValueError, KeyError, TypeError):
            bad += 1
    return bad
