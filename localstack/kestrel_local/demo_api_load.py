"""The demo's API load: requests at a steady rate from a light process of its own (`ApiLoad`).

The requests come from a process of their own: from the demo's process, busy producing,
each reply would wait for the interpreter lock and the client's delay would be counted as
the API's. That process is ``python -m kestrel_local.demo_api_load`` and imports only the
standard library and the HTTP head parser, so it starts in about 60 ms of CPU. (A
multiprocessing child re-imported the demo and its dependencies: about 2 s of CPU per
sender, taken from the stream in its first seconds, which showed as a freshness spike.)

Protocol: the API key on the first line of stdin, the JSON bodies on the second; the child
answers ``ready`` once started, sends until its stdin closes, then writes one JSON line
``[round-trip ms, in-handler ms, errors]``.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from kestrel_local.http_wire import parse_server_timing

READY = "ready"
STOP_TIMEOUT_S = 30.0


def request(
    conn: http.client.HTTPConnection, method: str, path: str, key: str, body: bytes | None = None
) -> tuple[int, bytes, float | None]:
    """Status, body and the handler's own time in ms (Server-Timing ``app;dur``; None: none)."""
    headers = {"x-api-key": key}
    if body is not None:
        headers["content-type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    timing = parse_server_timing(response.getheader("Server-Timing") or "")
    return response.status, response.read(), timing


def score_loop(
    port: int, key: str, bodies: Sequence[bytes], rate: float, stop: threading.Event, path: str
) -> tuple[list[float], list[float], int]:
    """POST one body every 1/rate s until `stop`: round-trip ms, in-handler ms, errors."""
    latencies: list[float] = []
    handler: list[float] = []
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    start = time.monotonic()
    for i in range(10**9):
        if stop.wait(max(0.0, start + i / rate - time.monotonic())):
            break
        sent = time.perf_counter()
        try:
            code, _, in_handler = request(conn, "POST", path, key, bodies[i % len(bodies)])
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            continue
        latencies.append((time.perf_counter() - sent) * 1000.0)
        if in_handler is not None:
            handler.append(in_handler)
        errors += code != 200
    conn.close()
    return latencies, handler, errors


def _stop_at_end_of(stream: IO[str], stop: threading.Event) -> None:
    stream.read()
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """The sender: ``PORT PATH RATE`` as arguments, key and bodies on stdin (see the module)."""
    port, path, rate = (argv or sys.argv[1:])[:3]
    key = sys.stdin.readline().rstrip("\n")
    bodies = [body.encode() for body in json.loads(sys.stdin.readline())]
    stop = threading.Event()
    threading.Thread(target=_stop_at_end_of, args=(sys.stdin, stop), daemon=True).start()
    print(READY, flush=True)
    result = score_loop(int(port), key, bodies, float(rate), stop, path)
    print(json.dumps(result), flush=True)
    return 0


class ApiLoad:
    """Scores streamed records through `path` (`POST /v1/score` by default) at a steady rate,
    keep-alive, from a sender process of its own (see the module)."""

    def __init__(
        self,
        port: int,
        key: str,
        records: Sequence[Mapping[str, Any]],
        rate: float,
        path: str = "/v1/score",
    ) -> None:
        self.port, self.key, self.rate, self.path = port, key, rate, path
        self.latencies_ms: list[float] = []
        self.in_handler_ms: list[float] = []  # Server-Timing of each answered request
        self.errors = 0
        self._bodies = [
            json.dumps(records[(i * 7919) % len(records)]) for i in range(4096 if records else 0)
        ]
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the sender and wait until it is up (nothing at a rate of 0 or without records)."""
        if self.rate <= 0 or not self._bodies:
            return
        command = [sys.executable, "-m", "kestrel_local.demo_api_load"]
        command += [str(self.port), self.path, repr(self.rate)]
        pipe = subprocess.PIPE
        process = subprocess.Popen(command, stdin=pipe, stdout=pipe, text=True)
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{self.key}\n{json.dumps(self._bodies)}\n")
        process.stdin.flush()
        if process.stdout.readline().strip() != READY:
            process.wait(STOP_TIMEOUT_S)
            raise RuntimeError(f"the {self.path} load sender exited with {process.returncode}")

    def running(self) -> bool:
        """Whether the sender is sending."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop sending and collect the timings."""
        process, self._process = self._process, None
        if process is None:
            return
        try:  # closes the sender's stdin: it stops and reports
            out, _ = process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return
        last = out.strip().splitlines()
        if last:
            latencies, handler, errors = json.loads(last[-1])
            self.latencies_ms, self.in_handler_ms, self.errors = latencies, handler, int(errors)


if __name__ == "__main__":
    sys.exit(main())
