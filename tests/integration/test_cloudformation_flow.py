"""The local runtime run through template.yaml deployed as a CloudFormation stack on moto."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from cfn_harness import TEMPLATE, Deployed, deployed_stack
from esm_harness import wait_until

from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.redis_scripts import stored_transactions
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.cfn_deploy import bind_deployed
from kestrel_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

deployed = pytest.fixture(scope="module", name="deployed")(deployed_stack)


def test_local_runtime_processes_events_through_the_deployed_stack(
    deployed: Deployed, redis_url: str, emulator_endpoint: str, tmp_path: Path
) -> None:
    clients = deployed.clients
    app = bind_deployed(TEMPLATE, clients, deployed.deployment, deployed.parameters)
    spec = app.function("TransactionsFunction")
    lam = clients.client("lambda")
    deployed_config = lam.get_function(FunctionName=spec.name)["Configuration"]
    # The runtime runs what the stack deployed: the same function, environment and mapping.
    assert spec.name == deployed.physical("TransactionsFunction")
    assert spec.environment == deployed_config["Environment"]["Variables"]
    (source,) = spec.kinesis
    # The stack maps the stream to the function's live alias; the runtime runs the function.
    alias = deployed.physical("TransactionsFunctionAliaslive")
    (esm,) = lam.list_event_source_mappings(FunctionName=alias)["EventSourceMappings"]
    assert source.stream_arn == esm["EventSourceArn"]
    assert source.on_failure_arn == esm["DestinationConfig"]["OnFailure"]["Destination"]
    assert (source.batch_size, source.parallelization) == (
        esm["BatchSize"],
        esm["ParallelizationFactor"],
    )
    assert (source.max_retries, source.max_record_age_s, source.bisect) == (
        esm["MaximumRetryAttempts"],
        esm["MaximumRecordAgeInSeconds"],
        esm["BisectBatchOnFunctionError"],
    )
    assert source.report_item_failures == (
        "ReportBatchItemFailures" in esm["FunctionResponseTypes"]
    )

    tag = deployed.deployment.stack_name
    transactions = [
        {
            "transaction_id": f"{tag}-T{n:03d}",
            "customer_id": f"{tag}-C{n % 3}",
            "terminal_id": f"{tag}-TERM{n % 2}",
            "amount": 12.5 + n,
            "event_time": "2026-11-29T10:00:00Z",
        }
        for n in range(12)
    ]
    kinesis = clients.client("kinesis")
    stream = deployed.physical("TransactionsStream")
    response = kinesis.put_records(
        StreamName=stream,
        Records=[
            {"Data": json.dumps(t).encode(), "PartitionKey": str(t["customer_id"])}
            for t in transactions
        ],
    )
    assert response["FailedRecordCount"] == 0
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(tmp_path), "AWS_ENDPOINT_URL": emulator_endpoint}
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction"], log_dir=tmp_path / "logs"
    )
    decisions = RedisDecisions(redis.Redis.from_url(redis_url), 3600)
    runtime.start()
    try:
        wait_until(
            lambda: runtime.kinesis[0].stats.succeeded >= len(transactions),
            what="every transaction handled",
        )
        wait_until(
            lambda: all(decisions.decision(str(t["transaction_id"])) for t in transactions),
            what="a decision for every transaction in Redis",
        )
    finally:
        runtime.stop()
    assert runtime.kinesis[0].stats.discarded == 0

    features = RedisFeatureStore(redis.Redis.from_url(redis_url))
    as_of_ms = int(datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC).timestamp() * 1000)
    for c in range(3):
        customer = f"{tag}-C{c}"
        held = stored_transactions(redis.Redis.from_url(redis_url), f"kestrel:{{c:{customer}}}:log")
        assert len(held) == 4
        aggregates, known = features.customer_aggregates(customer, as_of_ms)
        assert known
        assert max(aggregates.counts) == 4
    for t in transactions:
        record = decisions.decision(str(t["transaction_id"]))
        assert record is not None
        assert (record.customer_id, record.terminal_id) == (t["customer_id"], t["terminal_id"])
        assert record.decision
    published = _decisions_on_stream(clients, deployed.physical("DecisionsStream"))
    assert {str(t["transaction_id"]) for t in transactions} <= published
    events = clients.client("s3").list_objects_v2(Bucket=deployed.physical("EventLogBucket"))
    assert events.get("KeyCount", 0) > 0


def _decisions_on_stream(clients: AwsClients, stream: str) -> set[str]:
    """Transaction ids of every decision on the deployed decisions stream."""
    kinesis = clients.client("kinesis")
    ids: set[str] = set()
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]:
            ids.add(str(json.loads(record["Data"])["transaction_id"]))
    return ids
