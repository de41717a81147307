"""Clickstream events: what a shopper did on the site, parsed and validated like transactions.

Pure domain code: no boto3, no redis. The rules are the transactions' (`kestrel.events`):
parsing is total (any bytes give a `ClickEvent` or a `PoisonRecord` whose detail names the
field), ids follow the same rule (1-128 of ``A-Z a-z 0-9 _ . : -``, a letter or digit
first), JSON nested deeper than `MAX_JSON_DEPTH` is refused before it is parsed, and times
are epoch milliseconds or ISO-8601 UTC between 2000 and 2100.

Five event types. A ``page_view`` names no product: its ``product_id``, ``category`` and
``price`` are null or absent. The four product events (``product_view``, ``add_to_cart``,
``remove_from_cart``, ``purchase``) carry all three: the product, its category (an id) and
its unit price (0 to `MAX_PRICE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kestrel.events import (
    DEFAULT_MAX_FUTURE_S,
    MAX_AMOUNT,
    PoisonReason,
    PoisonRecord,
    _amount,
    _duration,
    _epoch_ms,
    _field,
    _identifier,
    _invalid,
    _json_object,
    iso_ms,
)

# The highest unit price a product event may carry (the transactions' MAX_AMOUNT).
MAX_PRICE = MAX_AMOUNT
_PRODUCT_FIELDS = ("product_id", "category", "price")


class ClickType(StrEnum):
    """What the shopper did; the codes the stream, the log and the features use."""

    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"


CLICK_TYPES: tuple[str, ...] = tuple(t.value for t in ClickType)


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """One clickstream event as the producer writes it to the clickstream (UTC epoch ms).

    `product_id`, `category` and `price` are None exactly for a ``page_view``.
    """

    event_id: str
    user_id: str
    session_id: str
    event_type: ClickType
    event_time_ms: int
    product_id: str | None = None
    category: str | None = None
    price: float | None = None


def parse_click(raw: bytes) -> ClickEvent:
    """Parse and validate one clickstream event from JSON bytes, or raise `PoisonRecord`."""
    return click_from_mapping(_json_object(raw))


def click_from_mapping(doc: Mapping[str, Any]) -> ClickEvent:
    """Validate one decoded clickstream event (from JSON or Avro), or raise `PoisonRecord`."""
    event_id = _identifier(doc, "event_id")
    user_id = _identifier(doc, "user_id")
    session_id = _identifier(doc, "session_id")
    event_type = _click_type(doc)
    event_time_ms = _epoch_ms(doc, "event_time")
    if event_type is ClickType.PAGE_VIEW:
        for name in _PRODUCT_FIELDS:
            if doc.get(name) is not None:
                raise _invalid(name, "must be null or absent for a page_view", doc[name])
        return ClickEvent(event_id, user_id, session_id, event_type, event_time_ms)
    return ClickEvent(
        event_id,
        user_id,
        session_id,
        event_type,
        event_time_ms,
        product_id=_identifier(doc, "product_id"),
        category=_identifier(doc, "category"),
        price=_amount(doc, "price"),
    )


def _click_type(doc: Mapping[str, Any]) -> ClickType:
    value = _field(doc, "event_type")
    if not isinstance(value, str) or value not in CLICK_TYPES:
        raise _invalid("event_type", f"must be one of {', '.join(CLICK_TYPES)}", value)
    return ClickType(value)


def check_click_not_ahead_of_arrival(
    event: ClickEvent, arrival_ms: float, max_future_s: float = DEFAULT_MAX_FUTURE_S
) -> None:
    """Poison `event` (`invalid_field`) if dated over `max_future_s` after its stream arrival.

    The transactions' rule (`kestrel.events.check_not_ahead_of_arrival`): `arrival_ms` is
    when the record reached the stream, so replaying old records never makes them poison.
    """
    ahead_s = (event.event_time_ms - arrival_ms) / 1000.0
    if ahead_s > max_future_s:
        raise PoisonRecord(
            PoisonReason.INVALID_FIELD,
            f"event_time: {_duration(ahead_s)} after the record reached the stream "
            f"(limit {_duration(max_future_s)}; got {iso_ms(event.event_time_ms)})",
        )
