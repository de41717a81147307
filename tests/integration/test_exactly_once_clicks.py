"""Exactly once for clicks: duplicates and mid-batch crashes change nothing, every logged
feature vector is the offline one, and each user's stored propensity is the model's score of
their latest event."""

from __future__ import annotations

import math
import random
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
from esm_harness import wait_until
from kestrel_training.click_offline import click_offline_features
from kestrel_training.click_parity import read_logged_clicks, with_duplicates
from kestrel_training.click_simulator import EVENT_COLUMNS, ClickSimulatorConfig, simulate_clicks
from kestrel_training.producer import json_encoder, produce

from kestrel.adapters.onnx_model import OnnxModel
from kestrel.adapters.redis_click_lua import (
    PRODUCT_VIEWS_OFFSETS,
    PURCHASES_OFFSETS,
    VIEWS_OFFSETS,
)
from kestrel.adapters.redis_clicks import RedisClickStore
from kestrel.adapters.redis_propensity import RedisPropensities
from kestrel.adapters.redis_scripts import decode_state
from kestrel.click_events import click_from_mapping
from kestrel.click_features import CLICK_FEATURE_NAMES
from kestrel.settings import LocalSettings, default_propensity_dir
from kestrel_local.aws import AwsClients
from kestrel_local.provision import bind
from kestrel_local.runtime import LocalRuntime

TEMPLATE = (
    Path(__file__).resolve().parent.parent / "fixtures" / "exactly_once_clicks" / "template.yaml"
)
POINTERS = {
    b":views": len(VIEWS_OFFSETS),
    b":pviews": len(PRODUCT_VIEWS_OFFSETS),
    b":buys": len(PURCHASES_OFFSETS),
}


def click_state(client: redis.Redis) -> dict[bytes, Any]:
    """Every clickstream feature key's content, comparable: states decoded without TTL
    bookkeeping (users' propensities are checked on their own)."""
    dump: dict[bytes, Any] = {}
    for key in client.scan_iter(match="kestrel:{u:*", count=1000):
        if key.endswith(b":propensity"):
            continue
        fields: dict[bytes, Any] = client.hgetall(key)  # type: ignore[assignment]
        raw = fields.pop(b"s")
        suffix = next((s for s in POINTERS if key.endswith(s)), None)
        if suffix is not None:
            state = decode_state(raw, POINTERS[suffix])
            state.pop("refreshed")  # when the TTL was pushed: arrival order, not features
        else:  # a session: all but when its TTL was pushed (field 7)
            values = struct.unpack_from("<ddddddd", raw)
            state = {"values": values[:6], "newest_id": bytes(raw[56:-1])}
        fields[b"s"] = state
        dump[key] = fields
    return dump


def test_exactly_once_clicks_with_duplicates_and_crashes_equals_a_clean_pass(
    emulator_endpoint: str, redis_url: str, tmp_path: Path
) -> None:
    clicks = simulate_clicks(ClickSimulatorConfig(n_users=400, n_days=4, seed=5)).events
    clicks = clicks.head(6_000)
    records = with_duplicates(clicks, seed=5)  # 1% sent again 500 records later
    rng = random.Random(5)
    half = len(records) // 2
    # Redelivered records: copies of what was already sent (an early copy would be the
    # original arriving late, the store's exactness case, not a duplicate).
    duplicates = rng.sample(records[:half], 600)

    chaos_url = redis_url.rsplit("/", 1)[0] + "/5"
    clean_url = redis_url.rsplit("/", 1)[0] + "/6"
    chaos, clean = redis.Redis.from_url(chaos_url), redis.Redis.from_url(clean_url)
    chaos.flushdb()
    clean.flushdb()

    clients = AwsClients(emulator_endpoint)
    stack = f"clicks{uuid.uuid4().hex[:8]}"
    app, _ = bind(
        TEMPLATE, clients, stack, {"RedisUrl": chaos_url, "CrashRate": "0.3"}, create=True
    )
    stream = app.stack.physical["ClickstreamStream"].ref
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
        encoder = json_encoder(EVENT_COLUMNS)
        produce(records[:half], stream, client=kinesis, encoder=encoder, partition_key="user_id")
        produce(duplicates, stream, client=kinesis, encoder=encoder, partition_key="user_id")
        produce(records[half:], stream, client=kinesis, encoder=encoder, partition_key="user_id")
        total = len(records) + len(duplicates)
        wait_until(
            lambda: mapping.stats.succeeded >= total, timeout_s=240, what=f"{total} records handled"
        )
    finally:
        runtime.stop()
    assert mapping.stats.function_errors > 0  # crashes really happened and were retried
    assert mapping.stats.discarded == 0

    store = RedisClickStore(clean)
    ordered = [click_from_mapping(r) for r in _records(clicks)]
    for start in range(0, len(ordered), 1000):
        assert not any(
            isinstance(r, Exception) for r in store.apply_clicks(ordered[start : start + 1000])
        )
    expected, got = click_state(clean), click_state(chaos)
    assert len(expected) > 600  # three logs per user and a hash per session
    assert got == expected
    # Every event was logged, with the offline feature vector, however often it came.
    logged = read_logged_clicks(clients, app.stack.physical["EventLogBucket"].ref)
    offline = click_offline_features(clicks).set_index("event_id")
    assert set(logged) == set(offline.index)
    for event_id, vector in logged.items():
        want = offline.loc[event_id, list(CLICK_FEATURE_NAMES)]
        assert all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) for a, b in zip(vector, want, strict=True)
        ), event_id
    # Each user's stored propensity is the model's score of their latest event's vector.
    model = OnnxModel.from_folder(default_propensity_dir())
    latest = clicks.sort_values(["event_time", "event_id"]).groupby("user_id").tail(1)
    scores = model.predict_proba(
        offline.loc[latest["event_id"], list(CLICK_FEATURE_NAMES)].to_numpy(np.float32)
    )
    reader = RedisPropensities(chaos)
    for user, event_id, score in zip(latest["user_id"], latest["event_id"], scores, strict=True):
        stored = reader.latest(user)
        assert stored is not None and stored["event_id"] == event_id, user
        assert math.isclose(stored["propensity"], score, abs_tol=1e-6), user


def _records(clicks: Any) -> list[dict[str, Any]]:
    """The clicks as records, in order, NaN as null."""
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in clicks.to_dict("records")
    ]
