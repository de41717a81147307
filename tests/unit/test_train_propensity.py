"""Unit tests for propensity training: a small seeded run, its ONNX model, registry and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kestrel_training import propensity_registry, tracking
from kestrel_training.click_labels import TimeSplit, click_dataset, feature_matrix, time_split
from kestrel_training.click_simulator import ClickSimulatorConfig
from kestrel_training.propensity_eval import auc_by_group, calibration_table, quality
from kestrel_training.train_propensity import (
    PropensityOptions,
    PropensityResult,
    simulation,
    train_propensity,
)

from kestrel.adapters.onnx_model import LayerModelSource, OnnxModel
from kestrel.click_features import CLICK_FEATURE_NAMES, CLICK_FEATURE_SET_HASH
from kestrel.scoring import RejectedModel, Scorer

CONFIG = ClickSimulatorConfig(n_users=150, n_days=5, seed=7)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[PropensityResult, Path]:
    root = tmp_path_factory.mktemp("propensity")
    options = PropensityOptions(
        sim_config=CONFIG,
        test_days=2,
        validation_days=1,
        only=("logistic_regression", "gradient_boosting"),
        sim_dir=root / "sim",
        tracking_dir=root / "mlruns",
        latency_calls=50,
    )
    return train_propensity(options, lambda _: None), root


def _test_rows(root: Path) -> Any:
    events, sessions = simulation(CONFIG, root / "sim", lambda _: None)
    end = CONFIG.start_ms + CONFIG.n_days * 86_400_000
    _, test = time_split(click_dataset(events, end, sessions), TimeSplit(end - 2 * 86_400_000))
    return test


def test_train_propensity_onnx_scores_match_sklearn(trained: tuple[PropensityResult, Path]) -> None:
    result, root = trained
    assert result.chosen in ("logistic_regression", "gradient_boosting")
    assert result.parity_max_abs_diff <= 1e-5
    test = _test_rows(root)
    x = feature_matrix(test)
    model = OnnxModel(result.onnx_bytes, result.summary)
    expected = result.estimator.predict_proba(x)[:, 1]
    np.testing.assert_allclose(model.predict_proba(x), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.test_scores, expected, rtol=0, atol=1e-12)
    # The figures are those of the test rows, beside the simulator's truth.
    assert result.model.rows == result.ceiling.rows == len(test)
    assert 0.5 < result.model.auc <= 1.0 and 0.5 < result.ceiling.auc <= 1.0


def test_train_propensity_registers_and_exports_a_layer_the_scorer_serves(
    trained: tuple[PropensityResult, Path], tmp_path: Path
) -> None:
    result, root = trained
    assert result.version == "1" and result.run_id
    store = tracking.configure(root / "mlruns", experiment="kestrel-propensity")
    manifest = propensity_registry.export(tmp_path, "challenger", store=store)
    assert manifest["model_name"] == "kestrel-propensity"
    assert manifest["model_version"] == "1"
    assert manifest["feature_names"] == list(CLICK_FEATURE_NAMES)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    scorer = Scorer(
        LayerModelSource(tmp_path),
        feature_names=CLICK_FEATURE_NAMES,
        feature_set_hash=CLICK_FEATURE_SET_HASH,
    )
    assert scorer.model_version == "1" and scorer.rejected_models == 0
    x = feature_matrix(_test_rows(root))[:200]
    scores, served = scorer.score_batch(x)
    np.testing.assert_allclose(scores, result.estimator.predict_proba(x)[:, 1], atol=1e-5)
    assert served.version == "1"
    # The fraud scorer refuses it: other features.
    fraud = Scorer(LayerModelSource(tmp_path))
    assert fraud.model_version is None and fraud.rejected_models == 1
    with pytest.raises(RejectedModel):
        served.check_compatible()


def test_quality_figures_and_calibration_deciles() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0, 1])
    scores = np.linspace(0.05, 0.95, 10)
    q = quality(labels, scores, n_bins=5)
    assert q.rows == 10 and q.positives == 5
    assert q.auc == pytest.approx(0.8)
    assert q.brier == pytest.approx(float(np.mean((scores - labels) ** 2)))
    table = calibration_table(labels, scores, n_bins=5)
    assert [b.rows for b in table] == [2] * 5
    assert [b.observed_rate for b in table] == [0.0, 0.5, 0.5, 1.0, 0.5]
    assert table[0].mean_score == pytest.approx(0.1) and table[-1].score_max == 0.95
    with pytest.raises(ValueError):
        quality(np.zeros(4), np.ones(4))


def test_auc_by_group_reports_model_and_ceiling_per_group() -> None:
    labels = np.array([0, 1, 0, 1, 1, 1])
    model = np.array([0.1, 0.9, 0.2, 0.8, 0.5, 0.6])
    ceiling = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    assert auc_by_group(labels, model, ceiling, groups) == {
        "a": {"rows": 2, "positive_rate": 0.5, "model_auc": 1.0, "ceiling_auc": 0.0},
        "b": {"rows": 2, "positive_rate": 0.5, "model_auc": 1.0, "ceiling_auc": 1.0},
        "c": {"rows": 2, "positive_rate": 1.0},  # one label only: no AUC
    }
