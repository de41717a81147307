"""template.yaml's dead-letter alarms: depth and oldest-message age of every queue, to AlarmTopic.

Read with the local runtime's own template reader, so the local stack is also shown to
tolerate the alarm, topic and subscription resources.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kestrel_local.functions import functions_of
from kestrel_local.provision import _names
from kestrel_local.template import Stack, load_template

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(REPO / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
QUEUES = sorted(name for name, r in RESOURCES.items() if r["Type"] == "AWS::SQS::Queue")
ALARMS = {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
QUEUE_ALARMS = {n: r for n, r in ALARMS.items() if r["Properties"]["Namespace"] == "AWS/SQS"}
DEPTH, AGE = "ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"


def _bound(**overrides: str) -> Stack:
    stack = Stack(TEMPLATE, stack_name="kestrel", parameter_overrides=overrides)
    _names(stack, "http://127.0.0.1:5050")
    return stack


def _alarm_for(queue: str, metric: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        props
        for props in (a["Properties"] for a in QUEUE_ALARMS.values())
        if props["MetricName"] == metric
        and props["Dimensions"]
        == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
    ]
    assert len(found) == 1, f"{queue}: expected one {metric} alarm, found {len(found)}"
    return found[0]


def test_dlq_alarms_cover_both_dead_letter_queues() -> None:
    assert QUEUES == ["OnFailureQueue", "PoisonDLQ"]


@pytest.mark.parametrize("queue", QUEUES)
def test_dlq_alarms_depth_fires_when_a_message_waits_five_minutes(queue: str) -> None:
    props = _alarm_for(queue, DEPTH)
    assert props["Namespace"] == "AWS/SQS"
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0)
    assert props["Statistic"] == "Maximum"
    assert props["Period"] * props["DatapointsToAlarm"] == 300
    assert props["DatapointsToAlarm"] == props["EvaluationPeriods"]
    assert props["TreatMissingData"] == "notBreaching"  # an idle, empty queue sends no data


@pytest.mark.parametrize("queue", QUEUES)
def test_dlq_alarms_age_fires_long_before_the_streams_drop_the_records(queue: str) -> None:
    props = _alarm_for(queue, AGE)
    assert props["Namespace"] == "AWS/SQS"
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 3600)
    retention_s = min(
        r["Properties"]["RetentionPeriodHours"] * 3600
        for r in RESOURCES.values()
        if r["Type"] == "AWS::Kinesis::Stream"
    )
    # On-failure messages only point into the streams: redrive must come before retention ends.
    assert props["Threshold"] + props["Period"] * props["EvaluationPeriods"] < retention_s / 4


@pytest.mark.parametrize("alarm", sorted(ALARMS))
def test_dlq_alarms_notify_the_alarm_topic_when_firing_and_clearing(alarm: str) -> None:
    props = ALARMS[alarm]["Properties"]
    assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert props["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert props["AlarmDescription"]
    assert props["AlarmName"] == {"Fn::Sub": props["AlarmName"]["Fn::Sub"]}
    assert props["AlarmName"]["Fn::Sub"].startswith("${AWS::StackName}-")


@pytest.mark.parametrize("alarm", sorted(QUEUE_ALARMS))
def test_dlq_alarms_dimension_resolves_to_the_queue_the_stack_creates(alarm: str) -> None:
    stack = _bound()
    props = stack.resolve(QUEUE_ALARMS[alarm]["Properties"], alarm)
    ((dimension,),) = [props["Dimensions"]]
    queue_names = {stack.physical[q].attributes["QueueName"] for q in QUEUES}
    assert dimension["Value"] in queue_names
    assert props["AlarmActions"] == [stack.physical["AlarmTopic"].ref]
    assert props["AlarmActions"][0].endswith(
        ":sns:us-east-1:" + stack.account_id + ":kestrel-alarms"
    )


def test_dlq_alarms_drift_alarm_watches_the_drift_functions_metric() -> None:
    # The others: the rollout's alarms on each new version (tests/unit/test_template_rollout.py).
    rollout = {n for n, r in ALARMS.items() if r["Properties"]["Namespace"] == "AWS/Lambda"}
    assert rollout == {
        "TransactionsVersionErrorsAlarm",
        "LabelsVersionErrorsAlarm",
        "ClickstreamVersionErrorsAlarm",
        "ApiVersionErrorsAlarm",
    }
    assert set(ALARMS) - set(QUEUE_ALARMS) - rollout == {"DriftAlarm"}
    props = ALARMS["DriftAlarm"]["Properties"]
    # The EMF metric DriftFunction emits (Powertools: namespace, then the service dimension).
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert props["Namespace"] == variables["POWERTOOLS_METRICS_NAMESPACE"]
    assert props["MetricName"] == "DriftedFeatures"
    assert props["Dimensions"] == [
        {"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}
    ]
    assert (props["ComparisonOperator"], props["Threshold"]) == ("GreaterThanThreshold", 0)
    assert props["TreatMissingData"] == "ignore"  # no data between two scheduled checks


def test_dlq_alarms_email_subscription_only_with_an_address() -> None:
    subscription = RESOURCES["AlarmEmailSubscription"]
    assert subscription["Type"] == "AWS::SNS::Subscription"
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert TEMPLATE["Parameters"]["AlarmEmail"]["Default"] == ""
    assert _bound().resource_enabled("AlarmEmailSubscription") is False
    with_email = _bound(AlarmEmail="fraud-ops@example.com")
    assert with_email.resource_enabled("AlarmEmailSubscription") is True


@pytest.mark.parametrize(
    ("value", "allowed"),
    [("", True), ("fraud-ops@example.com", True), ("not an address", False), ("a@b@c", False)],
)
def test_dlq_alarms_email_parameter_pattern(value: str, allowed: bool) -> None:
    pattern = TEMPLATE["Parameters"]["AlarmEmail"]["AllowedPattern"]
    assert (re.fullmatch(pattern, value) is not None) is allowed


def test_dlq_alarms_local_runtime_tolerates_alarm_topic_and_subscription() -> None:
    stack = _bound(AlarmEmail="fraud-ops@example.com")
    # The topic is provisioned locally; alarms and subscriptions are AWS-only, skipped.
    assert stack.physical["AlarmTopic"].attributes["TopicName"] == "kestrel-alarms"
    assert not set(ALARMS) & set(stack.physical)
    assert "AlarmEmailSubscription" not in stack.physical
    assert {"TransactionsFunction", "LabelsFunction"} <= set(functions_of(stack, REPO))
