"""Request parsing and response shaping for the propensity routes (no feature or model logic).

The body is parsed as the stream parses a clickstream record (`kestrel.click_events`, the
same total rules), so any body gets a 400 naming the field rather than a 500.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from chalice.app import Response

from chalicelib import web
from kestrel.click_events import ClickEvent, click_from_mapping
from kestrel.events import PoisonRecord
from kestrel.propensity_serving import PropensityResult, UserFeatures
from kestrel.serving import StoreUnavailable


def click(doc: Any) -> ClickEvent:
    """A validated clickstream event, or a 400 naming the field and the problem."""
    if not isinstance(doc, dict):
        raise web.HttpError(400, "validation_error", "body", "must be a JSON object")
    try:
        return click_from_mapping(doc)
    except PoisonRecord as exc:
        field, _, problem = exc.detail.partition(": ")
        raise web.HttpError(400, "validation_error", field, problem) from None


def propensity_body(result: PropensityResult) -> dict[str, Any]:
    """The API's view of a propensity (a non-finite number, should one occur, as null)."""
    body = result.to_dict()
    if not math.isfinite(body["propensity"]):
        body["propensity"] = None
    return body


def with_model_check(health: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """`health` with the propensity model's check; ``degraded`` when it fails."""
    health["checks"]["propensity_model"] = check
    if not check["ok"]:
        health["status"] = "degraded"
    return health


def user(fetch: Callable[[], UserFeatures]) -> Response:
    """200 with a user's features and latest propensity, 400 for a bad id, 503 if no store."""
    try:
        found = fetch()
    except web.HttpError as exc:
        return exc.response()
    except StoreUnavailable as exc:
        body = {"error": "feature_store_unavailable", "field": "", "problem": str(exc)}
        return web.json_response(body, 503, {"Retry-After": "1"})
    return web.json_response(
        {"user_id": found.user_id, "as_of": found.as_of_ms, "known": found.known,
         "features": found.features, "propensity": found.propensity}
    )  # fmt: skip
