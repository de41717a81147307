"""The body of one warm execution environment: a process that imports a handler once and runs it.

Once its init (the handler's import) is over the worker sends READY; then the parent sends
(request id, deadline, event JSON) over a pipe and the worker answers with the JSON result or
an error in the shape AWS reports (errorMessage, errorType, stackTrace).
Handler output goes to stderr so that stdout stays free for results.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from kestrel_local.context import LambdaContext

Handler = Callable[[Any, LambdaContext], Any]
READY = "ready"


def error_payload(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """An error as AWS's Python runtime reports it."""
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "requestId": "",
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def _load_handler(handler: str) -> Handler:
    module_path, _, function_name = handler.rpartition(".")
    module = importlib.import_module(module_path.replace("/", "."))
    function = getattr(module, function_name, None)
    if not callable(function):
        raise AttributeError(f"Handler '{function_name}' missing on module '{module_path}'")
    return function  # type: ignore[no-any-return]


def serve(
    conn: Connection,
    handler: str,
    code_dir: str,
    layer_dirs: Sequence[str],
    environment: Mapping[str, str],
    function_name: str,
    function_arn: str,
    memory_mb: int,
    log_file: str | None = None,
) -> None:
    """Run in the child process: set up the environment, import the handler, answer invokes."""
    if log_file is not None:
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, sys.stderr.fileno())
        os.close(log_fd)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(code_dir)
    layer_paths = [os.path.join(d, "python") for d in layer_dirs]
    sys.path[:0] = [code_dir, *[p for p in layer_paths if os.path.isdir(p)]]
    init_error: dict[str, Any] | None = None
    function: Handler | None = None
    frozen = False
    try:
        function = _load_handler(handler)
    except Exception as exc:  # noqa: BLE001 - reported to every invoke, as Lambda does
        kind = (
            "Runtime.ImportModuleError"
            if isinstance(exc, ImportError)
            else (
                "Runtime.HandlerNotFound" if isinstance(exc, AttributeError) else "Runtime.Unknown"
            )
        )
        init_error = error_payload(exc, kind)
        traceback.print_exc()
    conn.send(READY)  # init is over (well or not): the parent may count this one as warm
    while True:
        try:
            request_id, deadline, event_json = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if function is None:
            conn.send((False, json.dumps({**(init_error or {}), "requestId": request_id})))
            continue
        context = LambdaContext(function_name, function_arn, memory_mb, request_id, deadline)
        try:
            result = function(json.loads(event_json), context)
        except Exception as exc:  # noqa: BLE001 - a function error is data for the caller
            traceback.print_exc()
            answer = (False, json.dumps({**error_payload(exc), "requestId": request_id}))
        else:
            try:
                answer = (True, json.dumps(result))
            except (TypeError, ValueError) as exc:
                error = error_payload(exc, "Runtime.MarshalError")
                answer = (False, json.dumps({**error, "requestId": request_id}))
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(answer)
        if not frozen:
            # After the first invoke the container's clients and model are loaded and live
            # as long as the worker: keep them out of the collector's scans.
            gc.collect()
            gc.freeze()
            frozen = True
