"""Request parsing and response shaping for the scoring API (no feature or model logic).

Errors are JSON with the field and the problem, e.g. ``{"error": "validation_error",
"field": "amount", "problem": "must be a finite number of at least 0 (got -1)"}``.
Bodies are parsed and transactions validated by the same total rules as the stream
(`kestrel.events`), so any body gets a 400 naming the field rather than a 500.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from chalice.app import Chalice, Request, Response

from kestrel.decisions import DecisionRecord
from kestrel.events import (
    PoisonRecord,
    Transaction,
    json_document,
    transaction_from_mapping,
    valid_identifier,
)
from kestrel.serving import EntityFeatures, StoreUnavailable
from kestrel.settings import Settings
from kestrel.telemetry import MAX_WINDOW_S, TelemetrySnapshot, TelemetryUnavailable

Handler = Callable[[Request], Response]
T = TypeVar("T")

MAX_BATCH = 100
JSON = "application/json"
# Paths open without an API key: liveness probes, the spec, and the dashboard page and its
# files (the page asks for the key in the browser and sends it on its /v1 calls).
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/dashboard", "/dashboard/{asset}"})


class HttpError(Exception):
    """An error answered as JSON with its status, code, field and problem."""

    def __init__(self, status: int, error: str, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.status, self.error, self.field, self.problem = status, error, field, problem

    def response(self) -> Response:
        """The JSON error response."""
        body = {"error": self.error, "field": self.field, "problem": self.problem}
        return json_response(body, self.status)


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A compact JSON response (orjson; a NaN or infinity is written as null)."""
    return Response(
        body=orjson.dumps(body, default=_plain, option=orjson.OPT_NON_STR_KEYS).decode(),
        status_code=status,
        headers={"Content-Type": JSON, **headers} if headers else {"Content-Type": JSON},
    )


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: numpy scalars, by their value."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def current(app: Chalice) -> Request:
    """The request being handled."""
    request = app.current_request
    if request is None:
        raise RuntimeError("no current request: called outside a route")
    return request


def json_body(request: Request) -> Any:
    """The request's JSON body, or a 400 naming the problem."""
    return body_document(request.raw_body)


def body_document(raw: bytes | str | None) -> Any:
    """A request body parsed as the stream parses a record: a JSON value, or a 400 on body."""
    if not raw:
        raise HttpError(400, "validation_error", "body", "a JSON object is required")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        return json_document(raw)
    except PoisonRecord as exc:
        problem = exc.detail.removeprefix("data: ")
        raise HttpError(400, "validation_error", "body", f"not valid JSON: {problem}") from None


def transaction(doc: Any, prefix: str = "") -> Transaction:
    """A validated transaction, or a 400 naming the field (with `prefix`) and the problem."""
    if not isinstance(doc, dict):
        field = prefix.rstrip(".") or "body"
        raise HttpError(400, "validation_error", field, "must be a JSON object")
    try:
        return transaction_from_mapping(doc)
    except PoisonRecord as exc:
        field, _, problem = exc.detail.partition(": ")
        raise HttpError(400, "validation_error", prefix + field, problem) from None


def transactions(doc: Any) -> list[Transaction]:
    """The validated transactions of a batch request (at most MAX_BATCH, else 413)."""
    if not isinstance(doc, dict):
        raise HttpError(400, "validation_error", "body", "must be a JSON object")
    items = doc.get("transactions")
    if not isinstance(items, list) or not items:
        raise HttpError(
            400, "validation_error", "transactions", "must be a non-empty array of transactions"
        )
    if len(items) > MAX_BATCH:
        raise HttpError(
            413,
            "too_many_transactions",
            "transactions",
            f"at most {MAX_BATCH} transactions per request (got {len(items)})",
        )
    return [transaction(item, f"transactions[{i}].") for i, item in enumerate(items)]


def identifier(value: str, field: str) -> str:
    """A path parameter that must be a valid id, or a 400."""
    if not valid_identifier(value):
        raise HttpError(400, "validation_error", field, "must be 1-128 characters of "
                        "A-Z a-z 0-9 _ . : - starting with a letter or digit")  # fmt: skip
    return value


def decision_body(record: DecisionRecord) -> dict[str, Any]:
    """The API's view of a decision."""
    body = record.to_dict()
    if body["score"] is not None and not math.isfinite(body["score"]):
        body["score"] = None
    return body


def entity(fetch: Callable[[], EntityFeatures], id_field: str) -> Response:
    """200 with an entity's features, 400 for a bad id, 503 when the store is unavailable."""
    found = _read(fetch)
    if isinstance(found, Response):
        return found
    return json_response(
        {id_field: found.entity_id, "as_of": found.as_of_ms, "known": found.known,
         "features": found.features}
    )  # fmt: skip


def stored_decision(fetch: Callable[[], DecisionRecord | None], transaction_id: str) -> Response:
    """200 with the stream's decision, 404 when there is none, 400 or 503 as for `entity`."""
    found = _read(fetch)
    if isinstance(found, Response):
        return found
    if found is None:
        return HttpError(
            404, "not_found", "transaction_id", f"no decision stored for {transaction_id}"
        ).response()
    return json_response(decision_body(found))


def _read(fetch: Callable[[], T]) -> T | Response:
    """What `fetch` returns, or the error response for a bad id (400) or no store (503)."""
    try:
        return fetch()
    except HttpError as exc:
        return exc.response()
    except StoreUnavailable as exc:
        return _unavailable(exc)


def _unavailable(exc: StoreUnavailable) -> Response:
    body = {"error": "feature_store_unavailable", "field": "", "problem": str(exc)}
    return json_response(body, 503, {"Retry-After": "1"})


def window(request: Request, default: int = 60) -> int:
    """The ``window`` query parameter: whole seconds 1..MAX_WINDOW_S, else a 400."""
    params = request.query_params
    if params is None or "window" not in params:
        return default
    values = params.getlist("window")
    raw = values[0] if len(values) == 1 else ""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_WINDOW_S):
        raise HttpError(
            400, "validation_error", "window", f"must be one whole number of seconds "
            f"from 1 to {MAX_WINDOW_S}"
        )  # fmt: skip
    return int(raw)


def telemetry(
    fetch: Callable[[int], TelemetrySnapshot],
    request: Request,
    clickstream: Callable[[int], dict[str, Any]] | None = None,
) -> Response:
    """200 with the stream telemetry (and the clickstream's, when given), 400 for a bad
    window, 503 when it cannot be read."""
    try:
        seconds = window(request)
        body = fetch(seconds).to_dict()
        if clickstream is not None:
            body["clickstream"] = clickstream(seconds)
    except HttpError as exc:
        return exc.response()
    except TelemetryUnavailable as exc:
        error = {"error": "telemetry_unavailable", "field": "", "problem": str(exc)}
        return json_response(error, 503, {"Retry-After": "1"})
    return json_response(body)


def key_is_valid(headers: Mapping[str, str], expected: str) -> bool:
    """True when the x-api-key header matches `expected`; never when `expected` is empty."""
    if not expected:
        return False
    provided = headers.get("x-api-key") or ""
    return hmac.compare_digest(provided.encode(), expected.encode())


def carries_key(headers: Mapping[str, str], settings: Settings) -> bool:
    """True when the app checks keys itself (KESTREL_API_AUTH=app) and the header matches."""
    # Behind API Gateway the app holds no key to compare with: False there.
    return settings.api_auth == "app" and key_is_valid(headers, settings.api_key)


def authorized(request: Request, settings: Settings) -> bool:
    """May the request reach its view: an open path, or a keyed one with the key?"""
    # With KESTREL_API_AUTH=gateway, API Gateway refused keyless requests before the
    # function ran; otherwise an empty KESTREL_API_KEY refuses every keyed request.
    return (
        request.path in OPEN_PATHS
        or settings.api_auth == "gateway"
        or carries_key(request.headers, settings)
    )


def health_body(health: dict[str, Any], detailed: bool) -> dict[str, Any]:
    """The /health answer: only ``status`` unless `detailed` (the caller has the key)."""
    return health if detailed else {"status": health["status"]}


def guarded(
    request: Request,
    get_response: Handler,
    settings: Settings,
    observe: Callable[[str, str, int, float], None],
) -> Response:
    """Check the API key, run the view, time it (Server-Timing) and record metrics."""
    started = time.perf_counter_ns()
    if not authorized(request, settings):
        response = json_response({"message": "Forbidden"}, 403)
    else:
        response = get_response(request)
    elapsed_ms = (time.perf_counter_ns() - started) / 1e6
    response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.3f}"
    observe(request.path, request.method, response.status_code, elapsed_ms)
    return response
