"""Unit tests for the scoring domain and the onnxruntime adapter (no network)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kestrel_training.manifest import decision_thresholds, reference_distributions
from kestrel_training.onnx_export import to_onnx
from kestrel_training.registry import build_manifest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier

from kestrel.adapters.onnx_model import LayerModelSource, OnnxModel
from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.scoring import (
    Decision,
    ModelManifest,
    NoModelError,
    RejectedModel,
    Scorer,
    Thresholds,
    reference_point,
)
from kestrel.settings import Settings

N = len(FEATURE_NAMES)


def random_data(rows: int = 600, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Random features in FEATURE_NAMES order with a learnable target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N)).astype(np.float32)
    y = (x[:, 0] + x[:, 5] + rng.normal(scale=0.5, size=rows) > 1.0).astype(int)
    return x, y


def manifest_for(
    x: np.ndarray,
    version: str = "1",
    review: float = 0.5,
    decline: float = 0.8,
    names: tuple[str, ...] = FEATURE_NAMES,
    feature_set_hash: str = FEATURE_SET_HASH,
    onnx: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest in the exported format (`kestrel_training.registry.build_manifest`)."""
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    summary = {
        "feature_names": list(names),
        "feature_set_hash": feature_set_hash,
        "onnx": dict(onnx or {"input": "features", "output": "probabilities", "fraud_column": 1}),
        "model": {"family": "random_forest", "params": {}},
        "training_range": {},
        "test_range": {},
        "metrics": {},
        "validation_metrics": {},
        "decision_thresholds": {
            **decision_thresholds(np.linspace(0, 1, 100)),
            "review": review,
            "decline": decline,
        },
        "reference_distributions": reference_distributions(frame, FEATURE_NAMES),
        "dataset": {},
    }
    return build_manifest(version, summary, run_id="test-run")


class FakeModel:
    """A model returning a fixed score for every row."""

    def __init__(self, manifest: Mapping[str, Any], score: float = 0.1) -> None:
        self.manifest = manifest
        self.score = score

    def predict_proba(self, rows: Any) -> np.ndarray:
        return np.full(len(rows), self.score)


class FakeSource:
    """A model source whose polls return queued models (or raise queued exceptions)."""

    def __init__(self, first: FakeModel | Exception, *later: FakeModel | Exception | None):
        self.first = first
        self.later = list(later)
        self.polls = 0

    def load(self) -> FakeModel:
        if isinstance(self.first, Exception):
            raise self.first
        return self.first

    def poll(self) -> FakeModel | None:
        self.polls += 1
        item = self.later.pop(0) if self.later else None
        if isinstance(item, Exception):
            raise item
        return item


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


X, Y = random_data()
GOOD = manifest_for(X, "1")


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, Decision.APPROVE),
        (0.4999, Decision.APPROVE),
        (0.5, Decision.REVIEW),
        (0.7999, Decision.REVIEW),
        (0.8, Decision.DECLINE),
        (1.0, Decision.DECLINE),
    ],
)
def test_thresholds_decide_by_the_manifest_rule(score: float, expected: Decision) -> None:
    assert Thresholds(review=0.5, decline=0.8).decide(score) is expected
    scorer = Scorer(FakeSource(FakeModel(GOOD, score)))
    assert scorer.score(X[:2]) == [scorer.score(X[:1])[0]] * 2
    assert scorer.score(X[:1])[0].decision is expected
    assert scorer.decide(score) is expected


def test_manifest_parse_reads_thresholds_and_refuses_malformed_ones() -> None:
    parsed = ModelManifest.parse(GOOD)
    assert parsed.thresholds == Thresholds(0.5, 0.8)
    assert parsed.version == "1" and parsed.feature_names == FEATURE_NAMES
    with pytest.raises(RejectedModel):
        ModelManifest.parse({**GOOD, "decision_thresholds": {"review": 0.9, "decline": 0.2}})
    with pytest.raises(RejectedModel):
        ModelManifest.parse({k: v for k, v in GOOD.items() if k != "feature_set_hash"})


def test_scorer_refuses_a_hash_mismatch_and_keeps_the_old_model() -> None:
    clock = Clock()
    bad = manifest_for(X, "2", feature_set_hash="0" * 16)
    source = FakeSource(FakeModel(GOOD, 0.1), FakeModel(bad, 0.9))
    scorer = Scorer(source, refresh_s=15, clock=clock)
    assert scorer.model_version == "1" and scorer.rejected_models == 0
    clock.now += 15
    results = scorer.score(X[:3])
    assert source.polls == 1
    assert scorer.rejected_models == 1
    assert scorer.model_version == "1"
    assert [r.score for r in results] == [0.1] * 3
    assert {r.model_version for r in results} == {"1"}
    assert scorer.install(FakeModel(bad)) is False
    assert scorer.rejected_models == 2 and scorer.metrics()["rejected_models"] == 2


def test_scorer_counts_a_refusal_raised_by_the_source_and_survives_source_errors() -> None:
    clock = Clock()
    source = FakeSource(
        FakeModel(GOOD, 0.1),
        RejectedModel("wrong hash"),
        OSError("network down"),
        FakeModel(manifest_for(X, "2"), 0.3),
    )
    scorer = Scorer(source, refresh_s=5, clock=clock)
    for _ in range(3):
        clock.now += 5
        scores = [r.score for r in scorer.score(X[:1])]
    assert scorer.metrics() == {"rejected_models": 1, "model_refresh_errors": 1, "model_swaps": 1}
    assert scorer.model_version == "2" and scores == [0.3]


def test_scorer_polls_at_most_once_per_refresh_period() -> None:
    clock = Clock()
    source = FakeSource(FakeModel(GOOD), None, FakeModel(manifest_for(X, "2"), 0.4))
    scorer = Scorer(source, refresh_s=15, clock=clock)
    for _ in range(10):
        scorer.score(X[:1])
    assert source.polls == 0
    clock.now += 14.9
    scorer.score(X[:1])
    assert source.polls == 0
    clock.now += 0.1
    scorer.score(X[:1])
    clock.now += 15
    assert scorer.score(X[:1])[0].model_version == "2"
    assert source.polls == 2


def test_scorer_refuses_reordered_feature_names() -> None:
    names = (FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:])
    reordered = manifest_for(X, "2", names=names)
    scorer = Scorer(FakeSource(FakeModel(GOOD)))
    assert scorer.install(FakeModel(reordered)) is False
    assert scorer.rejected_models == 1 and scorer.model_version == "1"


def test_scorer_enforces_row_width_and_orders_mappings_by_feature_names() -> None:
    scorer = Scorer(FakeSource(FakeModel(GOOD)))
    with pytest.raises(ValueError, match="expected rows of 21 features"):
        scorer.score(X[:2, :-1])
    by_name = {name: float(i) for i, name in reversed(list(enumerate(FEATURE_NAMES)))}
    assert scorer.vector(by_name) == tuple(float(i) for i in range(N))
    with pytest.raises(KeyError, match=FEATURE_NAMES[3]):
        scorer.vector({k: v for k, v in by_name.items() if k != FEATURE_NAMES[3]})


def test_cold_start_with_a_refused_layer_serves_nothing_until_a_good_version() -> None:
    clock = Clock()
    bad = manifest_for(X, "1", feature_set_hash="f" * 16)
    source = FakeSource(FakeModel(bad), None, FakeModel(manifest_for(X, "2"), 0.2))
    scorer = Scorer(source, refresh_s=1, clock=clock)
    assert scorer.rejected_models == 1 and scorer.model_version is None
    with pytest.raises(NoModelError):
        scorer.score(X[:1])
    clock.now += 1
    assert scorer.score(X[:1])[0].model_version == "2"


def test_reference_point_reads_median_and_spread_from_quantile_bins() -> None:
    values = np.arange(1, 101, dtype=np.float64)
    bins = reference_distributions(pd.DataFrame({"v": values}), ["v"])["features"]["v"]
    median, spread = reference_point(bins["cuts"], bins["proportions"])
    assert median == 50.0
    assert spread == 80.0  # 90% quantile (90) - 10% quantile (10), observed values
    flags = np.array([0.0] * 70 + [1.0] * 30)
    bins = reference_distributions(pd.DataFrame({"v": flags}), ["v"])["features"]["v"]
    assert reference_point(bins["cuts"], bins["proportions"]) == (0.0, 1.0)


def test_reasons_rank_features_furthest_above_reference_deterministically() -> None:
    scorer = Scorer(FakeSource(FakeModel(GOOD)))
    row = np.zeros(N)
    row[7], row[2], row[11] = 6.0, 3.0, 3.0
    first = scorer.reasons(row, top=3)
    assert first == scorer.reasons(row.tolist(), top=3)
    assert first[0].feature == FEATURE_NAMES[7]
    assert {r.feature for r in first[1:]} == {FEATURE_NAMES[2], FEATURE_NAMES[11]}
    assert all(a.deviation >= b.deviation for a, b in itertools.pairwise(first))
    assert all(r.deviation > 0 for r in first)
    assert scorer.reasons(np.full(N, -5.0)) == ()
    tie = np.zeros(N)
    tie[4] = tie[9] = 1e6
    assert [r.feature for r in scorer.reasons(tie, top=2)] == [FEATURE_NAMES[4], FEATURE_NAMES[9]]


def write_layer(folder: Path, onnx_bytes: bytes, manifest: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_onnx_adapter_matches_sklearn_probabilities(tmp_path: Path) -> None:
    forest = RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0).fit(X, Y)
    layer = write_layer(tmp_path / "layer", to_onnx(forest, N), GOOD)
    model = OnnxModel.from_folder(layer)
    expected = forest.predict_proba(X)[:, 1]
    got = model.predict_proba(X)
    assert got.shape == (len(X),) and got.dtype == np.float64
    assert np.max(np.abs(got - expected)) <= 1e-5
    assert len(np.unique(got)) > 10  # a real spread of scores, not a constant
    scorer = Scorer(LayerModelSource(layer))
    scored = scorer.score(X[:50])
    assert np.max(np.abs(np.array([s.score for s in scored]) - expected[:50])) <= 1e-5
    assert [s.decision for s in scored] == [Thresholds(0.5, 0.8).decide(e) for e in expected[:50]]
    single = scorer.score(X[3])
    assert abs(single[0].score - expected[3]) <= 1e-5


def test_onnx_adapter_reads_zipmap_outputs(tmp_path: Path) -> None:
    forest = RandomForestClassifier(n_estimators=10, random_state=1).fit(X, Y)
    zipped = convert_sklearn(forest, initial_types=[("input", FloatTensorType([None, N]))])
    onnx = {"input": "input", "output": "output_probability", "fraud_column": 1}
    layer = write_layer(tmp_path / "zip", zipped.SerializeToString(), manifest_for(X, onnx=onnx))
    got = OnnxModel.from_folder(layer).predict_proba(X[:40])
    assert np.max(np.abs(got - forest.predict_proba(X[:40])[:, 1])) <= 1e-5


def test_onnx_adapter_refuses_unusable_files(tmp_path: Path) -> None:
    layer = write_layer(tmp_path / "junk", b"not an onnx model", GOOD)
    with pytest.raises(RejectedModel, match="cannot load"):
        OnnxModel.from_folder(layer)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y)
    wrong = {**GOOD, "onnx": {"input": "nope", "output": "probabilities"}}
    with pytest.raises(RejectedModel, match="'nope'"):
        OnnxModel(to_onnx(forest, N), wrong)
    scorer = Scorer(LayerModelSource(tmp_path / "junk"))
    assert scorer.rejected_models == 1 and scorer.model_version is None


def test_settings_model_defaults_keep_the_30_second_promise() -> None:
    settings = Settings.from_env({})
    assert 0 < settings.model_refresh_s <= 15
    assert settings.model_pointer_key == "models/active.json"
    assert settings.model_bucket == ""
    assert Path(settings.model_dir).name in {"opt", "model"}
    custom = Settings.from_env({"MODEL_DIR": "/x", "MODEL_BUCKET": "b", "MODEL_REFRESH_S": "2"})
    assert (custom.model_dir, custom.model_bucket, custom.model_refresh_s) == ("/x", "b", 2.0)
