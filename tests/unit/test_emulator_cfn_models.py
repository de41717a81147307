"""The CloudFormation models the emulator adds to moto: converters, and a stack in process.

The stack test runs moto in process (``mock_aws``, no network): a function published behind
an alias with a CodeDeploy deployment group and an alarm on the aliased version, as SAM
translates ``AutoPublishAlias`` and ``DeploymentPreference``, created and deleted.
tests/integration/test_cloudformation_rollout.py deploys the real template on the emulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import moto
import pytest
from moto import mock_aws
from moto.codedeploy.models import codedeploy_backends

from kestrel_local.emulator import patches
from kestrel_local.emulator.cfn_models import (
    CFN_MODEL_TYPES,
    alarm_arguments,
    api_keys,
    cfn_models_registered,
    deployment_group_arguments,
    register_cfn_models,
)
from kestrel_local.emulator.patches import UnsupportedMotoVersionError

REGION = "us-east-1"


def test_api_keys_lowers_the_first_letter_of_every_key_deeply() -> None:
    assert api_keys(
        {"Enabled": True, "Alarms": [{"Name": "a"}], "Events": ["DEPLOYMENT_FAILURE"]}
    ) == {"enabled": True, "alarms": [{"name": "a"}], "events": ["DEPLOYMENT_FAILURE"]}
    assert api_keys(None) is None
    assert api_keys("Text") == "Text"


def test_alarm_arguments_map_the_properties_and_name_what_is_missing() -> None:
    props = {
        "Namespace": "AWS/Lambda",
        "MetricName": "Errors",
        "Dimensions": [{"Name": "ExecutedVersion", "Value": 3}],
        "Statistic": "Sum",
        "Period": "60",
        "EvaluationPeriods": 1,
        "Threshold": 0,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:t"],
    }
    args = alarm_arguments("a", props)
    assert args["dimensions"] == [{"Name": "ExecutedVersion", "Value": "3"}]
    assert (args["period"], args["evaluation_periods"], args["threshold"]) == (60, 1, 0.0)
    assert args["ok_actions"] == [] and args["actions_enabled"] is True
    assert args["treat_missing_data"] == "notBreaching"
    with pytest.raises(ValueError, match="AWS::CloudWatch::Alarm a: needs ComparisonOperator"):
        alarm_arguments("a", {"EvaluationPeriods": 1})


def test_deployment_group_arguments_speak_the_codedeploy_api() -> None:
    args = deployment_group_arguments(
        "g",
        {
            "ApplicationName": "app",
            "ServiceRoleArn": "arn:aws:iam::123456789012:role/r",
            "AlarmConfiguration": {"Enabled": True, "Alarms": [{"Name": "a"}]},
            "DeploymentStyle": {"DeploymentType": "BLUE_GREEN"},
        },
    )
    assert args["deployment_group_name"] == "g" and args["application_name"] == "app"
    assert args["alarm_configuration"] == {"enabled": True, "alarms": [{"name": "a"}]}
    assert args["deployment_style"] == {"deploymentType": "BLUE_GREEN"}
    with pytest.raises(ValueError, match="DeploymentGroup g: needs ServiceRoleArn"):
        deployment_group_arguments("g", {"ApplicationName": "app"})


def test_register_refuses_another_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    with pytest.raises(UnsupportedMotoVersionError, match=r"pinned to moto==5\.2\.5"):
        register_cfn_models()
    assert patches.PINNED_MOTO_VERSION == "5.2.5"


def test_register_adds_the_models_once() -> None:
    from moto.cloudformation.parsing import get_model_map, get_name_type_map

    # moto caches its model maps on first use: registering must refresh them.
    get_model_map()
    get_name_type_map()
    register_cfn_models()
    register_cfn_models()
    assert cfn_models_registered()
    models = get_model_map()
    assert set(models) >= CFN_MODEL_TYPES
    assert len({models[kind] for kind in CFN_MODEL_TYPES}) == len(CFN_MODEL_TYPES)
    assert get_name_type_map()["AWS::CloudWatch::Alarm"] == "AlarmName"


STACK = {
    "Resources": {
        "Role": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            },
        },
        "Fn": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "FunctionName": "fn",
                "Runtime": "python3.12",
                "Handler": "app.handler",
                "Role": {"Fn::GetAtt": ["Role", "Arn"]},
                "Code": {"ZipFile": "def handler(event, context):\n    return 1\n"},
            },
        },
        "FnVersion": {
            "Type": "AWS::Lambda::Version",
            "DeletionPolicy": "Retain",
            "Properties": {"FunctionName": {"Ref": "Fn"}},
        },
        "FnAliaslive": {
            "Type": "AWS::Lambda::Alias",
            "UpdatePolicy": {
                "CodeDeployLambdaAliasUpdate": {
                    "ApplicationName": {"Ref": "App"},
                    "DeploymentGroupName": {"Ref": "Group"},
                }
            },
            "Properties": {
                "Name": "live",
                "FunctionName": {"Ref": "Fn"},
                "FunctionVersion": {"Fn::GetAtt": ["FnVersion", "Version"]},
            },
        },
        "Stream": {"Type": "AWS::Kinesis::Stream", "Properties": {"ShardCount": 1}},
        "Mapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": {"Ref": "FnAliaslive"},
                "EventSourceArn": {"Fn::GetAtt": ["Stream", "Arn"]},
                "StartingPosition": "TRIM_HORIZON",
            },
        },
        "Errors": {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": "fn-version-errors",
                "Namespace": "AWS/Lambda",
                "MetricName": "Errors",
                "Dimensions": [
                    {"Name": "FunctionName", "Value": {"Ref": "Fn"}},
                    {"Name": "Resource", "Value": {"Fn::Sub": "${Fn}:live"}},
                    {"Name": "ExecutedVersion", "Value": {"Fn::GetAtt": ["FnVersion", "Version"]}},
                ],
                "Statistic": "Sum",
                "Period": 60,
                "EvaluationPeriods": 1,
                "Threshold": 0,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
            },
        },
        "App": {
            "Type": "AWS::CodeDeploy::Application",
            "Properties": {"ComputePlatform": "Lambda"},
        },
        "Group": {
            "Type": "AWS::CodeDeploy::DeploymentGroup",
            "Properties": {
                "ApplicationName": {"Ref": "App"},
                "ServiceRoleArn": {"Fn::GetAtt": ["Role", "Arn"]},
                "DeploymentConfigName": "CodeDeployDefault.LambdaCanary10Percent5Minutes",
                "AlarmConfiguration": {"Enabled": True, "Alarms": [{"Name": {"Ref": "Errors"}}]},
                "AutoRollbackConfiguration": {
                    "Enabled": True,
                    "Events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"],
                },
                "DeploymentStyle": {
                    "DeploymentType": "BLUE_GREEN",
                    "DeploymentOption": "WITH_TRAFFIC_CONTROL",
                },
            },
        },
    },
    "Outputs": {
        "AliasArn": {"Value": {"Ref": "FnAliaslive"}},
        "VersionArn": {"Value": {"Ref": "FnVersion"}},
        "AlarmArn": {"Value": {"Fn::GetAtt": ["Errors", "Arn"]}},
    },
}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto in process with the models registered, and fake credentials."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    register_cfn_models()
    with mock_aws():
        yield


def client(service: str) -> Any:
    session: Any = boto3.session.Session(region_name=REGION)
    return session.client(service)


def test_stack_creates_the_alias_its_rollout_and_alarm_then_deletes_them(aws: None) -> None:
    cfn = client("cloudformation")
    stack_id = cfn.create_stack(StackName="roll", TemplateBody=json.dumps(STACK))["StackId"]
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    fn_arn = f"arn:aws:lambda:{REGION}:123456789012:function:fn"
    assert outputs["VersionArn"] == f"{fn_arn}:1"
    assert outputs["AliasArn"] == f"{fn_arn}:live"
    assert (
        outputs["AlarmArn"] == f"arn:aws:cloudwatch:{REGION}:123456789012:alarm:fn-version-errors"
    )

    lam = client("lambda")
    (alias,) = lam.list_aliases(FunctionName="fn")["Aliases"]
    assert (alias["Name"], alias["FunctionVersion"]) == ("live", "1")
    (mapping,) = lam.list_event_source_mappings(FunctionName=f"{fn_arn}:live")[
        "EventSourceMappings"
    ]
    assert mapping["FunctionArn"].startswith(f"{fn_arn}:")
    # A record on the stream invokes the aliased version (moto tries Docker; without it the
    # invocation fails, handled), and PutRecord still succeeds.
    kinesis = client("kinesis")
    stream = kinesis.list_streams()["StreamNames"][0]
    assert kinesis.put_record(StreamName=stream, Data=b"{}", PartitionKey="k")["SequenceNumber"]

    (alarm,) = client("cloudwatch").describe_alarms(AlarmNames=["fn-version-errors"])[
        "MetricAlarms"
    ]
    assert alarm["Dimensions"] == [
        {"Name": "FunctionName", "Value": "fn"},
        {"Name": "Resource", "Value": "fn:live"},
        {"Name": "ExecutedVersion", "Value": "1"},
    ]
    codedeploy = client("codedeploy")
    (application,) = codedeploy.list_applications()["applications"]
    (group,) = codedeploy.list_deployment_groups(applicationName=application)["deploymentGroups"]
    info = codedeploy.get_deployment_group(applicationName=application, deploymentGroupName=group)[
        "deploymentGroupInfo"
    ]
    assert info["deploymentConfigName"] == "CodeDeployDefault.LambdaCanary10Percent5Minutes"
    assert info["autoRollbackConfiguration"]["events"][1] == "DEPLOYMENT_STOP_ON_ALARM"
    # GetDeploymentGroup answers alarmConfiguration {} (a TODO in moto): read what it stored.
    backend = codedeploy_backends["123456789012"][REGION]
    stored: Any = backend.deployment_groups[application][group].alarm_configuration
    assert stored == {
        "enabled": True,
        "alarms": [{"name": "fn-version-errors"}],
    }

    cfn.delete_stack(StackName=stack_id)
    assert lam.list_functions()["Functions"] == []  # its alias and versions with it
    assert (
        client("cloudwatch").describe_alarms(AlarmNames=["fn-version-errors"])["MetricAlarms"] == []
    )
    assert codedeploy.list_applications()["applications"] == []
