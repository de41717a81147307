"""The pure parts of cfn_deploy and cfn_artifacts: zips, code URIs, translation, pruning."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kestrel_local.cfn_artifacts import (
    Artifact,
    S3Location,
    artifact_key,
    local_artifacts,
    rewrite_code_uris,
    zip_folder,
)
from kestrel_local.cfn_deploy import (
    Deployment,
    _layer_arn,
    drop_resources,
    parse_args,
    references,
    translate,
)
from kestrel_local.template import TemplateError, load_template

ROOT = Path(__file__).resolve().parent.parent.parent


def _tree(root: Path) -> Path:
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "app.py").write_text("def handler(event, context):\n    return event\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (root / "stale.pyc").write_bytes(b"\0")
    return root


def test_zip_folder_is_reproducible_and_skips_bytecode(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "fn")
    first = zip_folder(folder)
    (folder / "app.py").touch()  # a new mtime must not change the bytes
    assert zip_folder(folder) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert archive.namelist() == ["app.py", "pkg/mod.py"]
        assert archive.read("pkg/mod.py") == b"X = 1\n"


def test_zip_folder_changes_with_content(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "fn")
    before = zip_folder(folder)
    (folder / "pkg" / "mod.py").write_text("X = 2\n")
    assert zip_folder(folder) != before


def test_artifact_key_is_content_addressed() -> None:
    assert artifact_key("Fn", b"a") == artifact_key("Fn", b"a")
    assert artifact_key("Fn", b"a") != artifact_key("Fn", b"b")
    assert artifact_key("Fn", b"a", "p/").startswith("p/Fn-")
    assert artifact_key("Fn", b"a").endswith(".zip")


def _sam(tmp_path: Path) -> dict[str, Any]:
    for folder in ("fn", "layer", "other"):
        (tmp_path / folder).mkdir()
    return {
        "Globals": {"Function": {"CodeUri": "other"}},
        "Resources": {
            "Fn": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "fn/"}},
            "Defaulted": {"Type": "AWS::Serverless::Function", "Properties": {}},
            "Remote": {
                "Type": "AWS::Serverless::Function",
                "Properties": {"CodeUri": "s3://bucket/key.zip"},
            },
            "Layer": {
                "Type": "AWS::Serverless::LayerVersion",
                "Properties": {"ContentUri": "layer"},
            },
            "Queue": {"Type": "AWS::SQS::Queue"},
        },
    }


def test_local_artifacts_finds_local_folders_and_globals(tmp_path: Path) -> None:
    found = local_artifacts(_sam(tmp_path), tmp_path)
    assert found == [
        Artifact("Fn", "CodeUri", (tmp_path / "fn").resolve()),
        Artifact("Defaulted", "CodeUri", (tmp_path / "other").resolve()),
        Artifact("Layer", "ContentUri", (tmp_path / "layer").resolve()),
    ]


def test_local_artifacts_names_a_missing_folder(tmp_path: Path) -> None:
    sam = _sam(tmp_path)
    sam["Resources"]["Fn"]["Properties"]["CodeUri"] = "nowhere"
    with pytest.raises(TemplateError, match=r"Fn\.CodeUri: folder .*nowhere"):
        local_artifacts(sam, tmp_path)


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
