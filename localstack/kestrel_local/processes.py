"""Process and port helpers for the local services: /proc checks, signals, loopback ports.

Linux only (reads /proc). Used by `kestrel_local.services` to check that a pid is one of
ours before signalling it, to stop a server's process group and to pick or check ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

LOOPBACK = "127.0.0.1"


def pid_alive(pid: int) -> bool:
    """Return True if `pid` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def cmdline(pid: int) -> list[str]:
    """Return the words of `pid`'s command line, or [] if it cannot be read."""
    # redis-server rewrites its own command line: "redis-server H:P".
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    except OSError:
        return []


def pid_matches(pid: int, markers: Iterable[str]) -> bool:
    """Return True if `pid` is alive and its command line contains one of `markers`."""
    line = " ".join(cmdline(pid))
    return pid_alive(pid) and any(marker in line for marker in markers)


def serves_port(pid: int, port: int) -> bool:
    """Return True if `pid`'s command line names `port` (`--port P`, `-p P` or `host:P`)."""
    return any(w == str(port) or w.endswith(f":{port}") for w in cmdline(pid))


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid` (or to `pid` alone if it leads none)."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop_child(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a child we started (SIGTERM to its group, SIGKILL after `timeout_s`) and reap it."""
    if process.poll() is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout_s)


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` is no longer a live process; return False on timeout."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """Return True if a TCP server could not bind `host:port` (something already listens)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# How far below the API and Redis the local runtime runs (see `run_below_serving`):
# measured in `make demo` on 2 cores, /v1/score p99 42-73 ms with everything at 0, 15.4 ms
# with the runtime at 10 (12.1-14.8 ms with the emulator at 10 too, which cost the end-to-end
# bench's producer: 4,510 instead of 5,094 puts/s at its 5,100/s step).
BATCH_NICE = 10


def run_below_serving() -> None:
    """Give this process's CPU turn to the API and Redis first: call it first thing in main.

    On AWS the stream functions have CPUs of their own; on a laptop they share its cores
    with the scoring API and Redis, and a request that waits for a core behind a batch of
    stream work costs the API its tail latency. This raises
    the nice value of the calling thread to BATCH_NICE (threads and processes it starts
    later inherit it) and, where the kernel groups scheduling by session (Linux
    autogroups, where nice only orders the tasks inside a group), the nice of this
    process's session when the process leads it, so never a terminal's. Raising a nice
    value needs no privilege; failures leave the priority as it was.
    """
    with contextlib.suppress(OSError):
        current = os.nice(0)
        if current < BATCH_NICE:
            os.nice(BATCH_NICE - current)
    autogroup = Path("/proc/self/autogroup")
    if os.getsid(0) == os.getpid() and autogroup.exists():
        with contextlib.suppress(OSError):
            autogroup.write_text(f"{BATCH_NICE}\n")
