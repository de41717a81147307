"""The propensity routes' part of the OpenAPI document (`chalicelib.openapi` merges it in)."""

from __future__ import annotations

import copy
from typing import Any

from kestrel.click_events import CLICK_TYPES, MAX_PRICE
from kestrel.click_features import CLICK_FEATURE_NAMES
from kestrel.click_telemetry import CLICK_COUNTERS
from kestrel.propensity_serving import USER_FEATURES

_REF = "#/components/schemas/"
_KEY: list[dict[str, list[str]]] = [{"ApiKey": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _numbers(names: tuple[str, ...], nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(names),
        "properties": {n: {"type": "number"} for n in names},
    }
    if nullable:
        schema["nullable"] = True
    return schema


_NONE = {name: {"nullable": True, "enum": [None]} for name in ("product_id", "category", "price")}


def _click(
    id_schema: dict[str, Any],
    event_time: dict[str, Any],
    types: list[str],
    product: dict[str, Any],
    required: list[str],
) -> dict[str, Any]:
    """A clickstream event of `types`, its product fields as `product` says."""
    return {
        "type": "object",
        "required": ["event_id", "user_id", "session_id", "event_type", "event_time", *required],
        "properties": {
            "event_id": id_schema,
            "user_id": id_schema,
            "session_id": id_schema,
            "event_type": {"type": "string", "enum": types},
            "event_time": copy.deepcopy(event_time),
            **product,
        },
    }


def schemas(id_schema: dict[str, Any], event_time: dict[str, Any]) -> dict[str, Any]:
    """The ClickEvent, Propensity and UserFeatures component schemas."""
    return {
        "ClickEvent": {
            "description": "A page_view names no product (product_id, category and price "
            "null or absent); the other types carry all three.",
            "oneOf": [_ref("PageView"), _ref("ProductEvent")],
        },
        "PageView": _click(id_schema, event_time, ["page_view"], _NONE, []),
        "ProductEvent": _click(
            id_schema,
            event_time,
            [t for t in CLICK_TYPES if t != "page_view"],
            {"product_id": id_schema, "category": id_schema,
             "price": {"type": "number", "minimum": 0, "maximum": MAX_PRICE}},
            ["product_id", "category", "price"],
        ),
        "Propensity": {
            "type": "object",
            "required": ["event_id", "user_id", "session_id", "event_type", "propensity",
                         "model_version", "feature_set_hash", "reasons", "degraded",
                         "degraded_reasons", "cold_start", "features", "scored_at", "source"],
            "properties": {
                "event_id": {"type": "string"},
                "user_id": {"type": "string"},
                "session_id": {"type": "string"},
                "event_type": {"type": "string", "enum": list(CLICK_TYPES)},
                "propensity": {"type": "number", "minimum": 0, "maximum": 1,
                               "nullable": True},
                "model_version": {"type": "string", "nullable": True},
                "feature_set_hash": {"type": "string"},
                "reasons": {"type": "array", "items": {
                    "type": "object",
                    "required": ["kind", "name", "value", "reference", "deviation"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["feature", "prior"]},
                        "name": {"type": "string"},
                        "value": {"type": "number"},
                        "reference": {"type": "number"},
                        "deviation": {"type": "number", "nullable": True},
                    },
                }},
                "degraded": {"type": "boolean"},
                "degraded_reasons": {"type": "array", "items": {
                    "type": "string",
                    "enum": ["feature_store_unavailable", "no_model", "model_error"]}},
                "cold_start": {"type": "boolean"},
                "features": _numbers(CLICK_FEATURE_NAMES, nullable=True),
                "scored_at": {"type": "integer"},
                "source": {"type": "string", "enum": ["api"]},
            },
        },
        "UserFeatures": {
            "type": "object",
            "required": ["user_id", "as_of", "known", "features", "propensity"],
            "properties": {
                "user_id": {"type": "string"},
                "as_of": {"type": "integer"},
                "known": {"type": "boolean"},
                "features": _numbers(USER_FEATURES),
                "propensity": {
                    "type": "object",
                    "nullable": True,
                    "required": ["propensity", "model_version", "event_time", "event_id",
                                 "session_id"],
                    "properties": {
                        "propensity": {"type": "number", "minimum": 0, "maximum": 1},
                        "model_version": {"type": "string"},
                        "event_time": {"type": "integer"},
                        "event_id": {"type": "string"},
                        "session_id": {"type": "string"},
                    },
                },
            },
        },
    }  # fmt: skip


def paths(
    id_schema: dict[str, Any], errors: dict[str, Any], store_down: dict[str, Any]
) -> dict[str, Any]:
    """The /v1/propensity and /v1/users/{user_id}/features operations."""
    return {
        "/v1/propensity": {
            "post": {
                "operationId": "propensity",
                "summary": "A click's purchase propensity as if it were applied now "
                "(writes nothing).",
                "description": "When the feature store or the propensity model is "
                "unavailable, the answer is the documented prior (degraded).",
                "security": _KEY,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ClickEvent")}},
                },
                "responses": {
                    "200": _json(_ref("Propensity"), "The propensity, the model and why."),
                    **errors,
                },
            }
        },
        "/v1/users/{user_id}/features": {
            "get": {
                "operationId": "userFeatures",
                "summary": "The user's clickstream features now and latest stored propensity.",
                "security": _KEY,
                "parameters": [
                    {"name": "user_id", "in": "path", "required": True, "schema": id_schema}
                ],
                "responses": {
                    "200": _json(
                        _ref("UserFeatures"),
                        "Features of the user; known is false for a user with no history.",
                    ),
                    **errors,
                    **store_down,
                },
            }
        },
    }


def click_telemetry(telemetry: dict[str, Any]) -> dict[str, Any]:
    """The ``clickstream`` part of the Telemetry schema, from the fraud stream's parts."""
    fraud = telemetry["properties"]
    counter = fraud["labels"]
    counts = {
        "type": "object",
        "required": ["events", *CLICK_COUNTERS],
        "properties": dict.fromkeys(("events", *CLICK_COUNTERS), counter),
    }
    rate = copy.deepcopy(fraud["events_per_s"])
    rate["description"] = "series[i]: clicks processed in second start_s + i (the last one "
    "still running); current: mean of the last 5 complete seconds."
    return {
        "type": "object",
        "description": "The clickstream (ClickstreamFunction) over the same window: clicks "
        "processed per second, freshness from Kinesis arrival to the propensity stored, and "
        "the clicks' propensities in 20 equal bins.",
        "required": ["events_per_s", "freshness_ms", "propensity_histogram", "counts",
                     "totals", "model_version", "last_batch_at"],
        "properties": {
            "events_per_s": rate,
            "freshness_ms": fraud["freshness_ms"],
            "propensity_histogram": fraud["score_histogram"],
            "counts": counts,
            "totals": counts,
            "model_version": fraud["model_version"],
            "last_batch_at": fraud["last_batch_at"],
        },
    }  # fmt: skip


def merged(spec: dict[str, Any], id_schema: dict[str, Any]) -> dict[str, Any]:
    """`spec` with the propensity routes and their schemas added, and the clickstream's
    telemetry in the Telemetry schema."""
    components = spec["components"]["schemas"]
    telemetry = components["Telemetry"]
    telemetry["properties"]["clickstream"] = click_telemetry(telemetry)
    telemetry["required"] = [*telemetry["required"], "clickstream"]
    event_time = components["Transaction"]["properties"]["event_time"]
    components.update(schemas(id_schema, event_time))
    operations = spec["paths"]
    errors = {k: v for k, v in operations["/v1/score"]["post"]["responses"].items() if k != "200"}
    store_down = {"503": operations["/v1/customers/{customer_id}/features"]["get"]
                  ["responses"]["503"]}  # fmt: skip
    operations.update(paths(id_schema, errors, store_down))
    return spec
