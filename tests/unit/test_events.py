"""Unit tests for kestrel.events: parsing, validation and every poison reason."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kestrel.events import (
    DEFAULT_MAX_FUTURE_S,
    MAX_AMOUNT,
    Label,
    PoisonReason,
    PoisonRecord,
    Transaction,
    check_not_ahead_of_arrival,
    decode_base64,
    parse_label,
    parse_transaction,
)

TXN: dict[str, Any] = {
    "transaction_id": "T-1",
    "customer_id": "C-1",
    "terminal_id": "TERM-1",
    "amount": 12.5,
    "event_time": "2026-11-28T09:15:02.123Z",
}
LABEL: dict[str, Any] = {
    "transaction_id": "T-1",
    "customer_id": "C-1",
    "terminal_id": "TERM-1",
    "is_fraud": True,
    "label_time": "2026-12-05T14:02:11+00:00",
}


def _raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _poison(raw: bytes, parse: Any = parse_transaction) -> PoisonRecord:
    with pytest.raises(PoisonRecord) as info:
        parse(raw)
    return info.value


def test_parse_transaction_returns_typed_utc_transaction() -> None:
    txn = parse_transaction(_raw(TXN))
    assert txn == Transaction(
        transaction_id="T-1",
        customer_id="C-1",
        terminal_id="TERM-1",
        amount=12.5,
        event_time_ms=1_795_857_302_123,
    )


def test_parse_transaction_accepts_integer_amount_and_ignores_unknown_fields() -> None:
    txn = parse_transaction(_raw({**TXN, "amount": 3, "merchant_category": "5411"}))
    assert txn.amount == 3.0
    assert isinstance(txn.amount, float)


def test_parse_transaction_accepts_epoch_millis_and_optional_v2_fields() -> None:
    doc = {**TXN, "event_time": 1_795_857_302_123, "channel": "pos", "device_id": "D-9"}
    txn = parse_transaction(_raw(doc))
    assert txn.event_time_ms == 1_795_857_302_123
    assert (txn.channel, txn.device_id) == ("pos", "D-9")
    assert parse_transaction(_raw(TXN)).channel is None


def test_parse_label_returns_typed_label() -> None:
    label = parse_label(_raw(LABEL))
    assert label == Label(
        transaction_id="T-1",
        customer_id="C-1",
        terminal_id="TERM-1",
        is_fraud=True,
        label_time_ms=1_796_479_331_000,
    )


def test_decode_base64_rejects_malformed_data_as_undecodable() -> None:
    with pytest.raises(PoisonRecord) as info:
        decode_base64("not base64!!")
    assert info.value.reason is PoisonReason.UNDECODABLE
    assert info.value.detail.startswith("data:")
    assert decode_base64(base64.b64encode(b"ok").decode()) == b"ok"


def test_parse_transaction_rejects_non_utf8_as_undecodable() -> None:
    poison = _poison(b"\xff\xfe\x00garbage")
    assert poison.reason is PoisonReason.UNDECODABLE
    assert "UTF-8" in poison.detail


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b'{"amount": NaN}', b"[1, 2]", b'"text"'],
    ids=["syntax", "empty", "nan", "array", "string"],
)
def test_parse_transaction_rejects_bad_json_as_invalid_json(raw: bytes) -> None:
    poison = _poison(raw)
    assert poison.reason is PoisonReason.INVALID_JSON
    assert poison.detail.startswith("data:")


@pytest.mark.parametrize("field", sorted(TXN))
def test_parse_transaction_names_each_missing_field(field: str) -> None:
    doc = {k: v for k, v in TXN.items() if k != field}
    poison = _poison(_raw(doc))
    assert poison.reason is PoisonReason.MISSING_FIELD
    assert poison.detail.startswith(f"{field}:")


def test_parse_transaction_treats_null_as_missing() -> None:
    poison = _poison(_raw({**TXN, "customer_id": None}))
    assert poison.reason is PoisonReason.MISSING_FIELD
    assert poison.detail.startswith("customer_id:")


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("transaction_id", 42, "must be a string"),
        ("customer_id", "", "must be a string"),
        ("terminal_id", "TERM{1}", "must be a string"),
        ("amount", "12.50", "must be a number"),
        ("amount", True, "must be a number"),
        ("amount", -1, "at least 0"),
        ("event_time", "yesterday", "ISO-8601"),
        ("event_time", "2026-11-28T09:15:02", "UTC"),
        ("event_time", "2026-11-28T10:15:02+01:00", "UTC"),
        ("event_time", 1764321302, "milliseconds"),
        ("event_time", 1764321302123.0, "epoch milliseconds"),
        ("event_time", "1999-12-31T23:59:59Z", "between 2000 and 2100"),
        ("channel", "", "1-128 characters"),
        ("device_id", 7, "1-128 characters"),
    ],
)
def test_parse_transaction_names_each_invalid_field(field: str, value: Any, problem: str) -> None:
    poison = _poison(_raw({**TXN, field: value}))
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith(f"{field}:")
    assert problem in poison.detail


def test_parse_transaction_rejects_overflowing_amount() -> None:
    raw = _raw(TXN).replace(b"12.5", b"1e400")
    poison = _poison(raw)
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith("amount:")
    assert "finite" in poison.detail


@pytest.mark.parametrize("amount", [b"1e307", b"1000000000.01", b"1000000.01", b"2500000"])
def test_parse_transaction_rejects_an_absurd_amount(amount: bytes) -> None:
    poison = _poison(_raw(TXN).replace(b"12.5", amount))
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith("amount: must be at most 1000000 (got ")


@pytest.mark.parametrize("amount", [0, 0.01, 9_999.99, 999_999.99, 1_000_000])
def test_parse_transaction_accepts_amounts_up_to_the_business_limit(amount: float) -> None:
    assert parse_transaction(_raw({**TXN, "amount": amount})).amount == amount


def test_max_amount_is_a_sane_business_limit_with_exact_cents() -> None:
    # The simulator's largest amounts are a few thousand; cents stay exact far beyond the limit.
    assert 10_000 < MAX_AMOUNT <= 10_000_000
    assert round(MAX_AMOUNT * 100) == MAX_AMOUNT * 100 < 2**53


T0 = 1_795_857_302_123  # 2026-11-28T09:15:02.123Z
DAY_MS = 86_400_000


def _tx_at(event_time_ms: int) -> Transaction:
    return Transaction("T-1", "C-1", "TERM-1", 12.5, event_time_ms)


@pytest.mark.parametrize(
    "event_time_ms",
    [T0 - 365 * DAY_MS, T0, T0 + 5_000, T0 + DAY_MS],  # the past, now, skew, the limit itself
)
def test_check_not_ahead_of_arrival_accepts_times_up_to_the_limit(event_time_ms: int) -> None:
    check_not_ahead_of_arrival(_tx_at(event_time_ms), T0, DEFAULT_MAX_FUTURE_S)


def test_check_not_ahead_of_arrival_names_the_field_how_far_and_the_limit() -> None:
    with pytest.raises(PoisonRecord) as caught:
        check_not_ahead_of_arrival(_tx_at(T0 + 2 * DAY_MS), T0, DEFAULT_MAX_FUTURE_S)
    assert caught.value.reason is PoisonReason.INVALID_FIELD
    assert caught.value.detail == (
        "event_time: 2 days after the record reached the stream "
        "(limit 1 day; got 2026-11-30T09:15:02.123Z)"
    )


def test_check_not_ahead_of_arrival_checks_a_labels_label_time() -> None:
    label = Label("T-1", "C-1", "TERM-1", True, T0 + 90 * 60_000)
    check_not_ahead_of_arrival(label, T0, 3 * 3600)
    with pytest.raises(PoisonRecord, match=r"label_time: 1\.5 hours after .*\(limit 1 hour;"):
        check_not_ahead_of_arrival(label, T0, 3600)


def test_check_not_ahead_of_arrival_limit_is_strict_to_the_millisecond() -> None:
    check_not_ahead_of_arrival(_tx_at(T0 + 60_000), T0, 60)
    with pytest.raises(PoisonRecord, match=r"^invalid_field: event_time: 1 minute after"):
        check_not_ahead_of_arrival(_tx_at(T0 + 60_001), T0, 60)
    with pytest.raises(PoisonRecord, match=r"event_time: 0\.5 seconds after .*limit 0 seconds"):
        check_not_ahead_of_arrival(_tx_at(T0 + 500), T0, 0)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("is_fraud", "yes", PoisonReason.INVALID_FIELD),
        ("is_fraud", 1, PoisonReason.INVALID_FIELD),
        ("label_time", "2026-12-05", PoisonReason.INVALID_FIELD),
        ("label_time", True, PoisonReason.INVALID_FIELD),
        ("is_fraud", None, PoisonReason.MISSING_FIELD),
    ],
)
def test_parse_label_rejects_bad_fields(field: str, value: Any, reason: PoisonReason) -> None:
    poison = _poison(_raw({**LABEL, field: value}), parse_label)
    assert poison.reason is reason
    assert poison.detail.startswith(f"{field}:")


def test_poison_record_message_carries_reason_and_detail() -> None:
    poison = PoisonRecord(PoisonReason.INVALID_FIELD, "amount: must be a number")
    assert str(poison) == "invalid_field: amount: must be a number"
