"""Kestrel's own template end to end: emulator streams, local runtime, real Redis, poison DLQ."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from esm_harness import wait_until
from kestrel_training.parity import read_logged_features

from kestrel.adapters.redis_scripts import stored_transactions
from kestrel.features import FEATURE_NAMES
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp, bind
from kestrel_local.runtime import LocalRuntime

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def stack(emulator_endpoint: str, redis_url: str) -> Iterator[tuple[LocalApp, AwsClients]]:
    clients = AwsClients(emulator_endpoint)
    name = f"k{uuid.uuid4().hex[:8]}"
    app, _ = bind(ROOT / "template.yaml", clients, name, {"RedisUrl": redis_url}, create=True)
    yield app, clients
    redis.Redis.from_url(redis_url).flushdb()


def transaction(n: int) -> dict[str, object]:
    return {
        "transaction_id": f"T-{n:06d}",
        "customer_id": f"C-{n % 7}",
        "terminal_id": f"TERM-{n % 3}",
        "amount": 10.5 + n,
        "event_time": "2026-11-29T10:00:00Z",
    }


def test_stack_applies_features_once_logs_them_and_dead_letters_poison(
    stack: tuple[LocalApp, AwsClients], redis_url: str, tmp_path: Path, emulator_endpoint: str
) -> None:
    app, clients = stack
    kinesis, sqs = clients.client("kinesis"), clients.client("sqs")
    stream = app.stack.physical["TransactionsStream"].ref
    good = [transaction(n) for n in range(300)]
    records = [
        {"Data": json.dumps(t).encode(), "PartitionKey": str(t["customer_id"])} for t in good
    ]
    records += records[:50]  # duplicated puts: at-least-once delivery must not double count
    records.append({"Data": b"\xff\xfe not json", "PartitionKey": "C-poison"})
    for start in range(0, len(records), 500):
        response = kinesis.put_records(StreamName=stream, Records=records[start : start + 500])
        assert response["FailedRecordCount"] == 0
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(tmp_path), "AWS_ENDPOINT_URL": emulator_endpoint}
    )
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction"], log_dir=tmp_path / "logs"
    )
    runtime.start()
    try:
        wait_until(
            lambda: runtime.kinesis[0].stats.succeeded >= len(records),
            what="every record handled",
        )
        poison_url = app.stack.physical["PoisonDLQ"].ref
        messages: list[dict[str, object]] = []

        def poison_arrived() -> bool:
            response = sqs.receive_message(QueueUrl=poison_url, WaitTimeSeconds=1)
            messages.extend(response.get("Messages", []))
            return bool(messages)

        wait_until(poison_arrived, what="the poison record in the DLQ")
    finally:
        runtime.stop()
    raw = redis.Redis.from_url(redis_url)  # entries are binary
    per_customer = [len(stored_transactions(raw, f"kestrel:{{c:C-{c}}}:log")) for c in range(7)]
    assert sum(per_customer) == 300
    dead = json.loads(str(messages[0]["Body"]))
    assert dead["reason"] == "undecodable"
    assert base64.b64decode(dead["payload_b64"]).startswith(b"\xff\xfe")
    assert dead["stream_arn"].endswith(f":stream/{stream}")
    assert runtime.kinesis[0].stats.discarded == 0
    logged = read_logged_features(clients, app.stack.physical["EventLogBucket"].ref)
    assert set(logged) == {str(t["transaction_id"]) for t in good}
    last = logged["T-000299"]
    assert last[FEATURE_NAMES.index("CUSTOMER_ID_NB_TX_1DAY_WINDOW")] == 43  # 300 / 7 customers


def invoke_cli(
    app: LocalApp, endpoint: str, run_dir: Path, event: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`python -m kestrel_local invoke TransactionsFunction` on the test's stack."""
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": endpoint, "KESTREL_RUN_DIR": str(run_dir)}
    command = [
        sys.executable,
        "-m",
        "kestrel_local",
        "invoke",
        "TransactionsFunction",
        "--event",
        event,
        "--stack-name",
        app.stack.stack_name,
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_invoke_cli_runs_transactions_function_on_sample_event(
    stack: tuple[LocalApp, AwsClients], redis_url: str, emulator_endpoint: str, tmp_path: Path
) -> None:
    app, _ = stack
    done = invoke_cli(
        app,
        emulator_endpoint,
        tmp_path,
        "events/kinesis-transactions.json",
        "--parameter-overrides",
        f"RedisUrl={redis_url}",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"batchItemFailures": []}
    event = json.loads((ROOT / "events" / "kinesis-transactions.json").read_text())
    sent = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
    client = redis.Redis.from_url(redis_url)
    for tx in sent:
        customer_log = f"kestrel:{{c:{tx['customer_id']}}}:log"
        assert tx["transaction_id"] in stored_transactions(client, customer_log)


def test_invoke_cli_exits_non_zero_with_aws_error_shape_on_function_error(
    stack: tuple[LocalApp, AwsClients], emulator_endpoint: str, tmp_path: Path
) -> None:
    app, _ = stack
    bad_event = tmp_path / "bad.json"
    bad_event.write_text(json.dumps({"Records": "not a list"}))
    done = invoke_cli(app, emulator_endpoint, tmp_path, str(bad_event))
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert set(error) >= {"errorMessage", "errorType", "stackTrace", "requestId"}


def test_stack_provisions_encrypted_alarm_topic_and_versioned_bucket_idempotently(
    stack: tuple[LocalApp, AwsClients], redis_url: str
) -> None:
    app, clients = stack
    physical = app.stack.physical
    kms, sns = clients.client("kms"), clients.client("sns")
    key = kms.describe_key(KeyId=physical["AlarmTopicKey"].ref)["KeyMetadata"]
    assert key["Arn"] == physical["AlarmTopicKey"].attributes["Arn"]
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    (cloudwatch,) = [s for s in policy["Statement"] if "Service" in s["Principal"]]
    assert cloudwatch["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    topic = sns.get_topic_attributes(TopicArn=physical["AlarmTopic"].ref)["Attributes"]
    assert topic["KmsMasterKeyId"] == key["Arn"]
    bucket, s3 = physical["EventLogBucket"].ref, clients.client("s3")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    # An overwritten model pointer comes back from its previous version (README's recipe).
    pointer = "models/active.json"
    for version in ("1", "2"):
        s3.put_object(Bucket=bucket, Key=pointer, Body=json.dumps({"version": version}).encode())
    versions = s3.list_object_versions(Bucket=bucket, Prefix=pointer)["Versions"]
    (previous,) = [v["VersionId"] for v in versions if not v["IsLatest"]]
    s3.copy_object(
        Bucket=bucket,
        Key=pointer,
        CopySource={"Bucket": bucket, "Key": pointer, "VersionId": previous},
    )
    restored = json.loads(s3.get_object(Bucket=bucket, Key=pointer)["Body"].read())
    assert restored == {"version": "1"}
    # `make up` again finds the same key (by its alias) instead of making another one.
    again, report = bind(
        ROOT / "template.yaml",
        clients,
        app.stack.stack_name,
        {"RedisUrl": redis_url},
        create=True,
    )
    assert again.stack.physical["AlarmTopicKey"].ref == key["KeyId"]
    assert any("AlarmTopicKey" in line and "exists" in line for line in report)
