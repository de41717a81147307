"""Shadow scoring on the embedded emulator and real Redis: a challenger scores beside the champion.

The champion is the shipped model layer, the challenger a small forest of another shape,
named in the S3 pointer's ``challenger`` entry. Transactions and labels go through
Kestrel's template run by the local Lambda runtime; the event log must then hold both
scores for every transaction, the decisions must be the champion's alone, the telemetry
must name the challenger, and ``compare-models`` must print both models' figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from api_harness import decision_key, provision, put_transactions, transaction
from esm_harness import wait_until
from kestrel_training import compare_models
from kestrel_training.registry import clear_challenger, set_challenger, upload
from test_model_hot_swap import export

from kestrel.adapters.onnx_challenger import build_challenger
from kestrel.adapters.onnx_model import OnnxModel, build_scorer
from kestrel.adapters.redis_telemetry import RedisTelemetry
from kestrel.features import FEATURE_NAMES
from kestrel.scoring import ModelManifest
from kestrel.settings import LocalSettings, Settings, default_model_dir
from kestrel_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration
LAYER = Path(default_model_dir())
N_TX, N_CUSTOMERS = 600, 60
DAY_MS = 86_400_000


@dataclass
class Shadowed:
    """The stack after the stream ran with a challenger set."""

    bucket: str
    s3: Any
    store: redis.Redis
    forest: Any
    ids: list[str]
    frauds: set[str]
    endpoint: str


@pytest.fixture(scope="module")
def shadowed(
    emulator_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shadowed]:
    """Redis database 11: flushed, streamed into with a challenger set, flushed at the end."""
    work = tmp_path_factory.mktemp("shadow")
    url = redis_url.rsplit("/", 1)[0] + "/11"
    store = redis.Redis.from_url(url)
    store.flushdb()
    app, clients = provision(emulator_endpoint, url, prefix="sh")
    bucket, s3 = str(app.stack.physical["EventLogBucket"].ref), clients.client("s3")
    champion = json.loads((LAYER / "manifest.json").read_text())
    upload(LAYER, champion, bucket, s3)  # the champion the layer holds, as make model-layer
    forest = export(work / "challenger", "shadow-2", seed=2)
    set_challenger(work / "challenger", json.loads((work / "challenger/manifest.json").read_text()),
                   bucket, s3)  # fmt: skip
    now_ms = int(time.time() * 1000)
    start = now_ms - 3 * DAY_MS
    rng = np.random.default_rng(5)
    txs = [
        transaction(f"SH-{n:05d}", f"C-SH{n % N_CUSTOMERS}", f"TERM-SH{n % 13}",
                    float(round(rng.uniform(5, 300), 2)), start + n * (2 * DAY_MS // N_TX))
        for n in range(N_TX)
    ]  # fmt: skip
    ids = [str(t["transaction_id"]) for t in txs]
    frauds = {tid for tid in ids if rng.random() < 0.15}
    labels = [
        {"Data": json.dumps({"transaction_id": str(t["transaction_id"]),
                             "customer_id": t["customer_id"], "terminal_id": t["terminal_id"],
                             "is_fraud": t["transaction_id"] in frauds,
                             "label_time": now_ms - 60_000}).encode(),
         "PartitionKey": str(t["customer_id"])}
        for t in txs
    ]  # fmt: skip
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(work / "run"), "AWS_ENDPOINT_URL": emulator_endpoint,
         "KESTREL_POLL_INTERVAL_S": "0.02"}
    )  # fmt: skip
    runtime = LocalRuntime(
        app, clients, settings, only=["TransactionsFunction", "LabelsFunction"],
        log_dir=work / "logs",
    )  # fmt: skip
    put_transactions(clients, str(app.stack.physical["TransactionsStream"].ref), txs)
    kinesis = clients.client("kinesis")
    for first in range(0, len(labels), 500):
        reply = kinesis.put_records(
            StreamName=app.stack.physical["LabelsStream"].ref, Records=labels[first : first + 500]
        )
        assert reply["FailedRecordCount"] == 0
    runtime.start()
    try:
        by_function = {m.spec.logical_id: m for m in runtime.kinesis}
        for name in ("TransactionsFunction", "LabelsFunction"):
            mapping = by_function[name]
            wait_until(
                lambda m=mapping: m.stats.succeeded >= N_TX,  # type: ignore[misc]
                timeout_s=180, what=f"{N_TX} records handled by {name}",
            )  # fmt: skip
    finally:
        runtime.stop()
    try:
        yield Shadowed(bucket, s3, store, forest, ids, frauds, emulator_endpoint)
    finally:
        store.flushdb()


def test_shadow_stack_logs_both_scores_and_decides_with_the_champion_only(
    shadowed: Shadowed,
) -> None:
    rows = compare_models.read_transactions(shadowed.s3, shadowed.bucket, None, None)
    assert sorted(rows["transaction_id"]) == sorted(shadowed.ids)
    champion = OnnxModel.from_folder(LAYER)
    version = str(champion.manifest["model_version"])
    assert set(rows["model_version"]) == {version}
    assert set(rows["shadow_model_version"]) == {"shadow-2"}
    logged_rows = _logged(shadowed)
    features = np.array([r["features"] for r in logged_rows], dtype=np.float32)
    logged = {r["transaction_id"]: r for r in logged_rows}
    order = [r["transaction_id"] for r in logged_rows]
    scores = np.array([logged[t]["score"] for t in order])
    shadow = np.array([logged[t]["shadow_score"] for t in order])
    assert features.shape == (N_TX, len(FEATURE_NAMES))
    # Each score is its own model's: the champion's ONNX and the challenger forest.
    assert np.max(np.abs(scores - champion.predict_proba(features))) <= 1e-9
    assert np.max(np.abs(shadow - shadowed.forest.predict_proba(features)[:, 1])) <= 1e-5
    assert np.max(np.abs(scores - shadow)) > 0.05  # two different models
    # Decisions: the champion's score, version and thresholds, nothing of the challenger.
    thresholds = ModelManifest.parse(champion.manifest).thresholds
    for tid in order:
        raw = shadowed.store.get(decision_key(tid))
        assert raw is not None, tid
        decision = json.loads(raw)
        assert decision["model_version"] == version and decision["score"] == logged[tid]["score"]
        assert decision["decision"] == thresholds.decide(logged[tid]["score"]).value
        assert "shadow_score" not in decision
    # The telemetry names the challenger and counts what it scored.
    _, totals = RedisTelemetry(shadowed.store).read(0, 0)
    assert totals["model_version"] == version and totals["shadow_model_version"] == "shadow-2"
    assert int(totals["shadow_scored"]) >= N_TX and "shadow_errors" not in totals


def _logged(shadowed: Shadowed) -> list[dict[str, Any]]:
    """Every logged transaction row (first of repeats), as JSON."""
    import gzip

    out: dict[str, dict[str, Any]] = {}
    pages = shadowed.s3.get_paginator("list_objects_v2").paginate(
        Bucket=shadowed.bucket, Prefix="events/transactions/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            body = shadowed.s3.get_object(Bucket=shadowed.bucket, Key=item["Key"])["Body"].read()
            for line in gzip.decompress(body).splitlines():
                row = json.loads(line)
                out.setdefault(row["transaction_id"], row)
    return list(out.values())


def test_compare_models_prints_both_models_figures_with_intervals(
    shadowed: Shadowed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", shadowed.endpoint)
    monkeypatch.setenv("KESTREL_RUN_DIR", str(tmp_path / "run"))
    result = tmp_path / "result.json"
    code = compare_models.main(
        ["--bucket", shadowed.bucket, "--resamples", "200", "--min-frauds", "20",
         "--json", str(result), "--no-record"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    version = json.loads((LAYER / "manifest.json").read_text())["model_version"]
    assert f"champion v{version} vs challenger shadow-2" in out
    assert "AP [95% CI]" in out and "CP@100 [95% CI]" in out
    doc = json.loads(result.read_text())
    assert (doc["rows"], doc["frauds"]) == (N_TX, len(shadowed.frauds))
    for role in ("champion", "challenger"):
        figures = doc[role]["average_precision"]
        assert figures["low"] <= figures["value"] <= figures["high"]
        assert f"  {role} " in out
    assert doc["verdict"] in ("better", "not_better")
    assert "verdict: challenger " in out


def test_challenger_follows_the_pointer_over_real_s3(
    emulator_endpoint: str, tmp_path: Path
) -> None:
    from kestrel_local.aws import AwsClients

    s3 = AwsClients(emulator_endpoint).client("s3")
    bucket = f"kestrel-shadow-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    settings = Settings.from_env(
        {"AWS_ENDPOINT_URL": emulator_endpoint, "AWS_REGION": "us-east-1",
         "MODEL_DIR": str(LAYER), "MODEL_BUCKET": bucket, "MODEL_REFRESH_S": "0"}
    )  # fmt: skip
    champion = build_scorer(settings, s3_client=s3)
    challenger = build_challenger(settings, champion)
    assert challenger is not None and challenger.model_version is None  # no pointer at all
    assert challenger.metrics()["model_refresh_errors"] == 0
    upload(LAYER, json.loads((LAYER / "manifest.json").read_text()), bucket, s3)
    export(tmp_path / "c", "shadow-3", seed=3)
    set_challenger(tmp_path / "c", json.loads((tmp_path / "c/manifest.json").read_text()),
                   bucket, s3)  # fmt: skip
    rows = np.zeros((4, len(FEATURE_NAMES)))
    champion.score_batch(rows)  # the champion reads the pointer ...
    challenger.score_batch(rows)  # ... and the challenger swaps in what it names
    assert challenger.model_version == "shadow-3"
    # Exporting the champion again keeps the challenger beside it.
    upload(LAYER, json.loads((LAYER / "manifest.json").read_text()), bucket, s3)
    pointer = json.loads(s3.get_object(Bucket=bucket, Key="models/active.json")["Body"].read())
    assert pointer["challenger"]["version"] == "shadow-3"
    assert clear_challenger(bucket, s3) == "shadow-3"
    champion.score_batch(rows)
    assert challenger.refresh() is False and challenger.model_version is None


def test_redis_telemetry_names_the_challenger_until_a_batch_scored_without_one(
    redis_url: str,
) -> None:
    from kestrel.telemetry import BatchFigures

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/12")
    client.flushdb()
    try:
        telemetry, second = RedisTelemetry(client), int(time.time())
        with_challenger = BatchFigures(
            second, {"applied": 4, "shadow_scored": 4}, {"shadow_score:3": 4}, {}, "1", "2"
        )
        telemetry.record(with_challenger)
        window, totals = telemetry.read(second - 1, second)
        assert totals["shadow_model_version"] == "2" and totals["shadow_scored"] == "4"
        assert window.figures["shadow_score:3"] == 4
        telemetry.record(BatchFigures(second, {"labels": 3}))  # labels: no scoring, no change
        assert telemetry.read(second, second)[1]["shadow_model_version"] == "2"
        telemetry.record(BatchFigures(second, {"applied": 1}, model_version="1"))
        assert "shadow_model_version" not in telemetry.read(second, second)[1]
    finally:
        client.flushdb()
