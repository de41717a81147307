"""The hostile corpus (events/kinesis-hostile.json) on the decoder and the API, and edge cases.

Every corpus record must be poison with the reason tools/hostile_corpus.py gives it, and
the same bytes sent to /v1/score must get a 400 naming the same field (``body`` for the
record as a whole). Network-free: an in-memory registry and Chalice's test client.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_doubles import Api, serve_api, transaction
from totality_strategies import TX_V1, TX_V2, Registry

from kestrel.adapters.redis_scripts import customer_keys, decision_key, terminal_keys
from kestrel.codec import encode, schema_definition, transaction_decoder
from kestrel.events import (
    MAX_JSON_DEPTH,
    PoisonReason,
    PoisonRecord,
    Transaction,
    decode_base64,
    parse_transaction,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import hostile_corpus  # noqa: E402

DECODE = transaction_decoder(Registry())
EVENT = json.loads((REPO / "events" / "kinesis-hostile.json").read_text())
EXPECTED = hostile_corpus.expected()
TXN = {
    "transaction_id": "T-1",
    "customer_id": "C-1",
    "terminal_id": "TERM-1",
    "amount": 12.5,
    "event_time": 1_795_857_302_123,
}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


def _poison(data: bytes) -> PoisonRecord:
    with pytest.raises(PoisonRecord) as caught:
        DECODE(data)
    return caught.value


def test_hostile_event_file_is_what_the_generator_writes() -> None:
    assert (REPO / "events" / "kinesis-hostile.json").read_text() == hostile_corpus.render()
    assert len(EVENT["Records"]) == len(EXPECTED) == len(hostile_corpus.CASES) + 2


def test_hostile_corpus_holds_a_record_at_the_stream_limit() -> None:
    record = next(r for r in EVENT["Records"] if r["kinesis"]["partitionKey"].startswith("at-"))
    data = base64.b64decode(record["kinesis"]["data"])
    assert len(data) + len(record["kinesis"]["partitionKey"].encode()) == 1024 * 1024


@pytest.mark.parametrize(
    "record", EVENT["Records"], ids=[r["kinesis"]["partitionKey"] for r in EVENT["Records"]]
)
def test_every_hostile_record_is_poison_with_its_reason_and_field(record: dict[str, Any]) -> None:
    reason, field = EXPECTED[record["kinesis"]["sequenceNumber"]]
    with pytest.raises(PoisonRecord) as caught:
        DECODE(decode_base64(record["kinesis"]["data"]))
    assert caught.value.reason.value == reason, caught.value.detail
    assert caught.value.detail.startswith(f"{field}: "), caught.value.detail


@pytest.mark.parametrize(
    "case",
    [c for c in hostile_corpus.CASES if c.event_data is None],
    ids=lambda case: case.name,
)
def test_api_answers_400_naming_the_field_for_every_hostile_record(
    api: Api, case: hostile_corpus.Case
) -> None:
    response = api.post("/v1/score", case.data)

    assert response.status_code == 400, response.body[:300]
    body = response.json_body
    assert body["error"] == "validation_error"
    assert body["field"] == ("body" if case.field == "data" else case.field)
    assert body["problem"]


def test_api_batch_names_the_item_of_a_hostile_transaction(api: Api) -> None:
    body = b'{"transactions": [' + json.dumps(transaction()).encode() + b","
    body += json.dumps(transaction()).replace('"amount": 57.19', '"amount": ' + "9" * 400).encode()
    response = api.post("/v1/score/batch", body + b"]}")

    assert response.status_code == 400
    assert response.json_body["field"] == "transactions[1].amount"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_json_nested_up_to_the_limit_is_parsed(depth: int) -> None:
    extra: Any = 1
    for _ in range(depth - 1):  # the transaction object itself is one level
        extra = [extra]
    tx = parse_transaction(json.dumps({**TXN, "extra": extra}).encode())
    assert tx.transaction_id == "T-1"


def test_json_nested_one_level_past_the_limit_is_invalid_json() -> None:
    extra: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        extra = [extra]
    poison = _poison(json.dumps({**TXN, "extra": extra}).encode())
    assert (poison.reason, poison.detail) == (
        PoisonReason.INVALID_JSON,
        f"data: nested more than {MAX_JSON_DEPTH} levels deep",
    )


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    tx = parse_transaction(json.dumps({**TXN, "note": "[{" * 10_000 + '\\"]'}).encode())
    assert tx.amount == 12.5


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**4000])
def test_huge_integer_amounts_are_invalid_fields_not_overflows(value: int) -> None:
    poison = _poison(json.dumps({**TXN, "amount": value}).encode())
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith("amount: ")
    assert "digits" in poison.detail


def test_integer_amount_at_the_limit_is_valid() -> None:
    assert parse_transaction(json.dumps({**TXN, "amount": 1_000_000}).encode()).amount == 1e6


@pytest.mark.parametrize("customer_id", ["C:1", "a:b:c", "C-1.x_y", "9", "C" * 128])
def test_ids_with_colons_are_valid_and_keep_their_own_hash_tag(customer_id: str) -> None:
    tx = parse_transaction(json.dumps({**TXN, "customer_id": customer_id}).encode())

    def tag(key: str) -> str:  # Redis Cluster: between the first { and the next }
        start = key.index("{")
        return key[start + 1 : key.index("}", start)]

    assert tx.customer_id == customer_id
    assert [tag(k) for k in customer_keys(customer_id)] == [f"c:{customer_id}"]
    assert {tag(k) for k in terminal_keys(customer_id)} == {f"t:{customer_id}"}
    assert tag(decision_key(customer_id)) == f"d:{customer_id}"


@pytest.mark.parametrize(
    "amount",
    [float("nan"), float("inf"), float("-inf"), struct.unpack("<d", b"\x01\0\0\0\0\0\xf0\x7f")[0]],
    ids=["nan", "inf", "-inf", "signalling-nan"],
)
def test_avro_nan_and_infinity_amounts_are_invalid_fields(amount: float) -> None:
    frame = encode({**TXN, "amount": amount}, schema_definition("transaction.v2"), TX_V2)
    poison = _poison(frame)
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith("amount: must be a finite number")


@pytest.mark.parametrize("cut", [1, 5, 9, 12])
def test_truncated_avro_of_a_registered_version_is_undecodable(cut: int) -> None:
    frame = encode(TXN, schema_definition("transaction.v1"), TX_V1)
    poison = _poison(frame[:-cut])
    assert poison.reason is PoisonReason.UNDECODABLE
    assert "not an Avro record" in poison.detail


def test_zlib_frame_with_bytes_after_the_stream_is_undecodable() -> None:
    frame = encode(TXN, schema_definition("transaction.v2"), TX_V2, compress=True)
    assert isinstance(DECODE(frame), Transaction)
    poison = _poison(frame + b"\0")
    assert poison.detail == "data: 1 bytes left after the zlib payload"


def test_avro_string_length_past_the_end_is_undecodable() -> None:
    header = bytes((3, 0)) + TX_V2.bytes
    poison = _poison(header + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + b"T-1")
    assert poison.reason is PoisonReason.UNDECODABLE


@pytest.mark.parametrize("text", ["\ud800", "\udfff", "web\x00", "web\n", "\x7f", "\x9f"])
def test_channel_with_a_control_character_or_lone_surrogate_is_an_invalid_field(
    text: str,
) -> None:
    poison = _poison(json.dumps({**TXN, "channel": text}).encode())
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith("channel: ")


def test_channel_may_hold_any_other_unicode() -> None:
    text = "caf\u00e9 \u2028\u200b\U0001f4b3"
    assert parse_transaction(json.dumps({**TXN, "channel": text}).encode()).channel == text


def test_zlib_bomb_is_refused_before_it_is_inflated_whole() -> None:
    frame = bytes((3, 5)) + TX_V2.bytes + zlib.compress(b"\0" * (64 << 20))
    assert _poison(frame).detail == "data: inflates to more than 8388608 bytes"
