"""`python -m kestrel_local.cfn_deploy`, as `make deploy-localstack` runs it, on the moto server."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
from cfn_harness import UNSUPPORTED_BY_MOTO

from kestrel_local.aws import AwsClients
from kestrel_local.cfn_deploy import main


def test_cfn_deploy_cli_deploys_the_built_template(
    lambda_build: Path,
    emulator_endpoint: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator_endpoint)
    name = f"kcli{uuid.uuid4().hex[:8]}"
    skips = [arg for kind in UNSUPPORTED_BY_MOTO for arg in ("--skip-type", kind)]
    args = ["--template", str(lambda_build), "--stack-name", name, "--timeout", "120"]
    code = main([*args, "--parameter-overrides", f"RedisUrl={redis_url}", "Stage=cli", *skips])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"deploying {lambda_build} as stack {name} to {emulator_endpoint}" in out
    assert "left out RetrainProject: AWS::CodeBuild::Project: skipped with --skip-type" in out
    printed = json.loads(out[out.index("{") :])
    clients = AwsClients(emulator_endpoint)
    cfn = clients.client("cloudformation")
    stack = cfn.describe_stacks(StackName=printed["StackId"])["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    keys = [
        o["Key"]
        for o in clients.client("s3").list_objects_v2(Bucket=f"{name}-artifacts")["Contents"]
    ]
    manifest = json.loads((lambda_build.parent / "lambda" / "manifest.json").read_text())
    artifacts = [k for k in keys if k.startswith("artifacts/")]
    assert sorted(k.split("/")[1].rsplit("-", 1)[0] for k in artifacts) == sorted(
        manifest["artifacts"]
    )
    # Over CloudFormation's 51,200-byte body limit, the template went by TemplateURL.
    (template_key,) = [k for k in keys if k not in artifacts]
    assert template_key.startswith("templates/template-")
    cfn.delete_stack(StackName=printed["StackId"])


def test_cfn_deploy_cli_names_an_endpoint_that_does_not_answer(
    lambda_build: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code = main(["--template", str(lambda_build), "--stack-name", "kdown"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"deploy failed: {endpoint}: Could not connect to the endpoint URL")


def test_cfn_deploy_cli_refuses_the_source_template(
    emulator_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator_endpoint)
    template = Path(__file__).resolve().parents[2] / "template.yaml"
    assert main(["--template", str(template), "--stack-name", "ksrc"]) == 1
    err = capsys.readouterr().err
    assert "is a source folder; deploy the built template (`make build`" in err
