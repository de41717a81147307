"""Scoring: the active fraud model, its decisions, its reasons, and safe hot swaps.

The exported model (``model.onnx`` + ``manifest.json``, written by
``kestrel_training.registry``) reaches the domain through the `kestrel.ports.Model` and
`kestrel.ports.ModelSource` ports; this module imports no onnxruntime and no boto3.

Manifest fields used here: ``model_version``, ``feature_names`` (the column order the model
expects), ``feature_set_hash``, ``decision_thresholds`` (``review``, ``decline``) and
``reference_distributions`` (per feature: quantile ``cuts`` and bin ``proportions``, see
`kestrel_training.manifest`).

Decision rule: DECLINE if score >= decline; REVIEW if score >= review; else APPROVE. The
thresholds come from the manifest unless settings override them
(DECISION_REVIEW_THRESHOLD, DECISION_DECLINE_THRESHOLD).

Safety: a manifest whose feature-set hash or ordered feature names differ from the running
definitions (`kestrel.features`) is refused; the scorer keeps the model it has, logs an
error and counts the refusal in `Scorer.rejected_models`. It never raises for a bad model.

Reasons are a cheap, model-agnostic proxy, not an attribution of the model's output: for
each feature, how far the value lies above the training median, in units of the training
inter-decile range (both read from the manifest's reference bins). The features furthest
above their reference are reported, largest first (ties in feature order). A value far
above normal is what an analyst looks at first; the proxy says nothing about features
whose *low* values drive the score, nor about interactions the forest learned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel.ports import Model, ModelSource
from kestrel.reasons import explain_rows

logger = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 15.0
R = TypeVar("R")


class Decision(StrEnum):
    """What happens to a scored transaction."""

    APPROVE = "APPROVE"
    REVIEW = "REVIEW"
    DECLINE = "DECLINE"


class RejectedModel(ValueError):
    """A model version the scorer refuses to serve (incompatible or unusable manifest)."""


class NoModelError(RuntimeError):
    """No usable model is loaded yet, so nothing can be scored (the caller retries)."""


class ModelWithdrawn(LookupError):
    """The source has no model to serve (no challenger set, or it was taken away)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The manifest's decision thresholds: DECLINE at or above `decline`, REVIEW at `review`."""

    review: float
    decline: float

    def decide(self, score: float) -> Decision:
        """The decision for one fraud probability."""
        if score >= self.decline:
            return Decision.DECLINE
        if score >= self.review:
            return Decision.REVIEW
        return Decision.APPROVE


def reference_point(cuts: Sequence[float], proportions: Sequence[float]) -> tuple[float, float]:
    """Approximate training median and spread of one feature from its quantile bins.

    Bin i holds ``cuts[i-1] <= x < cuts[i]`` (bin 0 below the first cut). The median is
    taken as the lower edge of the bin where the cumulative share reaches one half; the
    spread is the inter-decile range ``cuts[-1] - cuts[0]``, or, for a feature with one
    distinct decile (constant or nearly so), ``max(|median|, 1)``.
    """
    if not cuts:
        return 0.0, 1.0
    cumulative = np.cumsum(np.asarray(proportions, dtype=np.float64))
    half = int(np.searchsorted(cumulative, 0.5 - 1e-12, side="left"))
    median = float(cuts[max(half - 1, 0)])
    spread = float(cuts[-1]) - float(cuts[0])
    if not spread > 0:
        spread = max(abs(median), 1.0)
    return median, spread


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """The parts of ``manifest.json`` the scorer needs, parsed and checked."""

    version: str
    feature_names: tuple[str, ...]
    feature_set_hash: str
    thresholds: Thresholds
    medians: npt.NDArray[np.float64]
    spreads: npt.NDArray[np.float64]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ModelManifest:
        """Read a manifest; raise `RejectedModel` when a field is missing or malformed."""
        try:
            names = tuple(str(n) for n in raw["feature_names"])
            thresholds = raw["decision_thresholds"]
            review, decline = float(thresholds["review"]), float(thresholds["decline"])
            bins = raw.get("reference_distributions", {}).get("features", {})
            points = [
                reference_point(bins[n]["cuts"], bins[n]["proportions"])
                if n in bins
                else (0.0, 1.0)
                for n in names
            ]
            manifest = cls(
                version=str(raw["model_version"]),
                feature_names=names,
                feature_set_hash=str(raw["feature_set_hash"]),
                thresholds=Thresholds(review=review, decline=decline),
                medians=np.array([p[0] for p in points], dtype=np.float64),
                spreads=np.array([p[1] for p in points], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RejectedModel(f"malformed model manifest: {exc!r}") from None
        if not 0.0 <= review <= decline:
            raise RejectedModel(f"thresholds must satisfy 0 <= review <= decline: {thresholds}")
        return manifest

    def check_compatible(
        self, names: Sequence[str] = FEATURE_NAMES, feature_set_hash: str = FEATURE_SET_HASH
    ) -> None:
        """Raise `RejectedModel` unless the model expects exactly the running features."""
        if self.feature_set_hash != feature_set_hash:
            raise RejectedModel(
                f"model {self.version}: feature-set hash {self.feature_set_hash} differs from "
                f"the running definitions' {feature_set_hash}"
            )
        if self.feature_names != tuple(names):
            raise RejectedModel(
                f"model {self.version}: feature names or their order differ from the running "
                f"definitions ({len(self.feature_names)} vs {len(names)} names)"
            )


@dataclass(frozen=True, slots=True)
class Reason:
    """One feature that stands out: its value, the training median, and how far above it is."""

    feature: str
    value: float
    reference_median: float
    deviation: float


@dataclass(frozen=True, slots=True)
class Scored:
    """One row's fraud probability, decision, and the model version that produced both."""

    score: float
    decision: Decision
    model_version: str


@dataclass(frozen=True, slots=True)
class _Active:
    model: Model
    manifest: ModelManifest


class Scorer:
    """Serves the active model and swaps in new versions between calls, safely.

    The model comes from a `ModelSource`: `load` at construction (the model layer), then
    `poll` at most every `refresh_s` seconds, checked lazily at the start of each scoring
    call (no thread: a Lambda container is frozen between invocations, so a timer there
    would not run anyway). A model and its manifest are swapped as one reference, so a
    call scores and decides with one version. A refused or failing version never replaces
    the serving one; refusals count in `rejected_models`, source errors in
    `refresh_errors`, accepted swaps in `swaps`.

    A source may also have no model at all (a challenger's: `ModelWithdrawn` from `load` or
    `poll`); the scorer then serves nothing until the source offers a model again, and
    `score_batch` raises `NoModelError` meanwhile.
    """

    def __init__(
        self,
        source: ModelSource,
        refresh_s: float = DEFAULT_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
        feature_names: Sequence[str] = FEATURE_NAMES,
        feature_set_hash: str = FEATURE_SET_HASH,
        review_threshold: float | None = None,
        decline_threshold: float | None = None,
    ) -> None:
        self._source = source
        self._review, self._decline = review_threshold, decline_threshold
        self._refresh_s = refresh_s
        self._clock = clock
        self._names = tuple(feature_names)
        self._hash = feature_set_hash
        self._active: _Active | None = None
        self.rejected_models = 0
        self.refresh_errors = 0
        self.swaps = 0
        self._last_check = clock()
        try:
            self.install(source.load())
        except RejectedModel as exc:
            self._reject(exc)
        except ModelWithdrawn:
            pass  # nothing to serve yet, and nothing wrong (e.g. no challenger is set)
        except Exception as exc:  # noqa: BLE001 - a cold start without a layer model is survivable
            self.refresh_errors += 1
            logger.error("could not load the model layer: %r", exc)
        if self._active is None:
            self.refresh(force=True)

    @property
    def source(self) -> ModelSource:
        """Where this scorer's models come from."""
        return self._source

    @property
    def manifest(self) -> ModelManifest | None:
        """The serving model's manifest (None before any model is accepted)."""
        active = self._active
        return active.manifest if active else None

    @property
    def model_version(self) -> str | None:
        """The serving model's version (None before any model is accepted)."""
        active = self._active
        return active.manifest.version if active else None

    def metrics(self) -> dict[str, int]:
        """Counters for a metrics emitter: refused models, source errors, swaps."""
        return {
            "rejected_models": self.rejected_models,
            "model_refresh_errors": self.refresh_errors,
            "model_swaps": self.swaps,
        }

    def install(self, model: Model) -> bool:
        """Serve `model` if its manifest matches the running features; else keep the old one."""
        try:
            manifest = ModelManifest.parse(model.manifest)
            manifest.check_compatible(self._names, self._hash)
            manifest = self._override_thresholds(manifest)
        except RejectedModel as exc:
            self._reject(exc)
            return False
        previous = self.model_version
        self._active = _Active(model, manifest)
        if previous is not None:
            self.swaps += 1
        logger.info("serving model version %s (was %s)", manifest.version, previous)
        return True

    def refresh(self, force: bool = False) -> bool:
        """Ask the source for a new active version if `refresh_s` has passed; True on a swap."""
        now = self._clock()
        if not force and now - self._last_check < self._refresh_s:
            return False
        self._last_check = now
        try:
            model = self._source.poll()
        except RejectedModel as exc:
            self._reject(exc)
            return False
        except ModelWithdrawn as exc:
            if self._active is not None:
                logger.info("model version %s withdrawn: %s", self.model_version, exc)
                self._active = None
            return False
        except Exception as exc:  # noqa: BLE001 - keep serving the current model
            self.refresh_errors += 1
            logger.error("model refresh failed, keeping version %s: %r", self.model_version, exc)
            return False
        return model is not None and self.install(model)

    def vector(self, features: Mapping[str, float]) -> tuple[float, ...]:
        """The values of `features` in the model's column order (KeyError names a missing one)."""
        return tuple(float(features[name]) for name in self._names)

    def score_batch(self, rows: Any) -> tuple[npt.NDArray[np.float64], ModelManifest]:
        """Fraud probabilities for rows in feature order, and the manifest of the model used."""
        self.refresh()
        active = self._active
        if active is None:
            raise NoModelError("no usable fraud model is loaded")
        matrix = np.asarray(rows, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        width = len(active.manifest.feature_names)
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise ValueError(f"expected rows of {width} features, got shape {matrix.shape}")
        scores = np.asarray(active.model.predict_proba(matrix), dtype=np.float64)
        return scores, active.manifest

    def score(self, rows: Any) -> list[Scored]:
        """Score and decide a batch of feature vectors (each in FEATURE_NAMES order)."""
        scores, manifest = self.score_batch(rows)
        decide, version = manifest.thresholds.decide, manifest.version
        return [Scored(s, decide(s), version) for s in scores.tolist()]

    def decide(self, score: float) -> Decision:
        """The serving model's decision for one score."""
        active = self._active
        if active is None:
            raise NoModelError("no usable fraud model is loaded")
        return active.manifest.thresholds.decide(score)

    def reasons(self, row: Sequence[float] | npt.NDArray[Any], top: int = 3) -> tuple[Reason, ...]:
        """The `top` features furthest above their training median (see the module doc)."""
        active = self._active
        if active is None:
            raise NoModelError("no usable fraud model is loaded")
        manifest = active.manifest
        values = np.asarray(row, dtype=np.float64)
        if values.shape != manifest.medians.shape:
            raise ValueError(f"expected {len(manifest.medians)} features, got {values.shape}")
        deviation = (values - manifest.medians) / manifest.spreads
        order = np.lexsort((np.arange(len(deviation)), -deviation))
        return tuple(
            Reason(
                manifest.feature_names[i],
                float(values[i]),
                float(manifest.medians[i]),
                round(float(deviation[i]), 6),
            )
            for i in order[:top]
            if deviation[i] > 0
        )

    def explain(
        self, rows: Any, top: int = 3, manifest: ModelManifest | None = None
    ) -> list[tuple[Reason, ...]]:
        """`reasons` for every row of a batch at once, against `manifest` (default: serving)."""
        return self.explain_as(Reason, rows, top, manifest)

    def explain_as(
        self,
        build: Callable[[str, float, float, float], R],
        rows: Any,
        top: int = 3,
        manifest: ModelManifest | None = None,
    ) -> list[tuple[R, ...]]:
        """`explain`, each reason made by ``build(feature, value, median, deviation)``."""
        if manifest is None:
            active = self._active
            if active is None:
                raise NoModelError("no usable fraud model is loaded")
            manifest = active.manifest
        return explain_rows(build, rows, manifest, top)

    def _override_thresholds(self, manifest: ModelManifest) -> ModelManifest:
        if self._review is None and self._decline is None:
            return manifest
        review = manifest.thresholds.review if self._review is None else self._review
        decline = manifest.thresholds.decline if self._decline is None else self._decline
        if not review <= decline:
            raise RejectedModel(
                f"thresholds must satisfy review <= decline after the settings' overrides "
                f"(review {review}, decline {decline})"
            )
        return replace(manifest, thresholds=Thresholds(review=review, decline=decline))

    def _reject(self, exc: RejectedModel) -> None:
        self.rejected_models += 1
        logger.error("refused model (keeping version %s): %s", self.model_version, exc)
