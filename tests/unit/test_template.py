"""Kestrel's template.yaml: every stream mapping carries the failure-handling settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kestrel_local.template import load_template

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = load_template(ROOT / "template.yaml")
FUNCTIONS = {
    name: resource
    for name, resource in TEMPLATE["Resources"].items()
    if resource["Type"] == "AWS::Serverless::Function"
}
KINESIS_EVENTS = [
    (name, event_name, event["Properties"])
    for name, resource in FUNCTIONS.items()
    for event_name, event in resource["Properties"].get("Events", {}).items()
    if event["Type"] == "Kinesis"
]


def test_template_declares_the_stream_functions() -> None:
    assert {"TransactionsFunction", "LabelsFunction", "ClickstreamFunction"} <= set(FUNCTIONS)
    assert len(KINESIS_EVENTS) >= 3


@pytest.mark.parametrize(("function", "event", "props"), KINESIS_EVENTS)
def test_template_kinesis_events_handle_failures_as_designed(
    function: str, event: str, props: dict[str, Any]
) -> None:
    assert props["BisectBatchOnFunctionError"] is True
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["DestinationConfig"]["OnFailure"]["Type"] == "SQS"
    assert props["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["OnFailureQueue", "Arn"]
    }
    assert 0 <= props["MaximumRetryAttempts"] <= 10000
    assert 60 <= props["MaximumRecordAgeInSeconds"] <= 604800
    for key in (
        "BatchSize",
        "MaximumBatchingWindowInSeconds",
        "ParallelizationFactor",
        "StartingPosition",
    ):
        assert key in props, f"{function}.{event} lacks {key}"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_template_function_handler_file_exists_under_code_uri(function: str) -> None:
    props = FUNCTIONS[function]["Properties"]
    module, _, _ = props["Handler"].rpartition(".")
    assert (ROOT / props["CodeUri"] / f"{module.replace('.', '/')}.py").is_file()


def test_template_layers_point_at_existing_folders() -> None:
    layers = [
        r for r in TEMPLATE["Resources"].values() if r["Type"] == "AWS::Serverless::LayerVersion"
    ]
    assert len(layers) == 5
    for layer in layers:
        assert (ROOT / layer["Properties"]["ContentUri"]).is_dir()


def test_template_drift_function_has_scipy_but_not_onnxruntime() -> None:
    core, model = {"Ref": "CoreLayer"}, {"Ref": "ModelLayer"}
    assert "Layers" not in (TEMPLATE["Globals"]["Function"]), "SAM would append them"
    for name in ("TransactionsFunction", "LabelsFunction"):
        assert FUNCTIONS[name]["Properties"]["Layers"] == [core, model, {"Ref": "DepsLayer"}]
    # The API scores both: transactions (fraud model) and clicks (propensity model).
    both = [core, model, {"Ref": "PropensityModelLayer"}, {"Ref": "DepsLayer"}]
    assert FUNCTIONS["ApiFunction"]["Properties"]["Layers"] == both
    # Clicks are scored with the propensity model's own layer, not the fraud one's.
    clicks = FUNCTIONS["ClickstreamFunction"]["Properties"]["Layers"]
    assert clicks == [core, {"Ref": "PropensityModelLayer"}, {"Ref": "DepsLayer"}]
    drift = FUNCTIONS["DriftFunction"]["Properties"]
    assert drift["Layers"] == [core, model, {"Ref": "DriftDepsLayer"}]
    lines = (ROOT / "layers/drift-deps/requirements.txt").read_text().splitlines()
    names = {line.split("==")[0] for line in lines if line and not line.startswith("#")}
    assert {"numpy", "scipy"} <= names and "onnxruntime" not in names
    (event,) = drift["Events"].values()
    assert event == {
        "Type": "Schedule",
        "Properties": {
            "Schedule": {"Ref": "DriftSchedule"},
            "Description": event["Properties"]["Description"],
            "Enabled": True,
        },
    }
    assert TEMPLATE["Parameters"]["DriftSchedule"]["Default"] == "rate(15 minutes)"
