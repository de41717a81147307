"""Shared fixtures: a fresh emulator and redis-server per test session, started on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel_local.aws import AwsClients
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


@pytest.fixture(scope="module", autouse=True)
def _drop_schema_registries(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete the Glue registries a module's stacks created, once the module is done.

    Every stack registers its schemas in a registry named after it, and the emulator (like a
    fresh AWS account) holds only so many registries: without this, the session's later
    modules could not create theirs.
    """
    path = request.node.path
    if not any(
        item.path == path and "emulator_endpoint" in getattr(item, "fixturenames", ())
        for item in request.session.items
    ):
        yield
        return
    glue = AwsClients(request.getfixturevalue("emulator_endpoint")).client("glue")
    before = {r["RegistryName"] for r in glue.list_registries()["Registries"]}
    yield
    for registry in glue.list_registries()["Registries"]:
        name = registry["RegistryName"]
        if name in before:
            continue
        # DeleteRegistry deletes its schemas and their versions too.
        glue.delete_registry(RegistryId={"RegistryName": name})
