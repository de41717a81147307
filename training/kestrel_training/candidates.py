"""Model candidates (scikit-learn, all converted by skl2onnx) and prequential model selection.

Families: a logistic regression behind a StandardScaler, a RandomForestClassifier and an
ExtraTreesClassifier (HistGradientBoostingClassifier is left out: skl2onnx 1.20 cannot
convert it). Selection fits every candidate on each prequential fold's training week,
scores the fold's test week (known cards removed) and keeps, among the candidates within
the latency budget, the one with the best mean Average Precision over the folds (ties:
mean CP@100, then AUC ROC). Candidates over the budget are still reported, ranked after.

Latency budget: the scoring API must answer in 0.5 ms in the handler (features + model +
decision), so one row through the model gets about 150 µs at p99 *cold*, i.e. with the
model out of the CPU caches, as it is between two API requests. On this machine class a
tree ensemble's cold single-row time on onnxruntime is about 30 µs plus 55 ns per tree node
the row visits (each visited node is a cache miss), with a p99 about 90 µs above the
median (a one-node model: 30 µs median, 105 µs p99); hot (back-to-back) times are 3-6x
lower and hide it. So the budget is a deterministic cost, not a timing: `node_visits`, the
mean number of nodes one row visits summed over the trees (root to leaf, on each fold's
test rows, averaged over the folds), must be at most `NODE_VISIT_BUDGET` (800 visits: about
75 µs cold median and 155 µs cold p99; 200 trees of depth 20 visit 3,900). The same seed
and data therefore always select the same model; `train` measures the chosen model's hot
and cold times and warns when the cold p99 exceeds `COLD_P99_BUDGET_US`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from kestrel.features import FEATURE_NAMES
from kestrel_training.datasets import TARGET
from kestrel_training.protocol import Metrics, Split, evaluate, train_test

Progress = Callable[[str], None]
NODE_VISIT_BUDGET = 800.0  # mean tree nodes one row visits (see the module docstring)
COLD_P99_BUDGET_US = 150.0  # what the node budget stands for, checked on the chosen model


@dataclass(frozen=True)
class Candidate:
    """One model family with one parameter setting."""

    family: str  # "logistic_regression", "random_forest" or "extra_trees"
    params: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        """A readable id, e.g. random_forest(max_depth=10, n_estimators=100)."""
        return f"{self.family}({', '.join(f'{k}={v}' for k, v in self.params)})"

    def build(self, n_jobs: int = 2, seed: int = 0) -> Any:
        """A fresh, unfitted scikit-learn estimator."""
        params = dict(self.params)
        if self.family == "logistic_regression":
            return Pipeline(
                [
                    ("scale", StandardScaler()),
                    ("model", LogisticRegression(max_iter=2000, random_state=seed, **params)),
                ]
            )
        forests: dict[str, type[ClassifierMixin]] = {
            "random_forest": RandomForestClassifier,
            "extra_trees": ExtraTreesClassifier,
        }
        if self.family not in forests:
            raise ValueError(f"unknown model family {self.family!r}")
        return forests[self.family](n_jobs=n_jobs, random_state=seed, **params)


def _c(family: str, **params: Any) -> Candidate:
    return Candidate(family, tuple(sorted(params.items())))


DEFAULT_GRID: tuple[Candidate, ...] = (
    _c("logistic_regression", C=0.1),
    _c("logistic_regression", C=1.0),
    _c("random_forest", n_estimators=50, max_depth=10),
    _c("random_forest", n_estimators=100, max_leaf_nodes=32),
    _c("random_forest", n_estimators=100, max_leaf_nodes=64),
    _c("random_forest", n_estimators=100, max_depth=10),
    _c("random_forest", n_estimators=100, max_depth=20),
    _c("extra_trees", n_estimators=200, max_depth=15),
    _c("extra_trees", n_estimators=200, max_depth=20),
)
QUICK_GRID: tuple[Candidate, ...] = (
    _c("logistic_regression", C=1.0),
    _c("random_forest", n_estimators=20, max_depth=8),
)


def features(frame: pd.DataFrame) -> np.ndarray:
    """The model input: FEATURE_NAMES columns as float32 (what the ONNX model receives)."""
    values: np.ndarray = frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float32)
    return values


def fit(candidate: Candidate, train: pd.DataFrame, n_jobs: int = 2, seed: int = 0) -> Any:
    """`candidate` fitted on the rows of `train`."""
    model = candidate.build(n_jobs, seed)
    model.fit(features(train), train[TARGET].to_numpy())
    return model


def node_visits(model: Any, x: np.ndarray) -> float:
    """Mean number of tree nodes one row of `x` visits, root to leaf, summed over the trees.

    0 for a model without trees (a linear model's cost does not depend on the row).
    """
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    trees = getattr(final, "estimators_", None)
    if trees is None or not len(x):
        return 0.0
    leaves = final.apply(x)  # (rows, trees): the leaf each row reaches in each tree
    total = 0.0
    for t, tree in enumerate(trees):
        structure = tree.tree_
        depth = np.zeros(structure.node_count, dtype=np.int64)
        left, right = structure.children_left, structure.children_right
        for node in range(structure.node_count):  # children come after their parent
            if left[node] >= 0:
                depth[left[node]] = depth[right[node]] = depth[node] + 1
        total += float(np.mean(depth[leaves[:, t]])) + 1.0
    return total


def scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """Fraud probabilities of the rows of `frame`."""
    probabilities: np.ndarray = model.predict_proba(features(frame))[:, 1]
    return probabilities.astype(np.float64)


@dataclass
class CandidateResult:
    """One candidate's figures on each fold and its validation scores (for thresholds)."""

    candidate: Candidate
    folds: list[Metrics] = field(default_factory=list)
    validation_scores: list[np.ndarray] = field(default_factory=list)
    node_visits: list[float] = field(default_factory=list)
    seconds: float = 0.0
    node_budget: float = NODE_VISIT_BUDGET

    @property
    def mean_node_visits(self) -> float:
        """Mean tree nodes one row visits, over the folds' test rows (the latency cost)."""
        return float(np.mean(self.node_visits)) if self.node_visits else 0.0

    @property
    def within_budget(self) -> bool:
        """Whether the candidate's latency cost is within the node-visit budget."""
        return self.mean_node_visits <= self.node_budget

    def mean(self, metric: str) -> float:
        """Mean of a headline metric over the folds (NaN folds ignored)."""
        values = [getattr(m, metric) for m in self.folds]
        finite = [v for v in values if not math.isnan(v)]
        return float(np.mean(finite)) if finite else math.nan

    def std(self, metric: str) -> float:
        """Standard deviation of a headline metric over the folds."""
        values = [getattr(m, metric) for m in self.folds if not math.isnan(getattr(m, metric))]
        return float(np.std(values)) if values else math.nan

    def rank_key(self) -> tuple[float, float, float, float]:
        """Sort key, larger is better: within budget, mean AP, CP@100, AUC (NaN lowest)."""
        return tuple(  # type: ignore[return-value]
            -math.inf if math.isnan(v) else v
            for v in (
                float(self.within_budget),
                self.mean("average_precision"),
                self.mean("card_precision_100"),
                self.mean("auc_roc"),
            )
        )


def prequential_select(
    dataset: pd.DataFrame,
    folds: Sequence[Split],
    grid: Sequence[Candidate],
    n_jobs: int = 2,
    seed: int = 0,
    progress: Progress = lambda _: None,
    node_budget: float = NODE_VISIT_BUDGET,
) -> list[CandidateResult]:
    """Every candidate's fold figures, best first: within the node budget first, then by AP."""
    pairs = [train_test(dataset, fold) for fold in folds]
    results = []
    for candidate in grid:
        result = CandidateResult(candidate, node_budget=node_budget)
        started = time.perf_counter()
        for train, test in pairs:
            model = fit(candidate, train, n_jobs, seed)
            predicted = scores(model, test)
            result.folds.append(evaluate(test, predicted))
            result.validation_scores.append(predicted)
            result.node_visits.append(node_visits(model, features(test)))
        result.seconds = time.perf_counter() - started
        progress(
            f"  {candidate.name}: AP {result.mean('average_precision'):.3f}"
            f" ±{result.std('average_precision'):.3f}, CP@100"
            f" {result.mean('card_precision_100'):.3f}, AUC {result.mean('auc_roc'):.3f},"
            f" {result.mean_node_visits:,.0f} nodes/row"
            f"{'' if result.within_budget else ' (over budget)'} ({result.seconds:.1f}s)"
        )
        results.append(result)
    return sorted(results, key=CandidateResult.rank_key, reverse=True)


def best_per_family(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """The best result of each family, in `results` order (so best first when sorted)."""
    seen: set[str] = set()
    best = []
    for result in results:
        if result.candidate.family not in seen:
            seen.add(result.candidate.family)
            best.append(result)
    return best
