"""`SchemaLookup` and schema registration on the AWS Glue Schema Registry (boto3 ``glue``).

Schemas are named by their Avro full name (``kestrel.Transaction``) inside one registry
(``SCHEMA_REGISTRY_NAME``) and created with ``Compatibility=BACKWARD``. Before a new
version is registered it is checked here against every existing version with
`kestrel.schema_compat.check_backward`, because the emulator (moto) stores any version
while AWS refuses incompatible ones; checking ourselves makes both behave the same.

Only calls that moto 5.2.5 implements are used: CreateRegistry, CreateSchema, GetSchema,
RegisterSchemaVersion and GetSchemaVersion (moto has no ListSchemaVersions, so versions
are read one by one by number, up to the schema's ``LatestSchemaVersion``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from botocore.exceptions import ClientError

from kestrel.codec import SHIPPED_SCHEMAS, schema_definition
from kestrel.ports import UnknownSchemaVersion
from kestrel.schema_compat import SchemaIncompatible, check_backward

__all__ = [
    "GlueSchemaApi",
    "GlueSchemaRegistry",
    "RegisteredVersion",
    "SchemaIncompatible",
    "register_all",
]

_NOT_FOUND = "EntityNotFoundException"
_EXISTS = "AlreadyExistsException"


class GlueSchemaApi(Protocol):
    """The boto3 ``glue`` client operations this adapter calls (keyword arguments only)."""

    def create_registry(self, **kwargs: Any) -> Mapping[str, Any]:
        """CreateRegistry."""
        ...

    def create_schema(self, **kwargs: Any) -> Mapping[str, Any]:
        """CreateSchema."""
        ...

    def get_registry(self, **kwargs: Any) -> Mapping[str, Any]:
        """GetRegistry."""
        ...

    def get_schema(self, **kwargs: Any) -> Mapping[str, Any]:
        """GetSchema."""
        ...

    def register_schema_version(self, **kwargs: Any) -> Mapping[str, Any]:
        """RegisterSchemaVersion."""
        ...

    def get_schema_version(self, **kwargs: Any) -> Mapping[str, Any]:
        """GetSchemaVersion."""
        ...


@dataclass(frozen=True, slots=True)
class RegisteredVersion:
    """One available version of a registered schema.

    Attributes:
        number: The version number within its schema (1, 2, ...).
        version_id: The schema version id that frames carry in their header.
        definition: The schema definition (Avro JSON text) as registered.
    """

    number: int
    version_id: UUID
    definition: str


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _same(left: str, right: str) -> bool:
    return bool(json.loads(left) == json.loads(right))


class GlueSchemaRegistry:
    """Looks up and registers Avro schemas in one Glue Schema Registry registry.

    Implements the `kestrel.ports.SchemaLookup` port: `schema_for` answers from a
    per-instance cache and calls GetSchemaVersion once per unknown version id.

    Args:
        client: A boto3 ``glue`` client (AWS, LocalStack or the embedded emulator).
        registry_name: The registry holding Kestrel's schemas (``SCHEMA_REGISTRY_NAME``).
        wait_s: How long `register` waits for a version the registry reports as PENDING
            (AWS checks compatibility asynchronously) to become AVAILABLE.
        sleep: Pause between status polls (injected by tests).
    """

    def __init__(
        self,
        client: GlueSchemaApi,
        registry_name: str,
        wait_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._registry = registry_name
        self._wait_s = wait_s
        self._sleep = sleep
        self._definitions: dict[UUID, str] = {}

    @property
    def registry_name(self) -> str:
        """The registry's name."""
        return self._registry

    def check(self) -> str:
        """The registry's status (``AVAILABLE`` when usable); botocore errors propagate."""
        found = self._client.get_registry(RegistryId={"RegistryName": self._registry})
        status = str(found.get("Status", "AVAILABLE"))
        if status != "AVAILABLE":
            raise RuntimeError(f"schema registry {self._registry} is {status}")
        return status

    def schema_for(self, version_id: UUID) -> str:
        """Return the definition registered as `version_id` (cached after the first call).

        Raises:
            UnknownSchemaVersion: No available version has this id.
            botocore.exceptions.ClientError: Any other registry error, unchanged.
        """
        cached = self._definitions.get(version_id)
        if cached is not None:
            return cached
        try:
            found = self._client.get_schema_version(SchemaVersionId=str(version_id))
        except ClientError as exc:
            if _code(exc) == _NOT_FOUND:
                raise UnknownSchemaVersion(version_id) from None
            raise
        if found.get("Status", "AVAILABLE") != "AVAILABLE":
            raise UnknownSchemaVersion(version_id)
        definition = str(found["SchemaDefinition"])
        self._definitions[version_id] = definition
        return definition

    def versions(self, schema_name: str) -> list[RegisteredVersion] | None:
        """The available versions of `schema_name`, oldest first; None if it does not exist.

        Raises:
            botocore.exceptions.ClientError: Any registry error other than "not found".
        """
        schema_id = {"RegistryName": self._registry, "SchemaName": schema_name}
        try:
            latest = int(self._client.get_schema(SchemaId=schema_id)["LatestSchemaVersion"])
        except ClientError as exc:
            if _code(exc) == _NOT_FOUND:
                return None
            raise
        found: list[RegisteredVersion] = []
        for number in range(1, latest + 1):
            try:
                version = self._client.get_schema_version(
                    SchemaId=schema_id, SchemaVersionNumber={"VersionNumber": number}
                )
            except ClientError as exc:
                if _code(exc) == _NOT_FOUND:  # deleted version
                    continue
                raise
            if version.get("Status", "AVAILABLE") != "AVAILABLE":
                continue
            entry = RegisteredVersion(
                number, UUID(str(version["SchemaVersionId"])), str(version["SchemaDefinition"])
            )
            self._definitions[entry.version_id] = entry.definition
            found.append(entry)
        return found

    def register(self, schema_name: str, definition: str) -> UUID:
        """Register `definition` as a version of `schema_name` and return its version id.

        Creates the registry and the schema (``Compatibility=BACKWARD``, data format AVRO)
        when missing. A definition equal (as JSON) to an existing version returns that
        version's id and registers nothing.

        Raises:
            SchemaIncompatible: `definition` is not valid Avro, or cannot read data written
                with an existing version (nothing is registered); also when the registry
                itself refuses the version.
            TimeoutError: The registry kept the version PENDING longer than `wait_s`.
            botocore.exceptions.ClientError: Any other registry error, unchanged.
        """
        invalid = check_backward(definition, [])
        if invalid:
            raise SchemaIncompatible(schema_name, invalid)
        existing = self.versions(schema_name)
        if existing is None:
            return self._create(schema_name, definition)
        for version in existing:
            if _same(version.definition, definition):
                return version.version_id
        problems = check_backward(definition, [v.definition for v in existing])
        if problems:
            raise SchemaIncompatible(schema_name, problems)
        answer = self._client.register_schema_version(
            SchemaId={"RegistryName": self._registry, "SchemaName": schema_name},
            SchemaDefinition=definition,
        )
        return self._settled(schema_name, definition, answer["SchemaVersionId"], answer["Status"])

    def _create(self, schema_name: str, definition: str) -> UUID:
        try:
            self._client.create_registry(
                RegistryName=self._registry, Description="Kestrel event schemas"
            )
        except ClientError as exc:
            if _code(exc) != _EXISTS:
                raise
        try:
            answer = self._client.create_schema(
                RegistryId={"RegistryName": self._registry},
                SchemaName=schema_name,
                DataFormat="AVRO",
                Compatibility="BACKWARD",
                SchemaDefinition=definition,
            )
        except ClientError as exc:
            if _code(exc) != _EXISTS:
                raise
            return self.register(schema_name, definition)  # created meanwhile by someone else
        return self._settled(
            schema_name, definition, answer["SchemaVersionId"], answer["SchemaVersionStatus"]
        )

    def _settled(self, schema_name: str, definition: str, raw_id: Any, status: Any) -> UUID:
        version_id = UUID(str(raw_id))
        deadline = time.monotonic() + self._wait_s
        while status == "PENDING" and time.monotonic() < deadline:
            self._sleep(0.25)
            status = self._client.get_schema_version(SchemaVersionId=str(version_id))["Status"]
        if status == "FAILURE":
            raise SchemaIncompatible(
                schema_name, [f"the registry refused version {version_id} (status FAILURE)"]
            )
        if status != "AVAILABLE":
            raise TimeoutError(f"schema {schema_name} version {version_id} is still {status}")
        self._definitions[version_id] = definition
        return version_id


def register_all(registry: GlueSchemaRegistry) -> dict[str, UUID]:
    """Register the shipped schemas in order (transaction v1, v2, label, decision).

    Each schema is registered under its Avro full name, e.g. ``kestrel.Transaction``.

    Args:
        registry: The registry to register in.

    Returns:
        The version id of each shipped schema, keyed by file stem (``transaction.v2``).

    Raises:
        SchemaIncompatible: A shipped schema is not backward compatible with a version
            already registered.
    """
    ids: dict[str, UUID] = {}
    for name in SHIPPED_SCHEMAS:
        definition = schema_definition(name)
        doc = json.loads(definition)
        full_name = f"{doc['namespace']}.{doc['name']}" if "namespace" in doc else doc["name"]
        ids[name] = registry.register(str(full_name), definition)
    return ids
