"""Hot swap on the embedded emulator: a running scorer follows the S3 active-version pointer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from kestrel_training.manifest import decision_thresholds, reference_distributions
from kestrel_training.onnx_export import to_onnx
from kestrel_training.registry import ACTIVE_POINTER, build_manifest, upload
from sklearn.ensemble import RandomForestClassifier

from kestrel.adapters.onnx_model import build_scorer
from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.scoring import Scorer
from kestrel.settings import Settings

pytestmark = pytest.mark.integration
N = len(FEATURE_NAMES)
PROMISE_S = 30.0
RNG = np.random.default_rng(11)
X = RNG.normal(size=(400, N)).astype(np.float32)
Y = (X[:, 0] - X[:, 3] + RNG.normal(scale=0.5, size=len(X)) > 0.8).astype(int)


def export(folder: Path, version: str, seed: int, feature_set_hash: str = FEATURE_SET_HASH) -> Any:
    """Train a small forest and write it as the model layer does; return the forest."""
    forest = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=seed)
    forest.fit(X, Y if seed % 2 else 1 - Y)  # versions disagree, so their scores differ
    summary = {
        "feature_names": list(FEATURE_NAMES),
        "feature_set_hash": feature_set_hash,
        "onnx": {"input": "features", "output": "probabilities", "fraud_column": 1},
        "model": {"family": "random_forest", "params": {"seed": seed}},
        "training_range": {},
        "test_range": {},
        "metrics": {},
        "validation_metrics": {},
        "decision_thresholds": decision_thresholds(forest.predict_proba(X)[:, 1]),
        "reference_distributions": reference_distributions(
            pd.DataFrame(X, columns=list(FEATURE_NAMES)), FEATURE_NAMES
        ),
        "dataset": {},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(to_onnx(forest, N))
    manifest = build_manifest(version, summary, run_id=f"run-{version}")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return forest


def serves(scorer: Scorer, forest: Any) -> bool:
    got = np.array([s.score for s in scorer.score(X[:64])])
    return bool(np.max(np.abs(got - forest.predict_proba(X[:64])[:, 1])) <= 1e-5)


def wait_until(condition: Any, scorer: Scorer, limit_s: float = PROMISE_S) -> float:
    """Keep scoring (as live traffic does) until `condition()`; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        scorer.score(X[:8])
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {limit_s:.0f} s; scorer metrics {scorer.metrics()}")


def test_model_hot_swap_follows_the_pointer_and_refuses_a_wrong_hash(
    emulator_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env({}).model_refresh_s <= PROMISE_S / 2  # default keeps the promise
    s3 = boto3.client("s3", endpoint_url=emulator_endpoint, region_name="us-east-1")
    bucket = f"kestrel-models-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)

    layer = tmp_path / "layer"
    v1 = export(layer, "1", seed=1)
    upload(layer, json.loads((layer / "manifest.json").read_text()), bucket, s3)
    settings = Settings.from_env(
        {
            "AWS_ENDPOINT_URL": emulator_endpoint,
            "AWS_REGION": "us-east-1",
            "MODEL_DIR": str(layer),
            "MODEL_BUCKET": bucket,
            "MODEL_REFRESH_S": "1",
        }
    )
    scorer = build_scorer(settings)
    assert scorer.model_version == "1" and serves(scorer, v1)

    staged = tmp_path / "v2"
    v2 = export(staged, "2", seed=2)
    assert not np.allclose(v1.predict_proba(X)[:, 1], v2.predict_proba(X)[:, 1])
    upload(staged, json.loads((staged / "manifest.json").read_text()), bucket, s3)
    pointer = json.loads(s3.get_object(Bucket=bucket, Key=ACTIVE_POINTER)["Body"].read())
    assert pointer["version"] == "2" and pointer["model_key"] == "models/2/model.onnx"
    took = wait_until(lambda: scorer.model_version == "2", scorer)
    assert took < PROMISE_S
    assert serves(scorer, v2) and scorer.swaps == 1 and scorer.rejected_models == 0

    wrong = tmp_path / "v3"
    export(wrong, "3", seed=3, feature_set_hash="0" * 16)
    upload(wrong, json.loads((wrong / "manifest.json").read_text()), bucket, s3)
    wait_until(lambda: scorer.rejected_models == 1, scorer)
    time.sleep(2.5)  # several more refresh periods: v3 is not fetched or refused again
    for _ in range(20):
        scorer.score(X[:1])
    assert scorer.rejected_models == 1
    assert scorer.model_version == "2" and serves(scorer, v2)
    assert scorer.metrics() == {"rejected_models": 1, "model_refresh_errors": 0, "model_swaps": 1}
