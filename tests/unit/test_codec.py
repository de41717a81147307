"""Unit tests for kestrel.codec: the schema-registry wire format and mixed-version decoding."""

from __future__ import annotations

import base64
import io
import json
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastavro import parse_schema, schemaless_reader

from kestrel.codec import (
    SHIPPED_SCHEMAS,
    AvroEncoder,
    Decoder,
    decode_frame,
    encode,
    label_decoder,
    schema_definition,
    transaction_decoder,
)
from kestrel.events import Label, PoisonReason, PoisonRecord, Transaction, parse_transaction
from kestrel.ports import UnknownSchemaVersion

REPO = Path(__file__).resolve().parents[2]
V1 = UUID("11111111-1111-4111-8111-111111111111")
V2 = UUID("22222222-2222-4222-8222-222222222222")
LABEL_V1 = UUID("33333333-3333-4333-8333-333333333333")
DECISION_V1 = UUID("44444444-4444-4444-8444-444444444444")
BAD_AMOUNT = UUID("55555555-5555-4555-8555-555555555555")
MICROS = UUID("66666666-6666-4666-8666-666666666666")
UNKNOWN = UUID("99999999-9999-4999-8999-999999999999")
TXN: dict[str, Any] = {
    "transaction_id": "T-1",
    "customer_id": "C-1",
    "terminal_id": "TERM-1",
    "amount": 12.5,
    "event_time": 1_795_857_302_123,
}
WRONG_AMOUNT_SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "Transaction",
        "namespace": "kestrel",
        "fields": [
            {"name": "transaction_id", "type": "string"},
            {"name": "customer_id", "type": "string"},
            {"name": "terminal_id", "type": "string"},
            {"name": "amount", "type": "string"},
            {"name": "event_time", "type": "long"},
        ],
    }
)


class MemoryLookup:
    """SchemaLookup double: a dict of version id -> definition; counts every call."""

    def __init__(self) -> None:
        self.definitions = {
            V1: schema_definition("transaction.v1"),
            V2: schema_definition("transaction.v2"),
            LABEL_V1: schema_definition("label.v1"),
            DECISION_V1: schema_definition("decision.v1"),
            BAD_AMOUNT: WRONG_AMOUNT_SCHEMA,
        }
        self.calls: Counter[UUID] = Counter()

    def schema_for(self, version_id: UUID) -> str:
        self.calls[version_id] += 1
        try:
            return self.definitions[version_id]
        except KeyError:
            raise UnknownSchemaVersion(version_id) from None


class BrokenLookup:
    """SchemaLookup double whose registry is unreachable."""

    def schema_for(self, version_id: UUID) -> str:
        raise ConnectionError("registry unreachable (double)")


def _v1(**changes: Any) -> bytes:
    return encode({**TXN, **changes}, schema_definition("transaction.v1"), V1)


def _v2(compress: bool = False, **changes: Any) -> bytes:
    return encode({**TXN, **changes}, schema_definition("transaction.v2"), V2, compress)


def _poison(data: bytes, decode: Any = None) -> PoisonRecord:
    decode = decode or transaction_decoder(MemoryLookup())
    with pytest.raises(PoisonRecord) as info:
        decode(data)
    return info.value


def test_schema_definition_loads_every_shipped_schema_as_package_data() -> None:
    names = {json.loads(schema_definition(name))["name"] for name in SHIPPED_SCHEMAS}
    assert names == {"Transaction", "Label", "Decision", "ClickEvent"}
    for name in SHIPPED_SCHEMAS:
        parse_schema(json.loads(schema_definition(name)))


def test_encode_writes_glue_header_and_schemaless_avro() -> None:
    frame = _v1()
    assert frame[0] == 3
    assert frame[1] == 0
    assert UUID(bytes=frame[2:18]) == V1
    writer = parse_schema(json.loads(schema_definition("transaction.v1")))
    record = schemaless_reader(io.BytesIO(frame[18:]), writer, None)
    assert isinstance(record, dict)
    assert record["transaction_id"] == "T-1"
    assert record["event_time"] == datetime(2026, 11, 28, 9, 15, 2, 123000, tzinfo=UTC)


def test_decode_frame_returns_version_id_and_payload() -> None:
    frame = _v2()
    version_id, payload = decode_frame(frame)
    assert version_id == V2
    assert payload == frame[18:]


def test_encode_with_zlib_sets_compression_byte_and_round_trips() -> None:
    frame = _v2(compress=True, channel="ecom")
    assert frame[1] == 5
    assert decode_frame(frame)[1] == zlib.decompress(frame[18:])
    assert transaction_decoder(MemoryLookup())(frame).channel == "ecom"


def test_decoder_reads_v1_and_v2_frames_mixed_into_the_v2_reader() -> None:
    frames = [
        _v1(transaction_id="T-1"),
        _v2(transaction_id="T-2", channel="pos", device_id="D-7"),
        _v1(transaction_id="T-3"),
        _v2(transaction_id="T-4"),
    ]
    decode = transaction_decoder(MemoryLookup())
    txns = [decode(frame) for frame in frames]
    assert txns[0] == Transaction("T-1", "C-1", "TERM-1", 12.5, 1_795_857_302_123)
    assert (txns[1].channel, txns[1].device_id) == ("pos", "D-7")
    assert (txns[2].channel, txns[2].device_id) == (None, None)
    assert [t.transaction_id for t in txns] == ["T-1", "T-2", "T-3", "T-4"]


def test_decoder_reads_a_timestamp_micros_writer_as_epoch_ms() -> None:
    doc = json.loads(schema_definition("transaction.v2"))
    for field in doc["fields"]:
        if field["name"] == "event_time":
            field["type"] = {"type": "long", "logicalType": "timestamp-micros"}
    lookup = MemoryLookup()
    lookup.definitions[MICROS] = json.dumps(doc)
    frame = encode({**TXN, "event_time": 1_795_857_302_123_456}, doc, MICROS)
    tx = transaction_decoder(lookup)(frame)
    assert tx == Transaction("T-1", "C-1", "TERM-1", 12.5, 1_795_857_302_123)


def test_decoder_looks_up_each_writer_version_once() -> None:
    lookup = MemoryLookup()
    decode = transaction_decoder(lookup)
    for frame in [_v1(), _v2(), _v1(), _v2(), _v1()]:
        decode(frame)
    assert lookup.calls == Counter({V1: 1, V2: 1})


def test_decoder_reports_unregistered_version_as_unknown_schema() -> None:
    frame = encode(TXN, schema_definition("transaction.v1"), UNKNOWN)
    poison = _poison(frame)
    assert poison.reason is PoisonReason.UNKNOWN_SCHEMA
    assert str(UNKNOWN) in poison.detail


def test_decoder_lets_lookup_failures_other_than_unknown_propagate() -> None:
    with pytest.raises(ConnectionError):
        transaction_decoder(BrokenLookup())(_v1())


def test_decoder_reports_label_frame_on_transaction_stream_as_schema_mismatch() -> None:
    label = {**TXN, "is_fraud": True, "label_time": 1_796_479_331_000}
    poison = _poison(encode(label, schema_definition("label.v1"), LABEL_V1))
    assert poison.reason is PoisonReason.SCHEMA_MISMATCH
    assert "kestrel.Label" in poison.detail


def test_decoder_reports_unresolvable_writer_field_as_schema_mismatch() -> None:
    frame = encode({**TXN, "amount": "12.50"}, WRONG_AMOUNT_SCHEMA, BAD_AMOUNT)
    poison = _poison(frame)
    assert poison.reason is PoisonReason.SCHEMA_MISMATCH
    assert str(BAD_AMOUNT) in poison.detail


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x03\x00\x11\x11", "shorter than the 18-byte"),
        (_v1()[:-3], "not an Avro record"),
        (_v1()[:18], "not an Avro record"),
        (_v1() + b"\x00", "1 bytes left"),
        (b"\x03\x09" + V1.bytes + b"\x00", "unknown compression byte 9"),
        (b"\x03\x05" + V1.bytes + b"not zlib", "bad zlib"),
        (_v2(compress=True)[:-4], "truncated zlib"),
    ],
    ids=["short-header", "truncated", "header-only", "trailing", "compression", "zlib", "cut-zlib"],
)
def test_decoder_reports_garbage_and_truncated_frames_as_undecodable(
    data: bytes, problem: str
) -> None:
    poison = _poison(data)
    assert poison.reason is PoisonReason.UNDECODABLE
    assert problem in poison.detail


def test_decoder_validates_avro_fields_like_json() -> None:
    poison = _poison(_v2(amount=-1.0))
    assert poison.reason is PoisonReason.INVALID_FIELD
    assert poison.detail.startswith("amount:")


def test_decoder_falls_back_to_json_for_hand_made_events() -> None:
    event = json.loads((REPO / "events" / "kinesis-transactions.json").read_text())
    decode = transaction_decoder(MemoryLookup())
    for record in event["Records"]:
        raw = base64.b64decode(record["kinesis"]["data"])
        assert decode(raw) == parse_transaction(raw)
    assert decode(json.dumps(TXN).encode()).event_time_ms == TXN["event_time"]


def test_decoder_sends_non_json_non_frame_bytes_to_the_json_reasons() -> None:
    event = json.loads((REPO / "events" / "kinesis-poison.json").read_text())
    raws = [base64.b64decode(r["kinesis"]["data"]) for r in event["Records"]]
    raw = next(r for r in raws if b"garbage" in r)
    assert _poison(raw).reason is PoisonReason.UNDECODABLE
    assert _poison(b"{not json").reason is PoisonReason.INVALID_JSON


def test_label_decoder_reads_label_frames() -> None:
    record = {**TXN, "is_fraud": True, "label_time": 1_796_479_331_000}
    del record["amount"], record["event_time"]
    frame = encode(record, schema_definition("label.v1"), LABEL_V1)
    assert label_decoder(MemoryLookup())(frame) == Label(
        "T-1", "C-1", "TERM-1", True, 1_796_479_331_000
    )


def test_decoder_decode_record_returns_decision_with_enum_and_reasons() -> None:
    decision = {
        "transaction_id": "T-1",
        "score": 0.93,
        "decision": "DECLINE",
        "model_version": "rf-7",
        "feature_set_hash": "ab12",
        "reasons": ["terminal_risk_7d", "amount"],
        "decided_at": 1_795_857_302_200,
    }
    definition = schema_definition("decision.v1")
    decoder = Decoder(MemoryLookup(), definition, dict, json.loads)
    assert decoder.decode_record(encode(decision, definition, DECISION_V1)) == decision


def test_avro_encoder_converts_iso_and_datetime_timestamps_to_millis() -> None:
    encoder = AvroEncoder(schema_definition("transaction.v2"), V2)
    as_int = encoder(TXN)
    as_iso = encoder({**TXN, "event_time": "2026-11-28T09:15:02.123Z"})
    moment = datetime(2026, 11, 28, 9, 15, 2, 123000, tzinfo=UTC)
    assert as_iso == as_int == encoder({**TXN, "event_time": moment})
    assert encoder.version_id == V2


def test_avro_encoder_ignores_extra_keys_and_rejects_missing_required_fields() -> None:
    encoder = AvroEncoder(schema_definition("transaction.v1"), V1)
    assert encoder({**TXN, "scenario": 2}) == encoder(TXN)
    with pytest.raises(ValueError, match="customer_id"):
        encoder({k: v for k, v in TXN.items() if k != "customer_id"})
    with pytest.raises(ValueError, match="UTC offset"):
        encoder({**TXN, "event_time": "2026-11-28T09:15:02"})
