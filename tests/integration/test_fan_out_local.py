"""TransactionsEnhancedFanOut=true, run locally on the embedded emulator and a real Redis.

The local platform registers the template's fan-out consumer on the emulator's transactions
stream and binds its ARN as the endpoint wrote it; the local runtime reads the consumer's
stream (on AWS, enhanced fan-out changes how records are delivered, not which records), so
every transaction is applied and logged exactly as with the default polling mapping.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from esm_harness import wait_until
from kestrel_training.parity import read_logged_features

from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp, bind
from kestrel_local.runtime import LocalRuntime

ROOT = Path(__file__).resolve().parent.parent.parent
FAN_OUT = {"TransactionsEnhancedFanOut": "true"}


@pytest.fixture
def fan_out_stack(
    emulator_endpoint: str, redis_url: str
) -> Iterator[tuple[LocalApp, AwsClients, list[str]]]:
    clients = AwsClients(emulator_endpoint)
    name = f"kf{uuid.uuid4().hex[:8]}"
    overrides = {"RedisUrl": redis_url, **FAN_OUT}
    app, report = bind(ROOT / "template.yaml", clients, name, overrides, create=True)
    yield app, clients, report
    redis.Redis.from_url(redis_url).flushdb()


def test_fan_out_consumer_is_registered_and_bound_as_the_emulator_names_it(
    fan_out_stack: tuple[LocalApp, AwsClients, list[str]],
) -> None:
    app, clients, report = fan_out_stack
    stream_arn = app.stack.physical["TransactionsStream"].attributes["Arn"]
    (consumer,) = clients.client("kinesis").list_stream_consumers(StreamARN=stream_arn)["Consumers"]
    assert consumer["ConsumerName"] == f"{app.stack.stack_name}-transactions-function"
    assert consumer["ConsumerStatus"] == "ACTIVE"
    bound = app.stack.physical["TransactionsStreamConsumer"]
    assert bound.ref == bound.attributes["ConsumerARN"] == consumer["ConsumerARN"]
    assert any("TransactionsStreamConsumer" in line and "registered" in line for line in report)
    (source,) = app.function("TransactionsFunction").kinesis
    assert (source.stream_arn, source.consumer_arn) == (stream_arn, consumer["ConsumerARN"])
    # Binding again (make run after make up) finds the consumer instead of registering another.
    again, _ = bind(
        ROOT / "template.yaml", clients, app.stack.stack_name, {**FAN_OUT}, create=False
    )
    assert again.stack.physical["TransactionsStreamConsumer"].ref == consumer["ConsumerARN"]
    _, report = bind(ROOT / "template.yaml", clients, app.stack.stack_name, {**FAN_OUT}, True)
    assert any("TransactionsStreamConsumer" in line and "exists" in line for line in report)
    assert (
        len(clients.client("kinesis").list_stream_consumers(StreamARN=stream_arn)["Consumers"]) == 1
    )


def test_fan_out_mapping_applies_features_from_the_consumers_stream(
    fan_out_stack: tuple[LocalApp, AwsClients, list[str]],
    emulator_endpoint: str,
    tmp_path: Path,
) -> None:
    app, clients, _ = fan_out_stack
    stream = app.stack.physical["TransactionsStream"].ref
    transactions = [
        {
            "transaction_id": f"T-{n:04d}",
            "customer_id": f"C-{n % 5}",
            "terminal_id": f"TERM-{n % 3}",
            "amount": 12.5 + n,
            "event_time": "2026-11-29T10:00:00Z",
        }
        for n in range(60)
    ]
    records = [
        {"Data": json.dumps(t).encode(), "PartitionKey": str(t["customer_id"])}
        for t in transactions
    ]
    response = clients.client("kinesis").put_records(StreamName=stream, Records=records)
    assert response["FailedRecordCount"] == 0
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(tmp_path), "AWS_ENDPOINT_URL": emulator_endpoint}
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction"], log_dir=tmp_path / "logs"
    )
    (line,) = runtime.describe()
    assert f"consumer={app.stack.stack_name}-transactions-function" in line and "window=0s" in line
    runtime.start()
    try:
        wait_until(
            lambda: runtime.kinesis[0].stats.succeeded >= len(records),
            timeout_s=90,  # worker cold starts (model, layers) on a busy 2-core machine
            what="every record handled through the fan-out mapping",
        )
    finally:
        runtime.stop()
    assert runtime.kinesis[0].stats.discarded == 0
    assert runtime.kinesis[0].stats.function_errors == 0
    # Applied and logged (the offline store, as parity reads it; the Redis layout is the
    # store's business): each transaction once.
    logged = read_logged_features(clients, app.stack.physical["EventLogBucket"].ref)
    assert set(logged) == {str(t["transaction_id"]) for t in transactions}
