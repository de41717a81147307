"""template.yaml's freshness settings: no batching window on transactions, optional fan-out.

TransactionsEnhancedFanOut=true must create an enhanced fan-out consumer of the transactions
stream, point TransactionsFunction's event source mapping at it and let only that function's
role subscribe to it. moto's CloudFormation cannot deploy AWS::Kinesis::StreamConsumer (README,
"Verified here without AWS or Docker"), so this is checked on the template as
aws-sam-translator translates it, with its conditions evaluated for both values, and on how
the local runtime reads it (the consumer's stream, polled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kestrel_local.cfn_artifacts import S3Location, rewrite_code_uris
from kestrel_local.cfn_deploy import translate
from kestrel_local.functions import functions_of
from kestrel_local.provision import _names
from kestrel_local.template import Stack, load_template

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = load_template(ROOT / "template.yaml")
ACCOUNT, REGION, STACK = "123456789012", "us-east-1", "kfresh"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{STACK}-transactions"
CONSUMER_ARN = f"{STREAM_ARN}/consumer/{STACK}-transactions-function"
ESM = "TransactionsFunctionTransactions"  # SAM's id: function + event name


def kinesis_event(function: str) -> dict[str, Any]:
    (event,) = [
        e
        for e in TEMPLATE["Resources"][function]["Properties"]["Events"].values()
        if e["Type"] == "Kinesis"
    ]
    props: dict[str, Any] = event["Properties"]
    return props


@pytest.fixture(scope="module")
def translated() -> dict[str, Any]:
    ids = [
        lid
        for lid, r in TEMPLATE["Resources"].items()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    ]
    located = rewrite_code_uris(TEMPLATE, {lid: S3Location("art", f"{lid}.zip") for lid in ids})
    return translate(located, REGION)


def bound(template: dict[str, Any], fan_out: str | None) -> Stack:
    """The template bound to a stack, names as the local platform gives them."""
    overrides = {} if fan_out is None else {"TransactionsEnhancedFanOut": fan_out}
    stack = Stack(template, STACK, REGION, ACCOUNT, overrides)
    _names(stack, "http://127.0.0.1:5050")
    return stack


def test_template_transactions_mapping_invokes_without_a_batching_window() -> None:
    # A window adds up to its length to every record's freshness (p99 target: 500 ms).
    assert kinesis_event("TransactionsFunction")["MaximumBatchingWindowInSeconds"] == 0
    # Large batches still form under load: a read returns all that arrived meanwhile.
    assert kinesis_event("TransactionsFunction")["BatchSize"] == 500
    # Labels are days late by nature: a second of batching saves invocations, costs nothing.
    assert kinesis_event("LabelsFunction")["MaximumBatchingWindowInSeconds"] == 1


def test_template_fan_out_parameter_is_off_by_default() -> None:
    parameter = TEMPLATE["Parameters"]["TransactionsEnhancedFanOut"]
    assert parameter["Type"] == "String"
    assert parameter["AllowedValues"] == ["true", "false"]
    assert parameter["Default"] == "false"
    assert TEMPLATE["Conditions"]["TransactionsFanOut"] == {
        "Fn::Equals": [{"Ref": "TransactionsEnhancedFanOut"}, "true"]
    }
    consumer = TEMPLATE["Resources"]["TransactionsStreamConsumer"]
    assert consumer["Type"] == "AWS::Kinesis::StreamConsumer"
    assert consumer["Condition"] == "TransactionsFanOut"
    assert consumer["Properties"]["StreamARN"] == {"Fn::GetAtt": ["TransactionsStream", "Arn"]}
    assert kinesis_event("LabelsFunction")["Stream"] == {"Fn::GetAtt": ["LabelsStream", "Arn"]}


def test_translated_mapping_reads_the_consumer_only_with_fan_out(
    translated: dict[str, Any],
) -> None:
    resources = translated["Resources"]
    assert resources["TransactionsStreamConsumer"]["Condition"] == "TransactionsFanOut"
    assert resources[ESM]["Type"] == "AWS::Lambda::EventSourceMapping"
    assert resources[ESM]["Properties"]["EventSourceArn"] == {
        "Fn::If": [
            "TransactionsFanOut",
            {"Fn::GetAtt": ["TransactionsStreamConsumer", "ConsumerARN"]},
            {"Fn::GetAtt": ["TransactionsStream", "Arn"]},
        ]
    }
    on, off = bound(translated, "true"), bound(translated, None)
    assert on.resource_enabled("TransactionsStreamConsumer")
    assert not off.resource_enabled("TransactionsStreamConsumer")
    assert on.resolve(resources["TransactionsStreamConsumer"]["Properties"], "c") == {
        "ConsumerName": f"{STACK}-transactions-function",
        "StreamARN": STREAM_ARN,
    }
    assert on.resolve(resources[ESM]["Properties"]["EventSourceArn"], ESM) == CONSUMER_ARN
    assert off.resolve(resources[ESM]["Properties"]["EventSourceArn"], ESM) == STREAM_ARN
    assert on.resolve(resources[ESM]["Properties"]["MaximumBatchingWindowInSeconds"], ESM) == 0


def grants(stack: Stack, role: dict[str, Any]) -> dict[str, list[str]]:
    """Action -> resources of a role's inline policies, conditions evaluated."""
    out: dict[str, list[str]] = {}
    for policy in stack.resolve(role["Properties"]["Policies"], "role"):
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            targets = statement["Resource"]
            for action in [actions] if isinstance(actions, str) else actions:
                out.setdefault(action, []).extend(
                    [targets] if isinstance(targets, str) else targets
                )
    return out


def test_translated_roles_subscribe_only_to_the_transactions_consumer(
    translated: dict[str, Any],
) -> None:
    resources = translated["Resources"]
    role = resources["TransactionsFunctionRole"]
    on, off = bound(translated, "true"), bound(translated, "false")
    with_fan_out, without = grants(on, role), grants(off, role)
    # SubscribeToShard and DescribeStreamConsumer act on the consumer, never on a stream.
    assert with_fan_out["kinesis:SubscribeToShard"] == [CONSUMER_ARN]
    assert with_fan_out["kinesis:DescribeStreamConsumer"] == [CONSUMER_ARN]
    assert "kinesis:SubscribeToShard" not in without
    assert "kinesis:DescribeStreamConsumer" not in without
    # Shard discovery still reads the stream itself, with or without the consumer.
    for action in ("kinesis:DescribeStream", "kinesis:ListShards", "kinesis:GetRecords"):
        assert with_fan_out[action] == without[action] == [STREAM_ARN], action
    # The function's role exists before its mapping: the ESM refers to the function's live
    # alias, the alias to the function, the function to the role, so the grant is in place
    # when Lambda checks it.
    function = resources["TransactionsFunction"]["Properties"]
    assert function["Role"] == {"Fn::GetAtt": ["TransactionsFunctionRole", "Arn"]}
    alias = "TransactionsFunctionAliaslive"
    assert resources[ESM]["Properties"]["FunctionName"] == {"Ref": alias}
    assert resources[alias]["Properties"]["FunctionName"] == {"Ref": "TransactionsFunction"}
    for other in ("LabelsFunctionRole", "ApiFunctionRole", "DriftFunctionRole"):
        assert "kinesis:SubscribeToShard" not in grants(on, resources[other]), other


def test_template_outputs_the_consumer_arn_only_with_fan_out() -> None:
    output = TEMPLATE["Outputs"]["TransactionsStreamConsumerArn"]
    assert output["Condition"] == "TransactionsFanOut"
    assert output["Value"] == {"Fn::GetAtt": ["TransactionsStreamConsumer", "ConsumerARN"]}


@pytest.mark.parametrize("fan_out", [None, "false", "true"])
def test_local_runtime_reads_the_transactions_stream_either_way(fan_out: str | None) -> None:
    stack = bound(load_template(ROOT / "template.yaml"), fan_out)
    specs = functions_of(stack, ROOT)
    (transactions,) = specs["TransactionsFunction"].kinesis
    # The records are the stream's either way: EFO changes delivery, not what is delivered.
    assert transactions.stream_arn == STREAM_ARN
    assert transactions.consumer_arn == (CONSUMER_ARN if fan_out == "true" else None)
    assert transactions.mapping_id == f"TransactionsFunction.Transactions@{STREAM_ARN}"
    assert (transactions.window_s, transactions.batch_size) == (0.0, 500)
    (labels,) = specs["LabelsFunction"].kinesis
    assert labels.consumer_arn is None and labels.window_s == 1.0
    assert ("TransactionsStreamConsumer" in stack.physical) is (fan_out == "true")
