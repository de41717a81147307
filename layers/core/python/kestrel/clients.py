"""Clients and adapters created once per container (lazily, on first use) from `Settings`.

Handlers take their ports as parameters defaulting to these factories, so a warm Lambda
container reuses its connections and tests pass their own doubles. boto3 resolves
``AWS_ENDPOINT_URL`` (and per-service ``AWS_ENDPOINT_URL_<SERVICE>``) itself, so the same
code talks to AWS, LocalStack or the embedded emulator.
"""

from __future__ import annotations

from functools import cache
from typing import cast

from redis.backoff import NoBackoff
from redis.retry import Retry

from kestrel import connections
from kestrel.adapters.glue_registry import GlueSchemaApi, GlueSchemaRegistry
from kestrel.adapters.kinesis_decisions import KinesisDecisionStream
from kestrel.adapters.onnx_challenger import build_challenger
from kestrel.adapters.onnx_model import build_scorer
from kestrel.adapters.onnx_propensity import build_propensity_scorer
from kestrel.adapters.redis_clicks import RedisClickStore
from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.redis_propensity import RedisPropensities
from kestrel.adapters.redis_telemetry import (
    CLICK_TELEMETRY_PREFIX,
    RedisDriftStatus,
    RedisTelemetry,
)
from kestrel.adapters.s3_dead_letter_payloads import S3DeadLetterPayloads
from kestrel.adapters.s3_event_log import S3EventLog
from kestrel.adapters.sqs_dead_letters import SqsDeadLetterSink
from kestrel.adapters.sqs_queue_depths import SqsQueueDepths
from kestrel.click_streaming import ClickPath
from kestrel.codec import click_decoder, label_decoder, transaction_decoder
from kestrel.connections import (
    BOTO_CONFIG,
    Deferred,
    RedisClient,
    boto_session,
    connect_redis,
)
from kestrel.connections import (
    kinesis_client as kinesis_client,
)
from kestrel.connections import (
    redis_client as redis_client,
)
from kestrel.connections import (
    redis_security as redis_security,
)
from kestrel.connections import (
    s3_client as s3_client,
)
from kestrel.connections import (
    settings as settings,
)
from kestrel.connections import (
    sqs_client as sqs_client,
)
from kestrel.decisions import Rules
from kestrel.monitoring_ports import DriftStatusReader, TelemetrySource
from kestrel.ports import (
    DeadLetterSink,
    DecisionLookup,
    DecisionSink,
    EventLog,
    FeatureReader,
    FeatureStore,
)
from kestrel.propensity_serving import ClickReader, PropensityLookup, PropensityService
from kestrel.scoring import Scorer
from kestrel.serving import ScoringService, make_breaker
from kestrel.streaming import LabelPath, TransactionPath
from kestrel.telemetry import CachedDepths, TelemetryService


@cache
def api_redis_client() -> RedisClient:
    """The API's Redis client: every call must answer within REDIS_BUDGET_MS, no retries.

    A slow or failed call raises at once, so the circuit breaker counts it and the request
    falls back to rules instead of waiting. On a cluster the failed call also makes the
    client read the slot map again, so the next one finds a promoted replica.
    """
    budget_s = settings().redis_budget_ms / 1000.0
    return connect_redis(
        settings(),
        socket_connect_timeout=budget_s,
        socket_timeout=budget_s,
        retry=Retry(NoBackoff(), 0),
    )


@cache
def glue_client() -> GlueSchemaApi:
    """The boto3 Glue client (schema registry operations)."""
    return cast("GlueSchemaApi", boto_session().client("glue", config=BOTO_CONFIG))


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
    """The poison-record `DeadLetterSink`: SQS, large payloads in the event-log bucket."""
    bucket = settings().event_log_bucket
    payloads = S3DeadLetterPayloads(s3_client(), bucket) if bucket else None
    return SqsDeadLetterSink(sqs_client(), settings().poison_dlq_url, payloads)


@cache
def schema_registry() -> GlueSchemaRegistry:
    """The Glue schema registry `Settings.schema_registry` (a cached `SchemaLookup`).

    Unknown version ids are remembered for SCHEMA_MISS_TTL_S, at most SCHEMA_MISS_CACHE_SIZE.
    """
    config = settings()
    return GlueSchemaRegistry(
        glue_client(),
        config.schema_registry,
        miss_ttl_s=config.schema_miss_ttl_s,
        miss_cache_size=config.schema_miss_cache_size,
    )


@cache
def decision_store() -> RedisDecisions:
    """Decisions in Redis (`DecisionSink` and `DecisionLookup`)."""
    return RedisDecisions(redis_client(), settings().decision_ttl_s)


@cache
def decision_stream() -> DecisionSink:
    """Decisions on the Kinesis decisions stream."""
    return KinesisDecisionStream(kinesis_client(), settings().decisions_stream)


@cache
def telemetry() -> RedisTelemetry:
    """The stream's `TelemetrySink` (and `TelemetrySource`) on the container's Redis."""
    return RedisTelemetry(redis_client())


@cache
def telemetry_service() -> TelemetryService:
    """Telemetry snapshots for the API: Redis, the dead-letter queues, the drift status."""
    return TelemetryService(
        cast("TelemetrySource", Deferred(telemetry)),
        CachedDepths(SqsQueueDepths(sqs_client(), settings().dlq_urls)),
        cast("DriftStatusReader", Deferred(lambda: RedisDriftStatus(redis_client()))),
    )


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
        telemetry=telemetry(),
        challenger=challenger(),
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
        telemetry=telemetry(),
    )


@cache
def click_store() -> RedisClickStore:
    """The clickstream's online store (Redis)."""
    return RedisClickStore(redis_client())


@cache
def click_path() -> ClickPath:
    """The clickstream path with every adapter wired."""
    return ClickPath(
        click_decoder(schema_registry()),
        click_store(),
        dead_letter_sink(),
        event_log(),
        max_future_s=settings().max_future_s,
        scorer=propensity_scorer(),
        propensities=propensity_store(),
        telemetry=click_telemetry(),
    )


@cache
def click_telemetry() -> RedisTelemetry:
    """The clickstream's `TelemetrySink` (and source): its own keys on the container's Redis."""
    return RedisTelemetry(redis_client(), prefix=CLICK_TELEMETRY_PREFIX)


@cache
def click_telemetry_service() -> TelemetryService:
    """Snapshots of the clickstream's telemetry for the API (no queues, no drift)."""
    return TelemetryService(cast("TelemetrySource", Deferred(click_telemetry)))


@cache
def propensity_scorer() -> Scorer:
    """The container's propensity scorer: its own layer, then its S3 pointer if configured."""
    return build_propensity_scorer(settings(), s3_client=s3_client())


@cache
def propensity_store() -> RedisPropensities:
    """Users' latest propensities in Redis (`PropensitySink`)."""
    return RedisPropensities(redis_client())


@cache
def scoring_service() -> ScoringService:
    """The scoring API's service: read-only store with a breaker, model, rules, decisions."""
    config = settings()
    return ScoringService(
        reader=cast("FeatureReader", Deferred(lambda: RedisFeatureStore(api_redis_client()))),
        scorer=scorer(),
        decisions=cast(
            "DecisionLookup",
            Deferred(lambda: RedisDecisions(api_redis_client(), config.decision_ttl_s)),
        ),
        rules=Rules(
            review_amount=config.rule_review_amount,
            night_review_amount=config.rule_night_review_amount,
            decline_amount=config.rule_decline_amount,
        ),
        breaker=make_breaker(config.breaker_fail_max, config.breaker_reset_s),
        registry_check=schema_registry().check,
    )


@cache
def propensity_service() -> PropensityService:
    """The propensity API's service: read-only click store with a breaker, model, lookups."""
    config = settings()
    return PropensityService(
        reader=cast("ClickReader", Deferred(lambda: RedisClickStore(api_redis_client()))),
        scorer=propensity_scorer(),
        propensities=cast(
            "PropensityLookup", Deferred(lambda: RedisPropensities(api_redis_client()))
        ),
        breaker=make_breaker(config.breaker_fail_max, config.breaker_reset_s),
    )


@cache
def scorer() -> Scorer:
    """The container's model scorer: the layer's model, then the S3 pointer if configured."""
    return build_scorer(settings(), s3_client=s3_client())


@cache
def challenger() -> Scorer | None:
    """The stream's challenger for shadow scoring (None: none can be set, no shadow work)."""
    return build_challenger(settings(), scorer())


def reset() -> None:
    """Forget every cached client and setting (tests, or after changing the environment)."""
    connections.reset()
    for factory in (
        api_redis_client,
        glue_client,
        feature_store,
        event_log,
        dead_letter_sink,
        schema_registry,
        decision_store,
        decision_stream,
        telemetry,
        telemetry_service,
        transaction_path,
        label_path,
        click_store,
        click_path,
        click_telemetry,
        click_telemetry_service,
        propensity_scorer,
        propensity_store,
        scorer,
        challenger,
        scoring_service,
        propensity_service,
    ):
        factory.cache_clear()
