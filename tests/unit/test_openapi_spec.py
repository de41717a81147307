"""Unit tests for the scoring API's OpenAPI document (chalicelib.openapi.SPEC) against the app.

The spec must list exactly the Chalice app's routes, mark exactly the keyed ones with the
ApiKey scheme, validate as OpenAPI 3.0, and describe requests the way the domain validates
them (`kestrel.events`), so a schemathesis run's "valid" requests are valid for the API too.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import OpenAPIV30SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from kestrel.events import PoisonRecord, transaction_from_mapping, valid_identifier

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "functions" / "api"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _load_app() -> ModuleType:
    if str(API_DIR) not in sys.path:
        sys.path.insert(0, str(API_DIR))
    spec = importlib.util.spec_from_file_location("kestrel_api_app_openapi", API_DIR / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


APP = _load_app()
SPEC: dict[str, Any] = APP.SPEC
# The dashboard's routes (a page and its files) are open and left out of the document.
UI_PATHS = frozenset({"/dashboard", "/dashboard/{asset}"})
WEB: Any = sys.modules["chalicelib.web"]
ID_PATTERN: str = sys.modules["chalicelib.openapi"].ID_PATTERN
OPERATIONS = [
    (path, method, operation)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    if method in METHODS
]


def component(name: str) -> OAS30Validator:
    """A validator for one of the spec's component schemas (formats checked)."""
    schema = {"components": SPEC["components"], "$ref": f"#/components/schemas/{name}"}
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def domain_accepts(doc: dict[str, Any]) -> bool:
    try:
        transaction_from_mapping(doc)
    except PoisonRecord:
        return False
    return True


def test_openapi_spec_has_exactly_the_apps_routes() -> None:
    routes = {
        (path, method.lower())
        for path, methods in APP.app.routes.items()
        for method in methods
        if path not in UI_PATHS
    }
    assert {(path, method) for path, method, _ in OPERATIONS} == routes
    assert len(OPERATIONS) == len(routes) == 11


def test_openapi_spec_is_the_document_the_app_serves() -> None:
    response = APP.openapi()
    assert response.status_code == 200
    assert json.loads(response.body) == SPEC


def test_openapi_spec_marks_keyed_operations_with_api_key_and_open_ones_with_none() -> None:
    scheme = SPEC["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    open_paths = set()
    for path, method, operation in OPERATIONS:
        assert "security" in operation, (path, method)
        if path in WEB.OPEN_PATHS:
            assert operation["security"] == [], (path, method)
            open_paths.add(path)
        else:
            assert operation["security"] == [{"ApiKey": []}], (path, method)
            assert "403" in operation["responses"], (path, method)
    assert open_paths == set(WEB.OPEN_PATHS) - UI_PATHS == {"/health", "/openapi.json"}
    assert UI_PATHS <= WEB.OPEN_PATHS and not UI_PATHS & set(SPEC["paths"])
    assert "security" not in SPEC  # no global default that an operation could inherit


def test_openapi_spec_validates_as_openapi_3_0() -> None:
    assert SPEC["openapi"].startswith("3.0.")
    validate(SPEC)  # detects the version
    validate(SPEC, cls=OpenAPIV30SpecValidator)
    broken = copy.deepcopy(SPEC)
    del broken["paths"]["/v1/score"]["post"]["responses"]
    with pytest.raises(OpenAPIValidationError, match="responses"):
        validate(broken, cls=OpenAPIV30SpecValidator)


@pytest.mark.parametrize("name", sorted(SPEC["components"]["schemas"]))
def test_openapi_spec_component_schemas_are_valid_schemas(name: str) -> None:
    OAS30Validator.check_schema(SPEC["components"]["schemas"][name])


def test_openapi_spec_path_parameters_are_the_routes_placeholders() -> None:
    for path, method, operation in OPERATIONS:
        placeholders = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == placeholders, (path, method)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["required"] is True
                assert parameter["schema"]["pattern"] == ID_PATTERN
            else:  # the only other kind: optional query parameters (/v1/telemetry's window)
                assert (parameter["in"], parameter["required"]) == ("query", False)


def test_openapi_spec_sample_events_are_valid_requests() -> None:
    single = json.loads(json.loads((REPO / "events" / "api-score.json").read_text())["body"])
    assert list(component("Transaction").iter_errors(single)) == []
    batch_event = json.loads((REPO / "events" / "api-score-batch.json").read_text())
    batch = json.loads(batch_event["body"])
    schema = SPEC["paths"]["/v1/score/batch"]["post"]["requestBody"]["content"]
    batch_schema = {"components": SPEC["components"], **schema["application/json"]["schema"]}
    assert list(OAS30Validator(batch_schema).iter_errors(batch)) == []
    assert domain_accepts(single)
    assert all(domain_accepts(t) for t in batch["transactions"])


ID_SAMPLES = [
    "T-000101",
    "C-000042",
    "TERM-0007",
    "0",
    "a",
    "A.b:c_d-e",
    "9" * 128,
    "9" * 129,
    "",
    "-leading-dash",
    "_leading_underscore",
    ".leading-dot",
    ":leading-colon",
    "has space",
    "has/slash",
    "has*star",
    "é-accent",
    "T-1\n",
    "\nT-1",
    "T-1 ",
]


@pytest.mark.parametrize("sample", ID_SAMPLES, ids=repr)
def test_openapi_spec_id_pattern_is_the_events_id_rule(sample: str) -> None:
    # JSON Schema patterns are ECMA-262: `$` is the end of the string, as in re.fullmatch.
    id_schema = SPEC["components"]["schemas"]["Transaction"]["properties"]["transaction_id"]
    assert id_schema["pattern"] == ID_PATTERN
    in_spec = (
        re.fullmatch(ID_PATTERN, sample) is not None
        and id_schema["minLength"] <= len(sample) <= id_schema["maxLength"]
    )
    assert in_spec == valid_identifier(sample)


def transaction(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "transaction_id": "T-1",
        "customer_id": "C-1",
        "terminal_id": "TERM-1",
        "amount": 57.19,
        "event_time": "2026-11-28T09:15:02.123Z",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


AGREEING = [
    transaction(),
    transaction(amount=0),
    transaction(amount=10**6),
    transaction(amount=-0.01),
    transaction(amount="1"),
    transaction(amount=True),
    transaction(amount=...),
    transaction(customer_id=...),
    transaction(transaction_id="x" * 128),
    transaction(transaction_id="x" * 129),
    transaction(terminal_id="-T"),
    transaction(event_time=946_684_800_000),
    transaction(event_time=946_684_799_999),
    transaction(event_time=4_102_444_799_999),
    transaction(event_time=4_102_444_800_000),
    transaction(event_time=1_795_857_302),  # epoch seconds
    transaction(event_time=1.5e12),
    transaction(event_time="2026-11-28T09:15:02Z"),
    transaction(event_time="2026-11-28T09:15:02.123+00:00"),
    transaction(event_time="2099-12-31T23:59:59.999Z"),
    transaction(event_time="1999-12-31T23:59:59Z"),
    transaction(event_time="2026-11-28T09:15:02+01:00"),
    transaction(event_time="2026-13-40T09:15:02Z"),
    transaction(event_time="yesterday"),
    transaction(channel=None, device_id=None),
    transaction(channel="card_present", device_id="d" * 128),
    transaction(channel=""),
    transaction(device_id="d" * 129),
    transaction(channel=7),
    transaction(channel="web\n"),
    transaction(channel="\x00"),
    transaction(device_id="d\x9f"),
    transaction(channel="a\u2028b \u200b\U0001f4b3"),
]


@pytest.mark.parametrize("doc", AGREEING, ids=lambda d: json.dumps(d)[-60:])
def test_openapi_spec_transaction_schema_agrees_with_the_domain(doc: dict[str, Any]) -> None:
    assert component("Transaction").is_valid(doc) == domain_accepts(doc)


def test_openapi_spec_event_time_pattern_stops_at_the_domains_year_2100() -> None:
    doc = transaction(event_time="2150-01-01T00:00:00Z")
    assert component("Transaction").is_valid(doc) == domain_accepts(doc)


@pytest.mark.parametrize(
    "doc",
    [transaction(transaction_id="T-1\n"), transaction(event_time="2026-11-28T09:15:02Z\n")],
    ids=["id", "event_time"],
)
def test_openapi_spec_patterns_refuse_a_trailing_newline_in_python_validators(
    doc: dict[str, Any],
) -> None:
    assert component("Transaction").is_valid(doc) == domain_accepts(doc)
