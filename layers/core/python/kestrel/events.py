"""Stream events of the domain: transactions and fraud labels, parsed and validated.

Pure domain code: no boto3, no redis. A record that can never be processed raises
`PoisonRecord` with a stable reason code (`PoisonReason`) and a detail that names the
field and the problem; handlers send it to the dead-letter sink and carry on. Parsing is
total: any bytes give an event or a `PoisonRecord`, never another exception (JSON nested
deeper than `MAX_JSON_DEPTH`, integers of any size, NaN and Infinity in any spelling).

Ids (customer, terminal, transaction) are 1-128 ASCII characters of ``A-Z a-z 0-9 _ . : -``
starting with a letter or digit. They become part of Redis keys inside hash tags
(``kestrel:{c:<id>}:log``), so ``{`` and ``}`` can never appear in one (an id could not
close its tag early or share another id's slot); whitespace, control characters and
non-ASCII letters are refused too, so an id reads the same in logs, keys and URLs.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit"
_MAX_TEXT = 128
# Transactions and labels are flat objects; deeper JSON is refused before it is parsed, so
# nesting can never exhaust the parser's recursion (JSON nested 100,000 deep is poison).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# Free text (channel, device_id) has no control characters (C0, DEL, C1) and no lone
# surrogates, which UTF-8 (the event log, Redis) cannot encode. The API's spec says so too.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MIN_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
_MAX_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# The largest amount one card payment may have, in the transaction's currency: above it the
# amount is absurd for the business (a unit or parsing error upstream), so the record is poison.
# The simulator's amounts stay under a few thousand; cents stay exact integers far beyond this.
# The scoring API's OpenAPI spec uses the same constant.
MAX_AMOUNT = 1_000_000.0
# How far after the record reached the stream its own time may be (MAX_FUTURE_S overrides it).
DEFAULT_MAX_FUTURE_S = 86_400.0


class PoisonReason(StrEnum):
    """Why a record can never be processed; stable codes that dead letters carry."""

    UNDECODABLE = "undecodable"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_SCHEMA = "unknown_schema"
    SCHEMA_MISMATCH = "schema_mismatch"


class PoisonRecord(ValueError):
    """A record that no retry can fix: its `reason` code and a `detail` naming the problem."""

    def __init__(self, reason: PoisonReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Transaction:
    """A card transaction as the producer writes it to the transactions stream (UTC epoch ms).

    Not frozen: a frozen dataclass sets each field through ``object.__setattr__`` (~1 µs per
    transaction, and every stream event builds one); treat it as immutable all the same.
    """

    transaction_id: str
    customer_id: str
    terminal_id: str
    amount: float
    event_time_ms: int
    channel: str | None = None
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Label:
    """A (delayed) fraud label for one transaction, from the label feed (UTC epoch ms)."""

    transaction_id: str
    customer_id: str
    terminal_id: str
    is_fraud: bool
    label_time_ms: int


def decode_base64(data: str) -> bytes:
    """Decode a Kinesis record's base64 `data`; malformed base64 is an `undecodable` poison."""
    try:
        # What base64.b64decode(data, validate=True) calls, without its Python wrapper.
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise PoisonRecord(PoisonReason.UNDECODABLE, f"data: not valid base64 ({exc})") from None


def parse_transaction(raw: bytes) -> Transaction:
    """Parse and validate one transaction from JSON bytes, or raise `PoisonRecord`."""
    return transaction_from_mapping(_json_object(raw))


def parse_label(raw: bytes) -> Label:
    """Parse and validate one fraud label from JSON bytes, or raise `PoisonRecord`."""
    return label_from_mapping(_json_object(raw))


def transaction_from_mapping(doc: Mapping[str, Any]) -> Transaction:
    """Validate one decoded transaction (from JSON or Avro), or raise `PoisonRecord`."""
    # Positional: keywords cost 0.5 µs more per call, and every stream event comes here.
    return Transaction(
        _identifier(doc, "transaction_id"),
        _identifier(doc, "customer_id"),
        _identifier(doc, "terminal_id"),
        _amount(doc, "amount"),
        _epoch_ms(doc, "event_time"),
        _optional_text(doc, "channel"),
        _optional_text(doc, "device_id"),
    )


def label_from_mapping(doc: Mapping[str, Any]) -> Label:
    """Validate one decoded fraud label (from JSON or Avro), or raise `PoisonRecord`."""
    return Label(
        transaction_id=_identifier(doc, "transaction_id"),
        customer_id=_identifier(doc, "customer_id"),
        terminal_id=_identifier(doc, "terminal_id"),
        is_fraud=_boolean(doc, "is_fraud"),
        label_time_ms=_epoch_ms(doc, "label_time"),
    )


def valid_identifier(value: object) -> bool:
    """True when `value` is a valid customer, terminal or transaction id."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the Unix epoch of an aware `datetime` (exact, floored)."""
    return (moment - _EPOCH) // _ONE_MS


def check_not_ahead_of_arrival(
    event: Transaction | Label, arrival_ms: float, max_future_s: float = DEFAULT_MAX_FUTURE_S
) -> None:
    """Poison `event` (`invalid_field`) if dated over `max_future_s` after its stream arrival.

    `arrival_ms` is when the record reached the stream (Kinesis `approximateArrivalTimestamp`),
    not the wall clock, so replaying old records never makes them poison.
    """
    if isinstance(event, Transaction):
        name, millis = "event_time", event.event_time_ms
    else:
        name, millis = "label_time", event.label_time_ms
    ahead_s = (millis - arrival_ms) / 1000.0
    if ahead_s > max_future_s:
        raise PoisonRecord(
            PoisonReason.INVALID_FIELD,
            f"{name}: {_duration(ahead_s)} after the record reached the stream "
            f"(limit {_duration(max_future_s)}; got {iso_ms(millis)})",
        )


def _duration(seconds: float) -> str:
    """A short human duration in the largest unit it rounds to: "1 day", "2.5 hours"."""
    shown, unit = "0", "second"
    for name, size in (("day", 86_400.0), ("hour", 3_600.0), ("minute", 60.0), ("second", 1.0)):
        value = seconds / size
        shown = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
        unit = name
        if float(shown) >= 1:
            break
    return f"{shown} {unit}" if shown == "1" else f"{shown} {unit}s"


def iso_ms(millis: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds (``...T09:15:02.000Z``)."""
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(text: str) -> bool:
    """True when `text` nests arrays and objects deeper than MAX_JSON_DEPTH (strings aside)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # the common case: no scan
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def json_document(raw: bytes) -> Any:
    """Parse UTF-8 JSON bytes (no NaN/Infinity, at most MAX_JSON_DEPTH deep) or raise poison."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonRecord(
            PoisonReason.UNDECODABLE, f"data: not UTF-8 text (byte {exc.start})"
        ) from None
    if _too_deep(text):
        raise PoisonRecord(
            PoisonReason.INVALID_JSON, f"data: nested more than {MAX_JSON_DEPTH} levels deep"
        )
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # a backstop: _too_deep refuses such documents first
        raise PoisonRecord(PoisonReason.INVALID_JSON, "data: nested too deeply") from None
    except ValueError as exc:
        problem = str(exc).split("; use sys.set_int_max_str_digits", 1)[0]
        raise PoisonRecord(PoisonReason.INVALID_JSON, f"data: {problem}") from None


def _json_object(raw: bytes) -> Mapping[str, Any]:
    doc = json_document(raw)
    if not isinstance(doc, dict):
        raise PoisonRecord(
            PoisonReason.INVALID_JSON, f"data: expected a JSON object, got {type(doc).__name__}"
        )
    return doc


def _field(doc: Mapping[str, Any], name: str) -> Any:
    value = doc.get(name)
    if value is None:
        raise PoisonRecord(PoisonReason.MISSING_FIELD, f"{name}: required field is missing")
    return value


def _shown(value: Any) -> str:
    """A short, safe rendering of any decoded value (huge or deeply nested ones included)."""
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, int) and abs(value) >= 10**30:  # str() of 4,301 digits raises
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    shown = repr(value[:80] if isinstance(value, str | bytes) else value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _invalid(name: str, problem: str, value: Any) -> PoisonRecord:
    return PoisonRecord(PoisonReason.INVALID_FIELD, f"{name}: {problem} (got {_shown(value)})")


def _identifier(doc: Mapping[str, Any], name: str) -> str:
    value = _field(doc, name)
    if not valid_identifier(value):
        raise _invalid(name, f"must be a string of {_ID_RULE}", value)
    return str(value)


def _amount(doc: Mapping[str, Any], name: str) -> float:
    value = _field(doc, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(name, "must be a number", value)
    # Integers are compared as integers: float() overflows from 309 digits on.
    finite = isinstance(value, int) or math.isfinite(value)
    if not finite or value < 0:
        raise _invalid(name, "must be a finite number of at least 0", value)
    if value > MAX_AMOUNT:
        raise _invalid(name, f"must be at most {MAX_AMOUNT:.0f}", value)
    return float(value)


def _boolean(doc: Mapping[str, Any], name: str) -> bool:
    value = _field(doc, name)
    if not isinstance(value, bool):
        raise _invalid(name, "must be true or false", value)
    return value


def _optional_text(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_TEXT or _CONTROL.search(value):
        raise _invalid(
            name, f"must be a string of 1-{_MAX_TEXT} characters, no control ones, or null", value
        )
    return value


def _epoch_ms(doc: Mapping[str, Any], name: str) -> int:
    value = _field(doc, name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _invalid(name, "must be epoch milliseconds or an ISO-8601 UTC timestamp", value)
    if isinstance(value, int):
        millis = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _invalid(name, "must be an ISO-8601 timestamp", value) from None
        if parsed.utcoffset() != timedelta(0):
            raise _invalid(name, "must be in UTC (Z or +00:00)", value)
        millis = epoch_ms(parsed)
    if not _MIN_MS <= millis < _MAX_MS:
        # Also catches epoch seconds sent where milliseconds are expected.
        raise _invalid(name, "must be epoch milliseconds between 2000 and 2100", value)
    return millis
