"""Backfill == stream, key by key, on a real redis-server; idempotent; overlapping ranges.

One simulated history (50 days, busy terminals, so the retention drops entries and labels)
is streamed through TransactionsFunction's and LabelsFunction's paths (JSON records, the
real store, decisions, scoring with the shipped model, the S3 event log on the emulator),
and backfilled with ``python -m kestrel_ops backfill`` from the simulator's Parquet and from
the event log the stream wrote, each into a database of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from backfill_harness import (
    Streamer,
    assert_same_state,
    day,
    decision_keys,
    history,
    snapshot,
)
from kestrel_training.simulator import Simulation
from redis.cluster import RedisCluster

from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Label, Transaction
from kestrel.features import DAY_MS
from kestrel_local.aws import AwsClients
from kestrel_ops.__main__ import main
from kestrel_ops.backfill import backfill
from kestrel_ops.backfill_sources import ParquetHistory

DBS = {"streamed": 8, "parquet": 9, "event_log": 10, "overlap": 11, "twice": 12}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Simulation, Path]]:
    """The history and the folder it is written to as Parquet."""
    simulation = history()
    folder = tmp_path_factory.mktemp("history")
    simulation.write(folder)
    yield simulation, folder


@pytest.fixture(scope="module")
def dbs(redis_url: str) -> Iterator[dict[str, redis.Redis]]:
    """One emptied database of the session's redis-server per role."""
    base = redis_url.rsplit("/", 1)[0]
    clients = {name: redis.Redis.from_url(f"{base}/{db}") for name, db in DBS.items()}
    for client in clients.values():
        client.flushdb()
    yield clients
    for client in clients.values():
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def s3_bucket(emulator_endpoint: str) -> tuple[object, str]:
    """An S3 client on the emulator and a fresh event-log bucket."""
    s3 = AwsClients(emulator_endpoint).client("s3")
    bucket = f"backfill-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


@pytest.fixture(scope="module")
def streamed(
    sim: tuple[Simulation, Path], dbs: dict[str, redis.Redis], s3_bucket: tuple[object, str]
) -> dict[str, int]:
    """The whole history streamed into the ``streamed`` database; when it ran (ms)."""
    simulation, _ = sim
    started = int(time.time() * 1000)
    Streamer(dbs["streamed"], *s3_bucket).stream(
        simulation, day(simulation, 0), day(simulation, 50)
    )
    return {"started": started, "ended": int(time.time() * 1000)}


def cli(*args: str) -> int:
    return main(["backfill", *args])


def streamed_range(simulation: Simulation) -> list[str]:
    """The range the stream applied (the Parquet also holds labels dated after it)."""
    return ["--start", str(day(simulation, 0)), "--end", str(day(simulation, 50))]


def url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


def test_backfill_from_parquet_equals_the_stream_key_by_key(
    sim: tuple[Simulation, Path],
    dbs: dict[str, redis.Redis],
    streamed: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulation, folder = sim
    began = int(time.time() * 1000)
    target = url(dbs["parquet"])
    assert cli("--parquet", str(folder), *streamed_range(simulation), "--redis-url", target) == 0
    out = capsys.readouterr()
    n = len(simulation.transactions)
    assert f"backfill: {n:,} transactions ({n:,} new, 0 already stored" in out.out
    assert "events/s" in out.err and "ETA" in out.err  # the progress line
    stream_snap, loaded = snapshot(dbs["streamed"]), snapshot(dbs["parquet"])
    # Decisions are the stream's alone: one per transaction, none written by the backfill.
    assert len(decision_keys(stream_snap)) == n and not decision_keys(loaded)
    # The stream and the backfill ran at different wall times: key TTLs differ by that much.
    slack = int(time.time() * 1000) - streamed["started"]
    assert_same_state(stream_snap, loaded, slack)
    frauds = [k for k in loaded if k.endswith(b":fraud")]
    assert frauds and any(loaded[k][1] for k in frauds)  # labels reached the terminals
    assert began > streamed["ended"]


def test_backfill_from_the_event_log_equals_the_stream(
    emulator_endpoint: str,
    dbs: dict[str, redis.Redis],
    streamed: dict[str, int],
    s3_bucket: tuple[object, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator_endpoint)
    bucket = s3_bucket[1]
    args = ["--event-log", "--bucket", bucket, "--redis-url", url(dbs["event_log"])]
    assert cli(*args) == 0
    assert "0 already stored" in capsys.readouterr().out
    slack = int(time.time() * 1000) - streamed["started"]
    assert_same_state(snapshot(dbs["streamed"]), snapshot(dbs["event_log"]), slack)


def test_backfill_twice_changes_nothing_byte_for_byte(
    sim: tuple[Simulation, Path], dbs: dict[str, redis.Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    simulation, folder = sim
    target = dbs["twice"]
    start, end = str(day(simulation, 0)), str(day(simulation, 20))
    args = ["--parquet", str(folder), "--start", start, "--end", end, "--redis-url", url(target)]
    assert cli(*args) == 0
    before = snapshot(target)
    assert cli(*args) == 0
    n = int((simulation.transactions["event_time"] < day(simulation, 20)).sum())
    assert f"(0 new, {n:,} already stored or past the retention)" in capsys.readouterr().out
    assert snapshot(target) == before  # every key's bytes and its absolute expiry


def test_backfill_over_what_the_stream_applied_changes_nothing(
    sim: tuple[Simulation, Path],
    dbs: dict[str, redis.Redis],
    streamed: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole streamed range, whose first labels the terminals' retention has dropped
    since (a replayed label older than the retention must not come back)."""
    simulation, folder = sim
    target = dbs["streamed"]
    before = snapshot(target)
    assert (
        cli("--parquet", str(folder), *streamed_range(simulation), "--redis-url", url(target)) == 0
    )
    out = capsys.readouterr().out
    assert f"(0 new, {len(simulation.transactions):,} already stored" in out
    assert "fraud, 0 new)" in out
    assert snapshot(target) == before


def test_stream_over_a_backfilled_range_equals_streaming_it_all(
    sim: tuple[Simulation, Path],
    dbs: dict[str, redis.Redis],
    streamed: dict[str, int],
    s3_bucket: tuple[object, str],
) -> None:
    """Backfill days 0-40, then stream from day 37: the stream's first three days are
    replays, and the store ends as if everything had been streamed."""
    simulation, folder = sim
    target = dbs["overlap"]
    store = RedisFeatureStore(target)
    report = backfill(store, ParquetHistory(folder), day(simulation, 0), day(simulation, 40))
    assert report.transactions_new == report.transactions > 0
    Streamer(target, *s3_bucket).stream(simulation, day(simulation, 37), day(simulation, 50))
    slack = int(time.time() * 1000) - streamed["started"]
    overlap = snapshot(target)
    without = {k: v for k, v in overlap.items() if k not in decision_keys(overlap)}
    assert_same_state(snapshot(dbs["streamed"]), without, slack)
    tx = simulation.transactions
    assert len(decision_keys(overlap)) == int((tx["event_time"] >= day(simulation, 37)).sum())


def test_backfill_on_a_cluster_holds_what_a_single_node_holds(
    sim: tuple[Simulation, Path], dbs: dict[str, redis.Redis], redis_cluster_url: str
) -> None:
    simulation, folder = sim
    cluster = RedisCluster.from_url(redis_cluster_url)
    cluster.flushall()
    single = dbs["twice"]
    single.flushdb()
    started = int(time.time() * 1000)
    try:
        days = ["--start", str(day(simulation, 0)), "--end", str(day(simulation, 15))]
        assert cli("--parquet", str(folder), *days, "--redis-url", url(single)) == 0
        args = ["--redis-url", redis_cluster_url, "--cluster"]
        assert cli("--parquet", str(folder), *days, *args) == 0
        slack = int(time.time() * 1000) - started
        assert_same_state(snapshot(single), snapshot(cluster), slack)
    finally:
        cluster.flushall()
        cluster.close()


def test_backfill_says_redis_is_down_and_what_to_do(
    sim: tuple[Simulation, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder = sim
    assert cli("--parquet", str(folder), "--redis-url", "redis://127.0.0.1:1/0") == 2
    err = capsys.readouterr().err
    assert "Redis at redis://127.0.0.1:1/0 does not answer" in err and "make up" in err


def test_backfill_applies_events_in_the_streams_order_whatever_the_batch(
    dbs: dict[str, redis.Redis],
) -> None:
    """A label and its transaction in one batch, a label before its transaction's terminal
    exists: the same as one call per event."""
    one, many = dbs["event_log"], dbs["overlap"]
    for client in (one, many):
        client.flushdb()
    t0 = 1_525_132_800_000
    events: list[Transaction | Label] = [
        Label("X0", "C9", "T9", True, t0 - DAY_MS),
        Transaction("X1", "C1", "T1", 10.0, t0),
        Transaction("X2", "C1", "T1", 20.0, t0),
        Label("X1", "C1", "T1", True, t0),
        Transaction("X0", "C9", "T9", 5.0, t0 + 1),
        Label("X2", "C1", "T1", False, t0 + 2),
    ]
    single = RedisFeatureStore(one)
    for event in events:
        if isinstance(event, Transaction):
            single.apply_transactions([event])
        else:
            single.apply_labels([event])
    assert RedisFeatureStore(many).apply_in_order(events) == [True, True, True, True, True, False]
    assert_same_state(snapshot(one), snapshot(many), expiry_slack_ms=60_000)


def test_a_label_older_than_the_terminals_retention_is_not_recorded(
    dbs: dict[str, redis.Redis],
) -> None:
    """The retention drops old labels with their transactions: a replay must not bring one
    back (else a second backfill over old days would change the store)."""
    client = dbs["twice"]
    client.flushdb()
    store = RedisFeatureStore(client)
    t0 = 1_525_132_800_000
    store.apply_transactions(
        [
            Transaction("O1", "C1", "T1", 10.0, t0),
            Transaction("O2", "C2", "T1", 10.0, t0 + 45 * DAY_MS),
        ]
    )
    old = Label("O1", "C1", "T1", True, t0 + 4 * DAY_MS)  # 41 days before the newest
    recent = Label("O2", "C2", "T1", True, t0 + 46 * DAY_MS)
    assert store.apply_labels([old, recent]) == [True, True]  # the card still records it
    assert client.zrange("kestrel:{t:T1}:labels", 0, -1) == [b"O2"]
    assert client.hkeys("kestrel:{c:C1}:frauds") == [b"O1"]
    client.flushdb()
