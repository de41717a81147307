"""The propensity service behind the API: a click's propensity as if applied, and fallbacks.

`PropensityService.score` previews one clickstream event against the user's stored state
(writing nothing), builds the same feature vector as the stream
(`kestrel.click_features.click_feature_vector` on the store's aggregates) and scores it
with the propensity model, so an event scored here and then on the stream, with the store
unchanged in between, gets the same vector and the same propensity.

Degradation, never an error, as in `kestrel.serving`: every store call goes through a
circuit breaker (`kestrel.serving.make_breaker`). While the store is unavailable, or when
no propensity model is served (or it fails), the answer is `PROPENSITY_PRIOR`, the
documented prior, flagged ``degraded`` with the reason. Reads without a fallback (a
user's features) raise `kestrel.serving.StoreUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pybreaker

from kestrel.click_events import ClickEvent
from kestrel.click_features import (
    CLICK_FEATURE_NAMES,
    CLICK_FEATURE_SET_HASH,
    AppliedClick,
    ClickAggregates,
    click_feature_vector,
)
from kestrel.decisions import Degraded, ReasonCode, now_ms
from kestrel.scoring import NoModelError, Scorer
from kestrel.serving import StoreUnavailable, call_store

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The prior served when the propensity cannot be computed: the share of clicks followed by
# a purchase within 30 minutes in kestrel-propensity v2's test set (12,063 of 68,291 rows,
# docs/clickstream.md). It is a base rate, the same for every click.
PROPENSITY_PRIOR = 0.1766
USER_FEATURES = tuple(n for n in CLICK_FEATURE_NAMES if n.startswith("USER_"))


class ClickReader(Protocol):
    """The click store's read side (`kestrel.adapters.redis_clicks.RedisClickStore`).

    Reads write nothing. A store failure raises (a connection error or timeout for the
    whole call) or comes back as that event's exception in the result list.
    """

    def preview_history(self, events: Sequence[ClickEvent]) -> list[AppliedClick | Exception]:
        """Each event's aggregates as if applied now, and whether its user has other events."""
        ...

    def user_aggregates(self, user_id: str, as_of_ms: int) -> tuple[ClickAggregates, bool]:
        """The user's windows at `as_of_ms` (no event), and whether the user has events."""
        ...

    def ping(self) -> None:
        """Raise unless the store answers."""
        ...


class PropensityLookup(Protocol):
    """Users' latest stored propensities (`kestrel.adapters.redis_propensity`)."""

    def latest(self, user_id: str) -> dict[str, Any] | None:
        """The user's stored propensity document, or None."""
        ...


@dataclass(frozen=True, slots=True)
class PropensityResult:
    """One event's propensity, the model version, why, and what was degraded."""

    event: ClickEvent
    propensity: float
    model_version: str | None
    reasons: tuple[ReasonCode, ...]
    degraded: tuple[Degraded, ...]
    cold_start: bool
    features: tuple[float, ...] | None
    scored_at_ms: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the API's body)."""
        e = self.event
        return {
            "event_id": e.event_id,
            "user_id": e.user_id,
            "session_id": e.session_id,
            "event_type": e.event_type.value,
            "propensity": self.propensity,
            "model_version": self.model_version,
            "feature_set_hash": CLICK_FEATURE_SET_HASH,
            "reasons": [r.to_dict() for r in self.reasons],
            "degraded": bool(self.degraded),
            "degraded_reasons": [d.value for d in self.degraded],
            "cold_start": self.cold_start,
            "features": (
                None
                if self.features is None
                else dict(zip(CLICK_FEATURE_NAMES, self.features, strict=True))
            ),
            "scored_at": self.scored_at_ms,
            "source": "api",
        }


@dataclass(frozen=True, slots=True)
class UserFeatures:
    """A user's features now (no event), whether the store knows them, their propensity."""

    user_id: str
    as_of_ms: int
    features: dict[str, float]
    known: bool
    propensity: dict[str, Any] | None


class PropensityService:
    """Scores clicks and serves users' features and latest propensities for the API."""

    def __init__(
        self,
        reader: ClickReader,
        scorer: Scorer | None,
        propensities: PropensityLookup,
        breaker: pybreaker.CircuitBreaker,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._reader, self._scorer, self._propensities = reader, scorer, propensities
        self._breaker, self._clock_ms = breaker, clock_ms

    @property
    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._breaker.current_state)

    def vector(self, event: ClickEvent) -> tuple[tuple[float, ...], bool]:
        """The event's feature vector as if applied now, and whether it is a cold start."""
        preview = self._store(self._reader.preview_history, [event])[0]
        if isinstance(preview, Exception):
            logger.warning("click store failed on %s: %s", event.event_id, preview)
            raise StoreUnavailable(f"click store failed: {type(preview).__name__}: {preview}")
        values = click_feature_vector(
            event.event_type.value, event.price, event.event_time_ms, preview.aggregates
        )
        return values, not preview.user_known

    def score(self, event: ClickEvent) -> PropensityResult:
        """The event's propensity from features as if applied now, or the prior if degraded."""
        at = self._clock_ms()
        try:
            values, cold = self.vector(event)
        except StoreUnavailable:
            return _prior(event, (Degraded.FEATURE_STORE_UNAVAILABLE,), False, None, at)
        if self._scorer is None:
            return _prior(event, (Degraded.NO_MODEL,), cold, values, at)
        try:
            scores, manifest = self._scorer.score_batch([values])
            reasons = self._scorer.explain([values], manifest=manifest)[0]
        except NoModelError:
            return _prior(event, (Degraded.NO_MODEL,), cold, values, at)
        except Exception as exc:  # noqa: BLE001 - a failing model degrades, never a 500
            logger.error("propensity model failed: %s: %s", type(exc).__name__, exc)
            return _prior(event, (Degraded.MODEL_ERROR,), cold, values, at)
        return PropensityResult(
            event=event,
            propensity=float(scores[0]),
            model_version=manifest.version,
            reasons=tuple(
                ReasonCode("feature", r.feature, r.value, r.reference_median, r.deviation)
                for r in reasons
            ),
            degraded=(),
            cold_start=cold,
            features=values,
            scored_at_ms=at,
        )

    def user_features(self, user_id: str) -> UserFeatures:
        """A user's features now and latest propensity; raise `StoreUnavailable` if no store."""
        at = self._clock_ms()
        aggregates, known = self._store(self._reader.user_aggregates, user_id, at)
        latest = self._store(self._propensities.latest, user_id)
        vector = click_feature_vector("", None, at, aggregates)
        values = dict(zip(CLICK_FEATURE_NAMES, vector, strict=True))
        return UserFeatures(user_id, at, {n: values[n] for n in USER_FEATURES}, known, latest)

    def model_check(self) -> dict[str, Any]:
        """The propensity model's /health check: ``ok`` and the served version (no I/O)."""
        version = self._scorer.model_version if self._scorer else None
        check: dict[str, Any] = {"ok": version is not None, "version": version}
        if version is None:
            check["detail"] = "no usable propensity model: /v1/propensity answers the prior"
        return check

    def _store(self, call: Callable[..., T], *args: Any) -> T:
        """Call the store through the breaker; any failure becomes `StoreUnavailable`."""
        return call_store(self._breaker, "click store", call, *args)


def _prior(
    event: ClickEvent,
    degraded: tuple[Degraded, ...],
    cold: bool,
    values: tuple[float, ...] | None,
    at: int,
) -> PropensityResult:
    """The prior's answer, flagged with why the model path was not used."""
    reason = ReasonCode("prior", "PROPENSITY_PRIOR", PROPENSITY_PRIOR, PROPENSITY_PRIOR)
    return PropensityResult(event, PROPENSITY_PRIOR, None, (reason,), degraded, cold, values, at)
