"""Deploy a built SAM template as a CloudFormation stack: upload, translate offline, create, wait.

The steps, each usable alone (1 and 2 are in `kestrel_local.cfn_artifacts`):

1. `make build` (`tools/build_lambda.py`) writes reproducible zips and `build/template.json`,
   the template on those zips; `built_artifacts` lists the zips it names.
2. `upload_artifacts` puts the zips in a bucket under content-addressed keys, and
   `rewrite_code_uris` points the template at them (`{"Bucket": ..., "Key": ...}`).
3. `translate` runs aws-sam-translator offline (no AWS call; managed policy names come from a
   static map), with the region set, so the endpoint gets plain CloudFormation. Emulators
   that lack the transform (moto) would otherwise drop every `AWS::Serverless::*` silently.
4. `drop_resources` removes resource types an endpoint cannot create, and everything that
   refers to them, returning what it removed and why, so that nothing is left out silently.
5. `create_stack` creates the stack and waits for CREATE_COMPLETE; `deploy` runs the whole
   chain and then checks that every resource the template enables is in the stack.
6. `bind_deployed` binds the source SAM template to the deployed stack's physical
   resources, so the local runtime (`kestrel_local.runtime.LocalRuntime`) runs the
   functions against them.

Command line (`make deploy-localstack` runs it against LocalStack)::

    make build
    AWS_ENDPOINT_URL=http://127.0.0.1:4566 python -m kestrel_local.cfn_deploy \
        --template build/template.json --stack-name kestrel \
        --parameter-overrides RedisUrl=redis://redis:6379/0
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from kestrel_local.aws import AwsClients
from kestrel_local.cfn_artifacts import (
    built_artifacts,
    rewrite_code_uris,
    template_source,
    upload_artifacts,
)
from kestrel_local.deploy_args import deploy_arguments, parse_deploy_args
from kestrel_local.functions import functions_of
from kestrel_local.provision import LocalApp, described_consumer
from kestrel_local.template import PhysicalResource, Stack, TemplateError, load_template

_SUB_REFERENCE = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}")
_TERMINAL_FAILURE = re.compile(r"(FAILED|ROLLBACK_COMPLETE|ROLLBACK_IN_PROGRESS)$")


class DeployError(RuntimeError):
    """The stack could not be deployed as the template says; the message says what is wrong."""


@dataclass
class Deployment:
    """A created stack: what was sent, what was left out, and what the stack holds."""

    stack_name: str
    stack_id: str
    template: dict[str, Any]
    removed: dict[str, str]
    resources: dict[str, tuple[str, str]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def translate(
    template: Mapping[str, Any],
    region: str,
    parameter_values: Mapping[str, str] | None = None,
    managed_policies: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The SAM template as plain CloudFormation, translated offline with aws-sam-translator.

    `managed_policies` maps managed policy names used in `Policies` to their ARNs (the
    translator would otherwise ask IAM); ARNs given in full need no entry.
    """
    import boto3
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import (  # type: ignore[import-untyped]
        Translator,
    )

    policies = dict(managed_policies or {})
    translator = Translator(
        policies, Parser(), boto_session=boto3.session.Session(region_name=region)
    )
    translated: dict[str, Any] = translator.translate(
        copy.deepcopy(dict(template)),
        parameter_values=dict(parameter_values or {}),
        get_managed_policy_map=lambda: policies,
    )
    return translated


def references(node: Any) -> set[str]:
    """Logical ids (and parameters) that Ref, Fn::GetAtt, Fn::Sub or DependsOn name in `node`."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".", 1)[0]
                found.add(str(target))
            elif key == "Fn::Sub":
                text, variables = (value[0], value[1]) if isinstance(value, list) else (value, {})
                if isinstance(text, str):
                    found.update(set(_SUB_REFERENCE.findall(text)) - set(variables))
                found |= references(variables)
            elif key == "DependsOn":
                found.update([value] if isinstance(value, str) else list(value))
            else:
                found |= references(value)
    return found


def drop_resources(
    template: Mapping[str, Any], types: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy without resources of `types` (type: why) and, transitively, what refers to them.

    Returns the copy and `{removed: reason}`; outputs are keyed `Outputs.<name>`.
    """
    out = copy.deepcopy(dict(template))
    resources: dict[str, Any] = out["Resources"]
    removed = {
        logical_id: f"{resource['Type']}: {types[resource['Type']]}"
        for logical_id, resource in resources.items()
        if resource["Type"] in types
    }
    changed = True
    while changed:
        changed = False
        for logical_id, resource in resources.items():
            if logical_id in removed:
                continue
            gone = sorted(references(resource) & set(removed))
            if gone:
                removed[logical_id] = f"refers to removed {', '.join(gone)}"
                changed = True
    for logical_id in [lid for lid in removed if lid in resources]:
        del resources[logical_id]
    outputs: dict[str, Any] = out.get("Outputs") or {}
    for name in list(outputs):
        gone = sorted(references(outputs[name]) & set(removed))
        if gone:
            removed[f"Outputs.{name}"] = f"refers to removed {', '.join(gone)}"
            del outputs[name]
    return out, removed


def create_stack(
    clients: AwsClients,
    stack_name: str,
    template: Mapping[str, Any],
    parameters: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    bucket: str | None = None,
) -> str:
    """Create the stack and wait for CREATE_COMPLETE; its id, or DeployError with the events.

    With `bucket`, a template over CloudFormation's body limit goes there (TemplateURL).
    """
    cfn = clients.client("cloudformation")
    body = json.dumps(template)
    source = template_source(clients, bucket, body) if bucket else {"TemplateBody": body}
    try:
        stack_id = str(
            cfn.create_stack(
                StackName=stack_name,
                **source,
                Parameters=[
                    {"ParameterKey": key, "ParameterValue": str(value)}
                    for key, value in (parameters or {}).items()
                ],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )["StackId"]
        )
    except (BotoCoreError, ClientError, ResponseParserError) as exc:
        # moto creates the resources inside CreateStack and answers a failing one with its
        # service's error (sometimes in a shape botocore cannot parse for CloudFormation).
        raise DeployError(f"CreateStack {stack_name} failed: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"])
        if status == "CREATE_COMPLETE":
            return stack_id
        if _TERMINAL_FAILURE.search(status) or time.monotonic() > deadline:
            events = cfn.describe_stack_events(StackName=stack_id)["StackEvents"]
            reasons = [
                f"{e['LogicalResourceId']}: {e['ResourceStatus']} "
                f"{e.get('ResourceStatusReason', '')}"
                for e in events
                if "FAILED" in e["ResourceStatus"]
            ]
            raise DeployError(
                f"stack {stack_name} is {status}: {'; '.join(reasons) or 'no reason'}"
            )
        time.sleep(0.2)


def stack_resources(clients: AwsClients, stack_name: str) -> dict[str, tuple[str, str]]:
    """`{logical id: (type, physical id)}` of every resource in the stack."""
    described = clients.client("cloudformation").describe_stack_resources(StackName=stack_name)
    return {
        str(r["LogicalResourceId"]): (str(r["ResourceType"]), str(r.get("PhysicalResourceId", "")))
        for r in described["StackResources"]
        # moto 5.2.5 lists each resource whose Condition is false as an entry with the stack's
        # fields only (no logical id, type or physical id): the stack does not hold it.
        if "LogicalResourceId" in r
    }


def enabled_resources(
    template: Mapping[str, Any],
    stack_name: str,
    region: str,
    account_id: str,
    parameters: Mapping[str, str],
) -> set[str]:
    """Logical ids of the template's resources whose Condition holds for these parameters."""
    stack = Stack(template, stack_name, region, account_id, dict(parameters))
    return {lid for lid in template["Resources"] if stack.resource_enabled(lid)}


def deploy(
    clients: AwsClients,
    template_path: str | Path,
    stack_name: str,
    artifact_bucket: str,
    parameters: Mapping[str, str] | None = None,
    unsupported_types: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Deployment:
    """Upload, translate, create and check: every enabled resource must be in the stack.

    `template_path` is a built template (`make build` writes `build/template.json`).

    `unsupported_types`: resource types to leave out, each with the reason (what refers to
    them goes too); the result's `removed` lists each resource left out and why.
    """
    path = Path(template_path).resolve()
    sam = load_template(path)
    locations = upload_artifacts(clients, artifact_bucket, built_artifacts(sam, path.parent))
    params = dict(parameters or {})
    # The parameters, as CloudFormation's transform gets them: SAM resolves some at
    # translation (AutoPublishAlias, DeploymentPreference's Type).
    translated = translate(rewrite_code_uris(sam, locations), clients.region, params)
    deployed, removed = drop_resources(translated, unsupported_types or {})
    stack_id = create_stack(clients, stack_name, deployed, params, timeout_s, artifact_bucket)
    resources = stack_resources(clients, stack_id)
    expected = enabled_resources(deployed, stack_name, clients.region, clients.account_id(), params)
    missing = sorted(expected - set(resources))
    if missing:
        raise DeployError(
            f"stack {stack_name} is CREATE_COMPLETE but lacks {', '.join(missing)}: the endpoint "
            "dropped them silently (pass their types as unsupported_types to leave them out)"
        )
    stack = clients.client("cloudformation").describe_stacks(StackName=stack_id)["Stacks"][0]
    outputs = {str(o["OutputKey"]): str(o["OutputValue"]) for o in stack.get("Outputs", [])}
    return Deployment(stack_name, stack_id, deployed, removed, resources, outputs)


def bind_deployed(
    template_path: str | Path,
    clients: AwsClients,
    deployment: Deployment,
    parameters: Mapping[str, str] | None = None,
) -> LocalApp:
    """The SAM template bound to the deployed stack's physical resources, for `LocalRuntime`.

    Streams, stream consumers, queues, buckets, topics and functions take the stack's names
    and ARNs (read back from the endpoint); layers run from their local folders, as always
    locally.
    """
    path = Path(template_path).resolve()
    stack = Stack(
        load_template(path),
        stack_name=deployment.stack_name,
        region=clients.region,
        account_id=clients.account_id(),
        parameter_overrides=dict(parameters or {}),
    )
    for logical_id, (kind, physical_id) in deployment.resources.items():
        if logical_id in stack.resources:
            bound = _physical(clients, kind, physical_id)
            if bound is not None:
                stack.physical[logical_id] = bound
    for logical_id, resource in stack.resources.items():
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            arn = _layer_arn(deployment, logical_id)
            if arn is not None:
                stack.physical[logical_id] = PhysicalResource(ref=arn)
    return LocalApp(path, stack, functions_of(stack, path.parent))


def _layer_arn(deployment: Deployment, sam_logical_id: str) -> str | None:
    """The translator renames a layer `<LogicalId><10 hex digits>` (a hash of its content)."""
    pattern = re.compile(rf"^{re.escape(sam_logical_id)}[0-9a-f]{{10}}$")
    for logical_id, (kind, physical_id) in deployment.resources.items():
        if kind == "AWS::Lambda::LayerVersion" and physical_id and pattern.match(logical_id):
            return physical_id
    return None


def _physical(clients: AwsClients, kind: str, physical_id: str) -> PhysicalResource | None:
    """What Ref and GetAtt give for a deployed resource, read back from the endpoint."""
    region, account = clients.region, clients.account_id()
    if kind == "AWS::Kinesis::Stream":
        summary = clients.client("kinesis").describe_stream_summary(StreamName=physical_id)
        arn = str(summary["StreamDescriptionSummary"]["StreamARN"])
        return PhysicalResource(ref=physical_id, attributes={"Arn": arn})
    if kind == "AWS::Kinesis::StreamConsumer":
        # CloudFormation's physical id of a consumer is its ARN (Ref gives it too).
        kinesis = clients.client("kinesis")
        described = kinesis.describe_stream_consumer(ConsumerARN=physical_id)
        return described_consumer(described["ConsumerDescription"])
    if kind == "AWS::SQS::Queue":
        attributes = clients.client("sqs").get_queue_attributes(
            QueueUrl=physical_id, AttributeNames=["QueueArn"]
        )["Attributes"]
        name = physical_id.rstrip("/").rsplit("/", 1)[-1]
        return PhysicalResource(
            ref=physical_id,
            attributes={"Arn": attributes["QueueArn"], "QueueName": name, "QueueUrl": physical_id},
        )
    if kind == "AWS::S3::Bucket":
        return PhysicalResource(
            ref=physical_id,
            attributes={
                "Arn": f"arn:aws:s3:::{physical_id}",
                "DomainName": f"{physical_id}.s3.amazonaws.com",
                "RegionalDomainName": f"{physical_id}.s3.{region}.amazonaws.com",
            },
        )
    if kind == "AWS::SNS::Topic":
        name = physical_id.rsplit(":", 1)[-1]
        return PhysicalResource(
            ref=physical_id, attributes={"TopicArn": physical_id, "TopicName": name}
        )
    if kind == "AWS::Lambda::Function":
        arn = f"arn:aws:lambda:{region}:{account}:function:{physical_id}"
        return PhysicalResource(ref=physical_id, attributes={"Arn": arn})
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m kestrel_local.cfn_deploy` (see `main`)."""
    parser = argparse.ArgumentParser(
        prog="python -m kestrel_local.cfn_deploy",
        description="Deploy a SAM template as a CloudFormation stack at AWS_ENDPOINT_URL.",
    )
    deploy_arguments(parser)
    return parse_deploy_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Deploy, print what was left out and the stack's outputs; 1 on a failed deployment."""
    args = parse_args(argv)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    clients = AwsClients(endpoint, args.region)
    skipped = {kind: "skipped with --skip-type" for kind in args.skip_type}
    print(
        f"deploying {args.template} as stack {args.stack_name} to {endpoint or 'AWS'} "
        f"(artifacts in s3://{args.bucket}/artifacts/)",
        flush=True,
    )
    try:
        deployment = deploy(
            clients,
            args.template,
            args.stack_name,
            args.bucket,
            args.parameter_overrides,
            skipped,
            args.timeout,
        )
    except (DeployError, TemplateError) as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:  # nothing answers at the endpoint, or no credentials
        print(f"deploy failed: {endpoint or 'AWS'}: {exc}", file=sys.stderr)
        return 1
    for removed, why in deployment.removed.items():
        print(f"left out {removed}: {why}")
    print(json.dumps({"StackId": deployment.stack_id, "Outputs": deployment.outputs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
