"""Kestrel's scoring API (Chalice): routes only; the work is in `kestrel.serving`."""

from __future__ import annotations

from functools import cache

from chalice.app import Chalice, Request, Response
from chalicelib import web
from chalicelib.openapi import SPEC
from chalicelib.telemetry import ApiMetrics

from kestrel import clients
from kestrel.serving import ScoringService

app = Chalice(app_name="kestrel-api")
metrics = ApiMetrics()


@cache
def service() -> ScoringService:
    """The container's scoring service, its state tracked by the metrics."""
    scoring = clients.scoring_service()
    metrics.track(lambda: scoring.breaker_state, lambda: scoring.model_version is not None)
    return scoring


@app.middleware("http")
def guard(request: Request, get_response: web.Handler) -> Response:
    """API key, Server-Timing and request metrics around every route."""
    return web.guarded(request, get_response, clients.settings().api_key, metrics.observe)


@app.route("/v1/score", methods=["POST"])
def score() -> Response:
    """Score one transaction as if it were applied now."""
    try:
        tx = web.transaction(web.json_body(web.current(app)))
    except web.HttpError as exc:
        return exc.response()
    records = service().score([tx])
    metrics.decided(records)
    return web.json_response(web.decision_body(records[0]))


@app.route("/v1/score/batch", methods=["POST"])
def score_batch() -> Response:
    """Score up to 100 transactions, answered in order."""
    try:
        txs = web.transactions(web.json_body(web.current(app)))
    except web.HttpError as exc:
        return exc.response()
    records = service().score(txs)
    metrics.decided(records)
    return web.json_response({"results": [web.decision_body(r) for r in records]})


@app.route("/v1/customers/{customer_id}/features", methods=["GET"])
def customer_features(customer_id: str) -> Response:
    """A customer's features now."""
    return web.entity(
        lambda: service().customer_features(web.identifier(customer_id, "customer_id")),
        "customer_id",
    )


@app.route("/v1/terminals/{terminal_id}/features", methods=["GET"])
def terminal_features(terminal_id: str) -> Response:
    """A terminal's features now."""
    return web.entity(
        lambda: service().terminal_features(web.identifier(terminal_id, "terminal_id")),
        "terminal_id",
    )


@app.route("/v1/decisions/{transaction_id}", methods=["GET"])
def decision(transaction_id: str) -> Response:
    """The stream's decision for a transaction."""
    return web.stored_decision(
        lambda: service().decision(web.identifier(transaction_id, "transaction_id")),
        transaction_id,
    )


@app.route("/health", methods=["GET"])
def health() -> Response:
    """The feature store, model and schema registry checks."""
    return web.json_response(service().health())


@app.route("/metrics", methods=["GET"])
def prometheus() -> Response:
    """Prometheus text of this process."""
    service()
    return Response(body=metrics.render().decode(), headers={"Content-Type": metrics.content_type})


@app.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    """The OpenAPI document."""
    return web.json_response(SPEC)
