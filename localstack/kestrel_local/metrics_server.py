"""The local runtime's ``/metrics``: the stream's telemetry as Prometheus text on loopback.

``python -m kestrel_local run`` serves it (``--metrics-port``, default 9464; 0 turns it
off) with the same collector as the scoring API's ``/metrics``
(`kestrel.adapters.prometheus_telemetry.StreamCollector`), so a Prometheus scraping either
process sees the same stream figures. The figures are read from the Redis the functions
write to (their ``REDIS_URL``, a cluster when their ``REDIS_CLUSTER`` is true) and the
template's dead-letter queues: the functions' ``POISON_DLQ_URL`` and
``ON_FAILURE_QUEUE_URL`` (else the on-failure destination of their Kinesis event sources).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from typing import cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from kestrel.adapters.prometheus_telemetry import StreamCollector
from kestrel.adapters.redis_telemetry import RedisDriftStatus, RedisTelemetry
from kestrel.adapters.sqs_queue_depths import SqsQueueDepths
from kestrel.connections import Deferred, RedisClient, connect_redis
from kestrel.monitoring_ports import DriftStatusReader, TelemetrySource
from kestrel.settings import Settings
from kestrel.telemetry import CachedDepths, TelemetryService
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp

log = logging.getLogger("kestrel_local.metrics")

DEFAULT_PORT = 9464
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _functions_env(app: LocalApp, name: str) -> str:
    """The first non-empty value of `name` in the functions' environments ("" if none)."""
    for spec in app.functions.values():
        value = str(spec.environment.get(name, "") or "")
        if value:
            return value
    return ""


def dlq_urls(app: LocalApp, clients: AwsClients) -> dict[str, str]:
    """Queue URL by role: POISON_DLQ_URL, ON_FAILURE_QUEUE_URL or an ESM's on-failure queue."""
    urls = {
        "poison": _functions_env(app, "POISON_DLQ_URL"),
        "on_failure": _functions_env(app, "ON_FAILURE_QUEUE_URL"),
    }
    arns = [
        source.on_failure_arn
        for spec in app.functions.values()
        for source in spec.kinesis
        if source.on_failure_arn and ":sqs:" in source.on_failure_arn
    ]
    if arns and not urls["on_failure"]:
        try:
            name = arns[0].rsplit(":", 1)[1]
            urls["on_failure"] = clients.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]
        except Exception as exc:  # noqa: BLE001 - its depth is then unknown, not fatal
            log.warning("on-failure queue %s not found: %s", arns[0], exc)
    return urls


def stream_telemetry(app: LocalApp, clients: AwsClients, default_redis: str) -> TelemetryService:
    """Telemetry snapshots of `app`'s stream functions (their Redis, their queues)."""
    config = Settings.from_env(
        {
            "REDIS_URL": _functions_env(app, "REDIS_URL") or default_redis,
            "REDIS_CLUSTER": _functions_env(app, "REDIS_CLUSTER"),
        }
    )

    @cache
    def client() -> RedisClient:
        return connect_redis(config, socket_connect_timeout=2, socket_timeout=2)

    return TelemetryService(
        cast("TelemetrySource", Deferred(lambda: RedisTelemetry(client()))),
        CachedDepths(SqsQueueDepths(clients.client("sqs"), dlq_urls(app, clients))),
        cast("DriftStatusReader", Deferred(lambda: RedisDriftStatus(client()))),
    )


def registry_for(service: TelemetryService) -> CollectorRegistry:
    """A registry holding only the stream collector over `service`."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StreamCollector(service.snapshot))
    return registry


@dataclass
class MetricsServer:
    """A running ``/metrics`` server (any path answers the Prometheus text)."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """Its address, e.g. http://127.0.0.1:9464/metrics."""
        host, port = self.httpd.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{text}:{port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5.0)


def serve_metrics(
    registry: CollectorRegistry, port: int = DEFAULT_PORT, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve `registry` on `host`:`port` (loopback only; port 0: any free port).

    Raises:
        ValueError: `host` is not a loopback address.
        OSError: The port is taken.
    """
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the metrics server binds to loopback only (got {host!r})")
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread)


def start(
    app: LocalApp, clients: AwsClients, default_redis: str, port: int, host: str = "127.0.0.1"
) -> MetricsServer | None:
    """`serve_metrics` for `app`'s stream, or None (logged) when the port cannot be bound."""
    try:
        return serve_metrics(
            registry_for(stream_telemetry(app, clients, default_redis)), port, host
        )
    except OSError as exc:
        log.warning("no /metrics: %s:%s cannot be bound (%s)", host, port, exc)
        return None
