"""Run the embedded AWS emulator: ``python -m kestrel_local.emulator [--host H] [--port P]``.

Binds loopback only (default from ``KESTREL_EMULATOR_HOST``/``KESTREL_EMULATOR_PORT``, i.e.
127.0.0.1:5050), applies the pinned moto patches (Kinesis, and the CloudFormation models of the
live aliases and their rollout) unless ``--no-patch``, and prints one line to stderr when ready::

    kestrel emulator listening on http://127.0.0.1:5050 (patched)

``--port 0`` picks a free port; the ready line names it. Health check:
``GET http://HOST:PORT/_kestrel/health`` (200, JSON ``{"status": "ok", "patched": ..., "moto":
...}``). SIGTERM or SIGINT stops the server and exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from kestrel.settings import LocalSettings, SettingsError
from kestrel_local.emulator.patches import UnsupportedMotoVersionError
from kestrel_local.emulator.server import (
    EmulatorServer,
    NonLoopbackHostError,
    freeze_after_full_collections,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m kestrel_local.emulator",
        description="Kestrel's embedded AWS emulator (moto server, loopback only).",
    )
    parser.add_argument("--host", help="loopback address to bind (default KESTREL_EMULATOR_HOST)")
    parser.add_argument("--port", type=int, help="TCP port, 0 = any free one (default 5050)")
    parser.add_argument(
        "--no-patch", action="store_true", help="run moto exactly as installed (for comparison)"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the emulator and block until SIGTERM/SIGINT; return the exit status."""
    args = parse_args(argv)
    host, port = args.host, args.port
    if host is None or port is None:
        try:
            local = LocalSettings.from_env()
        except SettingsError as exc:
            print(f"kestrel emulator: {exc}", file=sys.stderr)
            return 2
        host = local.emulator_host if host is None else host
        port = local.emulator_port if port is None else port
    try:
        server = EmulatorServer(host, port, patched=not args.no_patch, access_log=args.access_log)
    except (NonLoopbackHostError, UnsupportedMotoVersionError) as exc:
        print(f"kestrel emulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kestrel emulator: cannot bind {host}:{port}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    freeze_after_full_collections()
    server.start()
    mode = "patched" if server.patched else "unpatched"
    print(f"kestrel emulator listening on {server.url} ({mode})", file=sys.stderr, flush=True)
    while not stop.wait(timeout=1.0):
        pass
    server.shutdown()
    print("kestrel emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
