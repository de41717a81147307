"""IAM least privilege and AWS readiness of template.yaml, checked on what SAM really deploys.

The template is translated offline with aws-sam-translator (policy templates expanded,
generated roles and their managed policies made explicit), then every IAM policy statement
is walked: inline policies of roles, standalone and managed policies, resource policies. A
statement fails on ``Action: "*"``, a ``service:*`` action, ``NotAction``/``NotResource``, or
``Resource: "*"``, except for the actions AWS gives no resource-level permissions to (listed
in `NO_RESOURCE_LEVEL`). A role may not carry AWS managed policies: theirs are ``"*"``.
In the stack's bucket each role reads and writes only its own key prefixes, checked against
the keys the code itself writes (the walk lives in iam_policies.py; the bucket policy,
versioning and the topic's key in test_iam_least_privilege_bucket_and_topic.py).
The same translation shows encryption at rest and the VPC wiring.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import pytest
from iam_policies import (
    NO_RESOURCE_LEVEL,
    allowed,
    as_list,
    role_grants,
    s3_grants,
    statements,
    translate,
    wildcard_problems,
)

from kestrel.settings import Settings
from kestrel_local.template import load_template

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(REPO / "template.yaml")


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        return translate(TEMPLATE)


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
        for name in (
            "TransactionsFunction",
            "LabelsFunction",
            "ClickstreamFunction",
            "ApiFunction",
            "DriftFunction",
        )
    }


@pytest.mark.parametrize(
    ("role", "stream"),
    [
        ("TransactionsFunctionRole", "TransactionsStream"),
        ("LabelsFunctionRole", "LabelsStream"),
        ("ClickstreamFunctionRole", "ClickstreamStream"),
    ],
)
def test_iam_least_privilege_stream_roles_read_only_their_stream(
    translated: dict[str, Any], role: str, stream: str
) -> None:
    grants = role_grants(translated["Resources"], role)
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
    grants = role_grants(translated["Resources"], "DriftFunctionRole")
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


# --- S3: each role reads and writes only its own prefixes of EventLogBucket ---------------
PARAMETERS = {name: str(p.get("Default", "")) for name, p in TEMPLATE["Parameters"].items()}
SOURCE_KEY = PARAMETERS["TrainingSourceKey"]
# MODEL_POINTER_KEY's default (the template leaves it unset).
POINTER_KEY = {f.name: f.default for f in dataclasses.fields(Settings)}["model_pointer_key"]
STREAM_ROLES = {"TransactionsFunctionRole", "LabelsFunctionRole", "ClickstreamFunctionRole"}


class _RecordingS3:
    """Just enough of an S3 client to record the keys an adapter writes."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.keys.append(str(kwargs["Key"]))
        return {}

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        """Nothing was written before (the export reads the pointer it may keep a part of)."""
        error = LookupError(f"NoSuchKey: {kwargs['Key']}")
        error.response = {"Error": {"Code": "NoSuchKey"}}  # type: ignore[attr-defined]
        raise error


def written_keys(tmp_path: Path) -> dict[str, list[str]]:
    """What the code writes to the bucket, by writer (the event log, drift, model export)."""
    from kestrel_training import registry

    from kestrel.adapters.s3_drift_reports import S3DriftReports
    from kestrel.adapters.s3_event_log import S3EventLog

    kinds = ("transactions", "labels", "clicks", "drift", "export")
    writers = {name: _RecordingS3() for name in kinds}
    for kind, field in (
        ("transactions", "event_time"),
        ("labels", "label_time"),
        ("clicks", "event_time"),
    ):
        S3EventLog(writers[kind], "bucket").write_batch(kind, "batch", [{field: 0}], field)
    S3DriftReports(cast(Any, writers["drift"]), "bucket").write(
        {"checked_at": "2026-11-29T10:15:00Z"}
    )
    for name in ("model.onnx", "manifest.json"):
        (tmp_path / name).write_bytes(b"{}")
    manifest = {"model_name": "kestrel-fraud", "model_version": "7", "feature_set_hash": "h"}
    registry.upload(tmp_path, manifest, "bucket", writers["export"])
    return {name: writer.keys for name, writer in writers.items()}


def test_iam_least_privilege_s3_writes_are_scoped_to_each_roles_prefixes(
    translated: dict[str, Any],
) -> None:
    assert s3_grants(translated["Resources"], PARAMETERS, writes=True) == {
        # The stream functions: their part of the event log, and the payloads of poison
        # records too big for an SQS message.
        "TransactionsFunctionRole": {"s3:PutObject": ["events/transactions/*", "dead-letters/*"]},
        "LabelsFunctionRole": {"s3:PutObject": ["events/labels/*", "dead-letters/*"]},
        "ClickstreamFunctionRole": {"s3:PutObject": ["events/clicks/*", "dead-letters/*"]},
        "DriftFunctionRole": {"s3:PutObject": ["drift/*"]},
        # The training and export path: models (the active pointer too) and its registry.
        "RetrainRole": {"s3:PutObject": ["models/*", "mlflow/*"]},
    }


def test_iam_least_privilege_s3_reads_are_what_each_function_uses(
    translated: dict[str, Any],
) -> None:
    assert s3_grants(translated["Resources"], PARAMETERS, writes=False) == {
        # The scorers poll the model pointer and fetch the models it names.
        "TransactionsFunctionRole": {"s3:GetObject": ["models/*"]},
        "ApiFunctionRole": {"s3:GetObject": ["models/*"]},
        # ClickstreamFunction follows the propensity model's own pointer and versions only.
        "ClickstreamFunctionRole": {"s3:GetObject": ["models/propensity/*"]},
        # LabelsFunction scores nothing and reads nothing from the bucket.
        "DriftFunctionRole": {
            "s3:GetObject": ["events/transactions/*", "models/*"],
            "s3:ListBucket": [""],
        },
        "RetrainRole": {
            "s3:GetObject": [SOURCE_KEY, "models/*", "mlflow/*"],
            "s3:GetObjectVersion": [SOURCE_KEY],
            "s3:ListBucket": [""],
            "s3:GetBucketLocation": [""],
            "s3:GetBucketAcl": [""],
        },
    }


def test_iam_least_privilege_each_key_the_code_writes_has_exactly_its_writer(
    translated: dict[str, Any], tmp_path: Path
) -> None:
    resources = translated["Resources"]
    writers = {
        "transactions": {"TransactionsFunctionRole"},
        "labels": {"LabelsFunctionRole"},
        "clicks": {"ClickstreamFunctionRole"},
        "drift": {"DriftFunctionRole"},
        "export": {"RetrainRole"},
    }
    keys = written_keys(tmp_path)
    assert keys["export"][-1] == POINTER_KEY == "models/active.json"

    def writers_of(key: str) -> set[str]:
        return allowed(resources, PARAMETERS, key, writes=True)

    def readers_of(key: str) -> set[str]:
        return allowed(resources, PARAMETERS, key, writes=False)

    for writer, written in keys.items():
        assert written, writer
        for key in written:
            assert writers_of(key) == writers[writer], key
    # Oversized poison payloads: the stream functions, nobody else.
    assert writers_of("dead-letters/transactions/x.bin") == STREAM_ROLES
    # The retraining source is uploaded by whoever deploys; no role of the stack writes it.
    assert writers_of(SOURCE_KEY) == set()
    # Who reads what the others write (dead letters: the redrive tool, as the operator).
    scorers = {"TransactionsFunctionRole", "ApiFunctionRole", "DriftFunctionRole"}
    assert readers_of(POINTER_KEY) == scorers | {"RetrainRole"}
    propensity_pointer = "models/propensity/active.json"
    assert readers_of(propensity_pointer) == scorers | {"RetrainRole", "ClickstreamFunctionRole"}
    assert writers_of(propensity_pointer) == {"RetrainRole"}
    assert readers_of(keys["transactions"][0]) == {"DriftFunctionRole"}
    assert readers_of(keys["labels"][0]) == set()
    assert readers_of(keys["clicks"][0]) == set()
    assert readers_of("dead-letters/transactions/x.bin") == set()
    assert readers_of(SOURCE_KEY) == {"RetrainRole"}


def test_iam_least_privilege_eni_permissions_only_in_a_vpc(translated: dict[str, Any]) -> None:
    for role in (
        "TransactionsFunctionRole",
        "LabelsFunctionRole",
        "ClickstreamFunctionRole",
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
        assert all("*" not in as_list(s["Resource"]) for s in plain), role
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
    assert kinds["AWS::Kinesis::Stream"] == 4
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
    assert any("sqs:SendMessage*" in as_list(s["Action"]) for _, s in found)
    assert any(wildcard_problems(s) for _, s in found)
    assert resources["FnRole"]["Properties"]["ManagedPolicyArns"]
