"""Unit tests for ONNX conversion, parity and timing, the latency budget of model selection,
decision thresholds and reference bins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kestrel_training.candidates import (
    NODE_VISIT_BUDGET,
    QUICK_GRID,
    Candidate,
    CandidateResult,
    node_visits,
)
from kestrel_training.manifest import decision_thresholds, reference_distributions
from kestrel_training.onnx_export import (
    ParityError,
    check_parity,
    measure_latency,
    onnx_scores,
    session,
    to_onnx,
)
from kestrel_training.protocol import Metrics


def training_data(rows: int = 400, columns: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Random features with a learnable, imbalanced target."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(rows, columns)) * np.array([1, 10, 1000, 0.1, 1.0])[:columns]
    y = (x[:, 0] + rng.normal(scale=0.5, size=rows) > 1.2).astype(int)
    return x.astype(np.float32), y


@pytest.mark.parametrize("candidate", QUICK_GRID, ids=lambda c: c.family)
def test_to_onnx_matches_sklearn_probabilities(candidate: Candidate) -> None:
    x, y = training_data()
    model = candidate.build(n_jobs=1).fit(x, y)
    onnx_bytes = to_onnx(model, x.shape[1])
    assert check_parity(onnx_bytes, model, x) <= 1e-5
    expected = model.predict_proba(x)[:, 1]
    assert np.max(np.abs(onnx_scores(session(onnx_bytes), x) - expected)) <= 1e-5


def test_check_parity_fails_loudly_on_a_different_model() -> None:
    x, y = training_data()
    model = QUICK_GRID[1].build(n_jobs=1).fit(x, y)
    other = QUICK_GRID[0].build(n_jobs=1).fit(x, y)
    with pytest.raises(ParityError, match="parity failed"):
        check_parity(to_onnx(other, x.shape[1]), model, x)


def test_measure_latency_reports_single_row_and_batch_times() -> None:
    x, y = training_data()
    onnx_bytes = to_onnx(QUICK_GRID[1].build(n_jobs=1).fit(x, y), x.shape[1])
    latency = measure_latency(onnx_bytes, x, calls=100, batch_size=50)
    assert latency.calls == 100 and latency.batch_size == 50
    assert 0 < latency.single_row_median_us <= latency.single_row_p99_us
    assert latency.batch_per_row_us > 0


def test_decision_thresholds_give_about_one_and_point_two_percent_alerts() -> None:
    scores = np.arange(10_000) / 10_000
    thresholds = decision_thresholds(scores)
    assert thresholds["review"] == pytest.approx(0.99, abs=1e-3)
    assert thresholds["decline"] == pytest.approx(0.998, abs=1e-3)
    assert thresholds["review_alert_rate_validation"] == pytest.approx(0.01, abs=1e-3)
    assert thresholds["decline_alert_rate_validation"] == pytest.approx(0.002, abs=1e-3)


def test_decision_thresholds_keep_decline_at_or_above_review() -> None:
    thresholds = decision_thresholds(np.zeros(1000))
    assert thresholds["review"] == thresholds["decline"] == 0.0
    with pytest.raises(ValueError, match="validation scores"):
        decision_thresholds(np.zeros(0))


def test_reference_distributions_bin_discrete_and_continuous_features() -> None:
    frame = pd.DataFrame({"flag": [0.0] * 70 + [1.0] * 30, "amount": np.arange(100.0)})
    reference = reference_distributions(frame, ["flag", "amount"])
    flag = reference["features"]["flag"]
    assert flag["cuts"] == [0.0, 1.0]
    assert flag["proportions"] == [0.0, 0.7, 0.3]
    amount = reference["features"]["amount"]
    assert len(amount["cuts"]) == 9 and len(amount["proportions"]) == 10
    assert sum(amount["proportions"]) == pytest.approx(1.0)
    assert max(amount["proportions"]) <= 0.11


def test_measure_latency_times_cold_calls_after_evicting_other_memory() -> None:
    x, y = training_data()
    onnx_bytes = to_onnx(QUICK_GRID[1].build(n_jobs=1).fit(x, y), x.shape[1])
    latency = measure_latency(onnx_bytes, x, calls=40, batch_size=10, evict_bytes=1 << 20)
    assert latency.cold_calls == 10
    assert latency.cold_single_row_median_us is not None
    assert 0 < latency.cold_single_row_median_us <= (latency.cold_single_row_p99_us or 0)
    assert "cold" in latency.describe()
    skipped = measure_latency(onnx_bytes, x, calls=40, batch_size=10, cold_calls=0)
    assert skipped.cold_calls == 0 and skipped.cold_single_row_p99_us is None


def test_node_visits_counts_root_to_leaf_nodes_over_the_trees() -> None:
    x, y = training_data()
    stumps = Candidate("random_forest", (("max_depth", 1), ("n_estimators", 3)))
    assert node_visits(stumps.build(n_jobs=1).fit(x, y), x) == pytest.approx(6.0)
    deeper = Candidate("random_forest", (("max_depth", 4), ("n_estimators", 5)))
    assert 5 * 2 < node_visits(deeper.build(n_jobs=1).fit(x, y), x) <= 5 * 5
    assert node_visits(QUICK_GRID[0].build(n_jobs=1).fit(x, y), x) == 0.0  # no trees


def fake_result(name: str, ap: float, visits: float, budget: float = 800.0) -> CandidateResult:
    metrics = Metrics(0.8, ap, 0.3, (0.3,))
    result = CandidateResult(Candidate("random_forest", (("n", name),)), node_budget=budget)
    result.folds, result.node_visits = [metrics, metrics], [visits, visits]
    return result


def test_selection_ranks_candidates_within_the_node_budget_before_better_ones_over_it() -> None:
    cheap = fake_result("cheap", ap=0.68, visits=500)
    costly = fake_result("costly", ap=0.70, visits=3800)
    cheaper = fake_result("cheaper", ap=0.67, visits=100)
    ranked = sorted([costly, cheaper, cheap], key=CandidateResult.rank_key, reverse=True)
    assert [r.candidate.params[0][1] for r in ranked] == ["cheap", "cheaper", "costly"]
    assert cheap.within_budget and not costly.within_budget
    assert fake_result("edge", 0.7, visits=NODE_VISIT_BUDGET).within_budget
