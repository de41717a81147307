"""Clients and adapters created once per container (lazily, on first use) from `Settings`.

Handlers take their ports as parameters defaulting to these factories, so a warm Lambda
container reuses its connections and tests pass their own doubles. boto3 resolves
``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_<SERVICE>``) itself, so the same
code talks to AWS, LocalStack or the embedded emulator.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
import redis
from botocore.config import Config

from kestrel.adapters.redis_counter import RedisEventCounter
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink
from kestrel.ports import DeadLetterSink, EventCounter
from kestrel.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

_BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=2,
    read_timeout=10,
)


@cache
def settings() -> Settings:
    """The function settings, read from the environment once."""
    return Settings.from_env()


@cache
def _session() -> boto3.session.Session:
    return boto3.session.Session(region_name=settings().region)


@cache
def redis_client() -> redis.Redis:
    """The Redis client for `Settings.redis_url` (a connection pool shared by the container)."""
    return redis.Redis.from_url(
        settings().redis_url,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=30,
    )


@cache
def sqs_client() -> SQSClient:
    """The boto3 SQS client."""
    return _session().client("sqs", config=_BOTO_CONFIG)


@cache
def kinesis_client() -> KinesisClient:
    """The boto3 Kinesis client."""
    return _session().client("kinesis", config=_BOTO_CONFIG)


@cache
def s3_client() -> S3Client:
    """The boto3 S3 client."""
    return _session().client("s3", config=_BOTO_CONFIG)


@cache
def event_counter() -> EventCounter:
    """The online store's `EventCounter` (Redis)."""
    return RedisEventCounter(redis_client())


@cache
def dead_letter_sink() -> DeadLetterSink:
    """The poison-record `DeadLetterSink` (SQS queue at `Settings.poison_dlq_url`)."""
    return SqsDeadLetterSink(sqs_client(), settings().poison_dlq_url)


def reset() -> None:
    """Forget every cached client and setting (tests, or after changing the environment)."""
    for factory in (
        settings,
        _session,
        redis_client,
        sqs_client,
        kinesis_client,
        s3_client,
        event_counter,
        dead_letter_sink,
    ):
        factory.cache_clear()
