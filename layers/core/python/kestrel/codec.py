"""Event encoding on the streams: the AWS Glue Schema Registry wire format around Avro.

A frame is ``[3][compression][16-byte schema version id][Avro binary]``: byte 0 is the
header version (3), byte 1 the compression (0 none, 5 zlib), bytes 2..17 the UUID of the
writer's schema version, then one record in Avro binary (schemaless). A `Decoder` reads
every registered writer version into one reader schema (Avro schema resolution), so
producers on v1 and v2 can share a stream; bytes that do not start with 3 are plain JSON
(hand-made events). Pure domain code: no boto3; the registry is reached through the
`SchemaLookup` port.
"""

from __future__ import annotations

import io
import json
import operator
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any, Generic, TypeVar
from uuid import UUID

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException
from fastavro.types import Schema as AvroSchema

from kestrel.click_events import ClickEvent, click_from_mapping, parse_click
from kestrel.events import (
    Label,
    PoisonReason,
    PoisonRecord,
    Transaction,
    epoch_ms,
    label_from_mapping,
    parse_label,
    parse_transaction,
    transaction_from_mapping,
)
from kestrel.ports import SchemaLookup

HEADER_VERSION = 3
COMPRESSION_NONE = 0
COMPRESSION_ZLIB = 5
HEADER_SIZE = 18
MAX_DECOMPRESSED = 8 * 1024 * 1024
SHIPPED_SCHEMAS = (
    "transaction.v1",
    "transaction.v2",
    "label.v1",
    "decision.v1",
    "click_event.v1",
)

Schema = str | Mapping[str, Any]
T = TypeVar("T")


def schema_definition(name: str) -> str:
    """The definition (Avro JSON text) of a shipped schema, e.g. ``transaction.v2``."""
    return files("kestrel").joinpath("schemas", f"{name}.avsc").read_text(encoding="utf-8")


def parse(schema: Schema) -> AvroSchema:
    """Parse an Avro schema given as JSON text or a mapping (raises on an invalid schema)."""
    doc = json.loads(schema) if isinstance(schema, str) else dict(schema)
    return parse_schema(doc)


def _millis_as_long(node: Any) -> Any:
    """`node` with every ``timestamp-millis`` read as its plain long (epoch ms, no datetime)."""
    if isinstance(node, dict):
        if node.get("logicalType") == "timestamp-millis" and node.get("type") == "long":
            return "long"
        return {k: _millis_as_long(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_millis_as_long(v) for v in node]
    return node


def parse_for_reading(schema: Schema) -> AvroSchema:
    """`parse`, with timestamps read as epoch ms: a decoder never builds a datetime."""
    doc = json.loads(schema) if isinstance(schema, str) else dict(schema)
    return parse_schema(_millis_as_long(doc))


def encode(
    record: Mapping[str, Any], writer_schema: Schema, version_id: UUID, compress: bool = False
) -> bytes:
    """Encode one record as a schema-registry frame of `writer_schema` version `version_id`."""
    return AvroEncoder(writer_schema, version_id, compress)(record)


def decode_frame(data: bytes) -> tuple[UUID, bytes]:
    """Split a frame into its schema version id and its (decompressed) Avro payload."""
    version_id, payload = _split_frame(data)
    return UUID(bytes=version_id), payload


def _split_frame(data: bytes) -> tuple[bytes, bytes]:
    """`decode_frame` with the version id left as its 16 bytes (a UUID costs ~1 µs to build)."""
    if len(data) < HEADER_SIZE:
        raise PoisonRecord(
            PoisonReason.UNDECODABLE,
            f"data: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte registry header",
        )
    if data[0] != HEADER_VERSION:
        raise PoisonRecord(
            PoisonReason.UNDECODABLE, f"data: header version {data[0]} is not {HEADER_VERSION}"
        )
    version_id = bytes(data[2:HEADER_SIZE])
    body = bytes(data[HEADER_SIZE:])
    if data[1] == COMPRESSION_NONE:
        return version_id, body
    if data[1] == COMPRESSION_ZLIB:
        return version_id, _inflate(body)
    raise PoisonRecord(
        PoisonReason.UNDECODABLE, f"data: unknown compression byte {data[1]} (0 or 5 expected)"
    )


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, MAX_DECOMPRESSED)
    except zlib.error as exc:
        raise PoisonRecord(PoisonReason.UNDECODABLE, f"data: bad zlib payload ({exc})") from None
    if inflater.unconsumed_tail:
        raise PoisonRecord(
            PoisonReason.UNDECODABLE, f"data: inflates to more than {MAX_DECOMPRESSED} bytes"
        )
    if not inflater.eof:
        raise PoisonRecord(PoisonReason.UNDECODABLE, "data: truncated zlib payload")
    if inflater.unused_data:
        raise PoisonRecord(
            PoisonReason.UNDECODABLE,
            f"data: {len(inflater.unused_data)} bytes left after the zlib payload",
        )
    return out


def _millis(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"timestamp {value.isoformat()} has no UTC offset")
        return epoch_ms(value)
    if hasattr(value, "__index__") and not isinstance(value, bool):
        return operator.index(value)  # e.g. numpy.int64 from a simulator frame
    return value


def _fields(schema: AvroSchema) -> tuple[tuple[str, bool], ...]:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError("the writer schema must be an Avro record")
    return tuple(
        (
            str(field["name"]),
            isinstance(field["type"], dict)
            and field["type"].get("logicalType") == "timestamp-millis",
        )
        for field in schema["fields"]
    )


class AvroEncoder:
    """Encodes plain dicts as frames of one registered writer schema version (producer side).

    Only the schema's fields are taken from a record (others, such as simulator columns,
    are ignored); a missing field without a default raises `ValueError`. Timestamp-millis
    fields accept epoch milliseconds (any integer, numpy's too), an aware `datetime` or an
    ISO-8601 string with an offset.
    """

    def __init__(self, writer_schema: Schema, version_id: UUID, compress: bool = False) -> None:
        self._schema = parse(writer_schema)
        self._compress = compress
        compression = COMPRESSION_ZLIB if compress else COMPRESSION_NONE
        self._header = bytes((HEADER_VERSION, compression)) + version_id.bytes
        self._fields = _fields(self._schema)
        self.version_id = version_id

    def __call__(self, record: Mapping[str, Any]) -> bytes:
        """Encode one record as a frame."""
        values = {
            name: _millis(record[name]) if is_time else record[name]
            for name, is_time in self._fields
            if name in record
        }
        buffer = io.BytesIO()
        schemaless_writer(buffer, self._schema, values, strict_allow_default=True)
        body = buffer.getvalue()
        return self._header + (zlib.compress(body) if self._compress else body)


class Decoder(Generic[T]):
    """Decodes frames of any registered writer version (or plain JSON) into a domain event.

    Writer schemas are fetched through the `SchemaLookup` port once per version id and
    cached. Failures raise `PoisonRecord`: ``unknown_schema`` (version id not registered),
    ``schema_mismatch`` (the writer schema cannot be read as the reader schema),
    ``undecodable`` (bad header, bad compression, truncated or trailing Avro or zlib bytes),
    or the domain's field and JSON reasons; errors of the lookup other than `KeyError`
    propagate. Any bytes give an event or a `PoisonRecord`: an uncompressed frame is checked
    against its writer schema only once that version is found, so a truncated frame of an
    unregistered version is ``unknown_schema``.
    """

    def __init__(
        self,
        lookup: SchemaLookup,
        reader_schema: Schema,
        build: Callable[[Mapping[str, Any]], T],
        parse_json: Callable[[bytes], T],
    ) -> None:
        self._lookup = lookup
        self._reader = parse_for_reading(reader_schema)
        self._reader_name = _record_name(self._reader)
        self._reader_datetimes = _reads_datetimes(self._reader)
        self._build = build
        self._parse_json = parse_json
        # By the frame's 16 version-id bytes: a writer, or a cached mismatch's detail.
        self._writers: dict[bytes, _Writer | str] = {}

    def __call__(self, data: bytes) -> T:
        """Decode one record's bytes into the domain event, or raise `PoisonRecord`."""
        if data[:1] != b"\x03":
            return self._parse_json(data)
        return self._build(self.decode_record(data))

    def decode_record(self, data: bytes) -> dict[str, Any]:
        """Decode one frame into a dict of the reader schema (timestamps as epoch ms)."""
        version_id, payload = _split_frame(data)
        writer = self._writers.get(version_id)
        if not isinstance(writer, _Writer):
            writer = self._writer(version_id)
        buffer = io.BytesIO(payload)
        try:
            record = schemaless_reader(buffer, writer.schema, writer.reader)
        except SchemaResolutionError as exc:
            raise PoisonRecord(
                PoisonReason.SCHEMA_MISMATCH,
                f"data: schema version {UUID(bytes=version_id)} cannot be read as "
                f"{self._reader_name} ({_short(exc)})",
            ) from None
        except Exception as exc:  # noqa: BLE001 - any reader error: not a record of the writer
            raise PoisonRecord(
                PoisonReason.UNDECODABLE,
                f"data: not an Avro record of schema version {UUID(bytes=version_id)} "
                f"({type(exc).__name__}: {_short(exc)})",
            ) from None
        trailing = len(payload) - buffer.tell()
        if trailing:
            raise PoisonRecord(
                PoisonReason.UNDECODABLE,
                f"data: {trailing} bytes left after the Avro record of version "
                f"{UUID(bytes=version_id)}",
            )
        if not isinstance(record, dict):
            raise PoisonRecord(PoisonReason.SCHEMA_MISMATCH, "data: reader schema is not a record")
        if writer.datetimes:
            return {k: epoch_ms(v) if isinstance(v, datetime) else v for k, v in record.items()}
        return record

    def _writer(self, version_id: bytes) -> _Writer:
        writer = self._writers.get(version_id)
        if writer is None:
            writer = self._resolve(UUID(bytes=version_id))
            self._writers[version_id] = writer
        if isinstance(writer, str):  # a cached mismatch: the detail to report
            raise PoisonRecord(PoisonReason.SCHEMA_MISMATCH, writer)
        return writer

    def _resolve(self, version_id: UUID) -> _Writer | str:
        try:
            definition = self._lookup.schema_for(version_id)
        except KeyError:
            raise PoisonRecord(
                PoisonReason.UNKNOWN_SCHEMA,
                f"data: schema version {version_id} is not registered",
            ) from None
        try:
            writer = parse_for_reading(definition)
        except (ValueError, SchemaParseException) as exc:
            return f"data: schema version {version_id} is not a valid Avro schema ({_short(exc)})"
        name = _record_name(writer)
        if name != self._reader_name:
            return f"data: schema version {version_id} writes {name}, not {self._reader_name}"
        # The reader's own schema needs no resolution: fastavro would compare the two schemas
        # on every record to find that out.
        reader = None if writer == self._reader else self._reader
        datetimes = self._reader_datetimes or _reads_datetimes(writer)
        return _Writer(writer, reader, datetimes)


@dataclass(frozen=True, slots=True)
class _Writer:
    """A registered writer version as `Decoder` reads it."""

    schema: AvroSchema
    reader: AvroSchema | None  # None: the writer's schema is the reader's, nothing to resolve
    datetimes: bool  # a field may be read as a datetime, to turn into epoch ms


def _reads_datetimes(node: Any) -> bool:
    """True when a parsed schema has a logical type (fastavro may read it as a datetime)."""
    if isinstance(node, dict):
        return "logicalType" in node or any(
            _reads_datetimes(v) for k, v in node.items() if not str(k).startswith("__")
        )
    if isinstance(node, list):
        return any(_reads_datetimes(v) for v in node)
    return False


def _record_name(schema: AvroSchema) -> str:
    if isinstance(schema, dict) and schema.get("type") == "record":
        return str(schema["name"])
    return json.dumps(schema)[:60]


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def transaction_decoder(lookup: SchemaLookup) -> Decoder[Transaction]:
    """A decoder of transactions: any registered version read as ``transaction.v2``."""
    return Decoder(
        lookup, schema_definition("transaction.v2"), transaction_from_mapping, parse_transaction
    )


def label_decoder(lookup: SchemaLookup) -> Decoder[Label]:
    """A decoder of fraud labels: any registered version read as ``label.v1``."""
    return Decoder(lookup, schema_definition("label.v1"), label_from_mapping, parse_label)


def click_decoder(lookup: SchemaLookup) -> Decoder[ClickEvent]:
    """A decoder of clickstream events: any registered version read as ``click_event.v1``."""
    return Decoder(lookup, schema_definition("click_event.v1"), click_from_mapping, parse_click)
