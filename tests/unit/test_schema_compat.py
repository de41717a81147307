"""Unit tests for kestrel.schema_compat: backward compatibility proven by resolving data."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastavro import parse_schema

from kestrel.codec import SHIPPED_SCHEMAS, schema_definition
from kestrel.schema_compat import SchemaIncompatible, check_backward, samples


def _schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(schema_definition(name))
    return doc


def _field(doc: dict[str, Any], name: str) -> dict[str, Any]:
    field: dict[str, Any] = next(f for f in doc["fields"] if f["name"] == name)
    return field


def _record(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields), **extra}


def test_check_backward_accepts_v2_adding_optional_fields_to_v1() -> None:
    assert check_backward(schema_definition("transaction.v2"), [_schema("transaction.v1")]) == []


@pytest.mark.parametrize("name", SHIPPED_SCHEMAS)
def test_check_backward_accepts_each_shipped_schema_against_itself(name: str) -> None:
    assert check_backward(schema_definition(name), [schema_definition(name)]) == []


def test_check_backward_refuses_new_required_field_naming_it() -> None:
    v3 = _schema("transaction.v2")
    v3["fields"].append({"name": "merchant_id", "type": "string"})
    problems = check_backward(v3, [_schema("transaction.v1"), _schema("transaction.v2")])
    assert len(problems) == 2
    assert all("field 'merchant_id'" in p and "without a default" in p for p in problems)


def test_check_backward_refuses_string_to_int_change_naming_the_field() -> None:
    v3 = _schema("transaction.v2")
    _field(v3, "customer_id")["type"] = "int"
    problems = check_backward(v3, [_schema("transaction.v2")])
    assert len(problems) == 1
    assert "field 'customer_id'" in problems[0]
    assert "string" in problems[0] and "int" in problems[0]


def test_check_backward_refuses_removing_a_used_enum_symbol() -> None:
    decision = _schema("decision.v1")
    _field(decision, "decision")["type"]["symbols"] = ["APPROVE", "DECLINE"]
    problems = check_backward(decision, [_schema("decision.v1")])
    assert len(problems) == 1
    assert "field 'decision'" in problems[0]
    assert "REVIEW" in problems[0]


def test_check_backward_accepts_added_symbol_removed_field_and_promotion() -> None:
    old = _record(
        "R",
        {"name": "n", "type": "int"},
        {"name": "gone", "type": "string"},
        {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
    )
    new = _record(
        "R",
        {"name": "n", "type": "long"},
        {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B", "C"]}},
    )
    assert check_backward(new, [old]) == []
    assert check_backward(old, [new]) != []


def test_check_backward_names_the_path_of_a_nested_field() -> None:
    inner = {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}
    old = _record("Outer", {"name": "inner", "type": inner})
    new = copy.deepcopy(old)
    new["fields"][0]["type"]["fields"][0]["type"] = "string"
    problems = check_backward(new, [old])
    assert len(problems) == 1
    assert "field 'inner.x'" in problems[0]


def test_check_backward_refuses_a_union_losing_a_branch_old_data_uses() -> None:
    old = _record("R", {"name": "c", "type": ["null", "string"], "default": None})
    new = _record("R", {"name": "c", "type": "string"})
    problems = check_backward(new, [old])
    assert len(problems) == 1
    assert "field 'c'" in problems[0]


def test_check_backward_refuses_record_rename_unless_aliased() -> None:
    old = _record("Txn", {"name": "a", "type": "string"})
    renamed = _record("Payment", {"name": "a", "type": "string"})
    problems = check_backward(renamed, [old])
    assert len(problems) == 1
    assert "renamed from t.Txn to t.Payment" in problems[0]
    assert check_backward({**renamed, "aliases": ["Txn"]}, [old]) == []


def test_check_backward_checks_every_old_version() -> None:
    first = _record("R", {"name": "x", "type": "int"})
    second = _record(
        "R", {"name": "x", "type": "int"}, {"name": "y", "type": "string", "default": ""}
    )
    new = _record("R", {"name": "x", "type": "int"}, {"name": "y", "type": "string"})
    problems = check_backward(new, [first, second])
    assert len(problems) == 1
    assert problems[0].startswith("against version 1: field 'y'")


def test_check_backward_reports_an_invalid_new_schema() -> None:
    problems = check_backward(
        '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}', []
    )
    assert len(problems) == 1
    assert problems[0].startswith("new schema is not a valid Avro schema")


def test_samples_cover_every_enum_symbol_and_union_branch() -> None:
    schema = parse_schema(
        _record(
            "R",
            {"name": "u", "type": ["null", "int", "string"]},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C", "D"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
        )
    )
    records = samples(schema)
    assert {r["e"] for r in records} == {"A", "B", "C", "D"}
    assert {type(r["u"]) for r in records} == {type(None), int, str}
    assert all(r["tags"] for r in records)


def test_schema_incompatible_names_schema_and_problems() -> None:
    error = SchemaIncompatible("kestrel.Transaction", ["field 'x': bad", "field 'y': bad"])
    assert str(error) == (
        "schema kestrel.Transaction is not backward compatible: field 'x': bad; field 'y': bad"
    )
    assert error.problems == ("field 'x': bad", "field 'y': bad")
