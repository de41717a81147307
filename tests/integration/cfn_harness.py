"""A test harness: template.yaml deployed as a CloudFormation stack on the embedded moto server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kestrel_local.aws import AwsClients
from kestrel_local.cfn_deploy import Deployment, deploy

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = ROOT / "template.yaml"

_NO_MODEL = "moto 5.2.5 has no CloudFormation model for this type"
UNSUPPORTED_BY_MOTO = {
    "AWS::CodeBuild::Project": _NO_MODEL,
    "AWS::S3::BucketPolicy": _NO_MODEL,
    "AWS::SNS::Subscription": _NO_MODEL,
    "AWS::ApiGateway::Stage": _NO_MODEL,
    "AWS::ApiGateway::UsagePlan": _NO_MODEL,
    "AWS::ApiGateway::ApiKey": _NO_MODEL,
    "AWS::ApiGateway::UsagePlanKey": _NO_MODEL,
    "AWS::ApiGateway::Deployment": (
        "moto's RestApi model ignores the OpenAPI Body, so the deployment fails with "
        "'The REST API doesn't contain any methods'"
    ),
}


@dataclass
class Deployed:
    clients: AwsClients
    deployment: Deployment
    parameters: dict[str, str]

    def physical(self, logical_id: str) -> str:
        return self.deployment.resources[logical_id][1]

    def client(self, service: str) -> Any:
        return self.clients.client(service)


def deployed_stack(
    emulator_endpoint: str, redis_url: str, lambda_build: Path
) -> Iterator[Deployed]:
    """The module-scoped `deployed` fixture of each test module: one deployment, then deleted.

    It deploys the session's build (`lambda_build`: the built template and its zips).
    """
    yield from deployed_with(emulator_endpoint, redis_url, lambda_build, {})


def deployed_with(
    emulator_endpoint: str, redis_url: str, lambda_build: Path, overrides: Mapping[str, str]
) -> Iterator[Deployed]:
    """`deployed_stack` with these parameter values too (e.g. DeploymentType=AllAtOnce)."""
    clients = AwsClients(emulator_endpoint)
    name = f"kcfn{uuid.uuid4().hex[:8]}"
    parameters = {"RedisUrl": redis_url, "Stage": "test", "ShardCount": "2", **overrides}
    deployment = deploy(
        clients, lambda_build, name, f"{name}-artifacts", parameters, UNSUPPORTED_BY_MOTO, 120.0
    )
    yield Deployed(clients, deployment, parameters)
    clients.client("cloudformation").delete_stack(StackName=deployment.stack_id)
