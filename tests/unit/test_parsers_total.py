"""Property tests: any bytes or JSON give an event or a reason, on the stream and in the API.

Each test runs 10,000 examples under the ``totality`` profile (`totality_strategies`) and
gives every example to every parser, so each parser meets 10,000 arbitrary byte strings and
10,000 arbitrary JSON documents. The parsers are called directly: the stream's transaction,
label and clickstream decoders with an in-memory schema registry, and the API's body,
transaction and click parsers as /v1/score, /v1/score/batch and /v1/propensity call them.
Hypothesis fails a test on any exception other than the ones asserted here.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from totality_strategies import TOTALITY, Registry, json_bytes, record_bytes

from kestrel.click_events import CLICK_TYPES, MAX_PRICE, ClickEvent, ClickType
from kestrel.codec import click_decoder, label_decoder, transaction_decoder
from kestrel.events import (
    MAX_AMOUNT,
    Label,
    PoisonReason,
    PoisonRecord,
    Transaction,
    valid_identifier,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "functions" / "api"))
from chalicelib import propensity_web, web

TRANSACTIONS = transaction_decoder(Registry())
LABELS = label_decoder(Registry())
CLICKS = click_decoder(Registry())
FIELDS = {
    "data",
    "transaction_id",
    "customer_id",
    "terminal_id",
    "amount",
    "event_time",
    "channel",
    "device_id",
    "is_fraud",
    "label_time",
    "event_id",
    "user_id",
    "session_id",
    "event_type",
    "product_id",
    "category",
    "price",
}
MIN_MS, MAX_MS = 946_684_800_000, 4_102_444_800_000
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_transaction(tx: Transaction) -> None:
    assert all(valid_identifier(v) for v in (tx.transaction_id, tx.customer_id, tx.terminal_id))
    assert math.isfinite(tx.amount) and 0 <= tx.amount <= MAX_AMOUNT
    assert MIN_MS <= tx.event_time_ms < MAX_MS
    for text in (tx.channel, tx.device_id):
        assert text is None or (1 <= len(text) <= 128 and not CONTROL.search(text))


def _check_poison(poison: PoisonRecord) -> None:
    assert isinstance(poison.reason, PoisonReason)
    field, _, problem = poison.detail.partition(": ")
    assert field in FIELDS and problem, poison.detail
    assert len(poison.detail) <= 400, poison.detail


def _check_click(event: ClickEvent) -> None:
    assert all(valid_identifier(v) for v in (event.event_id, event.user_id, event.session_id))
    assert event.event_type in CLICK_TYPES and MIN_MS <= event.event_time_ms < MAX_MS
    product = (event.product_id, event.category, event.price)
    if event.event_type is ClickType.PAGE_VIEW:
        assert product == (None, None, None)
    else:
        assert valid_identifier(event.product_id) and valid_identifier(event.category)
        assert event.price is not None and math.isfinite(event.price)
        assert 0 <= event.price <= MAX_PRICE


def _decode_on_the_stream(data: bytes) -> None:
    """The stream decoders give an event that passes every rule, or a poison reason."""
    for decode in (TRANSACTIONS, LABELS, CLICKS):
        try:
            event = decode(data)
        except PoisonRecord as poison:
            _check_poison(poison)
            continue
        if isinstance(event, Transaction):
            _check_transaction(event)
        elif isinstance(event, ClickEvent):
            _check_click(event)
        else:
            assert isinstance(event, Label)
            assert valid_identifier(event.transaction_id) and event.label_time_ms >= MIN_MS


def _parse_in_the_api(raw: bytes) -> None:
    """/v1/score, /v1/score/batch and /v1/propensity parse any body into transactions or clicks,
    or a 4xx naming a field."""
    for parse in (web.transaction, web.transactions, propensity_web.click):
        try:
            parsed: Any = parse(web.body_document(raw))
        except web.HttpError as error:
            assert (error.status, error.error) in {
                (400, "validation_error"),
                (413, "too_many_transactions"),
            }
            assert error.field and error.problem
            response = error.response()
            assert response.status_code == error.status
            assert json.loads(response.body)["field"] == error.field
            continue
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(item, ClickEvent):
                _check_click(item)
            else:
                _check_transaction(item)


@TOTALITY
@given(record_bytes())
def test_stream_decoder_and_api_parser_give_a_value_or_a_reason_for_any_bytes(
    data: bytes,
) -> None:
    _decode_on_the_stream(data)
    _parse_in_the_api(data)


@TOTALITY
@given(json_bytes())
def test_stream_decoder_and_api_parser_give_a_value_or_a_reason_for_any_json(data: bytes) -> None:
    _decode_on_the_stream(data)
    _parse_in_the_api(data)
