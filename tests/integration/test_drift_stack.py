"""The drift check end to end: the event log on the embedded emulator's S3, a real redis-server.

A day of simulated traffic (the default simulation's configuration, seed 3: the population
the shipped model was trained on, drawn anew) gets its point-in-time features from the
shared definitions and its scores from the shipped model, and is logged with the event
log's own writer in batches of 500, as TransactionsFunction logs it. Then:

- DriftFunction runs through the local Lambda runtime (``python -m kestrel_local invoke``,
  what ``make invoke`` does) on events/schedule-drift.json, with the environment the
  template gives it, against the shipped model's reference: the traffic is judged ``ok``,
  the report lands in S3, the status in Redis, the DLQ depths in the metrics;
- ``python -m kestrel_ops drift`` (what ``make drift`` runs) on the same day with every
  amount inflated by half finds drift and says so in its table, its file, Redis and S3.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from kestrel_training.candidates import features
from kestrel_training.datasets import build_dataset
from kestrel_training.simulator import SimulatorConfig, simulate

from kestrel.adapters.onnx_model import OnnxModel
from kestrel.adapters.redis_telemetry import DRIFT_KEY, RedisDriftStatus
from kestrel.adapters.s3_event_log import S3EventLog
from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.settings import default_model_dir
from kestrel_local.aws import AwsClients
from kestrel_local.provision import LocalApp, bind
from kestrel_ops.__main__ import main as ops_main

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = ROOT / "template.yaml"
DAY = "2018-08-14"  # the day before the time of events/schedule-drift.json
CONFIG = SimulatorConfig(n_days=45, start_date="2018-07-01", seed=3)
Shift = Callable[[pd.DataFrame], pd.DataFrame]


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel.from_folder(default_model_dir())


def served(model: OnnxModel, shift: Shift | None = None) -> list[dict[str, Any]]:
    """The day's transactions as TransactionPath logs them (features, score, model version)."""
    sim = simulate(CONFIG)
    tx = sim.transactions if shift is None else shift(sim.transactions)
    day = build_dataset(tx, sim.labels, DAY, DAY)
    scores = model.predict_proba(features(day))
    vectors = day[list(FEATURE_NAMES)].to_numpy(np.float64)
    return [
        {
            "transaction_id": str(row.transaction_id),
            "customer_id": str(row.customer_id),
            "terminal_id": str(row.terminal_id),
            "amount": float(vector[0]),
            "event_time": int(row.event_time),
            "features": vector.tolist(),
            "feature_set_hash": FEATURE_SET_HASH,
            "score": float(score),
            "decision": "APPROVE",
            "model_version": "1",
        }
        for row, vector, score in zip(day.itertuples(), vectors, scores, strict=True)
    ]


def log(clients: AwsClients, app: LocalApp, rows: list[dict[str, Any]]) -> None:
    """Write `rows` to the stack's event log in batches of 500, as the stream function does."""
    event_log = S3EventLog(clients.client("s3"), app.stack.physical["EventLogBucket"].ref)
    for start in range(0, len(rows), 500):
        batch = rows[start : start + 500]
        event_log.write_batch("transactions", f"shardId-0-{start}", batch, "event_time")


@pytest.fixture
def stack(emulator_endpoint: str, redis_url: str) -> Iterator[tuple[LocalApp, AwsClients]]:
    clients = AwsClients(emulator_endpoint)
    name = f"kd{uuid.uuid4().hex[:8]}"
    app, _ = bind(TEMPLATE, clients, name, {"RedisUrl": redis_url}, create=True)
    yield app, clients
    redis.Redis.from_url(redis_url).delete(DRIFT_KEY)


def s3_json(clients: AwsClients, app: LocalApp, key: str) -> Any:
    bucket = app.stack.physical["EventLogBucket"].ref
    return json.loads(clients.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def emf_metrics(text: str) -> dict[str, float]:
    """Metric name -> value of the one EMF blob in the function's output (stderr locally)."""
    (blob,) = [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]
    found: dict[str, float] = {}
    for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
        value = blob[metric["Name"]]
        found[metric["Name"]] = float(value[0] if isinstance(value, list) else value)
    return found


def test_drift_function_judges_a_normal_day_ok_and_publishes_it(
    stack: tuple[LocalApp, AwsClients],
    model: OnnxModel,
    redis_url: str,
    emulator_endpoint: str,
    tmp_path: Path,
) -> None:
    app, clients = stack
    rows = served(model)
    log(clients, app, rows)
    sqs = clients.client("sqs")
    for n in range(2):
        sqs.send_message(QueueUrl=app.stack.physical["PoisonDLQ"].ref, MessageBody=f"poison {n}")
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": emulator_endpoint}
    done = subprocess.run(
        [
            sys.executable, "-m", "kestrel_local", "invoke", "DriftFunction",
            "--event", "events/schedule-drift.json", "--stack-name", app.stack.stack_name,
            "--parameter-overrides", f"RedisUrl={redis_url}",
        ],
        cwd=ROOT, env={**env, "KESTREL_RUN_DIR": str(tmp_path)}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "ok", summary
    assert (summary["rows"], summary["drifted"], summary["model_version"]) == (len(rows), [], "1")
    latest = s3_json(clients, app, "drift/latest.json")
    (uri,) = summary["reports"]
    assert s3_json(clients, app, uri.split("/", 3)[3]) == latest
    assert latest["window"] | {} == {
        "from": f"{DAY}T00:00:00.000Z", "to": "2018-08-15T00:00:00.000Z", "rows": len(rows),
        "score_rows": len(rows), "skipped_rows": 0, "objects_read": -(-len(rows) // 500),
        "objects_total": -(-len(rows) // 500),
    }  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    assert json.loads(client.get(DRIFT_KEY) or b"{}") == latest
    assert 0 < client.ttl(DRIFT_KEY) <= 10_800  # DRIFT_STATUS_TTL_S in the template
    status = RedisDriftStatus(client).latest()
    assert status is not None and status["status"] == "ok"
    assert status["features"]["TX_DURING_WEEKEND"]["status"] == "unknown"  # a day, not a week
    metrics = emf_metrics(done.stderr)
    assert metrics["DriftedFeatures"] == 0
    assert metrics["DriftPsiMax"] == pytest.approx(latest["psi_max"], abs=1e-6)
    assert metrics["DriftPsiMax"] < 0.1  # the weekend flag's PSI (not judged) is left out
    assert (metrics["PoisonDLQDepth"], metrics["OnFailureQueueDepth"]) == (2, 0)


def test_ops_drift_command_flags_inflated_amounts(
    stack: tuple[LocalApp, AwsClients],
    model: OnnxModel,
    redis_url: str,
    emulator_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, clients = stack
    rows = served(model, lambda tx: tx.assign(amount=(tx["amount"] * 1.5).round(2)))
    log(clients, app, rows)
    end = pd.Timestamp(max(int(r["event_time"]) for r in rows) + 1, unit="ms", tz="UTC")
    for key, value in {
        "AWS_ENDPOINT_URL": emulator_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "REDIS_URL": redis_url,
        "KESTREL_RUN_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    code = ops_main(
        [
            "drift",
            "--stack-name",
            app.stack.stack_name,
            "--template",
            str(TEMPLATE),
            "--fail-on-drift",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.startswith("drift: DRIFT  model 1")
    # --end latest (the default): the 24 hours up to just after the newest logged event.
    assert f".. {end.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z: {len(rows)} rows" in out
    (path,) = (tmp_path / "drift").glob("report-*.json")
    report = json.loads(path.read_text())
    assert report["status"] == "drift" and "TX_AMOUNT" in report["drifted"]
    assert "score" in report["drifted"]
    status = RedisDriftStatus(redis.Redis.from_url(redis_url)).latest()
    assert status == report == s3_json(clients, app, "drift/latest.json")
