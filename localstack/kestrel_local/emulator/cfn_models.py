"""CloudFormation models moto 5.2.5 lacks for a gradual rollout, registered at emulator start-up.

What and why
------------
template.yaml runs three functions behind a ``live`` alias that CodeDeploy shifts, rolled
back by CloudWatch alarms (SAM's ``AutoPublishAlias`` and ``DeploymentPreference``), which
translate to ``AWS::Lambda::Version``, ``AWS::Lambda::Alias``, ``AWS::CodeDeploy::Application``,
``::DeploymentGroup`` and ``AWS::CloudWatch::Alarm``; the mappings and API name the alias.
moto 5.2.5 has backends for all of them but CloudFormation models for none of the last four,
and its Version model answers neither ``Ref`` nor ``Fn::GetAtt Version``. Left out, the alias
would take the mappings and the API with it.

`register_cfn_models` therefore

* gives moto's ``LambdaVersion`` a ``Ref`` (the version's ARN) and ``Fn::GetAtt`` ``Version``,
  and published versions the Docker client slot that moto's copy of $LATEST drops (without
  it a record put on a stream mapped to an alias makes PutRecords answer 500);
* adds models for the four types above that call moto's own backends: ``put_alias``,
  ``create_application``, ``create_deployment_group`` and ``put_metric_alarm``, with ``Ref``
  and ``Fn::GetAtt`` as CloudFormation documents them (an alias's ``Ref`` is its ARN, an
  alarm's its name and ``Arn`` its ARN, an application's and a deployment group's their
  names), and deletion with the stack (moto calls a model's ``delete``; its fallback would be
  handed the template's unresolved properties).

What they do not do: a stack *update* that changes an alias's version does not start a
CodeDeploy deployment (moto has no traffic shifting; the ``UpdatePolicy`` is accepted and
ignored), and alarms never change state (moto evaluates none).

Like `kestrel_local.emulator.patches`, this refuses any moto other than the pinned version.
The models are defined when `register_cfn_models` first runs, not on import, because moto
finds its models as the subclasses of ``CloudFormationModel`` that exist.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from kestrel_local.emulator.patches import check_moto_version

# The resource types the models registered here add to moto's CloudFormation.
CFN_MODEL_TYPES = frozenset(
    {
        "AWS::Lambda::Alias",
        "AWS::CodeDeploy::Application",
        "AWS::CodeDeploy::DeploymentGroup",
        "AWS::CloudWatch::Alarm",
    }
)

_lock = threading.Lock()
_registered: list[type] = []


def cfn_models_registered() -> bool:
    """True once `register_cfn_models` has run in this process."""
    return bool(_registered)


def api_keys(value: Any) -> Any:
    """CloudFormation's PascalCase keys as CodeDeploy's API spells them (camelCase), deeply."""
    if isinstance(value, list):
        return [api_keys(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k)[:1].lower() + str(k)[1:]: api_keys(v) for k, v in value.items()}
    return value


def alarm_arguments(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """moto's ``put_metric_alarm`` keyword arguments from an AWS::CloudWatch::Alarm's properties."""
    missing = [
        key for key in ("ComparisonOperator", "EvaluationPeriods") if properties.get(key) is None
    ]
    if missing:
        raise ValueError(f"AWS::CloudWatch::Alarm {name}: needs {', '.join(missing)}")
    datapoints = properties.get("DatapointsToAlarm")
    return {
        "name": name,
        "namespace": properties.get("Namespace"),
        "metric_name": properties.get("MetricName"),
        "comparison_operator": properties["ComparisonOperator"],
        "evaluation_periods": int(properties["EvaluationPeriods"]),
        "datapoints_to_alarm": int(datapoints) if datapoints is not None else None,
        "period": int(properties["Period"]) if properties.get("Period") is not None else None,
        "threshold": float(properties["Threshold"])
        if properties.get("Threshold") is not None
        else None,
        "statistic": properties.get("Statistic"),
        "extended_statistic": properties.get("ExtendedStatistic"),
        "description": properties.get("AlarmDescription"),
        "dimensions": [
            {"Name": str(d["Name"]), "Value": str(d["Value"])}
            for d in properties.get("Dimensions") or []
        ],
        "alarm_actions": list(properties.get("AlarmActions") or []),
        "ok_actions": list(properties.get("OKActions") or []),
        "insufficient_data_actions": list(properties.get("InsufficientDataActions") or []),
        "unit": properties.get("Unit"),
        "actions_enabled": str(properties.get("ActionsEnabled", True)).lower() == "true",
        "treat_missing_data": properties.get("TreatMissingData"),
        "evaluate_low_sample_count_percentile": properties.get("EvaluateLowSampleCountPercentile"),
        "threshold_metric_id": properties.get("ThresholdMetricId"),
    }


def deployment_group_arguments(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """moto's ``create_deployment_group`` keyword arguments from a deployment group's properties."""
    for key in ("ApplicationName", "ServiceRoleArn"):
        if not properties.get(key):
            raise ValueError(f"AWS::CodeDeploy::DeploymentGroup {name}: needs {key}")
    return {
        "application_name": properties["ApplicationName"],
        "deployment_group_name": name,
        "deployment_config_name": properties.get("DeploymentConfigName"),
        "ec2_tag_filters": api_keys(properties.get("Ec2TagFilters")),
        "on_premises_instance_tag_filters": api_keys(
            properties.get("OnPremisesInstanceTagFilters")
        ),
        "auto_scaling_groups": properties.get("AutoScalingGroups"),
        "service_role_arn": properties["ServiceRoleArn"],
        "trigger_configurations": api_keys(properties.get("TriggerConfigurations")),
        "alarm_configuration": api_keys(properties.get("AlarmConfiguration")),
        "auto_rollback_configuration": api_keys(properties.get("AutoRollbackConfiguration")),
        "outdated_instances_strategy": properties.get("OutdatedInstancesStrategy"),
        "deployment_style": api_keys(properties.get("DeploymentStyle")),
        "blue_green_deployment_configuration": api_keys(
            properties.get("BlueGreenDeploymentConfiguration")
        ),
        "load_balancer_info": api_keys(properties.get("LoadBalancerInfo")),
        "tags": api_keys(properties.get("Tags")),
    }


def register_cfn_models() -> None:
    """Add the models to moto's CloudFormation in this process; safe to call more than once."""
    check_moto_version()
    with _lock:
        if _registered:
            return
        _patch_lambda_version()
        _registered.extend(_define_models())
        from moto.cloudformation import parsing

        # moto caches its model list, and the maps made from it, on first use.
        for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
            cached.cache_clear()


def _patch_lambda_version() -> None:
    """``Ref`` (the version's ARN) and ``Fn::GetAtt Version`` on moto's LambdaVersion model."""
    from moto.awslambda.models import LambdaVersion
    from moto.awslambda.utils import get_backend
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException
    from moto.utilities.docker_utilities import DockerModel

    def create(
        cls: type[LambdaVersion],
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        /,
        **kwargs: Any,
    ) -> LambdaVersion:
        properties = cloudformation_json["Properties"]
        backend = get_backend(account_id, region_name)
        published = backend.publish_version(
            properties["FunctionName"], properties.get("Description") or ""
        )
        if published is None:
            raise ValueError(f"AWS::Lambda::Version: {properties['FunctionName']} not found")
        version = cls({"Version": published.version})
        version.arn = published.function_arn  # type: ignore[attr-defined]
        return version

    def get_cfn_attribute(self: LambdaVersion, attribute_name: str) -> str:
        if attribute_name == "Version":
            return str(self.version)
        raise UnformattedGetAttTemplateException()

    # moto copies $LATEST to publish a version, and the copy drops the private Docker client
    # slot (LambdaFunction.__getstate__), so anything that invokes a version (a record put on
    # a stream mapped to an alias) fails with AttributeError and PutRecords answers 500. A
    # class-level None gives the copy what $LATEST has: the client is looked up on first use,
    # and without Docker the invocation fails the way it does for $LATEST (handled, logged).
    DockerModel._DockerModel__docker_client = None  # type: ignore[attr-defined]
    LambdaVersion.create_from_cloudformation_json = classmethod(create)  # type: ignore[assignment,method-assign]
    LambdaVersion.physical_resource_id = property(lambda self: self.arn)  # type: ignore[attr-defined]
    LambdaVersion.get_cfn_attribute = get_cfn_attribute  # type: ignore[attr-defined]
    LambdaVersion.has_cfn_attr = classmethod(lambda cls, attr: attr == "Version")  # type: ignore[assignment,method-assign]


def _define_models() -> list[type]:
    """The four models, defined now so that moto lists them from here on."""
    from moto.awslambda.exceptions import UnknownFunctionException
    from moto.awslambda.utils import get_backend as lambda_backend
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException
    from moto.cloudwatch.models import cloudwatch_backends
    from moto.codedeploy.models import codedeploy_backends
    from moto.core.common_models import CloudFormationModel

    class _Resource:
        """What the four models share: type, name property, ``Ref`` and ``Fn::GetAtt``."""

        CFN_TYPE: ClassVar[str]
        NAME_TYPE: ClassVar[str] = ""
        PHYSICAL: ClassVar[str] = "name"  # the attribute ``Ref`` answers
        ATTRIBUTES: ClassVar[Mapping[str, str]] = {}  # GetAtt name -> attribute

        @classmethod
        def cloudformation_name_type(cls) -> str:
            return cls.NAME_TYPE

        @classmethod
        def cloudformation_type(cls) -> str:
            return cls.CFN_TYPE

        @property
        def physical_resource_id(self) -> str:
            return str(getattr(self, self.PHYSICAL))

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return attr in cls.ATTRIBUTES

        def get_cfn_attribute(self, attribute_name: str) -> str:
            if attribute_name in self.ATTRIBUTES:
                return str(getattr(self, self.ATTRIBUTES[attribute_name]))
            raise UnformattedGetAttTemplateException()

        def is_created(self) -> bool:
            return True

    class LambdaAliasModel(_Resource, CloudFormationModel):
        """AWS::Lambda::Alias on moto's ``put_alias``; ``Ref`` is the alias's ARN."""

        CFN_TYPE = "AWS::Lambda::Alias"
        PHYSICAL = "arn"
        ATTRIBUTES: ClassVar[Mapping[str, str]] = {"AliasArn": "arn"}

        def __init__(self, arn: str, function_name: str, name: str) -> None:
            self.arn, self.function_name, self.name = arn, function_name, name

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> LambdaAliasModel:
            properties = cloudformation_json["Properties"]
            alias = lambda_backend(account_id, region_name).create_alias(
                name=properties["Name"],
                function_name=properties["FunctionName"],
                function_version=str(properties["FunctionVersion"]),
                description=properties.get("Description") or "",
                routing_config=api_keys(properties.get("RoutingConfig")),
            )
            return cls(alias.arn, properties["FunctionName"], properties["Name"])

        def delete(self, account_id: str, region_name: str) -> None:
            """Delete the alias (stack deletion); gone already if its function is."""
            with contextlib.suppress(UnknownFunctionException):
                lambda_backend(account_id, region_name).delete_alias(self.name, self.function_name)

    class CodeDeployApplicationModel(_Resource, CloudFormationModel):
        """AWS::CodeDeploy::Application on moto's backend; ``Ref`` is its name."""

        CFN_TYPE = "AWS::CodeDeploy::Application"
        NAME_TYPE = "ApplicationName"

        def __init__(self, name: str) -> None:
            self.name = name

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> CodeDeployApplicationModel:
            properties = cloudformation_json["Properties"]
            codedeploy_backends[account_id][region_name].create_application(
                resource_name,
                properties.get("ComputePlatform") or "Server",
                api_keys(properties.get("Tags")) or [],
            )
            return cls(resource_name)

        def delete(self, account_id: str, region_name: str) -> None:
            """Delete the application and its deployment groups (stack deletion)."""
            backend = codedeploy_backends[account_id][region_name]
            backend.applications.pop(self.name, None)
            backend.deployment_groups.pop(self.name, None)

    class CodeDeployDeploymentGroupModel(_Resource, CloudFormationModel):
        """AWS::CodeDeploy::DeploymentGroup on moto's backend; ``Ref`` is its name."""

        CFN_TYPE = "AWS::CodeDeploy::DeploymentGroup"
        NAME_TYPE = "DeploymentGroupName"

        def __init__(self, application: str, name: str) -> None:
            self.application, self.name = application, name

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> CodeDeployDeploymentGroupModel:
            arguments = deployment_group_arguments(resource_name, cloudformation_json["Properties"])
            codedeploy_backends[account_id][region_name].create_deployment_group(**arguments)
            return cls(arguments["application_name"], resource_name)

        def delete(self, account_id: str, region_name: str) -> None:
            """Delete the deployment group (stack deletion)."""
            groups = codedeploy_backends[account_id][region_name].deployment_groups
            groups.get(self.application, {}).pop(self.name, None)

    class CloudWatchAlarmModel(_Resource, CloudFormationModel):
        """AWS::CloudWatch::Alarm on moto's ``put_metric_alarm``; ``Ref`` is its name."""

        CFN_TYPE = "AWS::CloudWatch::Alarm"
        NAME_TYPE = "AlarmName"
        ATTRIBUTES: ClassVar[Mapping[str, str]] = {"Arn": "arn"}

        def __init__(self, name: str, arn: str) -> None:
            self.name, self.arn = name, arn

        @classmethod
        def create_from_cloudformation_json(
            cls,
            resource_name: str,
            cloudformation_json: dict[str, Any],
            account_id: str,
            region_name: str,
            **kwargs: Any,
        ) -> CloudWatchAlarmModel:
            arguments = alarm_arguments(resource_name, cloudformation_json["Properties"])
            alarm = cloudwatch_backends[account_id][region_name].put_metric_alarm(**arguments)
            return cls(alarm.name, alarm.alarm_arn)

        def delete(self, account_id: str, region_name: str) -> None:
            """Delete the alarm (stack deletion)."""
            cloudwatch_backends[account_id][region_name].delete_alarms([self.name])

    return [
        LambdaAliasModel,
        CodeDeployApplicationModel,
        CodeDeployDeploymentGroupModel,
        CloudWatchAlarmModel,
    ]
