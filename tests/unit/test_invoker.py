"""Invoking a handler in a worker process: context, environment, layers and error shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel_local.functions import FunctionSpec
from kestrel_local.invoker import FunctionPool, function_environment

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "invoke"


def spec(handler: str, timeout_s: float = 5) -> FunctionSpec:
    return FunctionSpec(
        logical_id="Probe",
        name="stack-Probe",
        arn="arn:aws:lambda:us-east-1:123456789012:function:stack-Probe",
        handler=handler,
        code_dir=FIXTURE / "code",
        runtime="python3.11",
        timeout_s=timeout_s,
        memory_mb=256,
        environment={"GREETING": "hello"},
        layer_dirs=(FIXTURE / "layer",),
    )


@pytest.fixture
def pool(request: pytest.FixtureRequest) -> Iterator[FunctionPool]:
    handler, timeout_s = request.param
    function = spec(handler, timeout_s)
    pool = FunctionPool(function, function_environment(function, {"AWS_REGION": "us-east-1"}), 2)
    yield pool
    pool.close()


@pytest.mark.parametrize("pool", [("handlers.describe", 5)], indirect=True)
def test_invoke_gives_handler_context_environment_and_layers(pool: FunctionPool) -> None:
    result = pool.invoke({"hello": "world"})
    assert result.error is None
    seen = result.payload
    assert seen["event"] == {"hello": "world"}
    assert seen["function_name"] == "stack-Probe"
    assert seen["function_version"] == "$LATEST"
    assert seen["invoked_function_arn"].endswith(":function:stack-Probe")
    assert seen["memory_limit_in_mb"] == "256"
    assert seen["aws_request_id"] == result.request_id
    assert seen["log_group_name"] == "/aws/lambda/stack-Probe"
    assert 0 < seen["remaining_ms"] <= 5000
    assert (seen["env_greeting"], seen["env_function"]) == ("hello", "stack-Probe")
    assert seen["layer"] == "from the layer"
    assert seen["cwd"] == str(FIXTURE / "code")


@pytest.mark.parametrize("pool", [("handlers.describe", 5)], indirect=True)
def test_invoke_reuses_a_warm_worker(pool: FunctionPool) -> None:
    first, second = pool.invoke({}), pool.invoke({})
    assert first.payload["pid"] == second.payload["pid"]
    assert first.request_id != second.request_id


@pytest.mark.parametrize("pool", [("handlers.sleepy", 1)], indirect=True)
def test_invoke_times_out_kills_worker_and_next_invoke_starts_fresh(pool: FunctionPool) -> None:
    timed_out = pool.invoke({"seconds": 3})
    assert timed_out.error is not None
    assert timed_out.error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in timed_out.error["errorMessage"]
    assert 900 <= timed_out.duration_ms < 2500
    assert pool.invoke({"seconds": 0}).payload == "awake"


@pytest.mark.parametrize(
    ("pool", "error_type"),
    [
        (("handlers.unserializable", 5), "Runtime.MarshalError"),
        (("handlers.exits", 5), "Runtime.ExitError"),
        (("handlers.raises", 5), "ValueError"),
        (("missing_module.handler", 5), "Runtime.ImportModuleError"),
        (("handlers.no_such_function", 5), "Runtime.HandlerNotFound"),
    ],
    indirect=["pool"],
)
def test_invoke_reports_function_errors_in_aws_shape(pool: FunctionPool, error_type: str) -> None:
    result = pool.invoke({})
    assert result.function_error
    assert result.error is not None
    assert result.error["errorType"] == error_type
    assert result.error["errorMessage"]


@pytest.mark.parametrize("pool", [("handlers.describe", 5)], indirect=True)
def test_warmed_environments_serve_the_first_invokes(pool: FunctionPool) -> None:
    spawned = pool.spawn(5)  # the pool's concurrency (2) caps it
    pids = {worker.process.pid for worker in spawned}
    assert len(spawned) == 2
    assert pool.add_warm(spawned, 30.0) == 2
    assert pool.spawn(2) == []  # already as warm as it may be
    first, second = pool.invoke({}), pool.invoke({})
    assert {first.payload["pid"], second.payload["pid"]} <= pids


@pytest.mark.parametrize("pool", [("missing_module.handler", 5)], indirect=True)
def test_an_environment_whose_init_failed_is_warm_and_reports_it_per_invoke(
    pool: FunctionPool,
) -> None:
    assert pool.add_warm(pool.spawn(1), 30.0) == 1
    result = pool.invoke({})
    assert result.error is not None
    assert result.error["errorType"] == "Runtime.ImportModuleError"
