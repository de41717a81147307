"""Shared fixtures: a fresh emulator and redis-server per test session, started on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel_local.services import ServiceError, running_emulator, running_redis

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where template.yaml and events/ live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def emulator_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh embedded AWS emulator on a free loopback port, stopped at session end."""
    try:
        with running_emulator(tmp_path_factory.mktemp("emulator")) as handle:
            yield handle.address
    except ServiceError as exc:
        pytest.fail(f"could not start the embedded AWS emulator: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh redis-server on a free loopback port, stopped at session end."""
    try:
        with running_redis(tmp_path_factory.mktemp("redis")) as handle:
            yield handle.address
    except ServiceError as exc:
        pytest.fail(f"could not start redis-server: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def aws_env(emulator_endpoint: str, redis_url: str) -> dict[str, str]:
    """Environment variables that point AWS clients and Redis at the session's services."""
    return {
        "AWS_ENDPOINT_URL": emulator_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "REDIS_URL": redis_url,
    }
