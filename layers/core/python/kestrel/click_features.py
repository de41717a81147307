"""Kestrel's clickstream (purchase propensity) features, declared once for stream and training.

Every feature is a pure function of one clickstream event and its `ClickAggregates`: what
the user did in exact trailing windows ending at the event, and what the event's session
held up to it. Online, the Redis store (`kestrel.adapters.redis_clicks`) computes the
aggregates with constant work per in-order event; offline, numpy computes the same ones
from the event log (`kestrel_training.click_offline`). `click_feature_vector` turns either
into the same numbers.

Semantics (all bounds in epoch milliseconds; t = the event's time; "up to the event" means
(time, event id) <= (t, this event's id), so of two events in one millisecond the smaller
id comes first; an event id counts once however often it arrives, and a late event counts
at its own place in that order):
- user window W of a kind: the user's events of that kind with t - W < time, up to the
  event (this one included when it is of the kind). Views are ``page_view`` and
  ``product_view``; product views only ``product_view``;
- session: the events of the event's session (user and session id) up to the event: how
  many, the distinct products and categories they name, cart adds minus removes, and the
  session's duration so far (t minus the time of its first event);
- purchases over 30 days: the user's ``purchase`` events in the 30-day window; the
  conversion rate is those purchases over the product views of the same window (0 without
  product views);
- seconds since the last purchase: t minus the time of the user's last purchase before
  this event in that order, if it is within 30 days (time > t - 30 days), else
  `NO_PURCHASE_S`;
- price over the 30-day average: the event's price over the mean price of the user's
  product views in the 30-day window (this one included); 0 for a page view or when the
  window holds no priced product view.
Prices are summed in integer cents, so sums are exact everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kestrel.features import DAY_MS, HOUR_MS, MINUTE_MS

VIEW_WINDOWS: tuple[tuple[str, int], ...] = (
    ("5MIN", 5 * MINUTE_MS),
    ("1HOUR", HOUR_MS),
    ("24HOUR", DAY_MS),
)
MONTH_MS = 30 * DAY_MS
NO_PURCHASE_S = MONTH_MS / 1000.0
# Event types in the order of the feature vector's one-hot columns (also the store's codes).
CLICK_KINDS: tuple[str, ...] = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
)
VIEW_KINDS = frozenset({"page_view", "product_view"})
CART_DELTA = {"add_to_cart": 1, "remove_from_cart": -1}

CLICK_FEATURE_NAMES: tuple[str, ...] = (
    "PRICE",
    *(f"IS_{kind.upper()}" for kind in CLICK_KINDS),
    *(f"USER_VIEWS_{label}_WINDOW" for label, _ in VIEW_WINDOWS),
    *(f"USER_PRODUCT_VIEWS_{label}_WINDOW" for label, _ in VIEW_WINDOWS),
    "SESSION_EVENTS",
    "SESSION_DISTINCT_PRODUCTS",
    "SESSION_DISTINCT_CATEGORIES",
    "SESSION_CART_NET",
    "SESSION_DURATION_S",
    "USER_PURCHASES_30DAY_WINDOW",
    "USER_CONVERSION_RATE_30DAY_WINDOW",
    "USER_SECONDS_SINCE_LAST_PURCHASE",
    "PRICE_OVER_USER_30DAY_AVG",
)


def _definition() -> dict[str, object]:
    return {
        "names": CLICK_FEATURE_NAMES,
        "view_windows_ms": VIEW_WINDOWS,
        "month_ms": MONTH_MS,
        "no_purchase_s": NO_PURCHASE_S,
        "kinds": CLICK_KINDS,
        "windows": "exact, (t - W, t] with (time, event id) ties; session up to the event",
        "conversion": "purchases / product views, 30 days",
        "prices": "integer cents",
    }


CLICK_FEATURE_SET_HASH = hashlib.sha256(
    json.dumps(_definition(), sort_keys=True).encode()
).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SessionAggregates:
    """The event's session up to the event: events, distinct products and categories, cart
    adds minus removes, and the time of its first event."""

    events: int
    products: int
    categories: int
    cart_net: int
    start_ms: int


@dataclass(frozen=True, slots=True)
class ClickAggregates:
    """The user's windows as of one event (VIEW_WINDOWS order; product views then also 30
    days), the 30-day purchases and priced views, the last purchase before, and the session."""

    views: tuple[int, ...]
    product_views: tuple[int, ...]
    price_cents_30d: int
    purchases_30d: int
    last_purchase_ms: int | None
    session: SessionAggregates


@dataclass(frozen=True, slots=True)
class AppliedClick:
    """An event's aggregates, whether this call stored it (not a replay), and whether the
    user had other events in the store (else: cold start)."""

    aggregates: ClickAggregates
    applied: bool
    user_known: bool


def click_feature_vector(
    event_type: str, price: float | None, event_time_ms: int, agg: ClickAggregates
) -> tuple[float, ...]:
    """The feature values in CLICK_FEATURE_NAMES order."""
    values: list[float] = [float(price) if price is not None else 0.0]
    values += [1.0 if event_type == kind else 0.0 for kind in CLICK_KINDS]
    values += [float(n) for n in agg.views]
    values += [float(n) for n in agg.product_views[: len(VIEW_WINDOWS)]]
    session = agg.session
    values += [
        float(session.events),
        float(session.products),
        float(session.categories),
        float(session.cart_net),
        (event_time_ms - session.start_ms) / 1000.0,
    ]
    views_30d, total_30d = agg.product_views[-1], agg.price_cents_30d
    values.append(float(agg.purchases_30d))
    values.append(agg.purchases_30d / views_30d if views_30d else 0.0)
    last = agg.last_purchase_ms
    values.append((event_time_ms - last) / 1000.0 if last is not None else NO_PURCHASE_S)
    if price is not None and views_30d and total_30d:
        values.append(float(price) / (total_30d / views_30d / 100.0))
    else:
        values.append(0.0)
    return tuple(values)
