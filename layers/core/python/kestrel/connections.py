"""Connections created once per container: the settings, boto3 clients and Redis.

Every function's wiring (`kestrel.clients` for the stream and API paths,
`kestrel.drift_clients` for the drift check) takes them from here, so each has the same
client options, Redis AUTH and TLS. Nothing here imports onnxruntime. boto3 resolves
``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_<SERVICE>``) itself, so the same
code talks to AWS, LocalStack or the embedded emulator.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
import redis
from botocore.config import Config

from kestrel.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

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


@cache
def redis_client() -> redis.Redis:
    """The Redis client for `Settings.redis_url` (a connection pool shared by the container)."""
    return redis.Redis.from_url(
        settings().redis_url,
        **redis_security(settings()),
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=30,
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
