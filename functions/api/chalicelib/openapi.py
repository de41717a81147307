"""The scoring API's OpenAPI 3 document, served at ``GET /openapi.json``.

A test checks that its paths and methods are exactly the Chalice app's routes, and a
schemathesis run checks the running API against it.
"""

from __future__ import annotations

from typing import Any

from chalicelib import openapi_propensity
from kestrel.events import MAX_AMOUNT
from kestrel.serving import CUSTOMER_FEATURES, TERMINAL_FEATURES
from kestrel.telemetry import COUNTERS, DECISION_TYPES, MAX_WINDOW_S, SHADOW_COUNTERS

# The id rule of `kestrel.events` (valid_identifier), as a JSON-schema pattern.
# (?![\s\S]) ends the string in ECMA-262 and Python alike ($ admits a trailing \n in Python).
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}(?![\\s\\S])"
_ID = {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128}
# Free text (`kestrel.events`): no control characters. The domain refuses lone surrogates
# too, which a pattern cannot say portably (Rust's and other engines reject the range).
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*(?![\\s\\S])"
_TEXT = {
    "type": "string",
    "pattern": TEXT_PATTERN,
    "minLength": 1,
    "maxLength": 128,
    "nullable": True,
    "description": "No control characters (U+0000-U+001F, U+007F-U+009F), no lone surrogates.",
}
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "A field is missing or invalid: the body names it."),
    "403": _json(_ref("Forbidden"), "The x-api-key header is missing or wrong."),
}
_STORE_DOWN = {"503": _json(_ref("Error"), "The feature store is unavailable; retry later.")}
_KEY: list[dict[str, list[str]]] = [{"ApiKey": []}]
_UTC_TIME = "^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|\\+00:00)(?![\\s\\S])"


def _entity(kind: str, names: tuple[str, ...]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": f"{kind}Features",
            "summary": f"The {kind}'s features now (windows ending now).",
            "security": _KEY,
            "parameters": [{"name": f"{kind}_id", "in": "path", "required": True, "schema": _ID}],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": [f"{kind}_id", "as_of", "known", "features"],
                        "properties": {
                            f"{kind}_id": {"type": "string"},
                            "as_of": {"type": "integer"},
                            "known": {"type": "boolean"},
                            "features": {
                                "type": "object",
                                "required": list(names),
                                "properties": {n: {"type": "number"} for n in names},
                            },
                        },
                    },
                    "Features of the entity; known is false for an entity with no history.",
                ),
                **_ERRORS,
                **_STORE_DOWN,
            },
        }
    }


_COUNT = {"type": "integer", "minimum": 0}
_MS = {"type": "number", "minimum": 0, "nullable": True}
_DECISIONS = {"type": "object", "required": list(DECISION_TYPES),
              "properties": dict.fromkeys(DECISION_TYPES, _COUNT)}  # fmt: skip
_COUNTS = {
    "type": "object",
    "description": "Per attempt (a retried batch counts again); events = applied + duplicates.",
    "required": ["events", *COUNTERS, "decisions"],
    "properties": {"events": _COUNT, **dict.fromkeys(COUNTERS, _COUNT), "decisions": _DECISIONS},
}
_DEPTH = {"type": "integer", "minimum": 0, "nullable": True}
TELEMETRY = {
    "type": "object",
    "required": ["window_s", "generated_at", "events_per_s", "freshness_ms", "decisions",
                 "fraud_rate", "labels", "score_histogram", "counts", "totals", "dlq",
                 "model_version", "last_batch_at", "drift", "shadow"],
    "properties": {
        "window_s": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_S},
        "generated_at": {"type": "string", "format": "date-time"},
        "events_per_s": {
            "type": "object",
            "description": "series[i]: transactions processed in second start_s + i (the "
            "last one still running); current: mean of the last 5 complete seconds.",
            "required": ["current", "mean", "start_s", "series"],
            "properties": {"current": {"type": "number", "minimum": 0},
                           "mean": {"type": "number", "minimum": 0},
                           "start_s": {"type": "integer"},
                           "series": {"type": "array", "items": _COUNT}},
        },
        "freshness_ms": {
            "type": "object",
            "description": "Handler time minus Kinesis arrival; percentiles estimated from a "
            "log histogram (19% bins); null when no event in the window.",
            "required": ["p50", "p99", "max", "count"],
            "properties": {"p50": _MS, "p99": _MS, "max": _MS, "count": _COUNT},
        },
        "decisions": _DECISIONS,
        "fraud_rate": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        "labels": _COUNT,
        "score_histogram": {
            "type": "object",
            "required": ["edges", "counts"],
            "properties": {"edges": {"type": "array", "items": {"type": "number"}},
                           "counts": {"type": "array", "items": _COUNT}},
        },
        "counts": _COUNTS,
        "totals": _COUNTS,
        "dlq": {"type": "object", "required": ["poison", "on_failure"],
                "properties": {"poison": _DEPTH, "on_failure": _DEPTH}},
        "model_version": {"type": "string", "nullable": True},
        "last_batch_at": {"type": "string", "format": "date-time", "nullable": True},
        "drift": {
            "type": "object",
            "description": "The drift job's latest status as it wrote it; unknown without one.",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
        "shadow": {
            "type": "object",
            "description": "The challenger that shadow-scores the stream (model_version null: "
            "none); its scores in the window, and the batches it failed on.",
            "required": ["model_version", *SHADOW_COUNTERS, "score_histogram"],
            "properties": {
                "model_version": {"type": "string", "nullable": True},
                **dict.fromkeys(SHADOW_COUNTERS, _COUNT),
                "score_histogram": {
                    "type": "object",
                    "required": ["edges", "counts"],
                    "properties": {"edges": {"type": "array", "items": {"type": "number"}},
                                   "counts": {"type": "array", "items": _COUNT}},
                },
            },
        },
    },
}  # fmt: skip


def build_spec(
    customer_features: tuple[str, ...], terminal_features: tuple[str, ...]
) -> dict[str, Any]:
    """The OpenAPI document for the given feature names."""
    score_ok = _json(_ref("Decision"), "The score, the decision and why.")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Kestrel scoring API",
            "version": "1",
            "description": "Real-time fraud scores from the same features and model as the "
            "stream. When the feature store or the model is unavailable, decisions fall back "
            "to rules on the request alone and say so (degraded).",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": {
                "Transaction": {
                    "type": "object",
                    "required": ["transaction_id", "customer_id", "terminal_id", "amount",
                                 "event_time"],
                    "properties": {
                        "transaction_id": _ID,
                        "customer_id": _ID,
                        "terminal_id": _ID,
                        "amount": {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT},
                        "event_time": {
                            "description": "Epoch milliseconds (2000-2100), or ISO-8601 in UTC.",
                            "oneOf": [
                                {"type": "integer", "minimum": 946684800000,
                                 "maximum": 4102444799999},
                                {"type": "string", "format": "date-time",
                                 "pattern": _UTC_TIME},
                            ],
                        },
                        "channel": _TEXT,
                        "device_id": _TEXT,
                    },
                },
                "Reason": {
                    "type": "object",
                    "required": ["kind", "name", "value", "reference", "deviation"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["feature", "rule"]},
                        "name": {"type": "string"},
                        "value": {"type": "number"},
                        "reference": {"type": "number"},
                        "deviation": {"type": "number", "nullable": True},
                    },
                },
                "Decision": {
                    "type": "object",
                    "required": ["transaction_id", "score", "decision", "model_version",
                                 "feature_set_hash", "reasons", "degraded", "degraded_reasons",
                                 "cold_start", "decided_at", "source"],
                    "properties": {
                        "transaction_id": {"type": "string"},
                        "customer_id": {"type": "string"},
                        "terminal_id": {"type": "string"},
                        "score": {"type": "number", "nullable": True, "minimum": 0,
                                  "maximum": 1},
                        "decision": {"type": "string", "enum": ["APPROVE", "REVIEW", "DECLINE"]},
                        "model_version": {"type": "string", "nullable": True},
                        "feature_set_hash": {"type": "string"},
                        "reasons": {"type": "array", "items": _ref("Reason")},
                        "degraded": {"type": "boolean"},
                        "degraded_reasons": {
                            "type": "array",
                            "items": {"type": "string",
                                      "enum": ["feature_store_unavailable", "no_model",
                                               "model_error"]},
                        },
                        "cold_start": {
                            "type": "object",
                            "required": ["customer", "terminal"],
                            "properties": {"customer": {"type": "boolean"},
                                           "terminal": {"type": "boolean"}},
                        },
                        "decided_at": {"type": "integer"},
                        "source": {"type": "string", "enum": ["api", "stream"]},
                    },
                },
                "Telemetry": TELEMETRY,
                "Error": {
                    "type": "object",
                    "required": ["error", "field", "problem"],
                    "properties": {
                        "error": {"type": "string"},
                        "field": {"type": "string"},
                        "problem": {"type": "string"},
                    },
                },
                "Forbidden": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string"}},
                },
            },
        },
        "paths": {
            "/v1/score": {
                "post": {
                    "operationId": "score",
                    "summary": "Score one transaction as if it were applied now (writes nothing).",
                    "security": _KEY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Transaction")}},
                    },
                    "responses": {"200": score_ok, **_ERRORS},
                }
            },
            "/v1/score/batch": {
                "post": {
                    "operationId": "scoreBatch",
                    "summary": "Score up to 100 transactions, answers in request order.",
                    "security": _KEY,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["transactions"],
                            "properties": {"transactions": {
                                "type": "array", "minItems": 1, "maxItems": 100,
                                "items": _ref("Transaction")}},
                        }}},
                    },
                    "responses": {
                        "200": _json(
                            {"type": "object", "required": ["results"],
                             "properties": {"results": {"type": "array",
                                                        "items": _ref("Decision")}}},
                            "One decision per transaction, in order.",
                        ),
                        **_ERRORS,
                        "413": _json(_ref("Error"), "More than 100 transactions."),
                    },
                }
            },
            "/v1/customers/{customer_id}/features": _entity("customer", customer_features),
            "/v1/terminals/{terminal_id}/features": _entity("terminal", terminal_features),
            "/v1/decisions/{transaction_id}": {
                "get": {
                    "operationId": "decision",
                    "summary": "The decision the stream made for a transaction.",
                    "security": _KEY,
                    "parameters": [
                        {"name": "transaction_id", "in": "path", "required": True, "schema": _ID}
                    ],
                    "responses": {
                        "200": _json(_ref("Decision"), "The stored decision."),
                        "404": _json(_ref("Error"), "No decision for this transaction."),
                        **_ERRORS,
                        **_STORE_DOWN,
                    },
                }
            },
            "/v1/telemetry": {
                "get": {
                    "operationId": "telemetry",
                    "summary": "The stream's live figures over the last window seconds.",
                    "security": _KEY,
                    "parameters": [{
                        "name": "window", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_S,
                                   "default": 60},
                    }],
                    "responses": {
                        "200": _json(_ref("Telemetry"), "Rates, freshness, decisions, fraud "
                                     "rate, scores, dead letters, model and drift."),
                        **_ERRORS,
                        "503": _json(_ref("Error"), "The telemetry store is unavailable."),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "The state of the feature store, the model and the schema registry.",
                    "description": "Open: without the key it answers only the status. With "
                                   "the key (x-api-key, checked by the app itself; not on "
                                   "AWS, where API Gateway holds the key) it adds each check "
                                   "and why it failed. Checked at most once a second.",
                    "security": [],
                    "responses": {"200": _json(
                        {"type": "object", "required": ["status"],
                         "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]},
                                        "checks": {"type": "object"}}},
                        "ok, or degraded (scoring still answers); the checks with the key.",
                    )},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of this process.",
                    "security": _KEY,
                    "responses": {
                        "200": {"description": "Prometheus text format.",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
        },
    }  # fmt: skip


SPEC = openapi_propensity.merged(build_spec(CUSTOMER_FEATURES, TERMINAL_FEATURES), _ID)
