"""Unknown schema version ids on the emulator's Glue: counted requests, not one per record."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast
from uuid import UUID

import boto3
import pytest

from kestrel.adapters.glue_registry import (
    MISS_LOOKUPS_PER_WINDOW,
    GlueSchemaApi,
    GlueSchemaRegistry,
    register_all,
)
from kestrel.codec import encode, schema_definition, transaction_decoder
from kestrel.events import PoisonReason, PoisonRecord

pytestmark = pytest.mark.integration
TXN: dict[str, Any] = {
    "transaction_id": "T-1",
    "customer_id": "C-1",
    "terminal_id": "TERM-1",
    "amount": 12.5,
    "event_time": 1_795_857_302_123,
}


class CountedGlue:
    """A real boto3 Glue client on the emulator that counts the HTTP requests it sends."""

    def __init__(self, endpoint: str) -> None:
        self.client: Any = boto3.client(
            "glue",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self.requests: list[str] = []
        self.client.meta.events.register("before-send.glue", self._sent)

    def _sent(self, request: Any, **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        self.requests.append(target.decode() if isinstance(target, bytes) else str(target))

    @property
    def api(self) -> GlueSchemaApi:
        return cast(GlueSchemaApi, self.client)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def registry(emulator_endpoint: str) -> Iterator[tuple[str, dict[str, UUID]]]:
    """A fresh registry with every shipped schema registered: (name, version ids)."""
    glue = CountedGlue(emulator_endpoint)
    name = f"kestrel-miss-{uuid.uuid4().hex[:8]}"
    ids = register_all(GlueSchemaRegistry(glue.api, name))
    yield name, ids
    for schema in ("kestrel.Transaction", "kestrel.Label", "kestrel.Decision"):
        glue.client.delete_schema(SchemaId={"RegistryName": name, "SchemaName": schema})
    glue.client.delete_registry(RegistryId={"RegistryName": name})


def frame(version_id: UUID, n: int = 1, version: str = "transaction.v2") -> bytes:
    return encode({**TXN, "transaction_id": f"T-{n}"}, schema_definition(version), version_id)


def test_500_records_with_random_unknown_version_ids_make_a_dozen_registry_calls(
    emulator_endpoint: str, registry: tuple[str, dict[str, UUID]]
) -> None:
    name, ids = registry
    glue = CountedGlue(emulator_endpoint)
    decode = transaction_decoder(GlueSchemaRegistry(glue.api, name))  # cold caches
    frames = [frame(uuid.uuid4(), n) for n in range(500)]

    reasons = []
    for data in frames:
        with pytest.raises(PoisonRecord) as info:
            decode(data)
        reasons.append(info.value.reason)

    assert reasons == [PoisonReason.UNKNOWN_SCHEMA] * 500
    # 8 ids looked up one by one, then one listing: kestrel.Transaction latest (v2) and v1,
    # kestrel.Label latest, kestrel.Decision latest, kestrel.ClickEvent latest.
    assert len(glue.requests) == MISS_LOOKUPS_PER_WINDOW + 5, glue.requests
    assert set(glue.requests) == {"AWSGlue.GetSchemaVersion"}
    listed = len(glue.requests)
    # The listing found the registered versions: frames of v1 and v2 decode without a call.
    assert decode(frame(ids["transaction.v1"], 1, "transaction.v1")).transaction_id == "T-1"
    assert decode(frame(ids["transaction.v2"], 2)).transaction_id == "T-2"
    for data in frames:  # the same 500 again: no call at all
        with pytest.raises(PoisonRecord):
            decode(data)
    assert len(glue.requests) == listed


def test_one_unknown_id_on_500_records_is_asked_once_until_its_ttl_runs_out(
    emulator_endpoint: str, registry: tuple[str, dict[str, UUID]]
) -> None:
    name, ids = registry
    glue, clock = CountedGlue(emulator_endpoint), Clock()
    lookup = GlueSchemaRegistry(glue.api, name, miss_ttl_s=60.0, clock=clock)
    decode = transaction_decoder(lookup)
    unknown = frame(uuid.uuid4())

    for _ in range(500):
        with pytest.raises(PoisonRecord):
            decode(unknown)
    assert len(glue.requests) == 1

    clock.now += 59.0
    with pytest.raises(PoisonRecord):
        decode(unknown)
    assert len(glue.requests) == 1
    clock.now += 1.0  # the miss expired: the registry is asked again, once
    for _ in range(10):
        with pytest.raises(PoisonRecord):
            decode(unknown)
    assert len(glue.requests) == 2
    assert decode(frame(ids["transaction.v2"])).transaction_id == "T-1"
    assert len(glue.requests) == 3  # a registered version: one lookup, cached for good


def test_a_version_registered_after_a_listing_is_found_in_the_next_window(
    emulator_endpoint: str, registry: tuple[str, dict[str, UUID]]
) -> None:
    name, _ = registry
    glue, clock = CountedGlue(emulator_endpoint), Clock()
    lookup = GlueSchemaRegistry(
        glue.api, name, miss_ttl_s=30.0, miss_lookups=0, schema_names=["kestrel.Extra"],
        clock=clock,
    )  # fmt: skip
    extra = '{"type": "record", "name": "Extra", "namespace": "kestrel", "fields": []}'
    with pytest.raises(KeyError):
        lookup.schema_for(uuid.uuid4())  # lists: no kestrel.Extra yet
    assert len(glue.requests) == 1
    version_id = GlueSchemaRegistry(glue.api, name).register("kestrel.Extra", extra)
    registered = len(glue.requests)

    with pytest.raises(KeyError):
        lookup.schema_for(version_id)  # within the window: the listing is trusted
    assert len(glue.requests) == registered
    clock.now += 30.0
    assert lookup.schema_for(version_id) == extra  # next window: listed again, found
    assert len(glue.requests) == registered + 1
    glue.client.delete_schema(SchemaId={"RegistryName": name, "SchemaName": "kestrel.Extra"})
