"""Backward compatibility of Avro schemas, proven by resolving data rather than by rules.

A new schema is backward compatible with an old one when every record written with the
old schema can be read with the new one. `check_backward` generates sample records that
exercise every field, every union branch and every enum symbol of each old schema, writes
them with the old schema and reads them with the new one (fastavro schema resolution).
When that fails it finds the field responsible by applying the new schema's changes one
field at a time to the old schema, so each problem names the field. Pure domain code.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException
from fastavro.types import Schema as AvroSchema

Schema = str | Mapping[str, Any]

_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "null": lambda k: None,
    "boolean": lambda k: k % 2 == 1,
    "int": lambda k: k * 7 - 3,
    "long": lambda k: 1_700_000_000_000 + k,
    "float": lambda k: k + 0.5,
    "double": lambda k: k + 0.25,
    "bytes": lambda k: bytes([k % 256]) * (k % 3 + 1),
    "string": lambda k: f"s{k}",
}
_MAX_DEPTH = 6


class SchemaIncompatible(ValueError):
    """A new schema version is refused: it cannot read data written with an older version."""

    def __init__(self, schema_name: str, problems: Sequence[str]) -> None:
        super().__init__(f"schema {schema_name} is not backward compatible: " + "; ".join(problems))
        self.schema_name = schema_name
        self.problems = tuple(problems)


def check_backward(new_schema: Schema, old_schemas: Sequence[Schema]) -> list[str]:
    """Problems that stop `new_schema` reading data written with any of `old_schemas`."""
    new_doc = _document(new_schema)
    problems = _parse_problems("new schema", new_doc)
    if problems:
        return problems
    for number, old_schema in enumerate(old_schemas, start=1):
        old_doc = _document(old_schema)
        old_problems = _parse_problems(f"old version {number}", old_doc)
        if old_problems:
            problems.extend(old_problems)
            continue
        failure = _resolve(old_doc, new_doc)
        if failure is None:
            continue
        found = list(_culprits(old_doc, new_doc, old_doc, [], ""))
        found = found or [f"{_name(new_doc)}: {failure}"]
        problems.extend(f"against version {number}: {problem}" for problem in found)
    return problems


def _document(schema: Schema) -> Any:
    return json.loads(schema) if isinstance(schema, str) else copy.deepcopy(dict(schema))


def _parse_problems(label: str, doc: Any) -> list[str]:
    try:
        parse_schema(copy.deepcopy(doc))
    except (ValueError, SchemaParseException) as exc:
        return [f"{label} is not a valid Avro schema: {_short(exc)}"]
    return []


def _resolve(old_doc: Any, new_doc: Any) -> str | None:
    """None when every sample written with `old_doc` reads with `new_doc`, else the error."""
    try:
        writer = parse_schema(copy.deepcopy(old_doc))
        reader = parse_schema(copy.deepcopy(new_doc))
    except (ValueError, SchemaParseException) as exc:
        return _short(exc)
    for sample in samples(writer):
        buffer = io.BytesIO()
        schemaless_writer(buffer, writer, sample)
        buffer.seek(0)
        try:
            schemaless_reader(buffer, writer, reader)
        except SchemaResolutionError as exc:
            return _short(exc)
        except (EOFError, IndexError, ValueError, TypeError) as exc:
            return f"{type(exc).__name__}: {_short(exc)}"
    return None


def _culprits(
    old_doc: Any, new_node: Mapping[str, Any], old_node: Mapping[str, Any], at: list[int], path: str
) -> Iterator[str]:
    """Problems per field: each field of `new_node` applied alone to the old schema."""
    old_name, new_name = _fullname(old_node, old_doc), _fullname(new_node, old_doc)
    aliases = {_qualify(a, new_name) for a in new_node.get("aliases", ())}
    if old_name != new_name and old_name not in aliases:
        yield f"record {path or old_name}: renamed from {old_name} to {new_name} without an alias"
    old_fields = {f["name"]: (i, f) for i, f in enumerate(old_node.get("fields", ()))}
    for new_field in new_node.get("fields", ()):
        name = new_field["name"]
        label = f"{path}.{name}" if path else name
        match = next(
            (old_fields[n] for n in (name, *new_field.get("aliases", ())) if n in old_fields),
            None,
        )
        candidate = copy.deepcopy(old_doc)
        fields = _node(candidate, at)["fields"]
        if match is None:
            fields.append(copy.deepcopy(new_field))
            failure = _resolve(old_doc, candidate)
            if failure is not None:
                yield (
                    f"field '{label}': added without a default, so records written with the "
                    f"old schema have no value for it ({failure})"
                )
            continue
        index, old_field = match
        old_type, new_type = old_field["type"], new_field["type"]
        if _is_record(old_type) and _is_record(new_type):
            yield from _culprits(old_doc, new_type, old_type, [*at, index], label)
            continue
        fields[index] = {**copy.deepcopy(new_field), "name": old_field["name"]}
        failure = _resolve(old_doc, candidate)
        if failure is not None:
            yield (
                f"field '{label}': cannot read {_describe(old_type)} written by the old "
                f"schema as {_describe(new_type)} ({failure})"
            )


def _node(doc: Any, at: list[int]) -> dict[str, Any]:
    node: dict[str, Any] = doc
    for index in at:
        node = node["fields"][index]["type"]
    return node


def _is_record(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "record"


def _fullname(node: Mapping[str, Any], root: Any) -> str:
    name = str(node.get("name", ""))
    namespace = node.get("namespace", root.get("namespace", "") if isinstance(root, dict) else "")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _qualify(alias: str, fullname: str) -> str:
    namespace = fullname.rpartition(".")[0]
    return alias if "." in alias or not namespace else f"{namespace}.{alias}"


def _name(doc: Any) -> str:
    return _fullname(doc, doc) if isinstance(doc, dict) else "schema"


def _describe(schema: Any) -> str:
    text = json.dumps(schema, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def samples(schema: AvroSchema) -> list[Any]:
    """Sample records of a parsed schema covering every union branch and enum symbol."""
    named = dict(schema.get("__named_schemas", {})) if isinstance(schema, dict) else {}
    count = max(2, _widest(schema, named, set()))
    return [_sample(schema, k, named, 0) for k in range(count)]


def _widest(schema: Any, named: Mapping[str, Any], seen: set[str]) -> int:
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            return _widest(named[schema], named, seen | {schema})
        return 1
    if isinstance(schema, list):
        return max([len(schema), *(_widest(branch, named, seen) for branch in schema)])
    kind = schema.get("type")
    name = schema.get("name")
    seen = seen | {name} if isinstance(name, str) else seen
    if kind == "record":
        return max([1, *(_widest(f["type"], named, seen) for f in schema["fields"])])
    if kind == "enum":
        return len(schema["symbols"])
    if kind == "array":
        return _widest(schema["items"], named, seen)
    if kind == "map":
        return _widest(schema["values"], named, seen)
    return 1 if kind == "fixed" else _widest(kind, named, seen)


def _sample(schema: Any, k: int, named: Mapping[str, Any], depth: int) -> Any:
    if isinstance(schema, str):
        if schema in _PRIMITIVE_SAMPLES:
            return _PRIMITIVE_SAMPLES[schema](k)
        return _sample(named[schema], k, named, depth + 1)
    if isinstance(schema, list):
        branches = schema
        if depth >= _MAX_DEPTH and "null" in branches:
            return None
        return _sample(branches[k % len(branches)], k, named, depth + 1)
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "decimal":
        return Decimal(k).scaleb(-int(schema.get("scale", 0)))
    if logical == "uuid":
        return str(UUID(int=k))
    if kind == "record":
        return {f["name"]: _sample(f["type"], k, named, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][k % len(schema["symbols"])]
    if kind == "array":
        size = 0 if depth >= _MAX_DEPTH else k % 3 + 1
        return [_sample(schema["items"], k + i, named, depth + 1) for i in range(size)]
    if kind == "map":
        size = 0 if depth >= _MAX_DEPTH else k % 3 + 1
        return {f"k{i}": _sample(schema["values"], k + i, named, depth + 1) for i in range(size)}
    if kind == "fixed":
        return bytes([k % 256]) * int(schema["size"])
    return _sample(kind, k, named, depth)
