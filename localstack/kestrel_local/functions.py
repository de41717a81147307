"""Functions and their event sources, as a SAM template declares them after Globals.

`functions_of(stack, template_dir)` returns one `FunctionSpec` per serverless function, with
its environment (Globals + function), local layer folders, handler and event-source
mappings, validated against the ranges AWS accepts. Errors name the function and key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kestrel_local.template import Stack, TemplateError

FUNCTION_TYPES = {"AWS::Serverless::Function"}
LAYER_TYPES = {"AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"}
STARTING_POSITIONS = {"TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"}
# Event types the local runtime polls; a function with only other events has no mappings.
MAPPED_EVENT_TYPES = {"Kinesis", "SQS"}
# Properties the local runtime acts on; the rest (policies, VPC, tags...) matter only on AWS.
_USED_PROPERTIES = {
    "CodeUri",
    "Handler",
    "Runtime",
    "Environment",
    "Events",
    "Timeout",
    "MemorySize",
    "FunctionName",
    "ReservedConcurrentExecutions",
    "Architectures",
}


# arn:<partition>:kinesis:<region>:<account>:stream/<name>/consumer/<consumer>[:<created>]
# (AWS appends the creation time in seconds; moto does not).
_CONSUMER_ARN = re.compile(
    r"^(?P<stream>arn:[^:]+:kinesis:[^:]+:\d{12}:stream/[A-Za-z0-9_.-]+)"
    r"/consumer/(?P<name>[A-Za-z0-9_.-]+)(?::\d+)?$"
)


@dataclass(frozen=True, slots=True)
class KinesisSource:
    """One Kinesis event-source mapping with AWS's defaults.

    `stream_arn` is the stream the records come from. `consumer_arn` is set when the
    template maps the function to an enhanced fan-out consumer of that stream: on AWS the
    consumer changes only how records are delivered (pushed over HTTP/2 instead of polled),
    not which records or their shape, so the local runtime reads the stream itself.
    """

    function: str
    name: str
    stream_arn: str
    starting_position: str
    starting_timestamp: float | None = None
    batch_size: int = 100
    window_s: float = 0.0
    parallelization: int = 1
    max_retries: int = -1
    max_record_age_s: int = -1
    bisect: bool = False
    report_item_failures: bool = False
    on_failure_arn: str | None = None
    enabled: bool = True
    consumer_arn: str | None = None

    @property
    def mapping_id(self) -> str:
        """A stable id for checkpoints: function, event and stream (the consumer reads it too)."""
        return f"{self.function}.{self.name}@{self.stream_arn}"


@dataclass(frozen=True, slots=True)
class SqsSource:
    """One SQS event-source mapping with AWS's defaults."""

    function: str
    name: str
    queue_arn: str
    batch_size: int = 10
    window_s: float = 0.0
    report_item_failures: bool = False
    max_concurrency: int = 2
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """Everything needed to run one function locally."""

    logical_id: str
    name: str
    arn: str
    handler: str
    code_dir: Path
    runtime: str
    timeout_s: float
    memory_mb: int
    environment: Mapping[str, str]
    layer_dirs: tuple[Path, ...]
    kinesis: tuple[KinesisSource, ...] = ()
    sqs: tuple[SqsSource, ...] = ()
    reserved_concurrency: int | None = None
    architectures: tuple[str, ...] = field(default=("x86_64",))


def _merge_globals(global_props: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """Apply SAM's Globals rules: maps merge, lists append, scalars are overridden."""
    merged: dict[str, Any] = dict(global_props)
    for key, value in props.items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict):
            merged[key] = _merge_globals(base, value)
        elif isinstance(base, list) and isinstance(value, list):
            merged[key] = [*base, *value]
        else:
            merged[key] = value
    return merged


def _int(props: Mapping[str, Any], key: str, default: int, low: int, high: int, where: str) -> int:
    raw = props.get(key, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise TemplateError(f"{where}.{key}: must be a whole number (got {raw!r})") from None
    if not low <= value <= high:
        raise TemplateError(f"{where}.{key}: must be between {low} and {high} (got {value})")
    return value


def _bool(props: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    raw = props.get(key, default)
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in {"true", "false"}:
        return str(raw).lower() == "true"
    raise TemplateError(f"{where}.{key}: must be true or false (got {raw!r})")


def _report_item_failures(props: Mapping[str, Any], where: str) -> bool:
    types = props.get("FunctionResponseTypes") or []
    if not isinstance(types, list) or any(t != "ReportBatchItemFailures" for t in types):
        raise TemplateError(
            f"{where}.FunctionResponseTypes: only [ReportBatchItemFailures] is valid"
        )
    return bool(types)


def _on_failure(props: Mapping[str, Any], where: str) -> str | None:
    config = props.get("DestinationConfig") or {}
    destination = (config.get("OnFailure") or {}).get("Destination")
    if destination is None:
        return None
    if not isinstance(destination, str) or not destination.startswith("arn:"):
        raise TemplateError(f"{where}.DestinationConfig.OnFailure.Destination: needs an ARN")
    service = destination.split(":")[2]
    if service not in {"sqs", "sns"}:
        raise TemplateError(
            f"{where}.DestinationConfig.OnFailure.Destination: the local runtime delivers to SQS "
            f"or SNS, not {service}"
        )
    return destination


def stream_of_consumer(consumer_arn: str) -> str | None:
    """The stream ARN of an enhanced fan-out consumer's ARN, or None if it is not one."""
    match = _CONSUMER_ARN.match(consumer_arn)
    return match.group("stream") if match else None


def _stream_and_consumer(stream: Any, where: str) -> tuple[str, str | None]:
    """The ARN of the stream to read and, for a fan-out consumer, the consumer's ARN."""
    if not isinstance(stream, str) or not stream.startswith("arn:"):
        raise TemplateError(
            f"{where}.Stream: needs the ARN of a stream or of a stream consumer (got {stream!r})"
        )
    if "/consumer/" not in stream:
        return stream, None
    parent = stream_of_consumer(stream)
    if parent is None:
        raise TemplateError(
            f"{where}.Stream: {stream!r} is not a stream consumer ARN "
            "(arn:aws:kinesis:<region>:<account>:stream/<stream>/consumer/<name>:<created>)"
        )
    return parent, stream


def _kinesis_source(function: str, name: str, props: Mapping[str, Any]) -> KinesisSource:
    where = f"{function}.Events.{name}.Properties"
    stream, consumer = _stream_and_consumer(props.get("Stream"), where)
    position = props.get("StartingPosition")
    if position not in STARTING_POSITIONS:
        raise TemplateError(
            f"{where}.StartingPosition: must be one of {sorted(STARTING_POSITIONS)}"
        )
    timestamp = None
    if position == "AT_TIMESTAMP":
        raw = props.get("StartingPositionTimestamp")
        if raw is None:
            raise TemplateError(f"{where}.StartingPositionTimestamp: required with AT_TIMESTAMP")
        try:
            timestamp = float(raw)
        except (TypeError, ValueError):
            timestamp = datetime.fromisoformat(str(raw)).timestamp()
    max_age = _int(props, "MaximumRecordAgeInSeconds", -1, -1, 604800, where)
    if 0 <= max_age < 60:
        raise TemplateError(f"{where}.MaximumRecordAgeInSeconds: must be -1 or 60..604800")
    if props.get("TumblingWindowInSeconds"):
        raise TemplateError(f"{where}.TumblingWindowInSeconds: not supported by the local runtime")
    return KinesisSource(
        function=function,
        name=name,
        stream_arn=stream,
        starting_position=str(position),
        starting_timestamp=timestamp,
        batch_size=_int(props, "BatchSize", 100, 1, 10000, where),
        window_s=float(_int(props, "MaximumBatchingWindowInSeconds", 0, 0, 300, where)),
        parallelization=_int(props, "ParallelizationFactor", 1, 1, 10, where),
        max_retries=_int(props, "MaximumRetryAttempts", -1, -1, 10000, where),
        max_record_age_s=max_age,
        bisect=_bool(props, "BisectBatchOnFunctionError", False, where),
        report_item_failures=_report_item_failures(props, where),
        on_failure_arn=_on_failure(props, where),
        enabled=_bool(props, "Enabled", True, where),
        consumer_arn=consumer,
    )


def _sqs_source(function: str, name: str, props: Mapping[str, Any]) -> SqsSource:
    where = f"{function}.Events.{name}.Properties"
    queue = props.get("Queue")
    if not isinstance(queue, str) or not queue.startswith("arn:"):
        raise TemplateError(f"{where}.Queue: needs the queue ARN (got {queue!r})")
    batch_size = _int(props, "BatchSize", 10, 1, 10000, where)
    window = _int(props, "MaximumBatchingWindowInSeconds", 0, 0, 300, where)
    if batch_size > 10 and window == 0:
        raise TemplateError(
            f"{where}.BatchSize: above 10 needs MaximumBatchingWindowInSeconds of at least 1"
        )
    scaling = props.get("ScalingConfig") or {}
    return SqsSource(
        function=function,
        name=name,
        queue_arn=queue,
        batch_size=batch_size,
        window_s=float(window),
        report_item_failures=_report_item_failures(props, where),
        max_concurrency=_int(scaling, "MaximumConcurrency", 2, 2, 1000, f"{where}.ScalingConfig"),
        enabled=_bool(props, "Enabled", True, where),
    )


def _layer_dirs(stack: Stack, template_dir: Path, layers: Any, where: str) -> tuple[Path, ...]:
    if not isinstance(layers, list):
        raise TemplateError(f"{where}.Layers: must be a list")
    dirs: list[Path] = []
    for item in layers:
        logical_id = item.get("Ref") if isinstance(item, dict) else None
        resource = stack.resources.get(str(logical_id)) if logical_id else None
        if resource is None or resource["Type"] not in LAYER_TYPES:
            raise TemplateError(
                f"{where}.Layers: {item!r} is not a layer of this template; the local runtime "
                "runs layers from local ContentUri folders only"
            )
        props = resource.get("Properties") or {}
        content = props.get("ContentUri", props.get("Content"))
        if not isinstance(content, str):
            raise TemplateError(f"{logical_id}.ContentUri: must be a local folder for local runs")
        folder = (template_dir / content).resolve()
        if not folder.is_dir():
            raise TemplateError(f"{logical_id}.ContentUri: folder {folder} does not exist")
        dirs.append(folder)
    return tuple(dirs)


def _mapped_events(events: Any, logical_id: str) -> dict[str, Any]:
    """The function's Kinesis and SQS events, the only ones with event-source mappings.

    Other events (Api, Schedule, S3...) are left unresolved: their Ref to an API or rule
    that the local platform does not provision must not stop the function from running.
    """
    if events is None:
        return {}
    if not isinstance(events, dict):
        raise TemplateError(f"{logical_id}.Events: must be a mapping")
    return {
        name: event
        for name, event in events.items()
        if isinstance(event, dict) and event.get("Type") in MAPPED_EVENT_TYPES
    }


def functions_of(stack: Stack, template_dir: Path) -> dict[str, FunctionSpec]:
    """Every serverless function of the template, keyed by logical id."""
    globals_props = (stack.template.get("Globals") or {}).get("Function") or {}
    specs: dict[str, FunctionSpec] = {}
    for logical_id, resource in stack.resources.items():
        if resource["Type"] not in FUNCTION_TYPES or not stack.resource_enabled(logical_id):
            continue
        raw = _merge_globals(globals_props, resource.get("Properties") or {})
        layers = _layer_dirs(stack, template_dir, raw.get("Layers", []), logical_id)
        used = {k: v for k, v in raw.items() if k in _USED_PROPERTIES}
        used["Events"] = _mapped_events(raw.get("Events"), logical_id)
        props = stack.resolve(used, logical_id)
        specs[logical_id] = _function_spec(stack, template_dir, logical_id, props, layers)
    return specs


def _function_spec(
    stack: Stack,
    template_dir: Path,
    logical_id: str,
    props: Mapping[str, Any],
    layers: tuple[Path, ...],
) -> FunctionSpec:
    code_uri = props.get("CodeUri")
    if not isinstance(code_uri, str):
        raise TemplateError(f"{logical_id}.CodeUri: must be a local folder for local runs")
    code_dir = (template_dir / code_uri).resolve()
    if not code_dir.is_dir():
        raise TemplateError(f"{logical_id}.CodeUri: folder {code_dir} does not exist")
    handler = props.get("Handler")
    if not isinstance(handler, str) or "." not in handler:
        raise TemplateError(f"{logical_id}.Handler: must look like module.function")
    runtime = str(props.get("Runtime", ""))
    if not runtime.startswith("python3"):
        raise TemplateError(f"{logical_id}.Runtime: the local runtime runs python3.x only")
    variables = (props.get("Environment") or {}).get("Variables") or {}
    physical = stack.physical.get(logical_id)
    name = physical.ref if physical else str(props.get("FunctionName") or logical_id)
    kinesis: list[KinesisSource] = []
    sqs: list[SqsSource] = []
    for event_name, event in (props.get("Events") or {}).items():
        kind, event_props = event.get("Type"), event.get("Properties") or {}
        if kind == "Kinesis":
            kinesis.append(_kinesis_source(logical_id, event_name, event_props))
        elif kind == "SQS":
            sqs.append(_sqs_source(logical_id, event_name, event_props))
    reserved = props.get("ReservedConcurrentExecutions")
    return FunctionSpec(
        logical_id=logical_id,
        name=name,
        arn=f"arn:aws:lambda:{stack.region}:{stack.account_id}:function:{name}",
        handler=handler,
        code_dir=code_dir,
        runtime=runtime,
        timeout_s=float(_int(props, "Timeout", 3, 1, 900, logical_id)),
        memory_mb=_int(props, "MemorySize", 128, 128, 10240, logical_id),
        environment={str(k): str(v) for k, v in variables.items()},
        layer_dirs=layers,
        kinesis=tuple(kinesis),
        sqs=tuple(sqs),
        reserved_concurrency=int(reserved) if reserved is not None else None,
        architectures=tuple(props.get("Architectures") or ["x86_64"]),
    )
