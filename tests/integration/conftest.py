"""Integration tier: every test here is marked `integration` and needs a real redis-server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel_local.redis_cluster import running_redis_cluster
from kestrel_local.services import ServiceError, find_redis_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


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


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one startup node of a fresh 3-master Redis Cluster on loopback.

    The nodes are real redis-server processes on free 127.0.0.1 ports (no replicas, no
    persistence), started on first use and all stopped at session end. Build clients with
    `redis.cluster.RedisCluster.from_url(redis_cluster_url)`; they discover the other nodes.
    """
    try:
        with running_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as urls:
            yield urls[0]
    except ServiceError as exc:
        pytest.fail(f"could not start the Redis Cluster: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def lambda_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make build` of the repo's template, once per session: the built template's path.

    The zips and `manifest.json` are in `lambda/` beside it (the deps layer comes from
    PyPI's manylinux wheels for the template's runtime, as `make build` does).
    """
    sys.path.insert(0, str(REPO / "tools"))
    import build_lambda

    out = tmp_path_factory.mktemp("build") / "lambda"
    code = build_lambda.main(["--template", str(REPO / "template.yaml"), "--out", str(out)])
    if code != 0:
        pytest.fail(f"the Lambda build failed with exit code {code}", pytrace=False)
    return out.parent / "template.json"


@pytest.fixture(params=["standalone", "cluster"])
def feature_store(request: pytest.FixtureRequest) -> Iterator[RedisFeatureStore]:
    """The feature store on a standalone redis-server and on a 3-master cluster, emptied
    before and after the test."""
    client: redis.Redis | RedisCluster
    if request.param == "cluster":
        client = RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    client.flushall()
    yield RedisFeatureStore(client)
    client.flushall()
    client.close()
