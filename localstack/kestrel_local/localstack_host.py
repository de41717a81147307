"""LocalStack Community in host mode (no Docker): install it pinned, start it, stop it.

LocalStack 4.14.0 runs on the host only on Python 3.13 (3.12 fails in its own code) and only
with the pins in ``localstack/requirements-localstack.txt``; it gets its own virtualenv
(``.venv-localstack``), never the project's. Started here it:

- listens on loopback only: ``GATEWAY_LISTEN`` on 127.0.0.1 with the hypercorn server (the
  default server binds 0.0.0.0), and its Node children (kinesis-mock, which has no address
  setting) are bound to 127.0.0.1 by ``localstack/host/loopback.js`` (``NODE_OPTIONS``);
- keeps its state under the run folder (``<KESTREL_RUN_DIR>/localstack/fs``, LocalStack's
  ``FILESYSTEM_ROOT``). Without ``OVERRIDE_IN_DOCKER=0`` it would take this machine for its
  own container (``/.dockerenv``) and write to ``/var/lib/localstack`` whatever
  ``LOCALSTACK_VOLUME_DIR`` says. The packages it downloads on first use (kinesis-mock) are
  kept beside its virtualenv, so a fresh run folder does not download them again;
- sends no telemetry (``DISABLE_EVENTS=1``), runs no DNS server (``DNS_ADDRESS=0``) and
  does not fetch a TLS certificate (``SKIP_SSL_CERT_DOWNLOAD=1``).

``down`` stops only the process group ``up`` started (its pid file), and checks the port is
free afterwards.

Command line (``make localstack-up`` / ``make localstack-down``)::

    python -m kestrel_local.localstack_host up|down|status|python
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "localstack" / "requirements-localstack.txt"
LOOPBACK_JS = REPO / "localstack" / "host" / "loopback.js"
DEFAULT_ENDPOINT = "http://127.0.0.1:4566"
PYTHON_VERSION = (3, 13)
HEALTH_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
INSTALL_HINT = (
    "no Python 3.13 found (LocalStack 4.14.0 runs on the host only on 3.13). Install one: "
    "`pyenv install 3.13` (or on Debian/Ubuntu `apt-get install -y python3.13 python3.13-venv`), "
    "or point LOCALSTACK_PYTHON at one"
)


class HostError(RuntimeError):
    """LocalStack could not be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Where LocalStack listens, keeps its state, and which virtualenv runs it."""

    endpoint: str
    run_dir: Path
    venv: Path
    python: str | None = None

    @property
    def port(self) -> int:
        """The gateway port of `endpoint`."""
        return urlparse(self.endpoint).port or 4566

    @property
    def state(self) -> Path:
        """LocalStack's folder in the run folder: pid file, log, its filesystem root."""
        return self.run_dir / "localstack"

    @property
    def pid_file(self) -> Path:
        """The pid (and process group) of the LocalStack `up` started."""
        return self.state / "localstack.pid"

    @property
    def log(self) -> Path:
        """LocalStack's own output."""
        return self.state / "localstack.log"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HostConfig:
        """Read LOCALSTACK_ENDPOINT, KESTREL_RUN_DIR, LOCALSTACK_VENV and LOCALSTACK_PYTHON."""
        env = os.environ if env is None else env
        endpoint = env.get("LOCALSTACK_ENDPOINT") or DEFAULT_ENDPOINT
        host = urlparse(endpoint).hostname
        if urlparse(endpoint).scheme != "http" or host != "127.0.0.1":
            raise HostError(
                f"LOCALSTACK_ENDPOINT={endpoint}: host mode listens on http://127.0.0.1:<port> only"
            )
        return cls(
            endpoint=endpoint.rstrip("/"),
            run_dir=Path(env.get("KESTREL_RUN_DIR") or ".run").resolve(),
            venv=Path(env.get("LOCALSTACK_VENV") or REPO / ".venv-localstack").resolve(),
            python=env.get("LOCALSTACK_PYTHON") or None,
        )


def _version(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 2:
        return None
    return int(parts[0]), int(parts[1])


def python_candidates(env: Mapping[str, str] | None = None) -> list[str]:
    """Where a Python 3.13 may be: LOCALSTACK_PYTHON, PATH, pyenv's versions, /usr/bin."""
    env = os.environ if env is None else env
    found: list[str] = []
    if env.get("LOCALSTACK_PYTHON"):
        found.append(env["LOCALSTACK_PYTHON"])
    on_path = shutil.which("python3.13")
    if on_path:
        found.append(on_path)
    pyenv_root = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found += [str(p) for p in sorted((pyenv_root / "versions").glob("3.13*/bin/python3.13"))]
    found += ["/usr/bin/python3.13", "/usr/local/bin/python3.13"]
    return list(dict.fromkeys(found))


def find_python(env: Mapping[str, str] | None = None) -> str | None:
    """The first candidate that really is a Python 3.13 (pyenv shims may name one that is not)."""
    for candidate in python_candidates(env):
        if _version(candidate) == PYTHON_VERSION:
            return candidate
    return None


def requirements_digest(requirements: Path = REQUIREMENTS) -> str:
    """The pins' hash: a changed requirements file reinstalls the virtualenv's packages."""
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def ensure_venv(config: HostConfig, say: object = print) -> Path:
    """Create `config.venv` with a Python 3.13 and install the pins (once); its python."""
    python = config.venv / "bin" / "python"
    stamp = config.venv / ".kestrel-requirements.sha256"
    digest = requirements_digest()
    if python.exists() and _version(str(python)) == PYTHON_VERSION:
        if stamp.exists() and stamp.read_text().strip() == digest:
            return python
    else:
        base = config.python or find_python()
        if base is None or _version(base) != PYTHON_VERSION:
            raise HostError(INSTALL_HINT)
        _say(say, f"creating {config.venv} with {base} (LocalStack's own virtualenv)")
        subprocess.run([base, "-m", "venv", "--clear", str(config.venv)], check=True)
    _say(say, f"installing the pinned LocalStack Community from {REQUIREMENTS.name}")
    pip = [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
    if subprocess.run(pip, check=False).returncode != 0:
        raise HostError(f"pip could not install {REQUIREMENTS} into {config.venv}")
    stamp.write_text(digest + "\n")
    return python


def _say(say: object, line: str) -> None:
    if callable(say):
        say(line)


def host_env(config: HostConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment LocalStack runs with (module doc: loopback, state, no telemetry)."""
    env = dict(os.environ if base is None else base)
    address = f"127.0.0.1:{config.port}"
    root = config.state / "fs"
    node_options = env.get("NODE_OPTIONS", "")
    env.update(
        {
            "GATEWAY_LISTEN": address,
            "LOCALSTACK_HOST": address,
            "GATEWAY_SERVER": "hypercorn",
            "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "OVERRIDE_IN_DOCKER": "0",
            "SQS_ENDPOINT_STRATEGY": "path",  # queue URLs on the gateway, not sqs.<region>.<host>
            "FILESYSTEM_ROOT": str(root),
            "NODE_OPTIONS": f"{node_options} --require {LOOPBACK_JS}".strip(),
        }
    )
    return env


def healthy(endpoint: str, timeout_s: float = 2.0) -> bool:
    """True when LocalStack's ``/_localstack/health`` answers with its services."""
    try:
        url = f"{endpoint}/_localstack/health"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(json.loads(response.read()).get("services"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _our_pid(config: HostConfig) -> int | None:
    """The pid in the pid file if that process is still the LocalStack `up` started."""
    try:
        pid = int(config.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"localstack.runtime.main" in cmdline else None


def _package_cache(config: HostConfig) -> None:
    """Keep downloaded packages (kinesis-mock) beside the virtualenv, not in the run folder."""
    libs = config.state / "fs" / "var" / "lib" / "localstack" / "lib"
    cache = config.venv / "localstack-lib"
    cache.mkdir(parents=True, exist_ok=True)
    libs.parent.mkdir(parents=True, exist_ok=True)
    if libs.is_symlink() or not libs.exists():
        if libs.is_symlink():
            libs.unlink()
        libs.symlink_to(cache, target_is_directory=True)


def up(config: HostConfig, timeout_s: float = HEALTH_TIMEOUT_S, say: object = print) -> str:
    """Install (once), start LocalStack in host mode in the background, wait until healthy."""
    if _our_pid(config) is not None and healthy(config.endpoint):
        return f"LocalStack already running at {config.endpoint} (pid {_our_pid(config)})"
    if port_open(config.port):
        raise HostError(
            f"127.0.0.1:{config.port} is taken by a process `make localstack-up` did not start; "
            "stop it, or choose another port: LOCALSTACK_ENDPOINT=http://127.0.0.1:<port>"
        )
    python = ensure_venv(config, say)
    config.state.mkdir(parents=True, exist_ok=True)
    _package_cache(config)
    with config.log.open("ab") as log:
        process = subprocess.Popen(
            [str(python), "-m", "localstack.runtime.main"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=host_env(config),
            cwd=config.state,
            start_new_session=True,  # its own process group: `down` stops it and its children
        )
    config.pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout_s
    while not healthy(config.endpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process.pid)
            config.pid_file.unlink(missing_ok=True)
            tail = config.log.read_text(errors="replace")[-2000:]
            raise HostError(f"LocalStack did not become healthy (log {config.log}):\n{tail}")
        time.sleep(0.5)
    return (
        f"LocalStack {config.endpoint} is up (host mode, pid {process.pid}, "
        f"state {config.state / 'fs'}, log {config.log})"
    )


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group `pid` leads, then SIGKILL whatever is left after `timeout_s`."""
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
            time.sleep(0.2)
        if not _alive(pid):
            return


def down(config: HostConfig) -> str:
    """Stop the LocalStack `up` started (its process group only); the port must end up free."""
    pid = _our_pid(config)
    if pid is None:
        config.pid_file.unlink(missing_ok=True)
        message = f"no LocalStack started by `make localstack-up` in {config.state}"
    else:
        _stop_group(pid)
        config.pid_file.unlink(missing_ok=True)
        message = f"stopped LocalStack (process group {pid})"
    deadline = time.monotonic() + 10.0
    while port_open(config.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if port_open(config.port):
        raise HostError(
            f"{message}, but 127.0.0.1:{config.port} still answers: a process this command "
            "did not start holds it (left alone)"
        )
    return f"{message}; 127.0.0.1:{config.port} is free"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: up, down, status, python (the Python 3.13 that would be used)."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_local.localstack_host")
    parser.add_argument("command", choices=["up", "down", "status", "python"])
    parser.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S)
    args = parser.parse_args(argv)
    try:
        config = HostConfig.from_env()
        if args.command == "python":
            found = config.python or find_python()
            if found is None:
                raise HostError(INSTALL_HINT)
            print(found)
        elif args.command == "up":
            print(up(config, args.timeout), flush=True)
        elif args.command == "down":
            print(down(config))
        else:
            pid = _our_pid(config)
            state = "healthy" if healthy(config.endpoint) else "not answering"
            print(f"LocalStack {config.endpoint}: {state}; started here: pid {pid or '-'}")
    except HostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
