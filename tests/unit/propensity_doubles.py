"""Doubles for the propensity API's unit tests: an in-memory click reader, the shipped model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

import pybreaker

from kestrel.adapters.onnx_propensity import build_propensity_scorer
from kestrel.click_events import ClickEvent
from kestrel.click_features import (
    VIEW_WINDOWS,
    AppliedClick,
    ClickAggregates,
    SessionAggregates,
)
from kestrel.propensity_serving import PropensityService
from kestrel.scoring import Scorer
from kestrel.settings import Settings

T0 = 1_795_857_302_123  # 2026-11-28T09:15:02.123Z
KNOWN_USER = "U-000042"
_W = len(VIEW_WINDOWS)
# A known user's history as of a click: busy windows, 2 purchases in 30 days, one an hour ago.
HISTORY = ClickAggregates(
    views=(4, 12, 40),
    product_views=(2, 6, 20, 50),
    price_cents_30d=250_000,
    purchases_30d=2,
    last_purchase_ms=T0 - 3_600_000,
    session=SessionAggregates(events=5, products=3, categories=2, cart_net=1,
                              start_ms=T0 - 300_000),
)  # fmt: skip
EMPTY = ClickAggregates((0,) * _W, (0,) * (_W + 1), 0, 0, None, SessionAggregates(1, 0, 0, 0, T0))


@cache
def shipped_propensity_scorer() -> Scorer:
    """The propensity model shipped in layers/propensity-model (real onnxruntime, no network)."""
    return build_propensity_scorer(Settings.from_env({}))


class MemoryClicks:
    """ClickReader double: KNOWN_USER has HISTORY; `down` (or `store.down`) makes calls raise."""

    def __init__(self, store: Any = None) -> None:
        self.store = store  # a reader whose `down` this one shares (the same Redis)
        self.down: Exception | None = None
        self.calls: Counter[str] = Counter()

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        down = self.down or (self.store.down if self.store is not None else None)
        if down is not None:
            raise down

    def preview_history(self, events: Sequence[ClickEvent]) -> list[AppliedClick | Exception]:
        self._call("preview_history")
        return [
            AppliedClick(HISTORY, False, True)
            if e.user_id == KNOWN_USER
            else AppliedClick(EMPTY, False, False)
            for e in events
        ]

    def user_aggregates(self, user_id: str, as_of_ms: int) -> tuple[ClickAggregates, bool]:
        self._call("user_aggregates")
        return (HISTORY, True) if user_id == KNOWN_USER else (EMPTY, False)

    def ping(self) -> None:
        self._call("ping")


class MemoryPropensities:
    """PropensityLookup double: one stored propensity for KNOWN_USER; shares `clicks.down`."""

    def __init__(self, clicks: MemoryClicks) -> None:
        self.clicks = clicks
        self.stored: dict[str, dict[str, Any]] = {
            KNOWN_USER: {"propensity": 0.42, "model_version": "2", "event_time": T0 - 60_000,
                         "event_id": "E-000003", "session_id": "U-000042-S0001"},
        }  # fmt: skip

    def latest(self, user_id: str) -> dict[str, Any] | None:
        self.clicks._call("latest")
        return self.stored.get(user_id)


def propensity_service(
    clicks: MemoryClicks, scorer: Scorer | None = None, fail_max: int = 3
) -> PropensityService:
    """A real service over the doubles (the shipped model unless `scorer` is given)."""
    return PropensityService(
        reader=clicks,
        scorer=shipped_propensity_scorer() if scorer is None else scorer,
        propensities=MemoryPropensities(clicks),
        breaker=pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=60, name="redis"),
        clock_ms=lambda: T0,
    )


def click(**overrides: Any) -> dict[str, Any]:
    """A product_view of KNOWN_USER as the API receives it (`...` drops a field)."""
    doc: dict[str, Any] = {
        "event_id": "E-000004",
        "user_id": KNOWN_USER,
        "session_id": "U-000042-S0001",
        "event_type": "product_view",
        "product_id": "P-00311",
        "category": "shoes",
        "price": 89.5,
        "event_time": "2026-11-28T09:15:02.123Z",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}
