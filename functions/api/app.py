"""Kestrel's scoring API (Chalice): routes only; the work is in `kestrel.serving`."""

from __future__ import annotations

from functools import cache

from aws_lambda_powertools import Logger
from chalice.app import Chalice, Request, Response
from chalicelib import propensity_web, web
from chalicelib.logs import share_handler
from chalicelib.openapi import SPEC
from chalicelib.telemetry import ApiMetrics

from kestrel import clients
from kestrel.click_telemetry import click_section
from kestrel.propensity_serving import PropensityService
from kestrel.serving import ScoringService
from kestrel.settings import Settings
from kestrel.telemetry import TelemetryService

app = Chalice(app_name="kestrel-api")
metrics = ApiMetrics()
# JSON logs; the domain's loggers (kestrel.*) share its handler, so their lines carry the
# correlation id (the transaction id on /v1/score).
logger = Logger(service="kestrel-scoring-api")  # not "kestrel-api": Chalice logs there
share_handler(logger)


@cache
def service() -> ScoringService:
    """The container's scoring service, its state tracked by the metrics."""
    scoring = clients.scoring_service()
    metrics.track(lambda: scoring.breaker_state, lambda: scoring.model_version is not None)
    return scoring


@cache
def propensities() -> PropensityService:
    """The container's propensity service (clickstream features and model), its breaker
    tracked by the metrics."""
    scoring = clients.propensity_service()
    metrics.track_propensity(lambda: scoring.breaker_state)
    return scoring


@cache
def telemetry() -> TelemetryService:
    """The container's telemetry snapshots, also exported at /metrics."""
    snapshots = clients.telemetry_service()
    metrics.track_stream(snapshots.snapshot)
    return snapshots


def settings() -> Settings:
    """The container's settings (logs once when no key can pass the app's own check)."""
    config = clients.settings()
    _say_if_closed(config.api_auth, bool(config.api_key))
    return config


@cache
def _say_if_closed(api_auth: str, has_key: bool) -> None:
    if api_auth == "app" and not has_key:
        logger.error("KESTREL_API_KEY is empty: every keyed route answers 403 (fail closed)")


@app.middleware("http")
def guard(request: Request, get_response: web.Handler) -> Response:
    """API key, Server-Timing and request metrics around every route."""
    try:
        return web.guarded(request, get_response, settings(), metrics.observe)
    finally:
        logger.set_correlation_id(None)


@app.route("/v1/score", methods=["POST"], api_key_required=True)
def score() -> Response:
    """Score one transaction as if it were applied now."""
    try:
        tx = web.transaction(web.json_body(web.current(app)))
    except web.HttpError as exc:
        return exc.response()
    logger.set_correlation_id(tx.transaction_id)
    records = service().score([tx])
    metrics.decided(records)
    return web.json_response(web.decision_body(records[0]))


@app.route("/v1/score/batch", methods=["POST"], api_key_required=True)
def score_batch() -> Response:
    """Score up to 100 transactions, answered in order."""
    try:
        txs = web.transactions(web.json_body(web.current(app)))
    except web.HttpError as exc:
        return exc.response()
    records = service().score(txs)
    metrics.decided(records)
    return web.json_response({"results": [web.decision_body(r) for r in records]})


@app.route("/v1/customers/{customer_id}/features", methods=["GET"], api_key_required=True)
def customer_features(customer_id: str) -> Response:
    """A customer's features now."""
    return web.entity(
        lambda: service().customer_features(web.identifier(customer_id, "customer_id")),
        "customer_id",
    )


@app.route("/v1/terminals/{terminal_id}/features", methods=["GET"], api_key_required=True)
def terminal_features(terminal_id: str) -> Response:
    """A terminal's features now."""
    return web.entity(
        lambda: service().terminal_features(web.identifier(terminal_id, "terminal_id")),
        "terminal_id",
    )


@app.route("/v1/decisions/{transaction_id}", methods=["GET"], api_key_required=True)
def decision(transaction_id: str) -> Response:
    """The stream's decision for a transaction."""
    return web.stored_decision(
        lambda: service().decision(web.identifier(transaction_id, "transaction_id")),
        transaction_id,
    )


@app.route("/v1/propensity", methods=["POST"], api_key_required=True)
def propensity() -> Response:
    """A click's purchase propensity as if it were applied now."""
    try:
        event = propensity_web.click(web.json_body(web.current(app)))
    except web.HttpError as exc:
        return exc.response()
    logger.set_correlation_id(event.event_id)
    result = propensities().score(event)
    metrics.propensity(bool(result.degraded))
    return web.json_response(propensity_web.propensity_body(result))


@app.route("/v1/users/{user_id}/features", methods=["GET"], api_key_required=True)
def user_features(user_id: str) -> Response:
    """A user's clickstream features now and their latest propensity."""
    return propensity_web.user(
        lambda: propensities().user_features(web.identifier(user_id, "user_id"))
    )


@app.route("/v1/telemetry", methods=["GET"], api_key_required=True)
def stream_telemetry() -> Response:
    """The streams' live figures over the last `window` seconds (default 60), clicks apart."""
    return web.telemetry(
        lambda window: telemetry().snapshot(window),
        web.current(app),
        lambda window: click_section(clients.click_telemetry_service().snapshot(window)),
    )


@app.route("/health", methods=["GET"])
def health() -> Response:
    """``ok`` or ``degraded``; with the key, each check and why it failed."""
    detailed = web.carries_key(web.current(app).headers, settings())
    health = propensity_web.with_model_check(service().health(), propensities().model_check())
    return web.json_response(web.health_body(health, detailed))


@app.route("/metrics", methods=["GET"], api_key_required=True)
def prometheus() -> Response:
    """Prometheus text of this process, and the stream's figures."""
    service()
    propensities()
    telemetry()
    return Response(body=metrics.render().decode(), headers={"Content-Type": metrics.content_type})


@app.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    """The OpenAPI document."""
    return web.json_response(SPEC)


@app.route("/dashboard", methods=["GET"])
def dashboard_page() -> Response:
    """The live dashboard page (open: it asks for the key in the browser, never holds one)."""
    from chalicelib import dashboard

    return dashboard.page(web.current(app))


@app.route("/dashboard/{asset}", methods=["GET"])
def dashboard_asset(asset: str) -> Response:
    """One of the dashboard page's files (its script, styles and the vendored uPlot)."""
    from chalicelib import dashboard

    return dashboard.asset(asset, web.current(app))
