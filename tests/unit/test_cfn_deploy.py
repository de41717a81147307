"""Pure parts of cfn_deploy and cfn_artifacts: built template, code URIs, translation, pruning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kestrel_local.cfn_artifacts import (
    Artifact,
    S3Location,
    artifact_key,
    built_artifacts,
    rewrite_code_uris,
    write_built_template,
)
from kestrel_local.cfn_deploy import (
    Deployment,
    _layer_arn,
    _physical,
    drop_resources,
    parse_args,
    references,
    stack_resources,
    translate,
)
from kestrel_local.template import TemplateError, load_template

ROOT = Path(__file__).resolve().parent.parent.parent


def test_artifact_key_is_content_addressed() -> None:
    assert artifact_key("Fn", b"a") == artifact_key("Fn", b"a")
    assert artifact_key("Fn", b"a") != artifact_key("Fn", b"b")
    assert artifact_key("Fn", b"a", "p/").startswith("p/Fn-")
    assert artifact_key("Fn", b"a").endswith(".zip")


def _sam(tmp_path: Path) -> dict[str, Any]:
    for folder in ("fn", "layer", "other"):
        (tmp_path / folder).mkdir(parents=True)
    return {
        "Globals": {
            "Function": {"CodeUri": "other", "Runtime": "python3.12", "Architectures": ["x86_64"]}
        },
        "Resources": {
            "Fn": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "fn/"}},
            "Defaulted": {"Type": "AWS::Serverless::Function", "Properties": {}},
            "Remote": {
                "Type": "AWS::Serverless::Function",
                "Properties": {"CodeUri": "s3://bucket/key.zip"},
            },
            "Layer": {
                "Type": "AWS::Serverless::LayerVersion",
                "Properties": {
                    "ContentUri": "layer",
                    "CompatibleRuntimes": ["python3.12"],
                    "CompatibleArchitectures": ["x86_64"],
                },
                "Metadata": {"BuildMethod": "python3.12", "BuildArchitecture": "x86_64"},
            },
            "Queue": {"Type": "AWS::SQS::Queue"},
        },
    }


def _built(tmp_path: Path, runtime: str = "python3.12", arch: str = "x86_64") -> Path:
    sam = _sam(tmp_path)
    (tmp_path / "build" / "lambda").mkdir(parents=True)
    zips = {}
    for name in ("Fn", "Defaulted", "Layer"):
        zips[name] = tmp_path / "build" / "lambda" / f"{name}.zip"
        zips[name].write_bytes(name.encode())
    return write_built_template(sam, zips, tmp_path / "build" / "template.json", runtime, arch)


def test_write_built_template_points_at_the_zips_for_the_built_runtime(tmp_path: Path) -> None:
    built = json.loads(_built(tmp_path, "python3.13", "arm64").read_text())
    resources = built["Resources"]
    assert resources["Fn"]["Properties"]["CodeUri"] == "lambda/Fn.zip"
    assert resources["Defaulted"]["Properties"]["CodeUri"] == "lambda/Defaulted.zip"
    assert resources["Remote"]["Properties"]["CodeUri"] == "s3://bucket/key.zip"
    layer = resources["Layer"]
    assert layer["Properties"]["ContentUri"] == "lambda/Layer.zip"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert "Metadata" not in layer  # nothing left for `sam build` to rebuild
    assert built["Globals"]["Function"] == {"Runtime": "python3.13", "Architectures": ["arm64"]}


def test_write_built_template_names_a_resource_without_a_zip(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"Fn\.CodeUri: no built zip for 'fn/'"):
        write_built_template(_sam(tmp_path), {}, tmp_path / "template.json", "python3.12", "x86_64")


def test_built_artifacts_lists_the_zips_of_a_built_template(tmp_path: Path) -> None:
    path = _built(tmp_path)
    found = built_artifacts(json.loads(path.read_text()), path.parent)
    lambda_dir = (tmp_path / "build" / "lambda").resolve()
    assert sorted(found, key=lambda a: a.logical_id) == [
        Artifact("Defaulted", "CodeUri", lambda_dir / "Defaulted.zip"),
        Artifact("Fn", "CodeUri", lambda_dir / "Fn.zip"),
        Artifact("Layer", "ContentUri", lambda_dir / "Layer.zip"),
    ]


def test_built_artifacts_refuses_source_folders_and_missing_zips(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"Fn\.CodeUri: 'fn/' is a source folder.*make build"):
        built_artifacts(_sam(tmp_path), tmp_path)
    path = _built(tmp_path / "x")
    (tmp_path / "x" / "build" / "lambda" / "Layer.zip").unlink()
    with pytest.raises(TemplateError, match=r"Layer\.ContentUri: .*Layer\.zip does not exist"):
        built_artifacts(json.loads(path.read_text()), path.parent)


def test_rewrite_code_uris_points_at_s3_and_leaves_the_input_alone(tmp_path: Path) -> None:
    sam = _sam(tmp_path)
    out = rewrite_code_uris(
        sam, {"Fn": S3Location("b", "k1.zip"), "Layer": S3Location("b", "k2.zip")}
    )
    assert out["Resources"]["Fn"]["Properties"]["CodeUri"] == {"Bucket": "b", "Key": "k1.zip"}
    assert out["Resources"]["Layer"]["Properties"]["ContentUri"] == {
        "Bucket": "b",
        "Key": "k2.zip",
    }
    assert sam["Resources"]["Fn"]["Properties"]["CodeUri"] == "fn/"
    with pytest.raises(TemplateError, match="Queue"):
        rewrite_code_uris(sam, {"Queue": S3Location("b", "k")})


def test_references_reads_ref_getatt_sub_and_depends_on() -> None:
    node = {
        "A": {"Ref": "One"},
        "B": {"Fn::GetAtt": ["Two", "Arn"]},
        "C": {"Fn::GetAtt": "Three.Arn"},
        "D": {"Fn::Sub": "${Four.Arn}/x/${AWS::Region}"},
        "E": {"Fn::Sub": ["${name}", {"name": {"Ref": "Five"}}]},
        "DependsOn": ["Six"],
    }
    assert references(node) == {"One", "Two", "Three", "Four", "Five", "Six"}


def test_drop_resources_removes_dependents_and_outputs_with_reasons() -> None:
    template: dict[str, Any] = {
        "Resources": {
            "Project": {"Type": "AWS::CodeBuild::Project"},
            "Role": {
                "Type": "AWS::IAM::Role",
                "Properties": {"R": {"Fn::GetAtt": ["Project", "Arn"]}},
            },
            "Rule": {"Type": "AWS::Events::Rule", "Properties": {"Role": {"Ref": "Role"}}},
            "Queue": {"Type": "AWS::SQS::Queue"},
        },
        "Outputs": {"P": {"Value": {"Ref": "Project"}}, "Q": {"Value": {"Ref": "Queue"}}},
    }
    out, removed = drop_resources(template, {"AWS::CodeBuild::Project": "no model"})
    assert set(out["Resources"]) == {"Queue"}
    assert set(out["Outputs"]) == {"Q"}
    assert removed == {
        "Project": "AWS::CodeBuild::Project: no model",
        "Role": "refers to removed Project",
        "Rule": "refers to removed Role",
        "Outputs.P": "refers to removed Project",
    }
    assert set(template["Resources"]) == {"Project", "Role", "Rule", "Queue"}


def test_drop_resources_with_nothing_to_drop_is_a_copy() -> None:
    template = {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}
    out, removed = drop_resources(template, {})
    assert out == template and out is not template and removed == {}


def test_translate_turns_kestrel_template_into_plain_cloudformation() -> None:
    sam = load_template(ROOT / "template.yaml")
    ids = [
        lid
        for lid, r in sam["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    ]
    located = rewrite_code_uris(sam, {lid: S3Location("art", f"{lid}.zip") for lid in ids})
    out = translate(located, "eu-west-1")
    resources = out["Resources"]
    assert not [r for r in resources.values() if r["Type"].startswith("AWS::Serverless::")]
    fn = resources["TransactionsFunction"]
    assert fn["Type"] == "AWS::Lambda::Function"
    assert fn["Properties"]["Code"] == {"S3Bucket": "art", "S3Key": "TransactionsFunction.zip"}
    assert len(fn["Properties"]["Layers"]) == 3
    esm = resources["TransactionsFunctionTransactions"]["Properties"]
    assert esm["BisectBatchOnFunctionError"] is True
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["DestinationConfig"] == {
        "OnFailure": {"Destination": {"Fn::GetAtt": ["OnFailureQueue", "Arn"]}}
    }


def test_layer_arn_matches_the_translated_hashed_id() -> None:
    deployment = Deployment(
        "s",
        "id",
        {},
        {},
        resources={
            "CoreLayer0123456789": ("AWS::Lambda::LayerVersion", "arn:layer:core:1"),
            "CoreLayerExtra0123456789": ("AWS::Lambda::LayerVersion", "arn:layer:other:1"),
            "ModelLayerabcdefabcd": ("AWS::Lambda::LayerVersion", ""),
        },
    )
    assert _layer_arn(deployment, "CoreLayer") == "arn:layer:core:1"
    assert _layer_arn(deployment, "ModelLayer") is None
    assert _layer_arn(deployment, "DepsLayer") is None


def test_parse_args_reads_overrides_and_defaults_the_bucket() -> None:
    args = parse_args(
        ["--stack-name", "k1", "--parameter-overrides", "A=1", "B=x=y", "--skip-type", "T"]
    )
    assert args.parameter_overrides == {"A": "1", "B": "x=y"}
    assert args.bucket == "k1-artifacts"
    assert args.skip_type == ["T"]
    with pytest.raises(SystemExit):
        parse_args(["--parameter-overrides", "novalue"])


def test_physical_reads_a_deployed_stream_consumer_back_by_its_arn() -> None:
    # CloudFormation's physical id of an AWS::Kinesis::StreamConsumer is its ARN.
    stream = "arn:aws:kinesis:us-east-1:123456789012:stream/k-transactions"
    arn = f"{stream}/consumer/k-transactions-function:1764000000"
    asked: list[dict[str, str]] = []

    class Kinesis:
        def describe_stream_consumer(self, **kwargs: str) -> dict[str, Any]:
            asked.append(kwargs)
            return {
                "ConsumerDescription": {
                    "ConsumerName": "k-transactions-function",
                    "ConsumerARN": arn,
                    "ConsumerStatus": "ACTIVE",
                    "StreamARN": stream,
                }
            }

    class Clients:
        region = "us-east-1"

        def account_id(self) -> str:
            return "123456789012"

        def client(self, service: str) -> Kinesis:
            assert service == "kinesis"
            return Kinesis()

    bound = _physical(Clients(), "AWS::Kinesis::StreamConsumer", arn)  # type: ignore[arg-type]
    assert asked == [{"ConsumerARN": arn}]
    assert bound is not None and bound.ref == arn
    assert bound.attributes["ConsumerARN"] == arn
    assert bound.attributes["StreamARN"] == stream
    assert bound.attributes["ConsumerName"] == "k-transactions-function"


def test_stack_resources_skips_what_moto_lists_for_a_false_condition() -> None:
    # moto 5.2.5 answers DescribeStackResources with a bare entry (stack fields only) for a
    # resource whose Condition is false, e.g. TransactionsStreamConsumer by default.
    class Cfn:
        def describe_stack_resources(self, StackName: str) -> dict[str, Any]:
            return {
                "StackResources": [
                    {
                        "StackName": StackName,
                        "LogicalResourceId": "TransactionsStream",
                        "ResourceType": "AWS::Kinesis::Stream",
                        "PhysicalResourceId": "k-transactions",
                    },
                    {"StackName": StackName, "StackId": "id", "ResourceStatus": "CREATE_COMPLETE"},
                ]
            }

    class Clients:
        def client(self, service: str) -> Cfn:
            return Cfn()

    assert stack_resources(Clients(), "k") == {  # type: ignore[arg-type]
        "TransactionsStream": ("AWS::Kinesis::Stream", "k-transactions")
    }
