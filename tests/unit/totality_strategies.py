"""Hypothesis strategies and profiles for the totality tests of the stream decoder and the API.

Profiles (``KESTREL_HYPOTHESIS_PROFILE``): ``totality`` (the default, 10,000 examples per
test, what `make test` runs) and ``totality-quick`` (500, for a fast local loop). The example
database is off, so runs leave no files behind; a failure prints the example and its blob.
"""

from __future__ import annotations

import json
import os
import zlib
from datetime import datetime
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kestrel.codec import encode, schema_definition
from kestrel.ports import UnknownSchemaVersion

settings.register_profile(
    "totality",
    max_examples=10_000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("totality-quick", settings.get_profile("totality"), max_examples=500)
TOTALITY = settings.get_profile(os.environ.get("KESTREL_HYPOTHESIS_PROFILE", "totality"))

TX_V1 = UUID("11111111-1111-4111-8111-111111111111")
TX_V2 = UUID("22222222-2222-4222-8222-222222222222")
LABEL_V1 = UUID("33333333-3333-4333-8333-333333333333")
CLICK_V1 = UUID("44444444-4444-4444-8444-444444444444")
UNKNOWN = UUID("99999999-9999-4999-8999-999999999999")
REGISTERED = {
    TX_V1: "transaction.v1",
    TX_V2: "transaction.v2",
    LABEL_V1: "label.v1",
    CLICK_V1: "click_event.v1",
}


class Registry:
    """SchemaLookup double: the shipped transaction, label and click schemas under fixed ids."""

    def schema_for(self, version_id: UUID) -> str:
        """The definition, or `UnknownSchemaVersion` as the Glue registry raises it."""
        if version_id not in REGISTERED:
            raise UnknownSchemaVersion(version_id)
        return schema_definition(REGISTERED[version_id])


# Strings with every code point, lone surrogates included (JSON can carry them as \ud800).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=24)
VALID_IDS = st.builds(
    str.__add__, st.sampled_from("AC0T9z"), st.text("ABCTERM-0123456789_.:", max_size=11)
)
HOSTILE_IDS = st.one_of(
    st.text("ABC-019_.:{}\n \u00e7\u0661", min_size=1, max_size=12),
    st.sampled_from(["{C-1}", "C-1}", ":C", "C-1\n", "C\u00e71", "C-\u0661", "", "C" * 129]),
    ANY_TEXT,
)
HUGE_INTS = st.integers(min_value=300, max_value=4_300).map(lambda digits: 10**digits - 1)
# Number spellings json.dumps never writes: parsers must refuse them all the same.
RAW_NUMBERS = st.sampled_from(
    ["NaN", "-NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf", "-inf", "1e400",
     "-1e400", "1e-400", "9" * 4301, "-" + "9" * 5000, "+1", ".5", "1.", "01", "0x10", "1e"]
)  # fmt: skip
AMOUNTS = st.one_of(st.integers(0, 1_000_000), st.floats(min_value=0, max_value=1_000_000))
HOSTILE_NUMBERS = st.one_of(
    st.integers(),
    HUGE_INTS,
    HUGE_INTS.map(lambda n: -n),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALID_TIMES = st.one_of(
    st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999),
    st.builds(
        lambda moment, suffix: moment.isoformat() + suffix,
        st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)),
        st.sampled_from(["Z", "+00:00"]),
    ),
)
HOSTILE_TIMES = st.one_of(
    st.builds(
        lambda moment, suffix: moment.isoformat() + suffix,
        st.datetimes(),
        st.sampled_from(["", "+05:30", "Z\n"]),
    ),
    HOSTILE_NUMBERS,
    ANY_TEXT,
)

SCALARS = st.one_of(st.none(), st.booleans(), HOSTILE_NUMBERS, ANY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=6,
)
SHALLOW = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(ANY_TEXT, SCALARS, max_size=2)
)


def _weighted(draw: st.DrawFn, *choices: tuple[int, st.SearchStrategy[Any]]) -> Any:
    """A value of one of the strategies, picked with the given weights."""
    pick = draw(st.integers(0, sum(weight for weight, _ in choices) - 1))
    for weight, strategy in choices:
        if pick < weight:
            return draw(strategy)
        pick -= weight
    raise AssertionError("unreachable")


def _field(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """Mostly (85%) a valid value, so later fields get checked too; else hostile or any JSON."""
    return st.composite(lambda draw: _weighted(draw, (17, valid), (2, hostile), (1, SHALLOW)))()


TEXTS = st.one_of(st.none(), st.text(max_size=12))
TRANSACTION_DOCS = st.fixed_dictionaries(
    {
        "transaction_id": _field(VALID_IDS, HOSTILE_IDS),
        "customer_id": _field(VALID_IDS, HOSTILE_IDS),
        "terminal_id": _field(VALID_IDS, HOSTILE_IDS),
        "amount": _field(AMOUNTS, HOSTILE_NUMBERS),
        "event_time": _field(VALID_TIMES, HOSTILE_TIMES),
    },
    optional={
        "channel": _field(TEXTS, ANY_TEXT),
        "device_id": _field(TEXTS, ANY_TEXT),
        "is_fraud": _field(st.booleans(), SCALARS),
        "label_time": _field(VALID_TIMES, HOSTILE_TIMES),
        "extra": SHALLOW,
    },
)
CLICK_TYPES = ("page_view", "product_view", "add_to_cart", "remove_from_cart", "purchase")
PRICES = st.one_of(st.none(), AMOUNTS)
CLICK_DOCS = st.fixed_dictionaries(
    {
        "event_id": _field(VALID_IDS, HOSTILE_IDS),
        "user_id": _field(VALID_IDS, HOSTILE_IDS),
        "session_id": _field(VALID_IDS, HOSTILE_IDS),
        "event_type": _field(st.sampled_from(CLICK_TYPES), ANY_TEXT),
        "event_time": _field(VALID_TIMES, HOSTILE_TIMES),
    },
    optional={
        "product_id": _field(st.one_of(st.none(), VALID_IDS), HOSTILE_IDS),
        "category": _field(st.one_of(st.none(), VALID_IDS), HOSTILE_IDS),
        "price": _field(PRICES, HOSTILE_NUMBERS),
        "extra": SHALLOW,
    },
)
BATCHES = st.lists(TRANSACTION_DOCS, max_size=3).map(lambda txs: {"transactions": txs})


@st.composite
def json_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary JSON documents as bytes: any spelling of numbers, any nesting, any text."""
    doc = _weighted(draw, (11, TRANSACTION_DOCS), (4, CLICK_DOCS), (3, BATCHES), (3, JSON_VALUES))
    raw = _weighted(draw, (4, st.none()), (1, RAW_NUMBERS))
    if raw is not None and isinstance(doc, dict):
        doc = {
            **doc,
            draw(st.sampled_from(["amount", "event_time", "label_time", "price", "x"])): "\0raw",
        }
    text = json.dumps(doc, allow_nan=True, ensure_ascii=draw(st.booleans()))
    if raw is not None:
        text = text.replace('"\\u0000raw"', raw)
    depth = draw(st.sampled_from([0] * 14 + [1, 62, 63, 64, 200, 1_100, 5_000]))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"n":', "}"), ("[", "")]))
    text = opening * depth + text + closing * depth  # nesting json.dumps could not write
    return text.encode("utf-8", "surrogatepass")


def _avro_body(draw: st.DrawFn) -> bytes:
    """A valid Avro body of a registered writer, mutated (truncated, flipped, extended)."""
    version = draw(st.sampled_from(sorted(REGISTERED, key=str)))
    name = REGISTERED[version]
    record: dict[str, Any] = {
        "transaction_id": draw(st.sampled_from(["T-1", "T:2", "{T}", ""])),
        "customer_id": draw(st.sampled_from(["C-1", "C\n", "C-\u00e7"])),
        "terminal_id": "TERM-1",
        "amount": draw(st.floats(allow_nan=True, allow_infinity=True)),
        "event_time": draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "channel": draw(st.one_of(st.none(), st.text(max_size=8), st.just("c" * 200))),
        "device_id": None,
        "is_fraud": draw(st.booleans()),
        "label_time": draw(st.integers(min_value=0, max_value=2**62)),
        "event_id": draw(st.sampled_from(["E-1", "{E}", ""])),
        "user_id": "U-1",
        "session_id": draw(st.sampled_from(["S-1", "S 1"])),
        "event_type": draw(st.sampled_from([*CLICK_TYPES, "click", ""])),
        "product_id": draw(st.sampled_from([None, "P-1", "P\n"])),
        "category": draw(st.sampled_from([None, "shoes"])),
        "price": draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))),
    }
    body = encode(record, schema_definition(name), version)[18:]
    cut = draw(st.integers(min_value=0, max_value=len(body)))
    mutation = draw(st.sampled_from(["keep", "truncate", "flip", "append"]))
    if mutation == "truncate":
        body = body[:cut]
    elif mutation == "flip" and body:
        index = min(cut, len(body) - 1)
        body = body[:index] + bytes([body[index] ^ draw(st.integers(1, 255))]) + body[index + 1 :]
    elif mutation == "append":
        body += draw(st.binary(max_size=16))
    return version.bytes + body


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary record bytes: random, JSON-like, or registry frames of any shape."""
    kind = draw(st.sampled_from(["random", "json", "frame", "frame", "frame"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return draw(json_bytes())
    if draw(st.booleans()):
        versioned = _avro_body(draw)
    else:
        version = draw(st.sampled_from([*REGISTERED, UNKNOWN]))
        versioned = version.bytes + draw(st.binary(max_size=120))
    compression = draw(st.sampled_from([0, 0, 5, 5, 1, 255]))
    version_id, body = versioned[:16], versioned[16:]
    if compression == 5:
        body = zlib.compress(body)
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=4))
    frame = bytes((3, compression)) + version_id + body
    return frame[: draw(st.sampled_from([len(frame), len(frame), 1, 17, 18]))]
