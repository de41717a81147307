"""Integration tier: every test here is marked `integration` and needs a real redis-server."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel_local.services import ServiceError, find_redis_server

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/integration/ as `integration`."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _redis_server_installed() -> None:
    """Fail (never skip) the integration tier when redis-server is not installed."""
    try:
        find_redis_server()
    except ServiceError as exc:
        pytest.fail(f"integration tests need redis-server: {exc}", pytrace=False)
