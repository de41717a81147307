"""The stack's bucket and alarm topic on what SAM deploys: TLS only, versioned, encrypted.

The companion of test_iam_least_privilege.py (which proves who may read and write which
prefix): the bucket policy denies every request without TLS, the bucket keeps overwritten
versions for a bounded time, and the alarm topic is encrypted with a key CloudWatch alarms
may use (they cannot publish to a topic under the AWS managed key alias/aws/sns).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest
from iam_policies import as_list, s3_grants, statements, translate

from kestrel_local.template import load_template

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(REPO / "template.yaml")
PARAMETERS = {name: str(p.get("Default", "")) for name, p in TEMPLATE["Parameters"].items()}
# Actions that would let a role undo versioning, the lifecycle rule or the TLS-only policy,
# or destroy the versions kept for restoring.
BUCKET_GUARDS = {
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
}


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        translated: dict[str, Any] = translate(TEMPLATE)["Resources"]
        return translated


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {lid: r for lid, r in resources.items() if r["Type"] == kind}


def test_iam_least_privilege_every_bucket_denies_requests_without_tls(
    resources: dict[str, Any],
) -> None:
    buckets = _of_type(resources, "AWS::S3::Bucket")
    policies = _of_type(resources, "AWS::S3::BucketPolicy").values()
    by_bucket = {
        p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"] for p in policies
    }
    assert set(by_bucket) == set(buckets) == {"EventLogBucket"}
    for bucket, document in by_bucket.items():
        # Only this Deny: no principal "*" is ever allowed anything, and it covers the bucket
        # (ListBucket, its configuration) and every object, for any action and any principal.
        assert document["Statement"] == [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [
                    {"Fn::GetAtt": [bucket, "Arn"]},
                    {"Fn::Sub": "${" + bucket + ".Arn}/*"},
                ],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ], bucket


def test_iam_least_privilege_bucket_keeps_overwritten_versions_for_a_bounded_time(
    resources: dict[str, Any],
) -> None:
    props = resources["EventLogBucket"]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    # The whole bucket (no Prefix, Filter or tags), and never the current versions: only
    # what was overwritten or deleted expires, NoncurrentVersionDays after that.
    assert rule == {
        "Id": "expire-previous-versions",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": {"Ref": "NoncurrentVersionDays"}},
        "ExpiredObjectDeleteMarker": True,
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    days = TEMPLATE["Parameters"]["NoncurrentVersionDays"]
    assert (days["Type"], days["Default"], days["MinValue"]) == ("Number", 30, 1)


def test_iam_least_privilege_no_role_can_undo_the_bucket_guards(
    resources: dict[str, Any],
) -> None:
    writes = s3_grants(resources, PARAMETERS, writes=True)
    granted = {action for grants in writes.values() for action in grants}
    assert granted == {"s3:PutObject"}
    assert not granted & BUCKET_GUARDS


def _key_of(resources: dict[str, Any], topic: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The template's KMS key a topic is encrypted with (fails on an AWS managed key)."""
    key_ref = topic["Properties"]["KmsMasterKeyId"]
    # alias/aws/sns would deploy, but CloudWatch alarms could not publish to the topic.
    assert isinstance(key_ref, dict), f"not a key of the stack: {key_ref!r}"
    logical_id, attribute = key_ref["Fn::GetAtt"]
    assert attribute == "Arn"
    assert resources[logical_id]["Type"] == "AWS::KMS::Key"
    return logical_id, resources[logical_id]


def test_iam_least_privilege_alarm_topic_is_encrypted_with_a_key_alarms_may_use(
    resources: dict[str, Any],
) -> None:
    topics = _of_type(resources, "AWS::SNS::Topic")
    assert set(topics) == {"AlarmTopic"}
    _, key = _key_of(resources, topics["AlarmTopic"])
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["Properties"]["KeyPolicy"]["Statement"] == [
        # AWS's default key policy: the account's IAM policies decide who else may use it.
        {
            "Sid": "AccountIamPolicies",
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}},
            "Action": "kms:*",
            "Resource": "*",
        },
        # What CloudWatch needs to publish to an encrypted topic, for this stack's alarms only.
        {
            "Sid": "StackAlarmsPublish",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
                "ArnLike": {
                    "aws:SourceArn": {
                        "Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:"
                        "${AWS::AccountId}:alarm:${AWS::StackName}-*"
                    }
                },
            },
        },
    ]


def test_iam_least_privilege_every_alarm_on_the_topic_is_one_its_key_allows(
    resources: dict[str, Any],
) -> None:
    _, key = _key_of(resources, resources["AlarmTopic"])
    (publish,) = [s for s in key["Properties"]["KeyPolicy"]["Statement"] if "Condition" in s]
    allowed_arns = publish["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    alarms = _of_type(resources, "AWS::CloudWatch::Alarm")
    # Four dead-letter alarms, DriftAlarm and the rollout's four (one per aliased function).
    assert len(alarms) == 9
    for logical_id, alarm in alarms.items():
        props = alarm["Properties"]
        targets = as_list(props["AlarmActions"]) + as_list(props["OKActions"])
        assert targets and all(t == {"Ref": "AlarmTopic"} for t in targets), logical_id
        arn = (
            "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:"
            + props["AlarmName"]["Fn::Sub"]
        )
        assert fnmatch.fnmatchcase(arn, allowed_arns), logical_id


def test_iam_least_privilege_key_policies_are_not_iam_statements(
    resources: dict[str, Any],
) -> None:
    # A key policy's Resource "*" means the key itself; the walk of IAM statements (whose
    # "*" would mean everything) must not see it, and the key policy is checked above.
    walked = {where.split(".")[0] for where, _ in statements(resources)}
    assert not walked & set(_of_type(resources, "AWS::KMS::Key"))
    assert "EventLogBucketPolicy" in walked
