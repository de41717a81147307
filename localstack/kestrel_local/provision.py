"""Create a template's streams, queues, topics, buckets and keys on an endpoint, idempotently.

The template is the only list of resources: nothing here names Kestrel's own. Physical
names are the ones the template gives (Name, QueueName, BucketName, TopicName) or, when it
gives none, `<stack>-<LogicalId>`. Stream consumers (enhanced fan-out) are registered on
their stream under their ConsumerName. KMS keys (they have no name) are created first, with
their key policy, and found again by the alias ``alias/<stack>-<LogicalId>`` given to them
here. Functions and layers get local physical records so that Ref/GetAtt on them resolve,
but nothing is deployed for them: the local runtime runs them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from kestrel_local.aws import AwsClients
from kestrel_local.functions import FUNCTION_TYPES, LAYER_TYPES, FunctionSpec, functions_of
from kestrel_local.template import (
    PhysicalResource,
    Stack,
    TemplateError,
    load_template,
    physical_name,
)

log = logging.getLogger("kestrel_local.provision")

STREAM, QUEUE, BUCKET, TOPIC = (
    "AWS::Kinesis::Stream",
    "AWS::SQS::Queue",
    "AWS::S3::Bucket",
    "AWS::SNS::Topic",
)
STREAM_CONSUMER = "AWS::Kinesis::StreamConsumer"
KEY = "AWS::KMS::Key"
_NAME_PROPERTY = {STREAM: "Name", QUEUE: "QueueName", BUCKET: "BucketName", TOPIC: "TopicName"}
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "SqsManagedSseEnabled",
    "FifoQueue",
    "ContentBasedDeduplication",
)


@dataclass
class LocalApp:
    """A template bound to an endpoint: its stack (intrinsics resolvable) and its functions."""

    template_path: Path
    stack: Stack
    functions: dict[str, FunctionSpec]

    def function(self, name: str) -> FunctionSpec:
        """A function by logical id or physical name, with a clear error listing the choices."""
        for spec in self.functions.values():
            if name in (spec.logical_id, spec.name):
                return spec
        choices = ", ".join(sorted(self.functions)) or "none"
        raise TemplateError(f"no function {name!r} in {self.template_path} (functions: {choices})")


def _names(stack: Stack, endpoint: str) -> None:
    """Fill `stack.physical` with the names, ARNs and URLs every supported resource will have."""
    region, account = stack.region, stack.account_id
    for logical_id, resource in stack.resources.items():
        kind = resource["Type"]
        if not stack.resource_enabled(logical_id):
            continue
        props = resource.get("Properties") or {}
        if kind in _NAME_PROPERTY:
            raw = props.get(_NAME_PROPERTY[kind])
            name = (
                str(stack.resolve(raw, f"{logical_id}.{_NAME_PROPERTY[kind]}"))
                if raw
                else (physical_name(stack.stack_name, logical_id, kind))
            )
            stack.physical[logical_id] = _physical(kind, name, region, account, endpoint)
        elif kind in FUNCTION_TYPES:
            raw = props.get("FunctionName")
            name = (
                str(stack.resolve(raw, f"{logical_id}.FunctionName"))
                if raw
                else (physical_name(stack.stack_name, logical_id, kind))
            )
            arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
            stack.physical[logical_id] = PhysicalResource(ref=name, attributes={"Arn": arn})
        elif kind in LAYER_TYPES:
            name = physical_name(stack.stack_name, logical_id, kind)
            arn = f"arn:aws:lambda:{region}:{account}:layer:{name}:1"
            stack.physical[logical_id] = PhysicalResource(ref=arn, attributes={})
    # Consumers last: their StreamARN names a stream named above.
    for logical_id, resource in stack.resources.items():
        if resource["Type"] == STREAM_CONSUMER and stack.resource_enabled(logical_id):
            stack.physical[logical_id] = _consumer_names(stack, logical_id, resource)


def _consumer_names(stack: Stack, logical_id: str, resource: Mapping[str, Any]) -> PhysicalResource:
    """A consumer's name and ARN before it is registered (the endpoint's ARN replaces it)."""
    props = resource.get("Properties") or {}
    for key in ("ConsumerName", "StreamARN"):
        if key not in props:
            raise TemplateError(f"{logical_id}.{key}: required for a stream consumer")
    name = str(stack.resolve(props["ConsumerName"], f"{logical_id}.ConsumerName"))
    stream_arn = str(stack.resolve(props["StreamARN"], f"{logical_id}.StreamARN"))
    return consumer_physical(f"{stream_arn}/consumer/{name}", name, stream_arn)


def consumer_physical(
    arn: str, name: str, stream_arn: str, created: str = "", status: str = "ACTIVE"
) -> PhysicalResource:
    """What Ref (the consumer ARN) and Fn::GetAtt give for an AWS::Kinesis::StreamConsumer."""
    return PhysicalResource(
        ref=arn,
        attributes={
            "ConsumerARN": arn,
            "ConsumerName": name,
            "StreamARN": stream_arn,
            "ConsumerCreationTimestamp": created,
            "ConsumerStatus": status,
        },
    )


def _physical(kind: str, name: str, region: str, account: str, endpoint: str) -> PhysicalResource:
    if kind == STREAM:
        arn = f"arn:aws:kinesis:{region}:{account}:stream/{name}"
        return PhysicalResource(ref=name, attributes={"Arn": arn})
    if kind == QUEUE:
        arn = f"arn:aws:sqs:{region}:{account}:{name}"
        url = f"{endpoint}/{account}/{name}"
        return PhysicalResource(
            ref=url, attributes={"Arn": arn, "QueueName": name, "QueueUrl": url}
        )
    if kind == TOPIC:
        arn = f"arn:aws:sns:{region}:{account}:{name}"
        return PhysicalResource(ref=arn, attributes={"TopicArn": arn, "TopicName": name})
    arn = f"arn:aws:s3:::{name}"
    return PhysicalResource(
        ref=name,
        attributes={
            "Arn": arn,
            "DomainName": f"{name}.s3.amazonaws.com",
            "RegionalDomainName": f"{name}.s3.{region}.amazonaws.com",
        },
    )


def bind(
    template_path: str | Path,
    clients: AwsClients,
    stack_name: str,
    parameter_overrides: Mapping[str, str] | None = None,
    create: bool = False,
) -> tuple[LocalApp, list[str]]:
    """Load a template, bind it to the endpoint behind `clients`, optionally create its resources.

    Returns the app and a report line per resource created or found (empty unless `create`).
    """
    path = Path(template_path).resolve()
    stack = Stack(
        load_template(path),
        stack_name=stack_name,
        region=clients.region,
        account_id=clients.account_id(),
        parameter_overrides=dict(parameter_overrides or {}),
    )
    _names(stack, clients.queue_url_prefix())
    report = _provision(stack, clients) if create else []
    if not create:
        _refresh_queue_urls(stack, clients)
        _refresh_consumer_arns(stack, clients)
    return LocalApp(path, stack, functions_of(stack, path.parent)), report


def _refresh_queue_urls(stack: Stack, clients: AwsClients) -> None:
    """Use the endpoint's own URL for every queue that exists already."""
    sqs = clients.client("sqs")
    for logical_id, physical in list(stack.physical.items()):
        if stack.resources[logical_id]["Type"] != QUEUE:
            continue
        try:
            url = sqs.get_queue_url(QueueName=physical.attributes["QueueName"])["QueueUrl"]
        except ClientError:
            continue
        stack.physical[logical_id] = _with_url(physical, url)


def _refresh_consumer_arns(stack: Stack, clients: AwsClients) -> None:
    """Use the endpoint's ARN for every stream consumer registered already."""
    for logical_id, physical in list(stack.physical.items()):
        if stack.resources[logical_id]["Type"] != STREAM_CONSUMER:
            continue
        try:
            stack.physical[logical_id] = _describe_consumer(clients, physical)
        except ClientError:
            continue


def _describe_consumer(clients: AwsClients, physical: PhysicalResource) -> PhysicalResource:
    """The consumer as the endpoint describes it (ResourceNotFoundException if it is not)."""
    description = clients.client("kinesis").describe_stream_consumer(
        StreamARN=physical.attributes["StreamARN"],
        ConsumerName=physical.attributes["ConsumerName"],
    )["ConsumerDescription"]
    return described_consumer(description)


def described_consumer(description: Mapping[str, Any]) -> PhysicalResource:
    """A consumer from DescribeStreamConsumer's ConsumerDescription."""
    arn = str(description["ConsumerARN"])
    created = description.get("ConsumerCreationTimestamp")
    return consumer_physical(
        arn,
        str(description["ConsumerName"]),
        str(description.get("StreamARN") or arn.split("/consumer/", 1)[0]),
        created.isoformat() if created is not None else "",
        str(description.get("ConsumerStatus", "ACTIVE")),
    )


def _with_url(physical: PhysicalResource, url: str) -> PhysicalResource:
    return PhysicalResource(ref=url, attributes={**physical.attributes, "QueueUrl": url})


def _provision(stack: Stack, clients: AwsClients) -> list[str]:
    """Create (or leave as they are) every key, stream, queue, topic and bucket; report them."""
    report: list[str] = []
    # Keys first: the resources below may name one (an encrypted topic's KmsMasterKeyId).
    for logical_id, resource in stack.resources.items():
        if resource["Type"] != KEY or not stack.resource_enabled(logical_id):
            continue
        props = stack.resolve(resource.get("Properties") or {}, f"{logical_id}.Properties")
        name = physical_name(stack.stack_name, logical_id, KEY)
        try:
            outcome, physical = _key(clients, name, props)
        except ClientError as exc:
            raise TemplateError(f"{logical_id}: the endpoint refused it: {exc}") from None
        stack.physical[logical_id] = physical
        report.append(f"{KEY:<18} {logical_id:<24} {outcome}")
    ordered = sorted(
        (lid for lid in stack.physical if stack.resources[lid]["Type"] in _NAME_PROPERTY),
        # Queues without a redrive policy first, so dead-letter targets exist before sources.
        key=lambda lid: "RedrivePolicy" in (stack.resources[lid].get("Properties") or {}),
    )
    for logical_id in ordered:
        resource = stack.resources[logical_id]
        props = stack.resolve(resource.get("Properties") or {}, f"{logical_id}.Properties")
        creator = {STREAM: _stream, QUEUE: _queue, BUCKET: _bucket, TOPIC: _topic}[resource["Type"]]
        try:
            outcome, physical = creator(clients, stack.physical[logical_id], props)
        except ClientError as exc:
            raise TemplateError(f"{logical_id}: the endpoint refused it: {exc}") from None
        stack.physical[logical_id] = physical
        report.append(f"{resource['Type']:<18} {logical_id:<24} {outcome}")
    consumers = [lid for lid in stack.physical if stack.resources[lid]["Type"] == STREAM_CONSUMER]
    for logical_id in consumers:
        try:
            outcome, physical = _consumer(clients, stack.physical[logical_id])
        except ClientError as exc:
            raise TemplateError(f"{logical_id}: the endpoint refused it: {exc}") from None
        stack.physical[logical_id] = physical
        report.append(f"{STREAM_CONSUMER:<18} {logical_id:<24} {outcome}")
    return report


Created = tuple[str, PhysicalResource]


def _stream(clients: AwsClients, physical: PhysicalResource, props: Mapping[str, Any]) -> Created:
    kinesis = clients.client("kinesis")
    name = physical.ref
    mode = (props.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED")
    try:
        kinesis.describe_stream_summary(StreamName=name)
        outcome = f"exists: {name}"
    except kinesis.exceptions.ResourceNotFoundException:
        args: dict[str, Any] = {"StreamName": name, "StreamModeDetails": {"StreamMode": mode}}
        if mode == "PROVISIONED":
            args["ShardCount"] = int(props.get("ShardCount", 1))
        kinesis.create_stream(**args)
        kinesis.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
        )
        outcome = f"created: {name} ({args.get('ShardCount', 'on-demand')} shard(s))"
    retention = int(props.get("RetentionPeriodHours", 24))
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    if retention > summary["RetentionPeriodHours"]:
        kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=retention)
    encryption = props.get("StreamEncryption")
    if encryption and summary.get("EncryptionType", "NONE") == "NONE":
        kinesis.start_stream_encryption(
            StreamName=name, EncryptionType=encryption["EncryptionType"], KeyId=encryption["KeyId"]
        )
    return outcome, physical


def _key(clients: AwsClients, name: str, props: Mapping[str, Any]) -> Created:
    """The symmetric key behind ``alias/<name>``, created with the template's policy if none."""
    kms = clients.client("kms")
    alias = f"alias/{name}"
    try:
        metadata = kms.describe_key(KeyId=alias)["KeyMetadata"]
        outcome = f"exists: {alias}"
    except kms.exceptions.NotFoundException:
        args: dict[str, Any] = {"KeyUsage": "ENCRYPT_DECRYPT"}
        if props.get("Description"):
            args["Description"] = str(props["Description"])
        if props.get("KeyPolicy"):
            policy = props["KeyPolicy"]
            args["Policy"] = policy if isinstance(policy, str) else json.dumps(policy)
        metadata = kms.create_key(**args)["KeyMetadata"]
        kms.create_alias(AliasName=alias, TargetKeyId=metadata["KeyId"])
        if props.get("EnableKeyRotation") in (True, "true"):
            kms.enable_key_rotation(KeyId=metadata["KeyId"])
        outcome = f"created: {alias}"
    key_id = str(metadata["KeyId"])
    return outcome, PhysicalResource(
        ref=key_id, attributes={"Arn": str(metadata["Arn"]), "KeyId": key_id}
    )


def _consumer(clients: AwsClients, physical: PhysicalResource) -> Created:
    """Register the consumer on its stream unless it is there; wait until it is ACTIVE."""
    kinesis = clients.client("kinesis")
    stream_arn, name = physical.attributes["StreamARN"], physical.attributes["ConsumerName"]
    stream = stream_arn.rsplit("/", 1)[-1]
    try:
        _describe_consumer(clients, physical)
        outcome = f"exists: {name} on {stream}"
    except kinesis.exceptions.ResourceNotFoundException:
        kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName=name)
        outcome = f"registered: {name} on {stream}"
    for _ in range(150):
        found = _describe_consumer(clients, physical)
        if found.attributes["ConsumerStatus"] == "ACTIVE":
            return outcome, found
        time.sleep(0.2)
    raise TemplateError(f"stream consumer {name} on {stream}: not ACTIVE after 30 s")


def _queue(clients: AwsClients, physical: PhysicalResource, props: Mapping[str, Any]) -> Created:
    sqs = clients.client("sqs")
    name = physical.attributes["QueueName"]
    attributes = {key: _attr(props[key]) for key in _QUEUE_ATTRIBUTES if key in props}
    for key in ("RedrivePolicy", "RedriveAllowPolicy"):
        if key in props:
            attributes[key] = json.dumps(props[key]) if isinstance(props[key], dict) else props[key]
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        if attributes:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        outcome = f"exists: {name}"
    except sqs.exceptions.QueueDoesNotExist:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        outcome = f"created: {name}"
    return outcome, _with_url(physical, url)


def _attr(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bucket(clients: AwsClients, physical: PhysicalResource, props: Mapping[str, Any]) -> Created:
    s3 = clients.client("s3")
    name = physical.ref
    try:
        s3.head_bucket(Bucket=name)
        outcome = f"exists: {name}"
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"404", "NoSuchBucket"}:
            raise
        args: dict[str, Any] = {"Bucket": name}
        if clients.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": clients.region}
        s3.create_bucket(**args)
        outcome = f"created: {name}"
    encryption = props.get("BucketEncryption")
    if encryption:
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    _s3_rule(rule) for rule in encryption["ServerSideEncryptionConfiguration"]
                ]
            },
        )
    block = props.get("PublicAccessBlockConfiguration")
    if block:
        s3.put_public_access_block(
            Bucket=name,
            PublicAccessBlockConfiguration={k: bool(v) for k, v in block.items()},
        )
    versioning = props.get("VersioningConfiguration")
    if versioning:
        s3.put_bucket_versioning(
            Bucket=name, VersioningConfiguration={"Status": str(versioning["Status"])}
        )
    return outcome, physical


def _s3_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's encryption rule in the S3 API's words (the default key differs)."""
    out = {k: v for k, v in rule.items() if k != "ServerSideEncryptionByDefault"}
    if "ServerSideEncryptionByDefault" in rule:
        out["ApplyServerSideEncryptionByDefault"] = rule["ServerSideEncryptionByDefault"]
    return out


def _topic(clients: AwsClients, physical: PhysicalResource, props: Mapping[str, Any]) -> Created:
    sns = clients.client("sns")
    arn = sns.create_topic(Name=physical.attributes["TopicName"])["TopicArn"]
    # Set apart from CreateTopic, which refuses an existing topic with other attributes.
    if props.get("KmsMasterKeyId"):
        sns.set_topic_attributes(
            TopicArn=arn,
            AttributeName="KmsMasterKeyId",
            AttributeValue=str(props["KmsMasterKeyId"]),
        )
    return f"ensured: {arn}", physical
