"""The Kinesis producer against the embedded emulator: nothing lost or doubled, key order kept."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from kestrel_training.producer import (
    LABEL_FIELDS,
    TRANSACTION_FIELDS,
    ProduceReport,
    frame_records,
    main,
    produce,
    rate_pacer,
    speedup_pacer,
)
from kestrel_training.simulator import Simulation, SimulatorConfig, simulate

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

# 300 customers over 5 days: about 2,900 transactions, several per customer per batch.
CONFIG = SimulatorConfig(n_customers=300, n_terminals=600, n_days=5, seed=21)
THROTTLED = "ProvisionedThroughputExceededException"


@pytest.fixture(scope="module")
def simulation() -> Simulation:
    """A small simulation to stream."""
    return simulate(CONFIG)


@pytest.fixture
def kinesis(emulator_endpoint: str) -> KinesisClient:
    """A Kinesis client for the session's emulator."""
    return boto3.client(
        "kinesis",
        endpoint_url=emulator_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def stream(kinesis: KinesisClient) -> str:
    """A fresh two-shard stream."""
    name = f"producer-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=name)
    return name


def read_stream(kinesis: KinesisClient, name: str) -> dict[str, list[tuple[str, bytes]]]:
    """Every record of every shard, in shard order: (partition key, data) per shard id."""
    shards: dict[str, list[tuple[str, bytes]]] = {}
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[tuple[str, bytes]] = []
        while True:
            response = kinesis.get_records(ShardIterator=iterator, Limit=1000)
            records += [(r["PartitionKey"], r["Data"]) for r in response["Records"]]
            iterator = response["NextShardIterator"]
            if not response["Records"]:
                break
        shards[shard["ShardId"]] = records
    return shards


def assert_delivered_once_in_key_order(
    shards: dict[str, list[tuple[str, bytes]]], expected: list[dict[str, Any]], id_field: str
) -> None:
    """Each expected payload arrived exactly once, equal, and in input order per partition key."""
    got = [(key, json.loads(data)) for records in shards.values() for key, data in records]
    counts = Counter(payload[id_field] for _, payload in got)
    assert len(got) == len(expected)
    assert counts == Counter(e[id_field] for e in expected)  # every id once, none extra
    by_id = {e[id_field]: e for e in expected}
    assert all(payload == by_id[payload[id_field]] for _, payload in got)
    assert all(key == payload["customer_id"] for key, payload in got)
    want: dict[str, list[str]] = defaultdict(list)
    for e in expected:
        want[e["customer_id"]].append(e[id_field])
    for records in shards.values():
        seen: dict[str, list[str]] = defaultdict(list)
        for key, data in records:
            seen[key].append(json.loads(data)[id_field])
        for key, ids in seen.items():
            assert ids == want[key], f"order broken for {key}"
    assert sum(1 for records in shards.values() if records) == 2  # both shards were used


def expected_payloads(frame: Any, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The payloads the default JSON encoder should produce, in frame order."""
    return [{k: r[k] for k in fields} for r in frame_records(frame)]


def test_produce_delivers_every_transaction_once_in_key_order(
    kinesis: KinesisClient, stream: str, simulation: Simulation
) -> None:
    tx = simulation.transactions
    assert 2_000 < len(tx) < 5_000
    report = produce(frame_records(tx), stream, client=kinesis)
    assert report.sent == len(tx)
    assert report.failed_then_retried == 0
    assert report.batches >= len(tx) // 500
    assert len(report.last_sequence_numbers) == 2
    expected = expected_payloads(tx, TRANSACTION_FIELDS)
    assert all(isinstance(e["event_time"], int) for e in expected)
    assert_delivered_once_in_key_order(read_stream(kinesis, stream), expected, "transaction_id")


class FlakyPutRecords:
    """Wraps put_records: fails a share of entries as throttled and some whole calls."""

    def __init__(self, real: Any, entry_failure: float, call_failure_every: int) -> None:
        self.real = real
        self.rng = random.Random(7)
        self.entry_failure = entry_failure
        self.call_failure_every = call_failure_every
        self.calls = 0
        self.failed_entries = 0

    def __call__(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        if self.calls % self.call_failure_every == 0:
            error = {"Error": {"Code": THROTTLED, "Message": "Rate exceeded"}}
            raise ClientError(error, "PutRecords")  # type: ignore[arg-type]
        fail = [self.rng.random() < self.entry_failure for _ in Records]
        passed = [r for r, f in zip(Records, fail, strict=True) if not f]
        answers = iter(
            self.real(StreamName=StreamName, Records=passed)["Records"] if passed else []
        )
        results: list[dict[str, Any]] = []
        for failed in fail:
            if failed:
                message = f"Rate exceeded for shard shardId-000000000000 in stream {StreamName}"
                results.append({"ErrorCode": THROTTLED, "ErrorMessage": message})
            else:
                results.append(next(answers))
        self.failed_entries += sum(fail)
        return {"FailedRecordCount": sum(fail), "Records": results, "EncryptionType": "NONE"}


def test_produce_resends_throttled_entries_without_loss_or_reordering(
    kinesis: KinesisClient, stream: str, simulation: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyPutRecords(kinesis.put_records, entry_failure=0.3, call_failure_every=5)
    monkeypatch.setattr(kinesis, "put_records", flaky)
    tx = simulation.transactions
    waits: list[float] = []
    report = produce(
        frame_records(tx), stream, client=kinesis, backoff_base_s=0.001, sleep=waits.append
    )
    assert flaky.failed_entries > 100
    assert report.sent == len(tx)
    assert report.failed_then_retried >= flaky.failed_entries
    assert report.retry_rounds == len(waits) > 0
    assert max(waits) <= 5.0
    expected = expected_payloads(tx, TRANSACTION_FIELDS)
    assert_delivered_once_in_key_order(read_stream(kinesis, stream), expected, "transaction_id")


def test_producer_cli_replays_labels_from_a_simulator_folder(
    kinesis: KinesisClient,
    stream: str,
    simulation: Simulation,
    emulator_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulation.write(tmp_path)
    for name, value in {
        "AWS_ENDPOINT_URL": emulator_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    argv = ["--stream", stream, "--from", str(tmp_path), "--labels", "--limit", "1200"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "streaming 1,200 labels" in err and "done: sent 1,200" in err
    expected = expected_payloads(simulation.labels.iloc[:1200], LABEL_FIELDS)
    assert all(isinstance(e["is_fraud"], bool) for e in expected)
    assert_delivered_once_in_key_order(read_stream(kinesis, stream), expected, "transaction_id")


def test_producer_cli_names_undelivered_records_when_endpoint_is_down(
    simulation: Simulation,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulation.write(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    argv = ["--stream", "nowhere", "--from", str(tmp_path), "--limit", "50", "--max-retries", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "50 of 50 records not delivered" in err
    assert "EndpointConnectionError" in err


def test_produce_paces_batches_at_the_target_rate(
    kinesis: KinesisClient, stream: str, simulation: Simulation
) -> None:
    tx = simulation.transactions.iloc[:300]
    report: ProduceReport = produce(
        frame_records(tx), stream, client=kinesis, pacer=rate_pacer(1000), max_records_per_batch=100
    )
    assert report.sent == 300
    assert report.batches >= 3
    assert report.seconds >= 0.19  # the last batch is due at 200/1000 s


def test_speedup_pacer_compresses_event_time() -> None:
    due = speedup_pacer("event_time", 60.0)
    assert due(0, {"event_time": 1_000_000}) == 0.0
    assert due(1, {"event_time": 1_000_000 + 3_600_000}) == pytest.approx(60.0)
    assert due(2, {"event_time": 1_000_000 + 60_000}) == pytest.approx(1.0)
