"""The local scoring API: the template's Chalice function on a fast local HTTP server.

`python -m kestrel_local serve` (``make serve``) reads the API function from the SAM
template (code folder, handler, environment, exactly as the local Lambda runtime does),
imports its Chalice app in this process and serves it on a loopback address with
`kestrel_local.api_http`: Chalice's own local gateway (routing, Lambda event, app call)
behind a small HTTP/1.1 keep-alive server that parses requests without http.server's
``email`` parser and writes each response in one send with TCP_NODELAY (``chalice local``
writes headers and body in separate sends, and with Nagle's algorithm a keep-alive
client's delayed ACK holds the body back about 40 ms).

The API key is KESTREL_API_KEY when set, else a random key kept in ``<run dir>/api-key``
(mode 0600), created on first use and printed at start, so the local API is never open: an
empty key file is refused, and the app checks the key itself (KESTREL_API_AUTH=app, whatever
the template says for AWS, where API Gateway checks it).
"""

from __future__ import annotations

import gc
import http.client
import importlib
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from chalice.app import Chalice
from chalice.config import Config
from chalice.local import CustomLocalChalice, LocalChalice

from kestrel_local.api_http import LocalApiServer
from kestrel_local.functions import FunctionSpec

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
API_KEY_FILE = "api-key"
# Variables of a Lambda sandbox that must not replace this process's own.
_PROCESS_ONLY = frozenset({"PATH", "LANG", "TZ", "PYTHONUNBUFFERED", "LAMBDA_TASK_ROOT"})


class ServeError(RuntimeError):
    """The API cannot be served (bad host, not a Chalice app, port in use)."""


def api_key(run_dir: str, env: Mapping[str, str] | None = None) -> str:
    """KESTREL_API_KEY, or the run directory's key file, created with a random key if absent.

    Raises:
        ServeError: The key file exists but holds no key (the API would be open), or
            cannot be read.
    """
    env = os.environ if env is None else env
    configured = env.get("KESTREL_API_KEY", "").strip()
    if configured:
        return configured
    path = Path(run_dir) / API_KEY_FILE
    if path.exists():
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeError(f"{path}: cannot read the API key ({exc})") from None
        if not key:
            raise ServeError(
                f"{path} is empty: put a key in it, set KESTREL_API_KEY, or delete the file "
                "to have a new key made"
            )
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key


def load_app(spec: FunctionSpec, environment: Mapping[str, str]) -> Chalice:
    """Import the function's Chalice app with its Lambda environment and layers on the path."""
    for name, value in environment.items():
        if name not in _PROCESS_ONLY:
            os.environ[name] = value
    for folder in (spec.code_dir, *(d / "python" for d in spec.layer_dirs)):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module_name, _, attribute = spec.handler.rpartition(".")
    module = importlib.import_module(module_name)
    app = getattr(module, attribute, None)
    if not isinstance(app, Chalice):
        raise ServeError(f"{spec.logical_id}: handler {spec.handler} is not a Chalice app")
    return app


def build_server(app: Chalice, spec: FunctionSpec, host: str, port: int) -> LocalApiServer:
    """The local API server for `app` on a loopback `host` (a thread per connection)."""
    if host not in LOOPBACK_HOSTS:
        raise ServeError(f"--host {host}: the local API binds to loopback only (127.0.0.1)")
    # What chalice.local.create_local_server does, so current_request is per thread.
    CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
    app.__class__ = CustomLocalChalice
    config = Config.create(
        chalice_stage="dev", app_name=app.app_name, lambda_timeout=int(spec.timeout_s)
    )
    try:
        return LocalApiServer(app, config, host, port)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None


def warm_up(app: Chalice) -> str:
    """Answer one ``GET /health`` in process (loads the model, opens connections); its body."""
    request_context = {"resourcePath": "/health", "httpMethod": "GET", "path": "/health"}
    event = {
        "resource": "/health", "path": "/health", "httpMethod": "GET", "headers": {},
        "multiValueHeaders": {}, "queryStringParameters": None,
        "multiValueQueryStringParameters": None, "pathParameters": None,
        "stageVariables": None, "requestContext": request_context, "body": None,
        "isBase64Encoded": False,
    }  # fmt: skip
    response = app(event, None)
    return str(response.get("body", ""))


def warm_up_http(host: str, port: int, key: str) -> int:
    """Score one synthetic transaction over HTTP (loads the store's scripts); its status."""
    body = json.dumps({
        "transaction_id": "kestrel-warm-up", "customer_id": "kestrel-warm-up",
        "terminal_id": "kestrel-warm-up", "amount": 1.0, "event_time": int(time.time() * 1000),
    })  # fmt: skip
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(
            "POST", "/v1/score", body, {"content-type": "application/json", "x-api-key": key}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def serve(server: LocalApiServer, stop: threading.Event, key: str) -> None:
    """Serve until `stop` is set (SIGINT/SIGTERM), then close the socket."""
    thread = threading.Thread(target=server.server.serve_forever, name="api", daemon=True)
    thread.start()
    status = warm_up_http(server.host, server.port, key)
    logger.info("warm-up score answered %s", status)
    # What start-up loaded (modules, the model, the app) lives as long as the process:
    # keep it out of the collector's scans, so a collection during a request stays short.
    gc.collect()
    gc.freeze()
    stop.wait()
    server.shutdown()
    server.server.server_close()
    thread.join(timeout=5)
