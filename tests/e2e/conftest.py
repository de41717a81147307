"""End-to-end tier: a real stack (emulator, Redis, runtime, API) driven through a browser.

Every test here is marked `e2e`. The tier reuses the integration harness (api_harness,
esm_harness) and the session's emulator and redis-server (tests/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kestrel_local.services import ServiceError, find_redis_server

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))


def pytest_configure(config: pytest.Config) -> None:
    """Register the `e2e` marker (pytest runs with --strict-markers)."""
    config.addinivalue_line(
        "markers", "e2e: drives the whole local stack through a real browser (headless Chromium)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/e2e/ as `e2e`."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _redis_server_installed() -> None:
    """Fail (never skip) the e2e tier when redis-server is not installed."""
    try:
        find_redis_server()
    except ServiceError as exc:
        pytest.fail(f"e2e tests need redis-server: {exc}", pytrace=False)
