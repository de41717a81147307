"""Stream handlers build their path in Lambda's init phase, and only there (`build_at_init`)."""

from __future__ import annotations

import io

import pytest
from aws_lambda_powertools import Logger
from handler_doubles import _load_handler

from kestrel import clients
from kestrel.stream_batch import build_at_init

FACTORIES = {
    "transactions": "transaction_path",
    "labels": "label_path",
    "clickstream": "click_path",
}


class Counter:
    """A factory double: counts its calls, raises when told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.error = error

    def __call__(self) -> object:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return object()


@pytest.mark.parametrize(("function_name", "builds"), [(None, 0), ("TransactionsFunction", 1)])
def test_build_at_init_builds_once_inside_a_lambda_environment_only(
    function_name: str | None, builds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if function_name is None:
        monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    else:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", function_name)
    build = Counter()
    build_at_init(build, Logger(service="test"))
    assert build.calls == builds


def test_build_at_init_logs_a_failure_and_lets_the_import_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "TransactionsFunction")
    build = Counter(ConnectionError("emulator not up yet"))
    stream = io.StringIO()
    build_at_init(build, Logger(service="build-at-init-failure", stream=stream))
    assert build.calls == 1
    logged = stream.getvalue()
    assert "could not build the function's path at init" in logged
    assert "emulator not up yet" in logged


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_stream_handler_builds_its_path_when_imported_in_lambda(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = Counter()
    monkeypatch.setattr(clients, FACTORIES[name], build)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", name)
    _load_handler(name)
    assert build.calls == 1
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    _load_handler(name)
    assert build.calls == 1
