"""Run moto's threaded server on loopback, with Kestrel's patches and a health route.

The patches: Kinesis throughput and correctness (`kestrel_local.emulator.patches`) and the
CloudFormation models a gradual rollout needs (`kestrel_local.emulator.cfn_models`).

Health check: ``GET http://HOST:PORT/_kestrel/health`` answers 200 with a small JSON body
(``{"status": "ok", "patched": true, "moto": "5.2.5"}``) without touching any AWS state, so it
stays cheap with millions of records loaded. (``/moto-api/data.json`` is not a health check:
it serialises every stored object.) Paths starting with ``_`` cannot be S3 bucket names, so
the route never shadows an AWS API call.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from kestrel_local.emulator.cfn_models import register_cfn_models
from kestrel_local.emulator.patches import apply_patches

HEALTH_PATH = "/_kestrel/health"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class NonLoopbackHostError(ValueError):
    """The emulator was asked to bind an address other than loopback."""


def ensure_loopback(host: str) -> str:
    """Return `host` if it is a loopback address (or "localhost"), else raise."""
    if host == "localhost":
        return host
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise NonLoopbackHostError(
            f"refusing to bind the AWS emulator to {host!r}: it has no authentication, so it "
            "only listens on loopback (127.0.0.1, ::1 or localhost)"
        )
    return host


def health_middleware(app: WSGIApp, patched: bool) -> WSGIApp:
    """Wrap `app` so that GET `HEALTH_PATH` is answered directly with a JSON status."""
    import moto

    body = json.dumps({"status": "ok", "patched": patched, "moto": moto.__version__}).encode()

    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH and environ.get("REQUEST_METHOD") in {
            "GET",
            "HEAD",
        }:
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return wrapped


def freeze_after_full_collections() -> Callable[[], None]:
    """After each full collection, move what survived out of the collector's reach (`gc.freeze`).

    The emulator keeps every stream record, queue message and object it stores for the
    stream's retention, millions of Python objects after a demo. Each full collection
    rescanned all of them while holding the interpreter lock: 165 ms for 750,000 Kinesis
    records on an idle core, long enough to stall every GetRecords and show as a freshness
    spike. What survived a full collection is frozen, so the next one scans only what was
    stored since. Frozen objects are still freed when their last reference goes; only a
    cycle among them would be kept. Returns the function that stops doing it.
    """

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            gc.freeze()

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)


class EmulatorServer:
    """moto's WSGI app on a threaded werkzeug server bound to loopback."""

    def __init__(self, host: str, port: int, patched: bool = True, access_log: bool = False):
        """Bind the server socket (port 0 picks a free port); apply the patches if `patched`."""
        ensure_loopback(host)
        if patched:
            apply_patches()
            register_cfn_models()
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class RequestHandler(MotoRequestHandler):
            """moto's handler with TCP_NODELAY (no Nagle/delayed-ACK stalls on keep-alive)."""

            disable_nagle_algorithm = True

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                """Log each request only when the access log is on."""
                if access_log:
                    super().log_request(code, size)

        if not access_log:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = health_middleware(DomainDispatcherApplication(create_backend_app), patched)
        self.patched = patched
        self._server = make_server(host, port, app, threaded=True, request_handler=RequestHandler)
        self.host = host
        self.port: int = self._server.server_address[1]
        os.environ["MOTO_PORT"] = str(self.port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint URL clients use (brackets around an IPv6 host)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve requests until `shutdown` is called from another thread."""
        self._server.serve_forever()

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="kestrel-emulator", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving, close the socket and join the background thread if any."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
