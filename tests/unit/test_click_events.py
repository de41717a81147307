"""Unit tests for kestrel.click_events: parsing, validation, poison reasons, the Avro frame."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest

from kestrel.click_events import (
    ClickEvent,
    ClickType,
    check_click_not_ahead_of_arrival,
    parse_click,
)
from kestrel.codec import click_decoder, encode, schema_definition
from kestrel.events import PoisonReason, PoisonRecord
from kestrel.ports import UnknownSchemaVersion
from kestrel.schema_compat import check_backward

CLICK_V1 = UUID("44444444-4444-4444-8444-444444444444")
VIEW: dict[str, Any] = {
    "event_id": "E-1",
    "user_id": "U-1",
    "session_id": "S-1",
    "event_type": "product_view",
    "product_id": "P-9",
    "category": "shoes",
    "price": 59.99,
    "event_time": "2026-11-28T09:15:02.123Z",
}
PAGE: dict[str, Any] = {
    "event_id": "E-0",
    "user_id": "U-1",
    "session_id": "S-1",
    "event_type": "page_view",
    "event_time": 1_795_857_302_000,
}


class _Registry:
    def schema_for(self, version_id: UUID) -> str:
        if version_id != CLICK_V1:
            raise UnknownSchemaVersion(version_id)
        return schema_definition("click_event.v1")


def _poison(doc: Any) -> PoisonRecord:
    with pytest.raises(PoisonRecord) as info:
        parse_click(json.dumps(doc).encode())
    return info.value


def test_parse_click_reads_a_product_event_with_its_product() -> None:
    assert parse_click(json.dumps(VIEW).encode()) == ClickEvent(
        event_id="E-1",
        user_id="U-1",
        session_id="S-1",
        event_type=ClickType.PRODUCT_VIEW,
        event_time_ms=1_795_857_302_123,
        product_id="P-9",
        category="shoes",
        price=59.99,
    )


def test_parse_click_reads_a_page_view_without_product() -> None:
    event = parse_click(json.dumps({**PAGE, "product_id": None}).encode())
    assert event.event_type is ClickType.PAGE_VIEW
    assert (event.product_id, event.category, event.price) == (None, None, None)


@pytest.mark.parametrize(
    ("doc", "reason", "detail"),
    [
        ({**VIEW, "event_type": "click"}, PoisonReason.INVALID_FIELD, "event_type: must be one"),
        ({**VIEW, "event_type": None}, PoisonReason.MISSING_FIELD, "event_type: required"),
        ({**VIEW, "user_id": "{U}"}, PoisonReason.INVALID_FIELD, "user_id: must be a string"),
        ({**VIEW, "session_id": ""}, PoisonReason.INVALID_FIELD, "session_id: must be"),
        ({**VIEW, "product_id": None}, PoisonReason.MISSING_FIELD, "product_id: required"),
        ({**VIEW, "category": "a b"}, PoisonReason.INVALID_FIELD, "category: must be"),
        ({**VIEW, "price": -1}, PoisonReason.INVALID_FIELD, "price: must be a finite"),
        ({**VIEW, "price": "9"}, PoisonReason.INVALID_FIELD, "price: must be a number"),
        ({**VIEW, "price": 10**400}, PoisonReason.INVALID_FIELD, "price: must be at most"),
        ({**VIEW, "event_time": 1_795_857_302}, PoisonReason.INVALID_FIELD, "event_time: must"),
        ({**PAGE, "price": 3.0}, PoisonReason.INVALID_FIELD, "price: must be null or absent"),
        ({**PAGE, "product_id": "P-1"}, PoisonReason.INVALID_FIELD, "product_id: must be null"),
        ([VIEW], PoisonReason.INVALID_JSON, "data: expected a JSON object"),
    ],
)
def test_parse_click_poisons_bad_fields_naming_them(
    doc: Any, reason: PoisonReason, detail: str
) -> None:
    poison = _poison(doc)
    assert poison.reason is reason
    assert poison.detail.startswith(detail), poison.detail


def test_parse_click_refuses_json_nested_past_the_limit() -> None:
    with pytest.raises(PoisonRecord) as info:
        parse_click(b"[" * 10_000 + b"]" * 10_000)
    assert info.value.reason is PoisonReason.INVALID_JSON


def test_click_decoder_reads_avro_frames_and_json_alike() -> None:
    decode = click_decoder(_Registry())
    frame = encode(VIEW, schema_definition("click_event.v1"), CLICK_V1)
    assert decode(frame) == parse_click(json.dumps(VIEW).encode())
    page = encode(PAGE, schema_definition("click_event.v1"), CLICK_V1)
    assert decode(page).event_type is ClickType.PAGE_VIEW


def test_click_decoder_poisons_a_transaction_frame_and_unknown_versions() -> None:
    decode = click_decoder(_Registry())
    with pytest.raises(PoisonRecord) as info:
        decode(encode(VIEW, schema_definition("click_event.v1"), UUID(int=7)))
    assert info.value.reason is PoisonReason.UNKNOWN_SCHEMA
    bad = encode({**VIEW, "price": float("nan")}, schema_definition("click_event.v1"), CLICK_V1)
    with pytest.raises(PoisonRecord) as info:
        decode(bad)
    assert info.value.detail.startswith("price: must be a finite")


def test_click_schema_is_backward_compatible_with_itself() -> None:
    definition = schema_definition("click_event.v1")
    assert check_backward(definition, [definition]) == []


def test_check_click_not_ahead_of_arrival_names_event_time() -> None:
    event = parse_click(json.dumps(PAGE).encode())
    check_click_not_ahead_of_arrival(event, event.event_time_ms - 1000.0, 60.0)
    with pytest.raises(PoisonRecord) as info:
        check_click_not_ahead_of_arrival(event, event.event_time_ms - 7_200_000.0, 60.0)
    assert info.value.detail.startswith("event_time: 2 hours after")
