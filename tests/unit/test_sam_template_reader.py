"""Reading SAM templates: tags, intrinsics, Globals and the errors that name the culprit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kestrel_local.functions import functions_of
from kestrel_local.provision import _names
from kestrel_local.template import Stack, TemplateError, load_template

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "esm"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "app.py").write_text("def handler(event, context):\n    return 1\n")
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return path


def bound(path: Path, **overrides: str) -> Stack:
    stack = Stack(load_template(path), stack_name="demo", parameter_overrides=overrides)
    _names(stack, "http://127.0.0.1:5050")
    return stack


BASE = """
Parameters:
  Stage: {Type: String, Default: dev, AllowedValues: [dev, prod]}
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Globals:
  Function:
    Runtime: python3.11
    Timeout: 7
    Environment:
      Variables: {SHARED: one, OVERRIDDEN: global}
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${AWS::StackName}-${Stage}-q"
  Stream:
    Type: AWS::Kinesis::Stream
    Properties: {ShardCount: 1}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      Environment:
        Variables:
          OVERRIDDEN: local
          QUEUE_URL: !Ref Queue
          QUEUE_ARN: !GetAtt Queue.Arn
          STREAM: !Ref Stream
          MODE: !If [IsProd, strict, relaxed]
          JOINED: !Join ["/", [!Ref "AWS::Region", !Select [1, !Split [",", "a,b,c"]]]]
      Events:
        S:
          Type: Kinesis
          Properties:
            Stream: !GetAtt Stream.Arn
            StartingPosition: LATEST
"""


def test_functions_of_merges_globals_and_resolves_intrinsics(tmp_path: Path) -> None:
    stack = bound(write(tmp_path, BASE))
    spec = functions_of(stack, tmp_path)["Fn"]
    assert spec.timeout_s == 7
    assert spec.environment == {
        "SHARED": "one",
        "OVERRIDDEN": "local",
        "QUEUE_URL": "http://127.0.0.1:5050/123456789012/demo-dev-q",
        "QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:demo-dev-q",
        "STREAM": "demo-Stream",
        "MODE": "relaxed",
        "JOINED": "us-east-1/b",
    }
    (source,) = spec.kinesis
    assert source.stream_arn == "arn:aws:kinesis:us-east-1:123456789012:stream/demo-Stream"
    assert (source.batch_size, source.max_retries, source.parallelization) == (100, -1, 1)


def test_stack_applies_parameter_overrides_and_conditions(tmp_path: Path) -> None:
    stack = bound(write(tmp_path, BASE), Stage="prod")
    assert functions_of(stack, tmp_path)["Fn"].environment["MODE"] == "strict"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("Handler: app.handler", "Handler: nodots"), "Fn.Handler"),
        (("CodeUri: code/", "CodeUri: missing/"), "Fn.CodeUri"),
        (
            ("StartingPosition: LATEST", "StartingPosition: SOMEWHERE"),
            "S.Properties.StartingPosition",
        ),
        (
            ("StartingPosition: LATEST", "StartingPosition: LATEST\n            BatchSize: 20000"),
            "S.Properties.BatchSize",
        ),
        (
            (
                "StartingPosition: LATEST",
                "StartingPosition: LATEST\n            MaximumRecordAgeInSeconds: 30",
            ),
            "MaximumRecordAgeInSeconds",
        ),
        (
            (
                "StartingPosition: LATEST",
                "StartingPosition: LATEST\n            ParallelizationFactor: 11",
            ),
            "ParallelizationFactor",
        ),
        (("QUEUE_URL: !Ref Queue", "QUEUE_URL: !Ref Nope"), "Ref Nope"),
        (("QUEUE_ARN: !GetAtt Queue.Arn", "QUEUE_ARN: !GetAtt Queue.Nope"), "Queue.Nope"),
        (("MODE: !If [IsProd, strict, relaxed]", "MODE: !If [IsMissing, a, b]"), "IsMissing"),
    ],
)
def test_functions_of_errors_name_the_resource_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    stack = bound(write(tmp_path, BASE.replace(*change)))
    with pytest.raises(TemplateError, match=message):
        functions_of(stack, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Resources: [1, 2]", "Resources"),
        ("Resources:\n  Thing: {Properties: {}}", "resource Thing: needs a 'Type'"),
        ("Resources:\n  X: {Type: A, Properties: !Bogus 1}", "unknown CloudFormation tag !Bogus"),
        ("Resources: {X: {Type: A", "not valid YAML"),
    ],
)
def test_load_template_rejects_malformed_templates_clearly(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(TemplateError, match=message):
        load_template(path)


def test_stack_rejects_unknown_or_disallowed_parameters(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(TemplateError, match="undeclared parameter"):
        bound(path, Nope="x")
    with pytest.raises(TemplateError, match="Stage"):
        bound(path, Stage="qa")


def test_functions_of_reads_the_fixture_template_event_sources() -> None:
    stack = bound(FIXTURE / "template.yaml", ObserveDir="/tmp/x")
    specs = functions_of(stack, FIXTURE)
    bisect = specs["BisectFunction"].kinesis[0]
    assert (bisect.bisect, bisect.max_retries, bisect.batch_size) == (True, 1, 8)
    assert bisect.on_failure_arn == "arn:aws:sqs:us-east-1:123456789012:demo-failures"
    parallel = specs["ParallelFunction"].kinesis[0]
    assert (parallel.parallelization, parallel.window_s) == (4, 1.0)
    queue: Any = specs["QueueFunction"].sqs[0]
    assert queue.report_item_failures and queue.batch_size == 10
    assert specs["TimeoutFunction"].timeout_s == 1
