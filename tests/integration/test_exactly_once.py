"""Exactly once under at-least-once delivery: duplicates and mid-batch crashes change nothing."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import redis
from esm_harness import wait_until
from kestrel_training.producer import TRANSACTION_FIELDS, json_encoder, produce
from kestrel_training.simulator import SimulatorConfig, simulate

from bench.chaos_checks import feature_state
from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Transaction
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import bind
from kestrel_local.runtime import LocalRuntime

TEMPLATE = Path(__file__).resolve().parent.parent / "fixtures" / "exactly_once" / "template.yaml"


def test_exactly_once_with_duplicates_and_crashes_equals_a_clean_pass(
    emulator_endpoint: str, redis_url: str, tmp_path: Path
) -> None:
    sim = simulate(SimulatorConfig(n_customers=2000, n_terminals=4000, n_days=14, seed=5))
    tx = sim.transactions.head(50_000)
    records = tx.to_dict("records")
    rng = random.Random(5)
    duplicates = rng.sample(records, 5_000)

    chaos_url = redis_url.rsplit("/", 1)[0] + "/3"
    clean_url = redis_url.rsplit("/", 1)[0] + "/4"
    chaos, clean = redis.Redis.from_url(chaos_url), redis.Redis.from_url(clean_url)
    chaos.flushdb()
    clean.flushdb()

    clients = AwsClients(emulator_endpoint)
    stack = f"once{uuid.uuid4().hex[:8]}"
    app, _ = bind(
        TEMPLATE, clients, stack, {"RedisUrl": chaos_url, "CrashRate": "0.3"}, create=True
    )
    stream = app.stack.physical["TransactionsStream"].ref
    kinesis = clients.client("kinesis")
    settings = LocalSettings.from_env(
        {
            "AWS_ENDPOINT_URL": emulator_endpoint,
            "KESTREL_RUN_DIR": str(tmp_path),
            "KESTREL_RETRY_BACKOFF_S": "0.01",
        }
    )
    runtime = LocalRuntime(app, clients, settings, log_dir=tmp_path / "logs")
    (mapping,) = runtime.kinesis
    runtime.start()
    try:
        encoder = json_encoder(TRANSACTION_FIELDS)
        produce(records[:25_000], stream, client=kinesis, encoder=encoder)
        produce(duplicates, stream, client=kinesis, encoder=encoder)  # duplicated puts
        produce(records[25_000:], stream, client=kinesis, encoder=encoder)
        total = len(records) + len(duplicates)
        wait_until(
            lambda: mapping.stats.succeeded >= total, timeout_s=240, what=f"{total} records handled"
        )
    finally:
        runtime.stop()
    assert mapping.stats.function_errors > 0  # crashes really happened and were retried
    assert mapping.stats.discarded == 0

    store = RedisFeatureStore(clean)
    ordered = [
        Transaction(
            r["transaction_id"],
            r["customer_id"],
            r["terminal_id"],
            float(r["amount"]),
            int(r["event_time"]),
        )
        for r in records
    ]
    for start in range(0, len(ordered), 1000):
        assert not any(
            isinstance(r, Exception)
            for r in store.apply_transactions(ordered[start : start + 1000])
        )
    expected, got = feature_state(clean), feature_state(chaos)
    assert len(expected) > 5_000  # 2 keys per customer, 1 per terminal
    assert got == expected
    # Exactly one decision per transaction, from the shipped model. (Its score is the one
    # made as the transaction was first processed: with shards at different points in
    # event time, a terminal's 7-day-delayed windows may still lack another card's events,
    # so it is not compared with the clean pass's.)
    decisions = RedisDecisions(chaos, 3600)
    stored = [decisions.decision(tx.transaction_id) for tx in ordered]
    assert all(d is not None and d.source == "stream" for d in stored)
    assert {d.model_version for d in stored if d is not None} == {"1"}
    assert sum(1 for _ in chaos.scan_iter(match="kestrel:{d:*", count=1000)) == len(ordered)
