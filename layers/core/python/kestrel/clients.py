"""Clients and adapters created once per container (lazily, on first use) from `Settings`.

Handlers take their ports as parameters defaulting to these factories, so a warm Lambda
container reuses its connections and tests pass their own doubles. boto3 resolves
``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_<SERVICE>``) itself, so the same
code talks to AWS, LocalStack or the embedded emulator.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, cast

import boto3
import redis
from botocore.config import Config
from redis.backoff import NoBackoff
from redis.retry import Retry

from kestrel.adapters.glue_registry import GlueSchemaApi, GlueSchemaRegistry
from kestrel.adapters.kinesis_decisions import KinesisDecisionStream
from kestrel.adapters.onnx_model import build_scorer
from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.s3_event_log import S3EventLog
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink
from kestrel.codec import label_decoder, transaction_decoder
from kestrel.decisions import Rules
from kestrel.ports import DeadLetterSink, DecisionSink, EventLog, FeatureStore
from kestrel.scoring import Scorer
from kestrel.serving import ScoringService, make_breaker
from kestrel.settings import Settings
from kestrel.streaming import LabelPath, TransactionPath

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
def api_redis_client() -> redis.Redis:
    """The API's Redis client: every call must answer within REDIS_BUDGET_MS, no retries.

    A slow or failed call raises at once, so the circuit breaker counts it and the request
    falls back to rules instead of waiting.
    """
    budget_s = settings().redis_budget_ms / 1000.0
    return redis.Redis.from_url(
        settings().redis_url,
        **redis_security(settings()),
        socket_connect_timeout=budget_s,
        socket_timeout=budget_s,
        retry=Retry(NoBackoff(), 0),
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
def glue_client() -> GlueSchemaApi:
    """The boto3 Glue client (schema registry operations)."""
    return cast("GlueSchemaApi", _session().client("glue", config=_BOTO_CONFIG))


@cache
def feature_store() -> FeatureStore:
    """The online `FeatureStore` (Redis)."""
    return RedisFeatureStore(redis_client())


@cache
def event_log() -> EventLog:
    """The offline `EventLog` (S3 bucket at `Settings.event_log_bucket`)."""
    return S3EventLog(s3_client(), settings().event_log_bucket)


@cache
def dead_letter_sink() -> DeadLetterSink:
    """The poison-record `DeadLetterSink` (SQS queue at `Settings.poison_dlq_url`)."""
    return SqsDeadLetterSink(sqs_client(), settings().poison_dlq_url)


@cache
def schema_registry() -> GlueSchemaRegistry:
    """The Glue schema registry `Settings.schema_registry` (a cached `SchemaLookup`)."""
    return GlueSchemaRegistry(glue_client(), settings().schema_registry)


@cache
def decision_store() -> RedisDecisions:
    """Decisions in Redis (`DecisionSink` and `DecisionLookup`)."""
    return RedisDecisions(redis_client(), settings().decision_ttl_s)


@cache
def decision_stream() -> DecisionSink:
    """Decisions on the Kinesis decisions stream."""
    return KinesisDecisionStream(kinesis_client(), settings().decisions_stream)


@cache
def transaction_path() -> TransactionPath:
    """The transaction stream path with every adapter wired."""
    return TransactionPath(
        transaction_decoder(schema_registry()),
        feature_store(),
        dead_letter_sink(),
        event_log(),
        scorer(),
        (decision_store(), decision_stream()),
        max_future_s=settings().max_future_s,
    )


@cache
def label_path() -> LabelPath:
    """The label stream path with every adapter wired."""
    return LabelPath(
        label_decoder(schema_registry()),
        feature_store(),
        dead_letter_sink(),
        event_log(),
        max_future_s=settings().max_future_s,
    )


@cache
def scoring_service() -> ScoringService:
    """The scoring API's service: read-only store with a breaker, model, rules, decisions."""
    config = settings()
    api_redis = api_redis_client()
    return ScoringService(
        reader=RedisFeatureStore(api_redis),
        scorer=scorer(),
        decisions=RedisDecisions(api_redis, config.decision_ttl_s),
        rules=Rules(
            review_amount=config.rule_review_amount,
            night_review_amount=config.rule_night_review_amount,
            decline_amount=config.rule_decline_amount,
        ),
        breaker=make_breaker(config.breaker_fail_max, config.breaker_reset_s),
        registry_check=schema_registry().check,
    )


@cache
def scorer() -> Scorer:
    """The container's model scorer: the layer's model, then the S3 pointer if configured."""
    return build_scorer(settings(), s3_client=s3_client())


def reset() -> None:
    """Forget every cached client and setting (tests, or after changing the environment)."""
    for factory in (
        settings,
        _session,
        redis_client,
        api_redis_client,
        sqs_client,
        kinesis_client,
        s3_client,
        glue_client,
        feature_store,
        event_log,
        dead_letter_sink,
        schema_registry,
        decision_store,
        decision_stream,
        transaction_path,
        label_path,
        scorer,
        scoring_service,
    ):
        factory.cache_clear()
