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


FAN_OUT = """
Resources:
  Stream:
    Type: AWS::Kinesis::Stream
    Properties: {ShardCount: 1}
  Consumer:
    Type: AWS::Kinesis::StreamConsumer
    Properties:
      ConsumerName: !Sub "${AWS::StackName}-fn"
      StreamARN: !GetAtt Stream.Arn
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      Runtime: python3.11
      Environment:
        Variables:
          CONSUMER: !Ref Consumer
      Events:
        S:
          Type: Kinesis
          Properties:
            Stream: !GetAtt Consumer.ConsumerARN
            StartingPosition: TRIM_HORIZON
"""
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/demo-Stream"


def test_functions_of_reads_a_fan_out_consumer_through_its_stream(tmp_path: Path) -> None:
    stack = bound(write(tmp_path, FAN_OUT))
    spec = functions_of(stack, tmp_path)["Fn"]
    (source,) = spec.kinesis
    assert source.stream_arn == STREAM_ARN
    assert source.consumer_arn == f"{STREAM_ARN}/consumer/demo-fn"
    assert spec.environment["CONSUMER"] == f"{STREAM_ARN}/consumer/demo-fn"
    assert stack.physical["Consumer"].attributes["StreamARN"] == STREAM_ARN


@pytest.mark.parametrize(
    ("arn", "stream"),
    [
        # AWS appends the consumer's creation time; moto does not.
        (f"{STREAM_ARN}/consumer/fn:1525898737", STREAM_ARN),
        (f"{STREAM_ARN}/consumer/fn", STREAM_ARN),
        (
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b_c-d/consumer/x:1",
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b_c-d",
        ),
    ],
)
def test_functions_of_accepts_consumer_arns_as_aws_and_moto_write_them(
    tmp_path: Path, arn: str, stream: str
) -> None:
    text = FAN_OUT.replace("Stream: !GetAtt Consumer.ConsumerARN", f"Stream: {arn}")
    (source,) = functions_of(bound(write(tmp_path, text)), tmp_path)["Fn"].kinesis
    assert (source.stream_arn, source.consumer_arn) == (stream, arn)


@pytest.mark.parametrize(
    "arn",
    [
        f"{STREAM_ARN}/consumer/",
        f"{STREAM_ARN}/consumer/fn:not-a-time",
        "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/a/b",
    ],
)
def test_functions_of_rejects_malformed_consumer_arns_naming_the_event(
    tmp_path: Path, arn: str
) -> None:
    text = FAN_OUT.replace("Stream: !GetAtt Consumer.ConsumerARN", f"Stream: {arn}")
    with pytest.raises(TemplateError, match=r"Fn\.Events\.S\.Properties\.Stream: .*consumer"):
        functions_of(bound(write(tmp_path, text)), tmp_path)


def test_names_requires_a_consumer_stream_and_name(tmp_path: Path) -> None:
    text = FAN_OUT.replace("      StreamARN: !GetAtt Stream.Arn\n", "")
    with pytest.raises(TemplateError, match=r"Consumer\.StreamARN: required"):
        bound(write(tmp_path, text))


def test_stack_resolves_list_parameters_as_lists(tmp_path: Path) -> None:
    text = """
Parameters:
  Subnets: {Type: CommaDelimitedList, Default: ""}
  Zones: {Type: "List<AWS::EC2::AvailabilityZone::Name>", Default: "a,b"}
Conditions:
  InVpc: !Not [!Equals [!Join ["", !Ref Subnets], ""]]
Resources:
  Q: {Type: AWS::SQS::Queue}
"""
    stack = bound(write(tmp_path, text))
    assert stack.resolve({"Ref": "Zones"}, "x") == ["a", "b"]
    assert stack.condition("InVpc", "x") is False
    assert bound(write(tmp_path, text), Subnets="subnet-1,subnet-2").condition("InVpc", "x")
