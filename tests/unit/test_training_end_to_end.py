"""End to end on a small simulation: train, ONNX parity, MLflow registry, promote, export.

No network: MLflow uses a SQLite store in a temporary folder and S3 is an in-memory fake.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kestrel_training import registry, tracking
from kestrel_training.candidates import QUICK_GRID
from kestrel_training.onnx_export import INPUT_NAME, PROBABILITIES, session
from kestrel_training.simulator import SimulatorConfig
from kestrel_training.train import TrainOptions, TrainResult, report, train_once

from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH

SMALL = SimulatorConfig(n_customers=500, n_terminals=1000, n_days=150, seed=5)
MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
)


class FakeS3:
    """Records put_object calls in order."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, str, bytes]] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.puts.append((Bucket, Key, Body))

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        """The last body put under `Key`; NoSuchKey (as botocore says it) when none was."""
        for bucket, key, body in reversed(self.puts):
            if (bucket, key) == (Bucket, Key):
                return {"Body": io.BytesIO(body)}
        error = LookupError(f"NoSuchKey: {Key}")
        error.response = {"Error": {"Code": "NoSuchKey"}}  # type: ignore[attr-defined]
        raise error


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TrainResult, tracking.Tracking]]:
    """One quick training run on the small simulation, logged to a temporary MLflow store."""
    with pytest.MonkeyPatch.context() as env:
        for name in MLFLOW_ENV:
            env.setenv(name, "")
        root = tmp_path_factory.mktemp("training")
        options = TrainOptions(
            sim_config=SMALL,
            sim_dir=root / "sim",
            n_folds=2,
            grid=QUICK_GRID,
            tracking_dir=root / "mlruns",
            latency_calls=200,
        )
        result = train_once(options, progress=lambda _: None)
        yield result, tracking.configure(root / "mlruns")


def test_train_once_checks_onnx_parity_on_the_test_set(
    trained: tuple[TrainResult, tracking.Tracking],
) -> None:
    result, _ = trained
    assert 0.0 <= result.parity_max_abs_diff <= 1e-5
    assert result.latency.single_row_median_us > 0
    assert result.chosen in QUICK_GRID
    assert {name for name, _ in result.by_family} == {c.name for c in QUICK_GRID}
    assert 0.5 < result.metrics.auc_roc <= 1.0 and len(result.metrics.cp100_per_day) == 7
    assert "book: Random forest" in report([result]) and result.fingerprint["rows"] > 10_000


def test_train_once_logs_the_run_and_registers_a_challenger(
    trained: tuple[TrainResult, tracking.Tracking],
) -> None:
    result, store = trained
    client = tracking.client(store)
    run = client.get_run(result.run_id)
    assert run.data.params["feature_set_hash"] == FEATURE_SET_HASH
    assert run.data.params["dataset.sha256"] == result.fingerprint["sha256"]
    assert run.data.metrics["test.average_precision"] == pytest.approx(
        result.metrics.average_precision
    )
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"model", "plots", "features.json", "dataset_fingerprint.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/roc.png", "plots/pr.png", "plots/cp_at_100_per_day.png"}
    version = client.get_model_version_by_alias(tracking.MODEL_NAME, "challenger")
    assert str(version.version) == result.version and version.run_id == result.run_id


def test_promote_and_export_write_the_model_layer_and_s3(
    trained: tuple[TrainResult, tracking.Tracking], tmp_path: Path
) -> None:
    result, store = trained
    assert result.version is not None
    assert registry.promote(result.version, store) == result.version
    s3 = FakeS3()
    manifest = registry.export_champion(tmp_path / "layer", "models-bucket", store, s3)
    written = json.loads((tmp_path / "layer" / "manifest.json").read_text())
    assert written == manifest
    assert written["feature_set_hash"] == FEATURE_SET_HASH
    assert written["feature_names"] == list(FEATURE_NAMES)
    assert written["model_version"] == result.version and written["alias"] == "champion"
    assert written["training_range"] == {"train_start": "2018-07-25", "train_end": "2018-07-31"}
    assert set(written["decision_thresholds"]) >= {"review", "decline", "rule"}
    assert set(written["reference_distributions"]["features"]) == set(FEATURE_NAMES)
    assert written["metrics"]["average_precision"] == pytest.approx(
        result.metrics.average_precision
    )
    sess = session((tmp_path / "layer" / "model.onnx").read_bytes())
    row = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    assert sess.run([PROBABILITIES], {INPUT_NAME: row})[0].shape == (1, 2)
    keys = [key for _, key, _ in s3.puts]
    version = result.version
    assert keys == [
        f"models/{version}/model.onnx",
        f"models/{version}/manifest.json",
        "models/active.json",
    ]
    pointer = json.loads(s3.puts[-1][2])
    assert pointer["version"] == version and pointer["manifest_key"] == keys[1]


def test_registry_cli_promotes_and_exports(
    trained: tuple[TrainResult, tracking.Tracking], tmp_path: Path
) -> None:
    result, store = trained
    assert result.version is not None
    args = ["--tracking-dir", str(store.directory)]
    assert registry.main([*args, "promote", result.version]) == 0
    assert registry.main([*args, "export", "--dest", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["model_version"] == result.version
    with pytest.raises(Exception, match="999"):
        registry.promote("999", store)
