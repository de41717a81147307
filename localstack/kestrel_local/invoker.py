"""Invoke a function the way Lambda does: warm worker processes, a timeout that kills, one result.

Each function gets its own pool of worker processes (execution environments). A worker
imports the handler once and serves invokes one at a time; concurrency is capped by the
function's ReservedConcurrentExecutions or the local default. A timeout or a crash ends
that worker, as it ends a Lambda sandbox, and the next invoke starts a fresh one.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from kestrel_local.functions import FunctionSpec
from kestrel_local.worker import READY, serve

log = logging.getLogger("kestrel_local.invoke")
_SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """The outcome of one invoke: a payload, or a function error in AWS's shape."""

    request_id: str
    payload: Any = None
    error: Mapping[str, Any] | None = None
    duration_ms: float = 0.0

    @property
    def function_error(self) -> bool:
        """True when the invoke failed (unhandled error, timeout, crash)."""
        return self.error is not None


class _Worker:
    """One execution environment: a child process and the parent's end of its pipe."""

    def __init__(
        self, spec: FunctionSpec, environment: Mapping[str, str], log_file: Path | None
    ) -> None:
        self.conn, child = _SPAWN.Pipe()
        self.process: BaseProcess = _SPAWN.Process(
            target=serve,
            args=(
                child,
                spec.handler,
                str(spec.code_dir),
                [str(d) for d in spec.layer_dirs],
                dict(environment),
                spec.name,
                spec.arn,
                spec.memory_mb,
                str(log_file) if log_file else None,
            ),
            name=f"lambda:{spec.logical_id}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait for the end of init (the handler's import); False if it did not end in time."""
        if not self.ready:
            if not self.conn.poll(max(0.0, timeout_s)):
                return False
            if self.conn.recv() != READY:
                raise EOFError("the worker spoke before its init was over")
            self.ready = True
        return True

    def invoke(self, request_id: str, timeout_s: float, event: Any) -> tuple[bool, Any]:
        """Send one event; returns (ok, payload-or-error) or raises TimeoutError/EOFError.

        A cold worker's init counts against the timeout, as before any warm-up.
        """
        started = time.monotonic()
        deadline = time.time() + timeout_s
        if not self.wait_ready(timeout_s):
            raise TimeoutError
        self.conn.send((request_id, deadline, json.dumps(event)))
        if not self.conn.poll(max(0.0, timeout_s - (time.monotonic() - started))):
            raise TimeoutError
        ok, body = self.conn.recv()
        return bool(ok), json.loads(body)

    def stop(self) -> None:
        """End the environment at once (timeout, crash or shutdown)."""
        try:
            self.conn.close()
        finally:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)


class FunctionPool:
    """Warm workers for one function, at most `concurrency` at a time.

    Handler output (print, logging, EMF metrics) goes to the terminal's stderr, or appends
    to `log_file` when one is given.
    """

    def __init__(
        self,
        spec: FunctionSpec,
        environment: Mapping[str, str],
        concurrency: int,
        log_file: Path | None = None,
    ) -> None:
        self.spec = spec
        self.environment = dict(environment)
        self.log_file = log_file
        self.concurrency = concurrency
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._closed = False

    def invoke(self, event: Any) -> InvokeResult:
        """Run the handler on `event` in a free worker, waiting for one when all are busy."""
        request_id = str(uuid.uuid4())
        with self._slots:
            worker = self._checkout()
            started = time.perf_counter()
            try:
                ok, body = worker.invoke(request_id, self.spec.timeout_s, event)
            except TimeoutError:
                worker.stop()
                message = f"Task timed out after {self.spec.timeout_s:.2f} seconds"
                log.warning("%s %s: %s", self.spec.logical_id, request_id, message)
                return self._result(
                    request_id,
                    started,
                    error={
                        "errorMessage": f"{_now()} {request_id} {message}",
                        "errorType": "Sandbox.Timedout",
                    },
                )
            except (EOFError, OSError, BrokenPipeError):
                code = worker.process.exitcode
                worker.stop()
                log.warning(
                    "%s %s: worker exited (code %s)", self.spec.logical_id, request_id, code
                )
                return self._result(
                    request_id,
                    started,
                    error={
                        "errorMessage": f"RequestId: {request_id} Error: Runtime exited with "
                        f"error: exit status {code}",
                        "errorType": "Runtime.ExitError",
                    },
                )
            self._checkin(worker)
            if ok:
                return self._result(request_id, started, payload=body)
            log.info(
                "%s %s: %s: %s",
                self.spec.logical_id,
                request_id,
                body.get("errorType"),
                body.get("errorMessage"),
            )
            return self._result(request_id, started, error=body)

    def _result(
        self,
        request_id: str,
        started: float,
        payload: Any = None,
        error: Mapping[str, Any] | None = None,
    ) -> InvokeResult:
        elapsed = (time.perf_counter() - started) * 1000
        return InvokeResult(request_id, payload=payload, error=error, duration_ms=elapsed)

    def spawn(self, count: int) -> list[_Worker]:
        """Start up to `count` more environments (the pool's concurrency caps the total)."""
        with self._lock:
            count = min(count, self.concurrency) - len(self._idle)
        return [_Worker(self.spec, self.environment, self.log_file) for _ in range(count)]

    def add_warm(self, workers: list[_Worker], timeout_s: float) -> int:
        """Wait for each spawned worker's init; keep those that finished in time. How many."""
        deadline = time.monotonic() + timeout_s
        warm = 0
        for worker in workers:
            try:
                ready = worker.wait_ready(deadline - time.monotonic())
            except (EOFError, OSError):
                ready = False
            if ready:
                self._checkin(worker)
                warm += 1
            else:
                worker.stop()
        return warm

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.spec.logical_id}: the runtime is shutting down")
            if self._idle:
                return self._idle.pop()
        return _Worker(self.spec, self.environment, self.log_file)

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.stop()
            else:
                self._idle.append(worker)

    def close(self) -> None:
        """Stop every idle worker; busy ones stop when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def function_environment(spec: FunctionSpec, aws_env: Mapping[str, str]) -> dict[str, str]:
    """The environment Lambda gives a function: reserved variables, credentials, its own."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONUNBUFFERED": "1",
        "LAMBDA_TASK_ROOT": str(spec.code_dir),
        "_HANDLER": spec.handler,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        **aws_env,
    }
    env.update(spec.environment)
    return env
