"""Unit tests for lookups by schema version id: misses remembered, calls budgeted, errors mapped."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError
from glue_doubles import LABEL, V1, V2, CountingGlue, client_error

from kestrel.adapters.glue_lookup import UnknownIds, unavailable
from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.codec import schema_definition
from kestrel.ports import SchemaRegistryUnavailable, UnknownSchemaVersion
from kestrel.settings import Settings, SettingsError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lookup(glue: CountingGlue, clock: Clock, **options: Any) -> GlueSchemaRegistry:
    return GlueSchemaRegistry(glue.api, "kestrel", clock=clock, **options)


def test_schema_for_asks_once_per_unknown_id_until_the_miss_expires() -> None:
    glue, clock = CountingGlue(), Clock()
    registry, missing = lookup(glue, clock, miss_ttl_s=60.0), uuid.uuid4()
    for _ in range(100):
        with pytest.raises(UnknownSchemaVersion):
            registry.schema_for(missing)
    assert len(glue.calls) == 1
    clock.now += 60.0
    with pytest.raises(UnknownSchemaVersion):
        registry.schema_for(missing)
    assert len(glue.calls) == 2


def test_schema_for_remembers_at_most_miss_cache_size_unknown_ids() -> None:
    glue, clock = CountingGlue(), Clock()
    registry = lookup(glue, clock, miss_cache_size=3, miss_lookups=100)
    ids = [uuid.uuid4() for _ in range(5)]
    for version_id in ids:
        with pytest.raises(UnknownSchemaVersion):
            registry.schema_for(version_id)
    assert len(glue.calls) == 5
    assert len(registry._unknown) == 3
    with pytest.raises(UnknownSchemaVersion):
        registry.schema_for(ids[4])  # kept: no call
    with pytest.raises(UnknownSchemaVersion):
        registry.schema_for(ids[0])  # evicted first: asked again
    assert len(glue.calls) == 6


def test_schema_for_lists_the_registry_once_past_the_lookup_budget() -> None:
    glue, clock = CountingGlue(), Clock()
    registry = lookup(glue, clock, miss_lookups=8)
    for _ in range(500):
        with pytest.raises(UnknownSchemaVersion):
            registry.schema_for(uuid.uuid4())
    # 8 lookups by id, then Transaction latest + v1, Label latest, Decision (absent),
    # ClickEvent latest.
    assert len(glue.calls) == 8 + 5
    assert registry.schema_for(V1) == schema_definition("transaction.v1")
    assert registry.schema_for(LABEL) == schema_definition("label.v1")
    assert len(glue.calls) == 13

    clock.now += 60.0  # a new window: 8 lookups again, then a listing of the latest only
    for _ in range(50):
        with pytest.raises(UnknownSchemaVersion):
            registry.schema_for(uuid.uuid4())
    assert len(glue.calls) == 13 + 8 + 4


def test_schema_for_finds_a_version_first_seen_after_the_budget_through_the_listing() -> None:
    glue, clock = CountingGlue(), Clock()
    registry = lookup(glue, clock, miss_lookups=0)  # a cold container in a flood
    assert registry.schema_for(V2) == schema_definition("transaction.v2")
    with pytest.raises(UnknownSchemaVersion):
        registry.schema_for(uuid.uuid4())
    assert len(glue.calls) == 5


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("ThrottlingException", "Rate exceeded"), "throttled"),
        (client_error("TooManyRequestsException"), "throttled"),
        (client_error("AccessDeniedException"), "access_denied"),
        (client_error("InternalServiceException", status=500), "unavailable"),
        (EndpointConnectionError(endpoint_url="https://glue.example"), "unavailable"),
    ],
    ids=["throttling", "too-many-requests", "access-denied", "server-error", "no-connection"],
)  # fmt: skip
def test_schema_for_raises_unavailable_and_remembers_nothing(error: Exception, kind: str) -> None:
    glue, clock = CountingGlue(), Clock()
    registry = lookup(glue, clock)
    glue.fail = error
    for _ in range(2):
        with pytest.raises(SchemaRegistryUnavailable) as info:
            registry.schema_for(V1)
        assert info.value.kind == kind
    assert len(glue.calls) == 2  # asked again: an outage is not a miss
    glue.fail = None
    assert registry.schema_for(V1) == schema_definition("transaction.v1")


def test_schema_for_lets_other_errors_propagate_unchanged() -> None:
    glue, clock = CountingGlue(), Clock()
    registry = lookup(glue, clock)
    glue.fail = client_error("InvalidInputException")
    with pytest.raises(ClientError, match="InvalidInputException"):
        registry.schema_for(V1)
    glue.fail = ParamValidationError(report="bad SchemaVersionId")
    with pytest.raises(ParamValidationError):
        registry.schema_for(V1)


def test_unavailable_names_the_permission_aws_says_is_missing() -> None:
    message = (
        "User: arn:aws:sts::210987654321:assumed-role/r/f is not authorized to perform: "
        "glue:GetSchemaVersion on resource: arn:aws:glue:eu-west-1:210987654321:schema/k/x "
        "because no identity-based policy allows the glue:GetSchemaVersion action"
    )
    found = unavailable(client_error("AccessDeniedException", message), "k", "eu-west-1")
    assert found is not None
    assert found.detail.startswith(
        "missing permission glue:GetSchemaVersion on "
        "arn:aws:glue:eu-west-1:210987654321:schema/k/x (registry k;"
    )
    bare = unavailable(
        client_error("AccessDeniedException", "User: arn:aws:sts::210987654321:x is denied"),
        "k",
        "eu-west-1",
    )
    assert bare is not None
    assert "glue:GetSchemaVersion on arn:aws:glue:eu-west-1:210987654321:registry/k" in bare.detail


def test_unknown_ids_refuses_bounds_that_are_not_bounds() -> None:
    for ttl, size, lookups in ((-1.0, 10, 1), (float("nan"), 10, 1), (1.0, 0, 1), (1.0, 1, -1)):
        with pytest.raises(ValueError, match="miss"):
            UnknownIds(ttl, size, lookups)


def test_settings_read_the_miss_ttl_and_cache_size() -> None:
    assert (
        Settings.from_env({}).schema_miss_ttl_s,
        Settings.from_env({}).schema_miss_cache_size,
    ) == (60.0, 1024)
    env = {"SCHEMA_MISS_TTL_S": "5", "SCHEMA_MISS_CACHE_SIZE": "20"}
    assert (
        Settings.from_env(env).schema_miss_ttl_s,
        Settings.from_env(env).schema_miss_cache_size,
    ) == (5.0, 20)
    for key, value in (
        ("SCHEMA_MISS_TTL_S", "inf"),
        ("SCHEMA_MISS_TTL_S", "-1"),
        ("SCHEMA_MISS_TTL_S", "7200"),
        ("SCHEMA_MISS_CACHE_SIZE", "0"),
    ):
        with pytest.raises(SettingsError, match=f"^{key}: "):
            Settings.from_env({key: value})
