"""ClickstreamFunction scores clicks and keeps each user's latest propensity in a real Redis."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import redis
from kestrel_training.click_offline import click_offline_features
from kestrel_training.click_simulator import ClickSimulatorConfig, simulate_clicks

from kestrel import clients
from kestrel.adapters.onnx_model import OnnxModel
from kestrel.adapters.redis_propensity import PROPENSITY_TTL_MS, RedisPropensities
from kestrel.click_features import CLICK_FEATURE_NAMES
from kestrel.settings import default_propensity_dir
from kestrel_local.context import LambdaContext

ROOT = Path(__file__).resolve().parents[2]
LAYER = Path(default_propensity_dir())


def _handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"clickstream_app_{uuid.uuid4().hex[:6]}", ROOT / "functions" / "clickstream" / "app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(rows: list[dict[str, Any]], first_seq: int) -> dict[str, Any]:
    now = round(time.time(), 3)
    return {
        "Records": [
            {
                "kinesis": {
                    "partitionKey": row["user_id"],
                    "sequenceNumber": str(first_seq + i),
                    "approximateArrivalTimestamp": now,
                    "data": base64.b64encode(json.dumps(row).encode()).decode(),
                },
                "eventID": f"shardId-000000000000:{first_seq + i}",
            }
            for i, row in enumerate(rows)
        ]
    }


def _context() -> LambdaContext:
    return LambdaContext(
        "kestrel-ClickstreamFunction",
        "arn:aws:lambda:us-east-1:123456789012:function:kestrel-ClickstreamFunction",
        1024,
        str(uuid.uuid4()),
        time.time() + 30,
    )


@pytest.fixture
def stack(
    aws_env: dict[str, str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[redis.Redis, str]]:
    url = redis_url.rsplit("/", 1)[0] + "/8"
    client = redis.Redis.from_url(url)
    client.flushdb()
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    bucket = f"clicks-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    queue = boto3.client("sqs").create_queue(QueueName=f"poison-{bucket}")["QueueUrl"]
    monkeypatch.setenv("POISON_DLQ_URL", queue)
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("EVENT_LOG_BUCKET", bucket)
    monkeypatch.setenv("PROPENSITY_MODEL_DIR", str(LAYER))
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    monkeypatch.delenv("MODEL_BUCKET", raising=False)
    clients.reset()
    yield client, bucket
    clients.reset()


def _rows(events: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in events.to_dict("records")
    ]


def test_clickstream_function_writes_each_users_latest_propensity(
    stack: tuple[redis.Redis, str],
) -> None:
    client, bucket = stack
    events = simulate_clicks(ClickSimulatorConfig(n_users=80, n_days=2, seed=3)).events.head(2500)
    rows = _rows(events)
    handler = _handler()
    for start in range(0, len(rows), 500):
        response = handler.lambda_handler(_event(rows[start : start + 500], start), _context())
        assert response == {"batchItemFailures": []}

    model = OnnxModel.from_folder(LAYER)
    offline = click_offline_features(events).set_index("event_id")
    want_scores = dict(
        zip(
            offline.index,
            model.predict_proba(offline[list(CLICK_FEATURE_NAMES)].to_numpy(np.float32)),
            strict=True,
        )
    )
    latest = events.sort_values(["event_time", "event_id"]).groupby("user_id").tail(1)
    reader = RedisPropensities(client)
    assert len(latest) > 40
    for row in latest.itertuples(index=False):
        stored = reader.latest(row.user_id)
        assert stored is not None, row.user_id
        assert stored["event_id"] == row.event_id
        assert stored["event_time"] == row.event_time
        assert stored["session_id"] == row.session_id
        assert stored["model_version"] == model.manifest["model_version"]
        assert stored["propensity"] == pytest.approx(want_scores[row.event_id], abs=1e-6)
        ttl = client.pttl(f"kestrel:{{u:{row.user_id}}}:propensity")
        assert 0 < ttl <= PROPENSITY_TTL_MS

    # A redelivered batch and a late copy of an old event change no stored propensity.
    before = {u: reader.latest(u) for u in latest["user_id"]}
    handler.lambda_handler(_event(rows[:500], 0), _context())
    handler.lambda_handler(_event(rows[::-1][:300], 10_000), _context())
    assert {u: reader.latest(u) for u in latest["user_id"]} == before

    # Every logged event carries its propensity and the model version.
    s3 = boto3.client("s3")
    logged: dict[str, float] = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="events/clicks/")["Contents"]:
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for line in gzip.decompress(body).splitlines():
            doc = json.loads(line)
            assert doc["model_version"] == model.manifest["model_version"]
            logged[doc["event_id"]] = doc["propensity"]
    assert set(logged) == set(events["event_id"])
    for event_id, score in logged.items():
        assert score == pytest.approx(want_scores[event_id], abs=1e-6), event_id


def test_clickstream_function_without_a_model_writes_features_but_no_propensity(
    stack: tuple[redis.Redis, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client, _ = stack
    monkeypatch.setenv("PROPENSITY_MODEL_DIR", str(tmp_path / "no-model"))
    clients.reset()
    events = simulate_clicks(ClickSimulatorConfig(n_users=20, n_days=1, seed=4)).events.head(300)
    response = _handler().lambda_handler(_event(_rows(events), 0), _context())
    assert response == {"batchItemFailures": []}
    assert list(client.scan_iter(match="kestrel:*:propensity")) == []
    assert list(client.scan_iter(match="kestrel:{u:*}:views"))  # the features are stored
