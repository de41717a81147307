"""IAM least privilege and AWS readiness of template.yaml, checked on what SAM really deploys.

The template is translated offline with aws-sam-translator (policy templates expanded,
generated roles and their managed policies made explicit), then every IAM policy statement
is walked: inline policies of roles, standalone and managed policies, resource policies. A
statement fails on ``Action: "*"``, a ``service:*`` action, ``NotAction``/``NotResource``, or
``Resource: "*"``, except for the actions AWS gives no resource-level permissions to (listed
in `NO_RESOURCE_LEVEL`). A role may not carry AWS managed policies: theirs are ``"*"``.
The same translation shows encryption at rest and the VPC wiring.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrel_local.template import load_template

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(REPO / "template.yaml")

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


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        return translate(TEMPLATE)


def _branches(value: Any) -> Iterator[Any]:
    """Both sides of an Fn::If (a conditional statement counts either way), minus NoValue."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _condition, when_true, when_false = value["Fn::If"]
        yield from _branches(when_true)
        yield from _branches(when_false)
    elif value != {"Ref": "AWS::NoValue"}:
        yield value


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for entry in value for item in _branches(entry)]
    return list(_branches(value))


def _documents(resource_id: str, resource: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    props = resource.get("Properties") or {}
    if resource["Type"] == "AWS::IAM::Role":
        for policy in _as_list(props.get("Policies") or []):
            yield f"{resource_id}.{policy.get('PolicyName')}", policy["PolicyDocument"]
    elif "PolicyDocument" in props:
        yield resource_id, props["PolicyDocument"]


def statements(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every IAM statement of the translated resources."""
    for resource_id, resource in resources.items():
        if resource["Type"] not in POLICY_HOLDERS:
            continue
        for where, document in _documents(resource_id, resource):
            for statement in _as_list(document.get("Statement") or []):
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
    actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
    for action in actions:
        if action == "*" or action.endswith(":*"):
            problems.append(f"wildcard action {action!r}")
    resources = _as_list(statement.get("Resource"))
    if "*" in resources:
        unscoped = sorted(set(actions) - NO_RESOURCE_LEVEL)
        if unscoped:
            problems.append(f'Resource "*" for {unscoped}')
    return problems


def test_iam_least_privilege_no_wildcards_in_any_statement(translated: dict[str, Any]) -> None:
    found = list(statements(translated["Resources"]))
    assert len(found) >= 10, "the walk found too few statements to be walking the policies"
    offending = [
        f"{where}: {'; '.join(problems)}\n{json.dumps(statement, indent=2, sort_keys=True)}"
        for where, statement in found
        if (problems := wildcard_problems(statement))
    ]
    assert not offending, "too broad:\n" + "\n".join(offending)


def test_iam_least_privilege_roles_carry_no_aws_managed_policies(
    translated: dict[str, Any],
) -> None:
    # AWSLambdaKinesisExecutionRole, AWSLambdaBasicExecutionRole, AWSLambdaVPCAccessExecutionRole
    # all grant on Resource "*"; SAM attaches them only to roles it generates.
    managed = {
        resource_id: resource["Properties"]["ManagedPolicyArns"]
        for resource_id, resource in translated["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
        and (resource.get("Properties") or {}).get("ManagedPolicyArns")
    }
    assert managed == {}


def test_iam_least_privilege_every_function_has_its_own_role(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    functions = {
        resource_id: resource["Properties"]["Role"]
        for resource_id, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    assert functions == {
        name: {"Fn::GetAtt": [f"{name}Role", "Arn"]}
        for name in ("TransactionsFunction", "LabelsFunction", "ApiFunction", "DriftFunction")
    }


def _role_grants(resources: dict[str, Any], role: str) -> dict[str, list[Any]]:
    grants: dict[str, list[Any]] = {}
    for where, statement in statements({role: resources[role]}):
        assert where.startswith(role)
        for action in _as_list(statement["Action"]):
            grants.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return grants


@pytest.mark.parametrize(
    ("role", "stream"),
    [("TransactionsFunctionRole", "TransactionsStream"), ("LabelsFunctionRole", "LabelsStream")],
)
def test_iam_least_privilege_stream_roles_read_only_their_stream(
    translated: dict[str, Any], role: str, stream: str
) -> None:
    grants = _role_grants(translated["Resources"], role)
    # What the event source mapping needs to read the stream, on that stream only.
    for action in (
        "kinesis:DescribeStream",
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    ):
        assert grants[action] == [{"Fn::GetAtt": [stream, "Arn"]}], action
    # The on-failure destination and the poison queue, nothing else in SQS.
    assert {a for a in grants if a.startswith("sqs:")} == {"sqs:SendMessage"}
    assert grants["sqs:SendMessage"] == [
        {"Fn::GetAtt": ["OnFailureQueue", "Arn"]},
        {"Fn::GetAtt": ["PoisonDLQ", "Arn"]},
    ]
    writes = grants.get("kinesis:PutRecords", [])
    expected = [{"Fn::GetAtt": ["DecisionsStream", "Arn"]}] if role.startswith("Trans") else []
    assert writes == expected
    # Enhanced fan-out: only on the transactions consumer (SubscribeToShard has no meaning
    # on a stream ARN), and only TransactionsFunction has one.
    consumer = [{"Fn::GetAtt": ["TransactionsStreamConsumer", "ConsumerARN"]}]
    for action in ("kinesis:SubscribeToShard", "kinesis:DescribeStreamConsumer"):
        assert grants.get(action, []) == (consumer if role.startswith("Trans") else []), action


def test_iam_least_privilege_drift_role_reads_logged_transactions_and_writes_reports(
    translated: dict[str, Any],
) -> None:
    grants = _role_grants(translated["Resources"], "DriftFunctionRole")
    plain = {a: r for a, r in grants.items() if not a.startswith(("ec2:", "logs:"))}
    bucket = {"Fn::GetAtt": ["EventLogBucket", "Arn"]}
    assert plain == {
        "s3:GetObject": [
            {"Fn::Sub": "${EventLogBucket.Arn}/events/transactions/*"},
            {"Fn::Sub": "${EventLogBucket.Arn}/models/*"},
        ],
        "s3:ListBucket": [bucket],
        "s3:PutObject": [{"Fn::Sub": "${EventLogBucket.Arn}/drift/*"}],
        "sqs:GetQueueAttributes": [
            {"Fn::GetAtt": ["OnFailureQueue", "Arn"]},
            {"Fn::GetAtt": ["PoisonDLQ", "Arn"]},
        ],
    }
    (listing,) = [
        s
        for _, s in statements({"r": translated["Resources"]["DriftFunctionRole"]})
        if s.get("Action") == ["s3:ListBucket"]
    ]
    assert listing["Condition"] == {
        "StringLike": {"s3:prefix": ["events/transactions/*", "models/*"]}
    }


def test_iam_least_privilege_eni_permissions_only_in_a_vpc(translated: dict[str, Any]) -> None:
    for role in (
        "TransactionsFunctionRole",
        "LabelsFunctionRole",
        "ApiFunctionRole",
        "DriftFunctionRole",
    ):
        (policy,) = translated["Resources"][role]["Properties"]["Policies"]
        plain = [s for s in policy["PolicyDocument"]["Statement"] if "Fn::If" not in s]
        conditional = {
            s["Fn::If"][0]: s["Fn::If"][1:]
            for s in policy["PolicyDocument"]["Statement"]
            if "Fn::If" in s
        }
        assert all("*" not in _as_list(s["Resource"]) for s in plain), role
        # The fan-out consumer's statement is TransactionsFunctionRole's only other condition
        # (tested in test_template_freshness.py); it names the consumer, never "*".
        fan_out = {"TransactionsFanOut"} if role == "TransactionsFunctionRole" else set()
        assert set(conditional) == {"InVpc"} | fan_out, role
        for condition in fan_out:
            consumer, nothing = conditional[condition]
            assert nothing == {"Ref": "AWS::NoValue"}
            assert consumer["Resource"] == {
                "Fn::GetAtt": ["TransactionsStreamConsumer", "ConsumerARN"]
            }
        eni, no_value = conditional["InVpc"]
        assert no_value == {"Ref": "AWS::NoValue"}
        assert eni["Resource"] == "*" and set(eni["Action"]) <= NO_RESOURCE_LEVEL


def test_iam_least_privilege_functions_join_the_vpc_only_when_given(
    translated: dict[str, Any],
) -> None:
    vpc = {
        "Fn::If": [
            "InVpc",
            {
                "SubnetIds": {"Ref": "VpcSubnetIds"},
                "SecurityGroupIds": {"Ref": "VpcSecurityGroupIds"},
            },
            {"Ref": "AWS::NoValue"},
        ]
    }
    for resource in translated["Resources"].values():
        if resource["Type"] == "AWS::Lambda::Function":
            assert resource["Properties"]["VpcConfig"] == vpc
    params = TEMPLATE["Parameters"]
    for name in ("VpcSubnetIds", "VpcSecurityGroupIds"):
        assert params[name]["Type"] == "CommaDelimitedList"
        assert params[name]["Default"] == ""
    assert TEMPLATE["Conditions"]["InVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "VpcSubnetIds"}]}, ""]}]
    }
    # The Redis URL may carry an AUTH password.
    assert params["RedisUrl"]["NoEcho"] is True


def test_iam_least_privilege_data_is_encrypted_at_rest(translated: dict[str, Any]) -> None:
    kinds: dict[str, int] = {}
    for resource_id, resource in translated["Resources"].items():
        props = resource.get("Properties") or {}
        kind = resource["Type"]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "AWS::Kinesis::Stream":
            assert props["StreamEncryption"] == {
                "EncryptionType": "KMS",
                "KeyId": "alias/aws/kinesis",
            }, resource_id
        elif kind == "AWS::SQS::Queue":
            assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props
        elif kind == "AWS::S3::Bucket":
            (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            algorithm = rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
            assert algorithm in {"AES256", "aws:kms"}, resource_id
            assert props["PublicAccessBlockConfiguration"] == {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            }, resource_id
    assert kinds["AWS::Kinesis::Stream"] == 3
    assert kinds["AWS::SQS::Queue"] == 2
    assert kinds["AWS::S3::Bucket"] == 1


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ({"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::b"}, "wildcard action '*'"),
        ({"Effect": "Allow", "Action": ["s3:*"], "Resource": "arn:aws:s3:::b"}, "'s3:*'"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}, 'Resource "*"'),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b"}, "NotAction"),
        (
            {
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData", "kinesis:GetRecords"],
                "Resource": ["*"],
            },
            "kinesis:GetRecords",
        ),
    ],
)
def test_iam_least_privilege_checker_flags_wildcards(
    statement: dict[str, Any], problem: str
) -> None:
    assert any(problem in p for p in wildcard_problems(statement))


def test_iam_least_privilege_checker_allows_documented_exceptions() -> None:
    for action in ("cloudwatch:PutMetricData", "ec2:CreateNetworkInterface"):
        assert wildcard_problems({"Effect": "Allow", "Action": action, "Resource": "*"}) == []
    # A Deny may be as broad as it likes.
    assert wildcard_problems({"Effect": "Deny", "Action": "*", "Resource": "*"}) == []


def test_iam_least_privilege_checker_sees_sam_generated_policies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A SAM-generated role: the policy template is expanded, the managed policies attached.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    sam = {
        "Transform": "AWS::Serverless-2016-10-31",
        "Resources": {
            "Fn": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "CodeUri": "code/",
                    "Handler": "app.handler",
                    "Runtime": "python3.11",
                    "Policies": [
                        {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]},
                        {"SQSSendMessagePolicy": {"QueueName": "q"}},
                    ],
                },
            }
        },
    }
    resources = translate(sam)["Resources"]
    found = list(statements(resources))
    # SQSSendMessagePolicy expands to sqs:SendMessage* on the queue (a prefix, not "*").
    assert any("sqs:SendMessage*" in _as_list(s["Action"]) for _, s in found)
    assert any(wildcard_problems(s) for _, s in found)
    assert resources["FnRole"]["Properties"]["ManagedPolicyArns"]
