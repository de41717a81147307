"""Start, stop and inspect the embedded local services: the AWS emulator and redis-server.

`up`, `down` and `status` back `python -m kestrel_local up|down|status` (what `make up`,
`make down` and `make status` run); the test suite uses `running_emulator`, `running_redis`
and `running_services`, which start fresh servers on free loopback ports and stop them on
exit. Process and port helpers live in `kestrel_local.processes`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

from kestrel.settings import LocalSettings, redact_url
from kestrel_local.processes import (
    LOOPBACK,
    free_port,
    pid_alive,
    pid_matches,
    port_in_use,
    serves_port,
    signal_group,
    stop_child,
    wait_gone,
)

ServiceName = Literal["emulator", "redis"]
SERVICES: tuple[ServiceName, ...] = ("emulator", "redis")
HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PORT_SETTING: dict[ServiceName, str] = {
    "emulator": "KESTREL_EMULATOR_PORT",
    "redis": "KESTREL_REDIS_PORT",
}
EXTERNAL_SETTING: dict[ServiceName, str] = {"emulator": "AWS_ENDPOINT_URL", "redis": "REDIS_URL"}
# What /proc/<pid>/cmdline of a process we started contains; checked before any signal.
CMDLINE_MARKERS: dict[ServiceName, tuple[str, ...]] = {
    "emulator": ("kestrel_local.emulator",),
    "redis": ("redis-server",),
}
REDIS_INSTALL_HINT = (
    "redis-server is not installed. Install it with `apt-get install -y redis-server` "
    "(Debian/Ubuntu, as root; `make setup` does this), `brew install redis` (macOS), "
    "or point REDIS_URL at a running Redis."
)


class ServiceError(RuntimeError):
    """A local service could not be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One row of `status`: where a service is and whether it answers.

    Attributes:
        name: "emulator" or "redis".
        embedded: True when `up` manages it, False when an external URL is configured.
        pid: the pid from the pid file if that process is alive and ours, else None.
        address: the URL clients use (any password masked).
        healthy: True when the address answers a health check.
    """

    name: ServiceName
    embedded: bool
    pid: int | None
    address: str
    healthy: bool


@dataclass(slots=True)
class ServiceHandle:
    """A service started in the background by this process; `stop()` ends it.

    Attributes:
        name: "emulator" or "redis".
        process: the server process (its own session, so signals reach its children too).
        port: the loopback TCP port it listens on.
        address: the URL clients use (http://... or redis://...).
        log_file: where its stdout and stderr go.
        pid_file: the pid file written at start, removed by `stop()`.
    """

    name: ServiceName
    process: subprocess.Popen[bytes]
    port: int
    address: str
    log_file: Path
    pid_file: Path

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server (SIGTERM, SIGKILL after `timeout_s`), reap it, remove its pid file."""
        stop_child(self.process, timeout_s)
        self.pid_file.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class RunningServices:
    """The emulator and redis-server started by `running_services`.

    Attributes:
        emulator: handle of the AWS emulator.
        redis: handle of redis-server.
    """

    emulator: ServiceHandle
    redis: ServiceHandle

    @property
    def endpoint(self) -> str:
        """The emulator's endpoint URL, for AWS_ENDPOINT_URL."""
        return self.emulator.address

    @property
    def redis_url(self) -> str:
        """The redis-server URL, for REDIS_URL."""
        return self.redis.address


def find_redis_server() -> str:
    """Return the path of redis-server from PATH, /usr/bin or /usr/sbin.

    Raises:
        ServiceError: redis-server is not installed; the message says how to install it.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(REDIS_INSTALL_HINT)


def emulator_command(host: str, port: int) -> list[str]:
    """Return the argv that runs the embedded AWS emulator (patched moto) on `host:port`."""
    return [sys.executable, "-m", "kestrel_local.emulator", "--host", host, "--port", str(port)]


def redis_command(port: int, data_dir: Path) -> list[str]:
    """Return the argv of a loopback-only redis-server on `port` with no persistence.

    Raises:
        ServiceError: redis-server is not installed.
    """
    return [
        find_redis_server(),
        "--bind", LOOPBACK,
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", "",
    ]  # fmt: skip


def pid_is_ours(pid: int, name: ServiceName) -> bool:
    """Return True if `pid` is alive and its command line is that of our `name` server."""
    return pid_matches(pid, CMDLINE_MARKERS[name])


def emulator_healthy(endpoint: str, *, embedded: bool = True, timeout_s: float = 1.0) -> bool:
    """Return True if the AWS endpoint answers HTTP.

    The embedded emulator must answer `GET /_kestrel/health` with 200 (a constant-time
    route: moto's own `/moto-api/` pages serialise every stored record); an external
    endpoint (LocalStack, AWS) only has to answer HTTP at all, whatever the status.
    """
    url = endpoint.rstrip("/") + ("/_kestrel/health" if embedded else "/")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200 or not embedded)
    except urllib.error.HTTPError:
        return not embedded
    except (OSError, ValueError):
        return False


def redis_healthy(url: str, timeout_s: float = 1.0) -> bool:
    """Return True if the Redis at `url` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _healthy(name: ServiceName, address: str, embedded: bool) -> bool:
    if name == "emulator":
        return emulator_healthy(address, embedded=embedded)
    return redis_healthy(address)


def _wait_healthy(name: ServiceName, address: str, pid: int, timeout_s: float) -> str | None:
    """Wait until `address` answers; return why not (process gone, timeout) or None if it does."""
    deadline = time.monotonic() + timeout_s
    while not _healthy(name, address, True):
        if not pid_alive(pid):
            return "exited"
        if time.monotonic() > deadline:
            return f"did not answer within {timeout_s:.0f} s"
        time.sleep(0.1)
    return None


def _port_taken(name: ServiceName, host: str, port: int) -> ServiceError:
    return ServiceError(
        f"{name}: port {port} on {host} is already in use by another process; "
        f"choose a free port with {PORT_SETTING[name]}=<port>"
    )


def start_service(
    name: ServiceName,
    run_dir: Path,
    port: int,
    *,
    host: str = LOOPBACK,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> ServiceHandle:
    """Start `name` in the background on `host:port` and wait until it answers.

    Writes `<run_dir>/<name>.pid` and `<run_dir>/<name>.log` (redis keeps its working
    directory in `<run_dir>/redis/`, with persistence off). The server runs in its own
    session, so it outlives this process unless stopped.

    Raises:
        ServiceError: the port is taken, redis-server is missing, or the server did not
            become healthy within `timeout_s` (the message names the log file).
    """
    if port_in_use(host, port):
        raise _port_taken(name, host, port)
    run_dir.mkdir(parents=True, exist_ok=True)
    if name == "emulator":
        argv = emulator_command(host, port)
        address = f"http://{host}:{port}"
    else:
        data_dir = run_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = redis_command(port, data_dir)
        address = f"redis://{LOOPBACK}:{port}/0"
    log_file = run_dir / f"{name}.log"
    pid_file = run_dir / f"{name}.pid"
    with log_file.open("ab") as log:  # own session: outlives us, signals reach its children
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=run_dir,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    handle = ServiceHandle(name, process, port, address, log_file, pid_file)
    problem = _wait_healthy(name, address, process.pid, timeout_s)
    if problem is not None:
        handle.stop()
        raise ServiceError(f"{name} on {address} {problem}; see its log: {log_file}")
    return handle


@contextlib.contextmanager
def running(name: ServiceName, directory: Path, port: int | None = None) -> Iterator[ServiceHandle]:
    """Run a fresh `name` server on a free (or given) loopback port in `directory`.

    Yields its handle (`.address` is the URL); the server is stopped on exit.

    Raises:
        ServiceError: as `start_service`.
    """
    handle = start_service(name, Path(directory), port or free_port())
    try:
        yield handle
    finally:
        handle.stop()


def running_emulator(directory: Path, port: int | None = None) -> ContextManager[ServiceHandle]:
    """Run a fresh emulator in `directory` (see `running`)."""
    return running("emulator", directory, port)


def running_redis(directory: Path, port: int | None = None) -> ContextManager[ServiceHandle]:
    """Run a fresh redis-server in `directory` (see `running`)."""
    return running("redis", directory, port)


@contextlib.contextmanager
def running_services(directory: Path) -> Iterator[RunningServices]:
    """Run a fresh emulator and redis-server on free loopback ports in `directory`.

    Yields their handles (`.endpoint`, `.redis_url`); both are stopped on exit.
    """
    with running_redis(directory) as redis_handle, running_emulator(directory) as emu_handle:
        yield RunningServices(emulator=emu_handle, redis=redis_handle)


def _pid_file(settings: LocalSettings, name: ServiceName) -> Path:
    return Path(settings.run_dir) / f"{name}.pid"


def _config(settings: LocalSettings, name: ServiceName) -> tuple[bool, str, str, int]:
    """(embedded, address, host, port) of `name` under `settings`."""
    if name == "emulator":
        s = settings
        return s.embedded_emulator, s.endpoint, s.emulator_host, s.emulator_port
    return settings.embedded_redis, settings.redis, LOOPBACK, settings.redis_port


def read_pid(settings: LocalSettings, name: ServiceName) -> int | None:
    """Return the pid recorded for `name` if that process is alive and ours, else None."""
    try:
        pid = int(_pid_file(settings, name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_is_ours(pid, name) else None


def status(settings: LocalSettings) -> list[ServiceStatus]:
    """Return the status of the emulator and Redis as configured by `settings`."""
    rows = []
    for name in SERVICES:
        embedded, address, _, _ = _config(settings, name)
        pid = read_pid(settings, name) if embedded else None
        healthy = _healthy(name, address, embedded)
        rows.append(ServiceStatus(name, embedded, pid, redact_url(address), healthy))
    return rows


def up(settings: LocalSettings, timeout_s: float = HEALTH_TIMEOUT_S) -> list[str]:
    """Start every embedded service that is not already running and healthy; idempotent.

    External services (AWS_ENDPOINT_URL, REDIS_URL) are not started, only checked. Ports
    of all embedded services are checked before anything starts. Returns one line per
    service saying what was done.

    Raises:
        ServiceError: a port is taken by another process, redis-server is missing, an
            external service does not answer, or a server did not become healthy.
    """
    to_start: list[tuple[ServiceName, str, int]] = []
    lines: list[str] = []
    for name in SERVICES:
        embedded, address, host, port = _config(settings, name)
        if not embedded:
            if not _healthy(name, address, False):
                setting = EXTERNAL_SETTING[name]
                raise ServiceError(
                    f"{name}: external {setting}={redact_url(address)} does not answer; "
                    f"start it, or unset {setting} to use the embedded one"
                )
            lines.append(f"{name}: external {redact_url(address)} answers; nothing started")
            continue
        pid = read_pid(settings, name)
        if pid is not None:  # ours: on the configured port, and it may still be starting
            if not serves_port(pid, port):
                raise ServiceError(
                    f"{name}: already running (pid {pid}) on another port than "
                    f"{PORT_SETTING[name]}={port}; run `make down` first"
                )
            problem = _wait_healthy(name, address, pid, timeout_s)
            if problem is not None:
                log = Path(settings.run_dir) / f"{name}.log"
                raise ServiceError(f"{name}: pid {pid} {problem} at {address}; see {log}")
            lines.append(f"{name}: already running (pid {pid}) at {address}")
            continue
        _pid_file(settings, name).unlink(missing_ok=True)  # stale
        if port_in_use(host, port):
            raise _port_taken(name, host, port)
        if name == "redis":
            find_redis_server()
        to_start.append((name, host, port))
    started: list[ServiceHandle] = []
    try:
        for name, host, port in to_start:
            handle = start_service(
                name, Path(settings.run_dir), port, host=host, timeout_s=timeout_s
            )
            started.append(handle)
            lines.append(
                f"{name}: started (pid {handle.process.pid}) at {handle.address}, "
                f"log {handle.log_file}"
            )
    except ServiceError:
        for handle in started:
            handle.stop()
        raise
    return lines


def down(settings: LocalSettings, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop what `up` started (by pid file, after checking the pid is ours); remove pid files.

    Sends SIGTERM to each server's process group, then SIGKILL after `timeout_s`. A pid
    file whose process is gone or is not ours is removed without signalling anything.
    Returns one line per service saying what was done.

    Raises:
        ServiceError: a server survived SIGKILL.
    """
    lines = []
    for name in SERVICES:
        pid_file = _pid_file(settings, name)
        if not pid_file.exists():
            lines.append(f"{name}: not running")
            continue
        pid = read_pid(settings, name)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            lines.append(f"{name}: stale pid file removed (process gone or not ours)")
            continue
        signal_group(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout_s):
            signal_group(pid, signal.SIGKILL)
            if not wait_gone(pid, timeout_s):
                raise ServiceError(f"{name}: pid {pid} survived SIGKILL")
        pid_file.unlink(missing_ok=True)
        lines.append(f"{name}: stopped (pid {pid})")
    return lines
