"""template.yaml deployed as a CloudFormation stack on the embedded moto server, and its settings.

The module deploys once (`kestrel_local.cfn_deploy.deploy`): the function and layer folders
are zipped and uploaded to the emulator's S3, the template is translated offline with
aws-sam-translator (moto has no SAM transform and would drop every AWS::Serverless::*
resource silently), and CreateStack runs with RedisUrl pointing at the session's Redis.

What moto 5.2.5's CloudFormation cannot create is left out on purpose, with everything that
refers to it, and the exact list is asserted below (`EXPECTED_REMOVED`), so nothing is
dropped silently and a change in the template or in moto shows up here:

- AWS::CodeBuild::Project (RetrainProject), AWS::SNS::Subscription (AlarmEmailSubscription,
  off by default anyway),
  AWS::S3::BucketPolicy (EventLogBucketPolicy, the TLS-only policy; nothing refers to it),
  AWS::ApiGateway::Stage, ::UsagePlan, ::ApiKey, ::UsagePlanKey: moto has no CloudFormation
  model for these types. It skips them with a log warning, and CreateStack then fails on
  the first reference to one ("Fn::GetAtt references undefined resource RetrainProject").
- AWS::ApiGateway::Deployment: moto's RestApi model ignores the inline OpenAPI `Body` SAM
  generates, so the deployment fails with "The REST API doesn't contain any methods".
- RetrainScheduleRole and RetrainScheduleRule refer to RetrainProject; the outputs
  ScoringApiKeyId and RetrainProjectName refer to removed resources.
- AWS::Kinesis::StreamConsumer (TransactionsStreamConsumer, TransactionsEnhancedFanOut=true)
  has no moto model either, so that setting cannot be deployed here; the stack is deployed
  with the default (false), where CloudFormation leaves the consumer out by its Condition.
  tests/unit/test_template_freshness.py checks the translated template with it on.

The live aliases and their rollout (AWS::Lambda::Alias, CodeDeploy's application and
deployment groups) and the alarms have no moto model either; the emulator adds them at
start-up (kestrel_local.emulator.cfn_models), so they are deployed here, and
test_cloudformation_rollout.py reads them back.

Settings that moto's CloudFormation models accept but do not apply are written as the real
assertions and marked `xfail(strict=True)`: when the emulator learns them, the test turns
red and the marker must go. They are: a function's `Layers` (moto's Lambda::Function model
passes only a few properties; its LayerVersion has no physical id), a layer's `LayerName`
and `CompatibleArchitectures` (moto names it `<stack>-<LogicalId>-<random>`), `StreamEncryption`
(moto's Kinesis::Stream model reads only ShardCount, RetentionPeriodHours and Tags), and the
bucket's PublicAccessBlockConfiguration, OwnershipControls, VersioningConfiguration and
LifecycleConfiguration (its S3::Bucket model reads only BucketEncryption and Tags). The alarm
topic's key is created and named by the topic, but moto's KMS::Key model keeps its KeyPolicy
as a mapping instead of JSON text, so DescribeKey on it fails (also marked `xfail`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cfn_harness import TEMPLATE, UNSUPPORTED_BY_MOTO, Deployed, deployed_stack

from kestrel_local.cfn_artifacts import S3Location, rewrite_code_uris
from kestrel_local.cfn_deploy import Deployment, enabled_resources, translate
from kestrel_local.emulator.cfn_models import CFN_MODEL_TYPES
from kestrel_local.template import load_template

pytestmark = pytest.mark.integration

EXPECTED_REMOVED = {
    "AlarmEmailSubscription",
    "EventLogBucketPolicy",
    "RetrainProject",
    "RetrainScheduleRole",
    "RetrainScheduleRule",
    "ScoringApiStage",
    "ScoringApiUsagePlan",
    "ScoringApiApiKey",
    "ScoringApiUsagePlanKey",
    "ScoringApiDeployment",  # the translator appends a content hash to this id
    "Outputs.ScoringApiKeyId",
    "Outputs.RetrainProjectName",
}
STREAM_FUNCTIONS = {
    # function: (stream, parallelization factor, maximum record age, batching window)
    "TransactionsFunction": ("TransactionsStream", 2, 3600, 0),
    "LabelsFunction": ("LabelsStream", 1, 86400, 1),
    "ClickstreamFunction": ("ClickstreamStream", 2, 3600, 0),
}
LAYERS = ("CoreLayer", "ModelLayer", "DepsLayer")
# DriftFunction's layers: scipy instead of onnxruntime (both would not fit Lambda's 250 MB).
DRIFT_LAYERS = ("CoreLayer", "ModelLayer", "DriftDepsLayer")
# ClickstreamFunction's: the propensity model's layer instead of the fraud one's.
CLICK_LAYERS = ("CoreLayer", "PropensityModelLayer", "DepsLayer")
# The API scores transactions and clicks: both models' layers.
API_LAYERS = ("CoreLayer", "ModelLayer", "PropensityModelLayer", "DepsLayer")


deployed = pytest.fixture(scope="module", name="deployed")(deployed_stack)


def _removed_ids(deployment: Deployment) -> set[str]:
    """Removed logical ids with the translator's hash suffix cut from the API deployment."""
    return {
        "ScoringApiDeployment" if key.startswith("ScoringApiDeployment") else key
        for key in deployment.removed
    }


def test_moto_has_no_cloudformation_model_for_exactly_the_types_left_out() -> None:
    from moto.cloudformation.parsing import get_model_map

    # The emulator adds models for the live aliases and their rollout (alias, CodeDeploy,
    # alarms) at start-up; this process may not have them, so they are counted as present.
    modelled = set(get_model_map()) | CFN_MODEL_TYPES
    sam = load_template(TEMPLATE)
    translated = translate(
        _with_s3_code(sam), "us-east-1", {"RedisUrl": "redis://127.0.0.1:6399/0"}
    )
    types = {resource["Type"] for resource in translated["Resources"].values()}
    assert not any(kind.startswith("AWS::Serverless::") for kind in types)
    lacking = {kind for kind in types if kind not in modelled}
    modelled_but_failing = {"AWS::ApiGateway::Deployment"}
    # The transactions fan-out consumer exists only with TransactionsEnhancedFanOut=true, which
    # moto cannot deploy (no model for the type; README). Off, as here, moto skips it by its
    # Condition before looking for a model, and the mapping reads the stream.
    off_by_condition = {"AWS::Kinesis::StreamConsumer"}
    assert lacking == set(UNSUPPORTED_BY_MOTO) - modelled_but_failing | off_by_condition
    consumers = [r for r in translated["Resources"].values() if r["Type"] in off_by_condition]
    assert consumers and all(r["Condition"] == "TransactionsFanOut" for r in consumers)


def _with_s3_code(sam: dict[str, Any]) -> dict[str, Any]:
    ids = [
        lid
        for lid, resource in sam["Resources"].items()
        if resource["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    ]
    return rewrite_code_uris(sam, {lid: S3Location("bucket", f"{lid}.zip") for lid in ids})


def test_stack_holds_every_resource_but_the_documented_exclusions(deployed: Deployed) -> None:
    deployment = deployed.deployment
    assert _removed_ids(deployment) == EXPECTED_REMOVED
    cfn = deployed.client("cloudformation")
    stack = cfn.describe_stacks(StackName=deployment.stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    clients = deployed.clients
    sent = enabled_resources(
        deployment.template,
        deployment.stack_name,
        clients.region,
        clients.account_id(),
        deployed.parameters,
    )
    assert set(deployment.resources) == sent
    for logical_id in STREAM_FUNCTIONS:
        assert deployment.resources[logical_id][0] == "AWS::Lambda::Function"
    assert deployment.outputs["TransactionsStreamName"] == deployed.physical("TransactionsStream")


def test_event_source_mappings_have_the_template_settings(deployed: Deployed) -> None:
    lam = deployed.client("lambda")
    on_failure_arn = deployed.client("sqs").get_queue_attributes(
        QueueUrl=deployed.physical("OnFailureQueue"), AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    for function, (stream, parallelization, max_age, window) in STREAM_FUNCTIONS.items():
        # Each mapping invokes the function's live alias (test_cloudformation_rollout.py).
        alias = deployed.physical(f"{function}Aliaslive")
        mappings = lam.list_event_source_mappings(FunctionName=alias)["EventSourceMappings"]
        assert len(mappings) == 1, function
        esm = mappings[0]
        assert esm["EventSourceArn"].endswith(f":stream/{deployed.physical(stream)}")
        assert esm["FunctionArn"].startswith(f"{alias.rsplit(':', 1)[0]}:")
        assert esm["StartingPosition"] == "TRIM_HORIZON"
        assert esm["BatchSize"] == 500
        assert esm["MaximumBatchingWindowInSeconds"] == window
        assert esm["ParallelizationFactor"] == parallelization
        assert esm["BisectBatchOnFunctionError"] is True
        assert esm["MaximumRetryAttempts"] == 5
        assert esm["MaximumRecordAgeInSeconds"] == max_age
        assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert esm["DestinationConfig"] == {"OnFailure": {"Destination": on_failure_arn}}
        assert esm["State"] == "Enabled"


def test_functions_have_the_template_settings(
    deployed: Deployed, redis_url: str, lambda_build: Path
) -> None:
    lam = deployed.client("lambda")
    manifest = json.loads((lambda_build.parent / "lambda" / "manifest.json").read_text())
    handlers = {
        "TransactionsFunction": ("app.lambda_handler", 30),
        "LabelsFunction": ("app.lambda_handler", 30),
        "ClickstreamFunction": ("app.lambda_handler", 30),
        "ApiFunction": ("app.app", 10),
        "DriftFunction": ("app.lambda_handler", 300),
    }
    for function, (handler, timeout) in handlers.items():
        config = lam.get_function(FunctionName=deployed.physical(function))["Configuration"]
        assert config["Runtime"] == "python3.12"
        assert config["Handler"] == handler
        assert config["Timeout"] == timeout
        assert config["MemorySize"] == 1024
        assert config["Role"].endswith(f":role/{deployed.physical(f'{function}Role')}")
        env = config["Environment"]["Variables"]
        assert env["REDIS_URL"] == redis_url
        assert env["KESTREL_STAGE"] == "test"
        assert env["TRANSACTIONS_STREAM"] == deployed.physical("TransactionsStream")
        assert env["POISON_DLQ_URL"] == deployed.physical("PoisonDLQ")
        assert env["EVENT_LOG_BUCKET"] == deployed.physical("EventLogBucket")
        assert env["SCHEMA_REGISTRY_NAME"] == deployed.deployment.stack_name
        # The deployed code is the build's zip (Lambda's CodeSha256 is the base64 digest).
        built = manifest["artifacts"][function]
        assert config["CodeSize"] == built["zipped_bytes"]
        assert base64.b64decode(config["CodeSha256"]).hex() == built["sha256"]


def _published_layers(deployed: Deployed) -> dict[str, dict[str, Any]]:
    """The stack's layers by SAM logical id, found by their template description."""
    lam = deployed.client("lambda")
    sam = load_template(TEMPLATE)["Resources"]
    by_description = {
        sam[layer]["Properties"]["Description"]: layer
        for layer in {*LAYERS, *DRIFT_LAYERS, *CLICK_LAYERS}
    }
    found: dict[str, dict[str, Any]] = {}
    for layer in lam.list_layers()["Layers"]:
        latest = layer["LatestMatchingVersion"]
        logical_id = by_description.get(latest.get("Description", ""))
        if logical_id and deployed.deployment.stack_name in layer["LayerName"]:
            found[logical_id] = {"LayerName": layer["LayerName"], **latest}
    return found


def test_layers_are_published_from_the_uploaded_zips(
    deployed: Deployed, lambda_build: Path
) -> None:
    lam = deployed.client("lambda")
    manifest = json.loads((lambda_build.parent / "lambda" / "manifest.json").read_text())
    layers = _published_layers(deployed)
    assert set(layers) == {*LAYERS, *DRIFT_LAYERS, *CLICK_LAYERS}
    sizes = {}
    for logical_id, layer in layers.items():
        assert layer["CompatibleRuntimes"] == ["python3.12"], logical_id
        # (moto 5.2.5 answers GetLayerVersionByArn with a 500, so by name and number)
        version = lam.get_layer_version(
            LayerName=layer["LayerName"], VersionNumber=layer["Version"]
        )
        sizes[logical_id] = version["Content"]["CodeSize"]
    # Each layer is the build's zip, byte for byte in size (the deps layer: ~45 MB of wheels).
    assert sizes == {name: manifest["artifacts"][name]["zipped_bytes"] for name in layers}
    assert sizes["DepsLayer"] > 10_000_000


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's Lambda::LayerVersion CloudFormation model ignores LayerName (it reads "
    "a 'LayerVersion' property) and CompatibleArchitectures",
    raises=AssertionError,
)
def test_layers_have_the_template_names_and_architectures(deployed: Deployed) -> None:
    stack_name = deployed.deployment.stack_name
    layers = _published_layers(deployed)
    for logical_id, suffix in zip(LAYERS, ("core", "model", "deps"), strict=True):
        assert layers[logical_id]["LayerName"] == f"{stack_name}-{suffix}"
        assert layers[logical_id].get("CompatibleArchitectures") == ["x86_64"]


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's Lambda::Function CloudFormation model ignores Layers",
    raises=AssertionError,
)
def test_each_function_has_the_three_layers_attached(deployed: Deployed) -> None:
    lam = deployed.client("lambda")
    layers = _published_layers(deployed)
    for function, attached in (
        ("TransactionsFunction", LAYERS),
        ("LabelsFunction", LAYERS),
        ("ApiFunction", API_LAYERS),
    ):
        expected = [layers[logical_id]["LayerVersionArn"] for logical_id in attached]
        config = lam.get_function(FunctionName=deployed.physical(function))["Configuration"]
        assert [layer["Arn"] for layer in config.get("Layers", [])] == expected, function


def test_translated_functions_reference_the_three_layers(deployed: Deployed) -> None:
    """What moto does not keep is at least what the stack was asked for."""
    resources = deployed.deployment.template["Resources"]
    for function, attached in (
        ("TransactionsFunction", LAYERS),
        ("LabelsFunction", LAYERS),
        ("ApiFunction", API_LAYERS),
    ):
        refs = [layer["Ref"] for layer in resources[function]["Properties"]["Layers"]]
        assert [ref.rstrip("0123456789abcdef") for ref in refs] == list(attached)
        assert all(resources[ref]["Type"] == "AWS::Lambda::LayerVersion" for ref in refs)
    refs = [layer["Ref"] for layer in resources["DriftFunction"]["Properties"]["Layers"]]
    assert [ref.rstrip("0123456789abcdef") for ref in refs] == list(DRIFT_LAYERS)
    refs = [layer["Ref"] for layer in resources["ClickstreamFunction"]["Properties"]["Layers"]]
    assert [ref.rstrip("0123456789abcdef") for ref in refs] == list(CLICK_LAYERS)


def test_drift_function_runs_on_its_schedule(deployed: Deployed) -> None:
    events = deployed.client("events")
    function_arn = deployed.client("lambda").get_function(
        FunctionName=deployed.physical("DriftFunction")
    )["Configuration"]["FunctionArn"]
    (rule,) = [
        r
        for r in events.list_rules()["Rules"]
        if r["Name"] == deployed.physical("DriftFunctionDriftSchedule")
    ]
    assert rule["ScheduleExpression"] == "rate(15 minutes)"
    assert rule["State"] == "ENABLED"
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [t["Arn"] for t in targets] == [function_arn]


def test_queues_are_encrypted_and_keep_messages_14_days(deployed: Deployed) -> None:
    sqs = deployed.client("sqs")
    for queue in ("OnFailureQueue", "PoisonDLQ"):
        attributes = sqs.get_queue_attributes(
            QueueUrl=deployed.physical(queue), AttributeNames=["All"]
        )["Attributes"]
        assert attributes["SqsManagedSseEnabled"] == "true", queue
        assert attributes["MessageRetentionPeriod"] == "1209600", queue
        # Both queues are final destinations (the redrive tool replays them), so neither has
        # a redrive policy of its own.
        assert "RedrivePolicy" not in attributes, queue


def test_streams_have_the_shard_count_and_retention(deployed: Deployed) -> None:
    kinesis = deployed.client("kinesis")
    for stream in ("TransactionsStream", "LabelsStream", "DecisionsStream"):
        summary = kinesis.describe_stream_summary(StreamName=deployed.physical(stream))[
            "StreamDescriptionSummary"
        ]
        assert summary["StreamStatus"] == "ACTIVE"
        assert summary["OpenShardCount"] == 2
        assert summary["RetentionPeriodHours"] == 24


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's Kinesis::Stream CloudFormation model ignores StreamEncryption",
    raises=AssertionError,
)
def test_streams_are_kms_encrypted(deployed: Deployed) -> None:
    kinesis = deployed.client("kinesis")
    for stream in ("TransactionsStream", "LabelsStream", "DecisionsStream"):
        summary = kinesis.describe_stream_summary(StreamName=deployed.physical(stream))[
            "StreamDescriptionSummary"
        ]
        assert summary["EncryptionType"] == "KMS"
        assert summary["KeyId"] == "alias/aws/kinesis"


def test_event_log_bucket_is_encrypted(deployed: Deployed) -> None:
    s3 = deployed.client("s3")
    rules = s3.get_bucket_encryption(Bucket=deployed.physical("EventLogBucket"))[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert [rule["ApplyServerSideEncryptionByDefault"] for rule in rules] == [
        {"SSEAlgorithm": "AES256"}
    ]


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's S3::Bucket CloudFormation model ignores PublicAccessBlockConfiguration "
    "and OwnershipControls",
    raises=ClientError,
)
def test_event_log_bucket_blocks_public_access(deployed: Deployed) -> None:
    s3 = deployed.client("s3")
    bucket = deployed.physical("EventLogBucket")
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"),
        True,
    )
    rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's S3::Bucket CloudFormation model ignores VersioningConfiguration",
    raises=AssertionError,
)
def test_event_log_bucket_is_versioned(deployed: Deployed) -> None:
    s3 = deployed.client("s3")
    versioning = s3.get_bucket_versioning(Bucket=deployed.physical("EventLogBucket"))
    assert versioning.get("Status") == "Enabled"


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's S3::Bucket CloudFormation model ignores LifecycleConfiguration",
    raises=ClientError,
)
def test_event_log_bucket_expires_previous_versions(deployed: Deployed) -> None:
    s3 = deployed.client("s3")
    rules = s3.get_bucket_lifecycle_configuration(Bucket=deployed.physical("EventLogBucket"))[
        "Rules"
    ]
    assert [rule["NoncurrentVersionExpiration"] for rule in rules] == [{"NoncurrentDays": 30}]


def test_alarm_topic_is_encrypted_with_the_stacks_key(deployed: Deployed) -> None:
    key_id = deployed.physical("AlarmTopicKey")
    region, account = deployed.clients.region, deployed.clients.account_id()
    keys = deployed.client("kms").list_keys()["Keys"]
    assert key_id in {key["KeyId"] for key in keys}
    attributes = deployed.client("sns").get_topic_attributes(
        TopicArn=deployed.physical("AlarmTopic")
    )["Attributes"]
    assert attributes["KmsMasterKeyId"] == f"arn:aws:kms:{region}:{account}:key/{key_id}"


@pytest.mark.xfail(
    strict=True,
    reason="moto 5.2.5's KMS::Key CloudFormation model stores KeyPolicy as a mapping, not JSON "
    "text, so DescribeKey on the deployed key fails with a 500",
    raises=ClientError,
)
def test_alarm_topic_key_lets_only_the_stacks_alarms_use_it(deployed: Deployed) -> None:
    kms = deployed.client("kms")
    key = kms.describe_key(KeyId=deployed.physical("AlarmTopicKey"))["KeyMetadata"]
    assert key["KeyManager"] == "CUSTOMER" and key["Enabled"] is True
    policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    region, account = deployed.clients.region, deployed.clients.account_id()
    alarms = f"arn:aws:cloudwatch:{region}:{account}:alarm:{deployed.deployment.stack_name}-*"
    services = [s for s in policy["Statement"] if "Service" in s["Principal"]]
    assert services == [
        {
            "Sid": "StackAlarmsPublish",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": alarms},
            },
        }
    ]
