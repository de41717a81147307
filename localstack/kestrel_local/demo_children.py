"""The processes `make demo` starts (the runtime and the API) and the waits on them."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kestrel_local.demo_runner import DemoError
from kestrel_local.processes import stop_child


class Children:
    """The runtime and API processes the demo started, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str]) -> Path:
        """Start `python -m kestrel_local <args>` in its own process group; its log file."""
        log = self.log_dir / f"demo-{name}.log"
        with log.open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "kestrel_local", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return log

    def check(self) -> None:
        """DemoError when a child has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise DemoError(
                    f"the {name} process exited ({process.returncode}): see "
                    f"{self.log_dir / f'demo-{name}.log'}"
                )

    def stop(self) -> None:
        """SIGTERM each child (SIGKILL after 20 s) and reap it."""
        for process in self.processes.values():
            stop_child(process, 20.0)


def wait_http(
    port: int, path: str, timeout_s: float, children: Children, key: str
) -> dict[str, Any]:
    """GET `path` with the API key until it answers 200; its JSON body."""
    deadline = time.monotonic() + timeout_s
    while True:
        children.check()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path, headers={"x-api-key": key})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                loaded: dict[str, Any] = json.loads(body)
                return loaded
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"127.0.0.1:{port}{path} did not answer in {timeout_s:.0f} s")
        time.sleep(0.5)


def wait_line(log: Path, marker: str, timeout_s: float, children: Children) -> str:
    """Wait until a child's log has a line with `marker`; that line, stripped."""
    deadline = time.monotonic() + timeout_s
    while True:
        children.check()
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line.strip()
        if time.monotonic() > deadline:
            raise DemoError(f"{log} had no '{marker}' line after {timeout_s:.0f} s")
        time.sleep(0.2)
