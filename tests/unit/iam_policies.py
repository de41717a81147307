"""Walks the IAM policies of a translated template (the least-privilege tests' shared parts).

`translate` turns a SAM template into the CloudFormation SAM deploys (offline, with
aws-sam-translator); `statements` yields every IAM statement of it (inline policies of roles,
standalone and managed policies, resource policies), both sides of each ``Fn::If`` counted;
`wildcard_problems` says what is too broad in one Allow statement; `s3_grants` and `allowed`
read the S3 grants as key patterns of the stack's bucket.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

# Actions that only accept Resource "*" (AWS's design, not ours).
NO_RESOURCE_LEVEL = frozenset(
    {
        # Lambda's own network interfaces in the VPC (AWSLambdaVPCAccessExecutionRole).
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
        # Metrics: PutMetricData has no resource-level permissions (scope it by namespace).
        "cloudwatch:PutMetricData",
        # Tracing, should X-Ray be turned on.
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
    }
)
POLICY_HOLDERS = {
    "AWS::IAM::Role",
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::S3::BucketPolicy",
    "AWS::SNS::TopicPolicy",
}


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """`template` as CloudFormation, the way SAM deploys it (code URIs made S3 URIs)."""
    # aws-sam-translator (a dev dependency, what cfn-lint and sam validate use) ships no types.
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]

    template = copy.deepcopy(template)
    for resource in template["Resources"].values():
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = "s3://kestrel-artifacts/code.zip"
    translated: dict[str, Any] = Translator(managed_policy_map={}, sam_parser=Parser()).translate(
        sam_template=template, parameter_values={}
    )
    return translated


def _branches(value: Any) -> Iterator[Any]:
    """Both sides of an Fn::If (a conditional statement counts either way), minus NoValue."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _condition, when_true, when_false = value["Fn::If"]
        yield from _branches(when_true)
        yield from _branches(when_false)
    elif value != {"Ref": "AWS::NoValue"}:
        yield value


def as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for entry in value for item in _branches(entry)]
    return list(_branches(value))


def _documents(resource_id: str, resource: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    props = resource.get("Properties") or {}
    if resource["Type"] == "AWS::IAM::Role":
        for policy in as_list(props.get("Policies") or []):
            yield f"{resource_id}.{policy.get('PolicyName')}", policy["PolicyDocument"]
    elif "PolicyDocument" in props:
        yield resource_id, props["PolicyDocument"]


def statements(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM statement of the translated resources."""
    for resource_id, resource in resources.items():
        if resource["Type"] not in POLICY_HOLDERS:
            continue
        for where, document in _documents(resource_id, resource):
            for statement in as_list(document.get("Statement") or []):
                yield where, statement


def wildcard_problems(statement: dict[str, Any]) -> list[str]:
    """What is too broad in one Allow statement (empty when it is least privilege)."""
    if statement.get("Effect") != "Allow":
        return []
    problems = [
        f"{key} grants everything but a list"
        for key in ("NotAction", "NotResource")
        if key in statement
    ]
    actions = [a for a in as_list(statement.get("Action")) if isinstance(a, str)]
    for action in actions:
        if action == "*" or action.endswith(":*"):
            problems.append(f"wildcard action {action!r}")
    resources = as_list(statement.get("Resource"))
    if "*" in resources:
        unscoped = sorted(set(actions) - NO_RESOURCE_LEVEL)
        if unscoped:
            problems.append(f'Resource "*" for {unscoped}')
    return problems


def role_grants(resources: dict[str, Any], role: str) -> dict[str, list[Any]]:
    grants: dict[str, list[Any]] = {}
    for where, statement in statements({role: resources[role]}):
        assert where.startswith(role)
        for action in as_list(statement["Action"]):
            grants.setdefault(action, []).extend(as_list(statement["Resource"]))
    return grants


def object_pattern(resource: Any, parameters: Mapping[str, str]) -> str:
    """The key pattern an S3 resource names in EventLogBucket ("" for the bucket itself).

    ``${Parameter}`` in it becomes `parameters[Parameter]`; a resource in any other bucket,
    or in none, fails the test that asked.
    """
    bucket_arn = "${EventLogBucket.Arn}"
    if resource == {"Fn::GetAtt": ["EventLogBucket", "Arn"]}:
        return ""
    sub = resource.get("Fn::Sub") if isinstance(resource, dict) else None
    if not (isinstance(sub, str) and sub.startswith(bucket_arn + "/")):
        raise AssertionError(f"an S3 grant outside EventLogBucket: {resource!r}")
    pattern = sub.removeprefix(bucket_arn + "/")
    for name, value in parameters.items():
        pattern = pattern.replace("${" + name + "}", value)
    assert "${" not in pattern, f"unresolved variable in {sub!r}"
    return pattern


def s3_grants(
    resources: dict[str, Any], parameters: Mapping[str, str], writes: bool
) -> dict[str, dict[str, list[str]]]:
    """Per role, its S3 write (or read: Get*, List*) actions and the key patterns of each."""
    found: dict[str, dict[str, list[str]]] = {}
    for role, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for action, granted in role_grants(resources, role).items():
            if action.startswith("s3:") and writes != action.startswith(("s3:Get", "s3:List")):
                patterns = [object_pattern(r, parameters) for r in granted]
                found.setdefault(role, {})[action] = patterns
    return found


def allowed(
    resources: dict[str, Any], parameters: Mapping[str, str], key: str, writes: bool
) -> set[str]:
    """The roles that may PutObject (or GetObject) `key` (IAM's ``*`` spans ``/`` too)."""
    action = "s3:PutObject" if writes else "s3:GetObject"
    return {
        role
        for role, grants in s3_grants(resources, parameters, writes).items()
        if any(fnmatch.fnmatchcase(key, p) for p in grants.get(action, []))
    }
