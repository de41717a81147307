"""template.yaml's scoring API: one Api event per Chalice route, API keys, usage plan, local runs.

The routes come from the Chalice app itself (`functions/api/app.py`, `app.routes`) and must
match both the template and the list below: the list pins which routes need the key.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kestrel_local.events import load_event
from kestrel_local.functions import functions_of
from kestrel_local.provision import _names
from kestrel_local.template import Stack, load_template

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "functions" / "api"
TEMPLATE = load_template(REPO / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
API_FUNCTION = RESOURCES["ApiFunction"]["Properties"]
SCORING_API = RESOURCES["ScoringApi"]["Properties"]

Route = tuple[str, str]
# (METHOD, path) -> does API Gateway demand the x-api-key header?
EXPECTED_ROUTES: dict[Route, bool] = {
    ("POST", "/v1/score"): True,
    ("POST", "/v1/score/batch"): True,
    ("GET", "/v1/customers/{customer_id}/features"): True,
    ("GET", "/v1/terminals/{terminal_id}/features"): True,
    ("GET", "/v1/decisions/{transaction_id}"): True,
    ("POST", "/v1/propensity"): True,
    ("GET", "/v1/users/{user_id}/features"): True,
    ("GET", "/v1/telemetry"): True,
    ("GET", "/metrics"): True,
    ("GET", "/health"): False,
    ("GET", "/openapi.json"): False,
    ("GET", "/dashboard"): False,
    ("GET", "/dashboard/{asset}"): False,
}
# The dashboard page and its files: open, and not in the OpenAPI document (a user interface,
# not API operations; chalicelib.dashboard.PATHS).
UI_PATHS = frozenset({"/dashboard", "/dashboard/{asset}"})
API_EVENTS: list[tuple[str, dict[str, Any]]] = [
    (name, event["Properties"])
    for name, event in API_FUNCTION["Events"].items()
    if event["Type"] == "Api"
]


def _route(props: dict[str, Any]) -> Route:
    return str(props["Method"]).upper(), str(props["Path"])


def _key_required(props: dict[str, Any]) -> bool:
    """The event's own Auth.ApiKeyRequired, else the API's default (as SAM applies them)."""
    own = (props.get("Auth") or {}).get("ApiKeyRequired")
    return bool(SCORING_API["Auth"]["ApiKeyRequired"] if own is None else own)


def _load_api_module() -> ModuleType:
    """functions/api/app.py as a module (its folder on sys.path for chalicelib)."""
    app_file = API_DIR / "app.py"
    if not app_file.is_file():
        pytest.fail(f"{app_file} is missing: no Chalice routes to check", pytrace=False)
    if str(API_DIR) not in sys.path:
        sys.path.insert(0, str(API_DIR))
    spec = importlib.util.spec_from_file_location("kestrel_api_app_routes", app_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def api_module() -> ModuleType:
    """The scoring API's app module (routes in `app`, HTTP glue in `web`, `SPEC`)."""
    return _load_api_module()


@pytest.fixture(scope="module")
def chalice_routes(api_module: ModuleType) -> dict[Route, Any]:
    """(METHOD, path) -> Chalice RouteEntry for every route of the app."""
    return {
        (method.upper(), path): entry
        for path, methods in api_module.app.routes.items()
        for method, entry in methods.items()
    }


def _walk(value: Any) -> Iterator[str]:
    """Every key and string value anywhere in a parsed template."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, str):
        yield value


def test_api_template_chalice_routes_are_the_expected_ones(
    chalice_routes: dict[Route, Any],
) -> None:
    assert set(chalice_routes) == set(EXPECTED_ROUTES)


def test_api_template_has_exactly_one_api_event_per_chalice_route(
    chalice_routes: dict[Route, Any],
) -> None:
    counts = Counter(_route(props) for _, props in API_EVENTS)
    duplicates = sorted(route for route, n in counts.items() if n > 1)
    assert duplicates == [], f"routes with more than one Api event: {duplicates}"
    assert set(counts) == set(chalice_routes)


@pytest.mark.parametrize(("name", "props"), API_EVENTS, ids=[name for name, _ in API_EVENTS])
def test_api_template_event_targets_scoring_api_with_expected_key_rule(
    name: str, props: dict[str, Any]
) -> None:
    assert props["RestApiId"] == {"Ref": "ScoringApi"}
    route = _route(props)
    assert route in EXPECTED_ROUTES, f"{name}: {route} is not a route of the API"
    assert _key_required(props) is EXPECTED_ROUTES[route], (
        f"{name}: {route} should {'' if EXPECTED_ROUTES[route] else 'not '}need the API key"
    )


def test_api_template_key_rule_is_the_apps_own(
    api_module: ModuleType, chalice_routes: dict[Route, Any]
) -> None:
    # Locally the app checks the key on every path but its open ones; on AWS the gateway
    # does. Both, and the OpenAPI document the app serves, must agree route by route.
    template_rule = {_route(props): _key_required(props) for _, props in API_EVENTS}
    app_rule = {route: route[1] not in api_module.web.OPEN_PATHS for route in chalice_routes}
    spec_paths: dict[str, dict[str, Any]] = api_module.SPEC["paths"]
    spec_rule = {
        (method.upper(), path): bool(operation.get("security", api_module.SPEC.get("security")))
        for path, operations in spec_paths.items()
        for method, operation in operations.items()
    }
    declared_rule = {route: bool(entry.api_key_required) for route, entry in chalice_routes.items()}
    assert app_rule == template_rule
    assert declared_rule == template_rule  # what `chalice package` deploys
    assert spec_rule == {route: v for route, v in template_rule.items() if route[1] not in UI_PATHS}


def test_api_template_function_is_short_and_api_only() -> None:
    assert API_FUNCTION["CodeUri"].rstrip("/") == "functions/api"
    assert API_FUNCTION["Handler"] == "app.app"
    # API Gateway gives up on an integration after 29 s.
    assert API_FUNCTION["Timeout"] <= 29
    assert {event["Type"] for event in API_FUNCTION["Events"].values()} == {"Api"}
    assert API_FUNCTION["Layers"] == [
        {"Ref": "CoreLayer"},
        {"Ref": "ModelLayer"},
        {"Ref": "PropensityModelLayer"},
        {"Ref": "DepsLayer"},
    ]


def test_api_template_policies_are_least_privilege() -> None:
    # The function's own role (no SAM-generated role, so no AWS managed policies with "*").
    assert "Policies" not in API_FUNCTION
    assert API_FUNCTION["Role"] == {"Fn::GetAtt": ["ApiFunctionRole", "Arn"]}
    role = RESOURCES["ApiFunctionRole"]["Properties"]
    assert "ManagedPolicyArns" not in role
    statements = [
        statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if "Fn::If" not in statement  # the VPC network interfaces, only with VpcSubnetIds
    ]
    actions = {
        action: statement["Resource"] for statement in statements for action in statement["Action"]
    }
    logs = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
    reads = {"s3:GetObject", "glue:GetRegistry", "glue:GetSchemaVersion", "sqs:GetQueueAttributes"}
    assert set(actions) == reads | logs
    assert actions["s3:GetObject"] == {"Fn::Sub": "${EventLogBucket.Arn}/models/*"}
    # GET /v1/telemetry reads the depth of the two dead-letter queues, nothing else.
    assert actions["sqs:GetQueueAttributes"] == [
        {"Fn::GetAtt": ["PoisonDLQ", "Arn"]},
        {"Fn::GetAtt": ["OnFailureQueue", "Arn"]},
    ]
    for action in ("glue:GetRegistry", "glue:GetSchemaVersion", *logs):
        resources = actions[action]
        assert all("${AWS::StackName}" in r["Fn::Sub"] for r in resources)


def test_api_template_usage_plan_limits_the_key() -> None:
    auth = SCORING_API["Auth"]
    assert auth["ApiKeyRequired"] is True
    plan = auth["UsagePlan"]
    assert plan["CreateUsagePlan"] == "PER_API"
    assert plan["Throttle"]["RateLimit"] > 0
    assert plan["Throttle"]["BurstLimit"] >= plan["Throttle"]["RateLimit"]
    assert plan["Quota"]["Limit"] > 0
    assert plan["Quota"]["Period"] in {"DAY", "WEEK", "MONTH"}
    assert SCORING_API["StageName"] == {"Ref": "Stage"}


def test_api_template_outputs_url_and_key_id_not_key_value() -> None:
    outputs = TEMPLATE["Outputs"]
    assert "${ScoringApi}.execute-api" in outputs["ScoringApiUrl"]["Value"]["Fn::Sub"]
    # SAM names the key it creates <Api>ApiKey; Ref gives its id, never its value.
    assert outputs["ScoringApiKeyId"]["Value"] == {"Ref": "ScoringApiApiKey"}


def test_api_template_never_sets_kestrel_api_key() -> None:
    assert not [text for text in _walk(TEMPLATE) if "KESTREL_API_KEY" in text]


def test_api_template_leaves_the_key_check_to_api_gateway_on_the_api_function_only() -> None:
    # API Gateway checks the key on AWS, so the app's own check is off there, explicitly.
    assert API_FUNCTION["Environment"]["Variables"]["KESTREL_API_AUTH"] == "gateway"
    others = [
        name
        for name, resource in RESOURCES.items()
        if name != "ApiFunction" and "KESTREL_API_AUTH" in json.dumps(resource)
    ]
    assert others == []
    assert "KESTREL_API_AUTH" not in json.dumps(TEMPLATE.get("Globals", {}))


def test_api_template_translates_to_key_checks_per_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What SAM really deploys: the swagger API Gateway gets, the usage plan and its key.
    # aws-sam-translator (a dev dependency, what cfn-lint and sam validate use) ships no types.
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    template = copy.deepcopy(TEMPLATE)
    for resource in template["Resources"].values():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = "s3://kestrel-artifacts/code.zip"
    translated = Translator(managed_policy_map={}, sam_parser=Parser()).translate(
        sam_template=template, parameter_values={}
    )
    resources = translated["Resources"]
    kinds = Counter(resource["Type"] for resource in resources.values())
    assert kinds["AWS::ApiGateway::UsagePlan"] == 1
    assert kinds["AWS::ApiGateway::ApiKey"] == 1
    assert kinds["AWS::ApiGateway::UsagePlanKey"] == 1
    assert kinds["AWS::ApiGateway::Stage"] == 1
    assert resources["ScoringApiApiKey"]["Type"] == "AWS::ApiGateway::ApiKey"
    body = resources["ScoringApi"]["Properties"]["Body"]
    schemes = body["components"]["securitySchemes"]
    assert schemes["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    deployed = {
        (method.upper(), path): op.get("security") == [{"api_key": []}]
        for path, operations in body["paths"].items()
        for method, op in operations.items()
    }
    assert deployed == EXPECTED_ROUTES


def test_api_template_local_runtime_gives_api_function_no_mappings() -> None:
    stack = Stack(TEMPLATE, stack_name="kestrel")
    _names(stack, "http://127.0.0.1:5050")
    specs = functions_of(stack, REPO)
    api = specs["ApiFunction"]
    assert (api.kinesis, api.sqs) == ((), ())
    assert api.handler == "app.app"
    assert api.timeout_s == API_FUNCTION["Timeout"]
    assert len(api.layer_dirs) == 4  # core, fraud model, propensity model, deps
    assert "KESTREL_API_KEY" not in api.environment
    assert api.environment["KESTREL_API_AUTH"] == "gateway"  # make invoke: past the gateway
    assert "KESTREL_API_AUTH" not in specs["TransactionsFunction"].environment
    # The stream functions keep their mappings.
    assert specs["TransactionsFunction"].kinesis and specs["LabelsFunction"].kinesis


def test_api_template_local_runtime_ignores_api_event_of_any_template(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "app.py").write_text("def handler(event, context):\n    return 1\n")
    (tmp_path / "template.yaml").write_text(
        """
Transform: AWS::Serverless-2016-10-31
Resources:
  Api:
    Type: AWS::Serverless::Api
    Properties: {StageName: dev}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      Runtime: python3.11
      Events:
        Get:
          Type: Api
          Properties: {RestApiId: !Ref Api, Path: /x, Method: GET}
        Nightly:
          Type: Schedule
          Properties: {Schedule: !Sub "rate(1 day)"}
"""
    )
    stack = Stack(load_template(tmp_path / "template.yaml"), stack_name="demo")
    _names(stack, "http://127.0.0.1:5050")
    spec = functions_of(stack, tmp_path)["Fn"]
    assert (spec.kinesis, spec.sqs) == ((), ())


API_SAMPLES = sorted((REPO / "events").glob("api-*.json"))


def test_api_template_has_a_sample_event_per_route() -> None:
    covered = {(e["httpMethod"], e["resource"]) for e in map(load_event, API_SAMPLES)}
    assert covered == set(EXPECTED_ROUTES)


def test_api_template_sample_event_is_served_by_the_chalice_handler(
    api_module: ModuleType,
) -> None:
    # app.app is the Lambda handler: a proxy event in, a proxy response out (this route
    # needs neither Redis nor the model).
    response = api_module.app(load_event(REPO / "events" / "api-openapi.json"), None)
    assert response["statusCode"] == 200
    paths = {p for _, p in EXPECTED_ROUTES if p not in UI_PATHS}
    assert json.loads(response["body"])["paths"].keys() == paths


@pytest.mark.parametrize("path", API_SAMPLES, ids=[p.name for p in API_SAMPLES])
def test_api_template_sample_event_matches_a_route(path: Path) -> None:
    event = load_event(path)
    context = event["requestContext"]
    route = (event["httpMethod"], event["resource"])
    assert route in EXPECTED_ROUTES, f"{path.name}: {route} is not a route of the API"
    assert (context["httpMethod"], context["resourcePath"]) == route
    # A proxy event carries both header forms, as API Gateway sends them.
    assert {k: [v] for k, v in event["headers"].items()} == event["multiValueHeaders"]
    # On AWS a key route's event always carries the key: the gateway rejects the others.
    has_key = "x-api-key" in {name.lower() for name in event["headers"]}
    assert has_key is EXPECTED_ROUTES[route]
    params = event["pathParameters"] or {}
    assert sorted(params) == sorted(
        part[1:-1] for part in route[1].split("/") if part.startswith("{")
    )
    concrete = route[1]
    for name, value in params.items():
        concrete = concrete.replace("{" + name + "}", value)
    assert event["path"] == concrete
    if route[0] == "POST":
        assert event["headers"]["Content-Type"] == "application/json"
        assert isinstance(json.loads(event["body"]), dict)
    else:
        assert event["body"] is None
