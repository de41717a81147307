"""The Glue schema registry adapter on the embedded emulator: register, refuse, look up, decode."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, cast
from uuid import UUID

import boto3
import pytest
from botocore.exceptions import ClientError

from kestrel.adapters.glue_registry import (
    GlueSchemaApi,
    GlueSchemaRegistry,
    SchemaIncompatible,
    register_all,
)
from kestrel.codec import encode, schema_definition, transaction_decoder
from kestrel.events import PoisonReason, PoisonRecord
from kestrel.ports import UnknownSchemaVersion

pytestmark = pytest.mark.integration
TXN: dict[str, Any] = {
    "transaction_id": "T-1",
    "customer_id": "C-1",
    "terminal_id": "TERM-1",
    "amount": 12.5,
    "event_time": 1_795_857_302_123,
}


class RecordingGlue:
    """Wraps a Glue client and records the name of every operation called through it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.client, name)


@pytest.fixture(scope="module")
def glue(emulator_endpoint: str) -> GlueSchemaApi:
    """A boto3 Glue client on the session's emulator (typed as the adapter's port)."""
    client = boto3.client(
        "glue",
        endpoint_url=emulator_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    return cast(GlueSchemaApi, client)


@pytest.fixture(scope="module")
def registered(glue: GlueSchemaApi) -> Iterator[tuple[str, dict[str, UUID]]]:
    """A fresh registry with every shipped schema registered: (registry name, version ids)."""
    name = f"kestrel-test-{uuid.uuid4().hex[:8]}"
    ids = register_all(GlueSchemaRegistry(glue, name))
    yield name, ids
    raw: Any = glue  # the full boto3 client; the port only lists what the adapter calls
    for schema in ("kestrel.Transaction", "kestrel.Label", "kestrel.Decision"):
        raw.delete_schema(SchemaId={"RegistryName": name, "SchemaName": schema})
    raw.delete_registry(RegistryId={"RegistryName": name})


def _schema(glue: GlueSchemaApi, registry: str, name: str) -> Any:
    return glue.get_schema(SchemaId={"RegistryName": registry, "SchemaName": name})


def test_register_all_creates_backward_schemas_in_a_fresh_registry(
    glue: GlueSchemaApi, registered: tuple[str, dict[str, UUID]]
) -> None:
    registry, ids = registered
    assert list(ids) == [
        "transaction.v1",
        "transaction.v2",
        "label.v1",
        "decision.v1",
        "click_event.v1",
    ]
    assert len(set(ids.values())) == 5
    txn = _schema(glue, registry, "kestrel.Transaction")
    assert txn["Compatibility"] == "BACKWARD"
    assert txn["DataFormat"] == "AVRO"
    assert txn["LatestSchemaVersion"] == 2
    versions = GlueSchemaRegistry(glue, registry).versions("kestrel.Transaction")
    assert versions is not None
    assert [(v.number, v.version_id) for v in versions] == [
        (1, ids["transaction.v1"]),
        (2, ids["transaction.v2"]),
    ]
    click = _schema(glue, registry, "kestrel.ClickEvent")
    assert click["Compatibility"] == "BACKWARD"
    assert click["LatestSchemaVersion"] == 1


def test_register_all_again_returns_the_same_ids_and_adds_no_version(
    glue: GlueSchemaApi, registered: tuple[str, dict[str, UUID]]
) -> None:
    registry, ids = registered
    recording = RecordingGlue(glue)
    assert register_all(GlueSchemaRegistry(recording, registry)) == ids
    assert not {"create_schema", "register_schema_version"} & set(recording.calls)
    assert _schema(glue, registry, "kestrel.Transaction")["LatestSchemaVersion"] == 2
    assert _schema(glue, registry, "kestrel.Decision")["LatestSchemaVersion"] == 1


def test_register_refuses_an_incompatible_v3_and_stores_nothing(
    glue: GlueSchemaApi, registered: tuple[str, dict[str, UUID]]
) -> None:
    registry_name, _ = registered
    registry = GlueSchemaRegistry(glue, registry_name)
    v3 = json.loads(schema_definition("transaction.v2"))
    v3["fields"].append({"name": "merchant_id", "type": "string"})
    with pytest.raises(SchemaIncompatible) as info:
        registry.register("kestrel.Transaction", json.dumps(v3))
    assert info.value.schema_name == "kestrel.Transaction"
    assert any("field 'merchant_id'" in p for p in info.value.problems)
    assert _schema(glue, registry_name, "kestrel.Transaction")["LatestSchemaVersion"] == 2
    raw: Any = glue
    with pytest.raises(ClientError, match="EntityNotFoundException"):
        raw.get_schema_by_definition(
            SchemaId={"RegistryName": registry_name, "SchemaName": "kestrel.Transaction"},
            SchemaDefinition=json.dumps(v3),
        )


def test_adapter_lookup_decodes_frames_written_with_v1_and_v2(
    glue: GlueSchemaApi, registered: tuple[str, dict[str, UUID]]
) -> None:
    registry_name, ids = registered
    v1, v2 = ids["transaction.v1"], ids["transaction.v2"]
    frames = [
        encode({**TXN, "transaction_id": "T-1"}, schema_definition("transaction.v1"), v1),
        encode(
            {**TXN, "transaction_id": "T-2", "channel": "pos"},
            schema_definition("transaction.v2"),
            v2,
            True,
        ),
    ]
    decode = transaction_decoder(GlueSchemaRegistry(glue, registry_name))  # cold cache
    first, second = (decode(frame) for frame in frames)
    assert (first.transaction_id, first.channel) == ("T-1", None)
    assert (second.transaction_id, second.channel) == ("T-2", "pos")
    assert first.event_time_ms == second.event_time_ms == TXN["event_time"]


def test_adapter_lookup_of_an_unknown_version_is_unknown_schema(
    glue: GlueSchemaApi, registered: tuple[str, dict[str, UUID]]
) -> None:
    registry = GlueSchemaRegistry(glue, registered[0])
    missing = uuid.uuid4()
    with pytest.raises(UnknownSchemaVersion):
        registry.schema_for(missing)
    frame = encode(TXN, schema_definition("transaction.v1"), missing)
    with pytest.raises(PoisonRecord) as info:
        transaction_decoder(registry)(frame)
    assert info.value.reason is PoisonReason.UNKNOWN_SCHEMA
    assert str(missing) in info.value.detail
