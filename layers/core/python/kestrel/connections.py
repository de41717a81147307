"""Connections created once per container: the settings, boto3 clients and Redis.

Every function's wiring (`kestrel.clients` for the stream and API paths,
`kestrel.drift_clients` for the drift check) takes them from here, so each has the same
client options, Redis AUTH and TLS, and the same kind of Redis client: a cluster-aware
`RedisCluster` when REDIS_CLUSTER is true, else a `redis.Redis` for one server. Nothing
here imports onnxruntime. boto3 resolves ``AWS_ENDPOINT_URL`` (and per-service
``AWS_ENDPOINT_URL_<SERVICE>``) itself, so the same code talks to AWS, LocalStack or the
embedded emulator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import boto3
import redis
from botocore.config import Config
from redis.cluster import RedisCluster

from kestrel.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

T = TypeVar("T")


class Deferred(Generic[T]):
    """An adapter built when one of its methods is first called, again if that failed.

    The API and the local /metrics wire their Redis adapters through it: a `RedisCluster`
    connects when it is created (it reads the slot map), so building one at wiring time
    would turn a cold start during a Redis outage into errors; built inside the first
    call, the failure is that call's and degrades the request like any other store failure.
    Only methods are reached through it.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._built: T | None = None
        self._lock = threading.Lock()

    def _adapter(self) -> T:
        with self._lock:
            if self._built is None:
                self._built = self._build()
            return self._built

    def __getattr__(self, name: str) -> Any:
        if self._built is not None:
            return getattr(self._built, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(self._adapter(), name)(*args, **kwargs)

        return call


# What the Redis adapters take: one server, or a cluster (commands routed by hash slot).
RedisClient: TypeAlias = "redis.Redis | RedisCluster"

BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=2,
    read_timeout=10,
)


@cache
def settings() -> Settings:
    """The function settings, read from the environment once."""
    return Settings.from_env()


@cache
def boto_session() -> boto3.session.Session:
    return boto3.session.Session(region_name=settings().region)


def redis_security(config: Settings) -> dict[str, str]:
    """Redis AUTH and TLS options beyond the URL: REDIS_PASSWORD, REDIS_TLS_CA_CERTS.

    TLS itself comes from a ``rediss://`` URL (the server certificate is verified against the
    system's CA bundle, or against REDIS_TLS_CA_CERTS when set); AUTH from the URL's
    ``user:password@`` part, which redis-py prefers over ``password``.
    """
    options: dict[str, str] = {}
    if config.redis_password:
        options["password"] = config.redis_password
    if config.redis_tls_ca_certs:
        options["ssl_ca_certs"] = config.redis_tls_ca_certs
    return options


def connect_redis(config: Settings, **options: Any) -> RedisClient:
    """A Redis client for `config.redis_url` with its AUTH and TLS, and `options`.

    With REDIS_CLUSTER true it is a `RedisCluster`: the URL names any node, or an ElastiCache
    configuration endpoint; the client reads the slot map from it, sends each command to
    its slot's primary, and reads the map again after a MOVED reply or a failed node
    (a failover); it connects as it is created. Otherwise it is a `redis.Redis` for the one
    server the URL names, which connects on its first command.
    """
    if config.redis_cluster:
        return RedisCluster.from_url(config.redis_url, **redis_security(config), **options)
    return redis.Redis.from_url(config.redis_url, **redis_security(config), **options)


@cache
def redis_client() -> RedisClient:
    """The Redis client for `Settings.redis_url` (connection pools shared by the container)."""
    return connect_redis(
        settings(), socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
    )


@cache
def sqs_client() -> SQSClient:
    """The boto3 SQS client."""
    return boto_session().client("sqs", config=BOTO_CONFIG)


@cache
def kinesis_client() -> KinesisClient:
    """The boto3 Kinesis client."""
    return boto_session().client("kinesis", config=BOTO_CONFIG)


@cache
def s3_client() -> S3Client:
    """The boto3 S3 client."""
    return boto_session().client("s3", config=BOTO_CONFIG)


def reset() -> None:
    """Forget the cached settings and connections."""
    for factory in (settings, boto_session, redis_client, sqs_client, kinesis_client, s3_client):
        factory.cache_clear()
