"""Unit tests for Scorer.explain (batch reasons) and the settings' threshold overrides."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from stream_doubles import shipped_scorer

from kestrel.adapters.onnx_model import build_scorer
from kestrel.features import FEATURE_NAMES
from kestrel.scoring import Decision, NoModelError, Scorer, Thresholds
from kestrel.settings import Settings, SettingsError, default_model_dir

N = len(FEATURE_NAMES)


def shipped_manifest(**thresholds: float) -> dict[str, Any]:
    """The model layer's manifest (real names, hash and reference bins), thresholds replaced."""
    raw: dict[str, Any] = json.loads(Path(default_model_dir(), "manifest.json").read_text())
    manifest = copy.deepcopy(raw)
    manifest["decision_thresholds"].update(thresholds)
    return manifest


class FixedModel:
    """A model with a given manifest whose score is TX_AMOUNT / 1000."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        self.manifest = manifest

    def predict_proba(self, rows: Any) -> npt.NDArray[np.float64]:
        return np.asarray(rows, dtype=np.float64)[:, 0] / 1000.0


class Source:
    """A model source: `first` at load, then the queued models one poll each."""

    def __init__(self, first: FixedModel | None, *later: FixedModel) -> None:
        self.first, self.later = first, list(later)

    def load(self) -> FixedModel:
        if self.first is None:
            raise FileNotFoundError("no model layer")
        return self.first

    def poll(self) -> FixedModel | None:
        return self.later.pop(0) if self.later else None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows() -> npt.NDArray[np.float64]:
    """Rows that exercise every branch of the ranking: spread, ties, nothing above, extremes."""
    rng = np.random.default_rng(5)
    scorer = shipped_scorer()
    manifest = scorer.manifest
    assert manifest is not None
    medians, spreads = manifest.medians, manifest.spreads
    random = medians + spreads * rng.normal(scale=2.0, size=(200, N))
    exponential = medians + spreads * rng.exponential(size=(50, N))
    ties = np.tile(medians, (4, 1))
    ties[0, [2, 5, 9]] = (medians + spreads)[[2, 5, 9]]  # three equal deviations of 1
    ties[1, :] = medians + spreads  # every feature tied
    ties[2, :] = medians  # nothing above its median
    ties[3, :] = medians - spreads  # everything below
    extremes = np.tile(medians, (3, 1))
    extremes[0, 0] = 1e12
    extremes[1, 4] = np.inf
    extremes[2, 7] = -np.inf
    return np.vstack([random, exponential, ties, extremes, np.zeros((1, N))])


@pytest.mark.parametrize("top", [1, 3, 5, N, N + 4])
def test_scorer_explain_equals_reasons_row_by_row(top: int) -> None:
    scorer = shipped_scorer()
    batch = rows()
    explained = scorer.explain(batch, top=top)
    assert len(explained) == len(batch)
    assert explained == [scorer.reasons(row, top=top) for row in batch]
    assert any(len(r) == min(top, N) for r in explained)
    assert any(r == () for r in explained)


def test_scorer_explain_default_top_and_input_forms_match_reasons() -> None:
    scorer = shipped_scorer()
    batch = rows()[:20]
    expected = [scorer.reasons(row) for row in batch]
    assert scorer.explain(batch) == expected
    assert scorer.explain(batch.tolist()) == expected
    assert scorer.explain([tuple(row) for row in batch.tolist()]) == expected
    assert scorer.explain(batch.astype(np.float32)) == [
        scorer.reasons(row) for row in batch.astype(np.float32)
    ]
    assert scorer.explain(batch[0]) == [expected[0]]  # one row, not in a batch
    assert scorer.explain(np.empty((0, N))) == []


@pytest.mark.parametrize("size", [1, 15, 16, 17, 258])
def test_scorer_explain_gives_the_same_reasons_for_small_and_large_batches(size: int) -> None:
    scorer = shipped_scorer()
    batch = rows()[-size:]  # ties and extremes first in every size
    assert scorer.explain(batch) == [scorer.reasons(row) for row in batch]
    assert scorer.explain(batch.tolist()) == [scorer.reasons(row) for row in batch]
    with pytest.raises(ValueError, match="expected rows of"):
        scorer.explain(np.ones((size, N - 1)))


@pytest.mark.parametrize("size", [1, 15, 16, 258])
def test_scorer_explain_as_builds_explains_reasons_with_the_given_constructor(size: int) -> None:
    scorer = shipped_scorer()
    batch = rows()[-size:]
    built = scorer.explain_as(lambda *fields: fields, batch)
    assert built == [
        tuple((r.feature, r.value, r.reference_median, r.deviation) for r in reasons)
        for reasons in scorer.explain(batch)
    ]


def test_scorer_explain_reports_ties_in_feature_order() -> None:
    scorer = shipped_scorer()
    manifest = scorer.manifest
    assert manifest is not None
    row = manifest.medians.copy()
    picked = [11, 3, 17]
    row[picked] = (manifest.medians + 2 * manifest.spreads)[picked]
    (reasons,) = scorer.explain(row.reshape(1, -1))
    assert [r.feature for r in reasons] == [FEATURE_NAMES[i] for i in sorted(picked)]
    assert [r.deviation for r in reasons] == [2.0, 2.0, 2.0]
    assert reasons == scorer.reasons(row)


@pytest.mark.parametrize("shape", [(3, 14), (2 * N,)], ids=["batch", "one-row"])
def test_scorer_explain_refuses_rows_of_the_wrong_width_as_reasons_does(
    shape: tuple[int, ...],
) -> None:
    scorer = shipped_scorer()
    with pytest.raises(ValueError, match="features"):
        scorer.reasons(np.zeros(2 * N))
    with pytest.raises(ValueError, match="features"):
        scorer.explain(np.zeros(shape))


def test_scorer_explain_without_a_model_raises() -> None:
    scorer = Scorer(Source(None))
    assert scorer.model_version is None
    with pytest.raises(NoModelError):
        scorer.explain(np.zeros((1, N)))


# --- threshold overrides -----------------------------------------------------------------------


def test_scorer_threshold_overrides_replace_the_manifests() -> None:
    manifest = shipped_manifest(review=0.5, decline=0.8)
    plain = Scorer(Source(FixedModel(manifest)))
    assert plain.manifest is not None
    assert plain.manifest.thresholds == Thresholds(0.5, 0.8)
    scorer = Scorer(Source(FixedModel(manifest)), review_threshold=0.2, decline_threshold=0.4)
    assert scorer.manifest is not None
    assert scorer.manifest.thresholds == Thresholds(0.2, 0.4)
    amounts = [199.0, 200.0, 399.0, 400.0]
    scored = scorer.score([[a] + [0.0] * (N - 1) for a in amounts])
    assert [s.decision for s in scored] == [
        Decision.APPROVE,
        Decision.REVIEW,
        Decision.REVIEW,
        Decision.DECLINE,
    ]
    assert scorer.decide(0.45) is Decision.DECLINE and plain.decide(0.45) is Decision.APPROVE


@pytest.mark.parametrize(
    ("review", "decline", "expected"),
    [
        (0.6, None, Thresholds(0.6, 0.8)),
        (None, 0.55, Thresholds(0.5, 0.55)),
        (0.8, None, Thresholds(0.8, 0.8)),  # equal is allowed
        (None, None, Thresholds(0.5, 0.8)),
    ],
)
def test_scorer_one_threshold_override_keeps_the_manifests_other(
    review: float | None, decline: float | None, expected: Thresholds
) -> None:
    manifest = shipped_manifest(review=0.5, decline=0.8)
    scorer = Scorer(
        Source(FixedModel(manifest)), review_threshold=review, decline_threshold=decline
    )
    assert scorer.manifest is not None
    assert scorer.manifest.thresholds == expected
    assert scorer.rejected_models == 0


@pytest.mark.parametrize(
    ("review", "decline"), [(0.9, None), (None, 0.3), (0.7, 0.6)], ids=["review", "decline", "both"]
)
def test_scorer_refuses_overrides_with_review_above_decline_and_serves_nothing(
    review: float | None, decline: float | None
) -> None:
    manifest = shipped_manifest(review=0.5, decline=0.8)
    scorer = Scorer(
        Source(FixedModel(manifest)), review_threshold=review, decline_threshold=decline
    )
    assert scorer.model_version is None
    assert scorer.rejected_models == 1
    with pytest.raises(NoModelError):
        scorer.score([[0.0] * N])


def test_scorer_refuses_a_new_model_the_overrides_do_not_fit_and_keeps_the_old() -> None:
    clock = Clock()
    first = shipped_manifest(review=0.5, decline=0.8)
    first["model_version"] = "1"
    second = shipped_manifest(review=0.1, decline=0.6)  # decline under the review override
    second["model_version"] = "2"
    third = shipped_manifest(review=0.1, decline=0.9)
    third["model_version"] = "3"
    source = Source(FixedModel(first), FixedModel(second), FixedModel(third))
    scorer = Scorer(source, refresh_s=1, clock=clock, review_threshold=0.7)
    assert scorer.model_version == "1"
    assert scorer.manifest is not None and scorer.manifest.thresholds == Thresholds(0.7, 0.8)
    clock.now += 1
    assert scorer.score([[750.0] + [0.0] * (N - 1)])[0].decision is Decision.REVIEW
    assert scorer.model_version == "1" and scorer.rejected_models == 1
    clock.now += 1
    assert scorer.score([[750.0] + [0.0] * (N - 1)])[0].decision is Decision.REVIEW
    assert scorer.model_version == "3" and scorer.swaps == 1
    assert scorer.manifest is not None and scorer.manifest.thresholds == Thresholds(0.7, 0.9)


def test_build_scorer_takes_the_threshold_overrides_from_settings() -> None:
    shipped = shipped_scorer().manifest
    assert shipped is not None
    env = {
        "MODEL_DIR": default_model_dir(),
        "DECISION_REVIEW_THRESHOLD": "0.3",
        "DECISION_DECLINE_THRESHOLD": "0.6",
    }
    scorer = build_scorer(Settings.from_env(env))
    assert scorer.model_version == shipped.version
    assert scorer.manifest is not None
    assert scorer.manifest.thresholds == Thresholds(0.3, 0.6)
    assert shipped.thresholds != Thresholds(0.3, 0.6)

    unset = build_scorer(Settings.from_env({"MODEL_DIR": default_model_dir()}))
    assert unset.manifest is not None and unset.manifest.thresholds == shipped.thresholds

    refused = build_scorer(
        Settings.from_env({"MODEL_DIR": default_model_dir(), "DECISION_REVIEW_THRESHOLD": "1"})
    )
    assert refused.model_version is None and refused.rejected_models == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DECISION_REVIEW_THRESHOLD", "1.5"),
        ("DECISION_DECLINE_THRESHOLD", "-0.1"),
        ("DECISION_REVIEW_THRESHOLD", "high"),
    ],
)
def test_settings_refuse_a_threshold_that_is_not_a_probability(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
    settings = Settings.from_env({name: ""})
    assert settings.review_threshold is None and settings.decline_threshold is None
