"""`SchemaLookup` and schema registration on the AWS Glue Schema Registry (boto3 ``glue``).

Schemas are named by their Avro full name (``kestrel.Transaction``) inside one registry
(``SCHEMA_REGISTRY_NAME``) and created with ``Compatibility=BACKWARD``. Before a new
version is registered it is checked here against every existing version with
`kestrel.schema_compat.check_backward`, because the emulator (moto) stores any version
while AWS refuses incompatible ones; checking ourselves makes both behave the same.

Only calls that moto 5.2.5 implements are used: CreateRegistry, CreateSchema, GetSchema,
RegisterSchemaVersion and GetSchemaVersion (moto has no ListSchemaVersions, so versions
are read one by one by number, up to the schema's ``LatestSchemaVersion``).

Lookups by version id (`GlueSchemaRegistry.schema_for`, the stream's `SchemaLookup`) need
only ``glue:GetSchemaVersion``, cost one call per new id, and cost next to nothing for ids
the registry does not know: see the class. Throttling, missing permissions and outages
become `kestrel.ports.SchemaRegistryUnavailable` (`kestrel.adapters.glue_errors`). The
shipped schemas' fixed ids (`kestrel.shipped_schemas`) are known without any call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError

from kestrel.adapters.glue_lookup import UnknownIds, registry_missing, unavailable
from kestrel.codec import SHIPPED_SCHEMAS, schema_definition
from kestrel.ports import UnknownSchemaVersion
from kestrel.schema_compat import SchemaIncompatible, check_backward
from kestrel.shipped_schemas import shipped_versions

__all__ = [
    "GlueSchemaApi",
    "GlueSchemaRegistry",
    "RegisteredVersion",
    "SchemaIncompatible",
    "register_all",
]

_NOT_FOUND = "EntityNotFoundException"
_EXISTS = "AlreadyExistsException"
DEFAULT_MISS_TTL_S = 60.0
DEFAULT_MISS_CACHE_SIZE = 1024
# Unknown ids looked up one by one per window; past that the registry's versions are listed.
MISS_LOOKUPS_PER_WINDOW = 8


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


def _full_name(definition: str) -> str:
    """The Avro full name of a schema definition (``kestrel.Transaction``)."""
    doc = json.loads(definition)
    return f"{doc['namespace']}.{doc['name']}" if "namespace" in doc else str(doc["name"])


def shipped_schema_names() -> tuple[str, ...]:
    """The full names of Kestrel's shipped schemas, each once, in registration order."""
    return tuple(dict.fromkeys(_full_name(schema_definition(n)) for n in SHIPPED_SCHEMAS))


class GlueSchemaRegistry:
    """Looks up and registers Avro schemas in one Glue Schema Registry registry.

    Implements the `kestrel.ports.SchemaLookup` port. `schema_for` answers known versions
    from a per-instance cache and calls GetSchemaVersion once per new version id. Unknown
    ids cost a bounded number of calls, however many records carry them:

    - an id the registry answered "not found" for is remembered as a miss for `miss_ttl_s`
      (at most `miss_cache_size` ids, least recently asked evicted first);
    - within one window of `miss_ttl_s`, at most `miss_lookups` new ids are looked up one by
      one; past that (random ids, a hostile producer), the available versions of
      `schema_names` are listed once (GetSchemaVersion by number, one call per schema plus
      one per version not read before) and, until the window ends, any id not among them
      is unknown without a call. A version registered after that listing is found in the
      next window; its records meanwhile are dead-lettered as ``unknown_schema`` and can be
      redriven.

    Throttling, access denied (with the missing permission), server errors and lost
    connections raise `kestrel.ports.SchemaRegistryUnavailable` after the client's own
    retries; other errors propagate unchanged. Safe to share between threads.

    Args:
        client: A boto3 ``glue`` client (AWS, LocalStack or the embedded emulator).
        registry_name: The registry holding Kestrel's schemas (``SCHEMA_REGISTRY_NAME``).
        wait_s: How long `register` waits for a version the registry reports as PENDING
            (AWS checks compatibility asynchronously) to become AVAILABLE.
        sleep: Pause between status polls (injected by tests).
        miss_ttl_s: How long an unknown id, and a listing, stay trusted
            (``SCHEMA_MISS_TTL_S``).
        miss_cache_size: How many unknown ids are remembered (``SCHEMA_MISS_CACHE_SIZE``).
        miss_lookups: New ids looked up one by one per window before listing instead.
        schema_names: The schemas a listing reads (default: Kestrel's shipped schemas).
        clock: Monotonic clock in seconds (injected by tests).
    """

    def __init__(
        self,
        client: GlueSchemaApi,
        registry_name: str,
        wait_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        *,
        miss_ttl_s: float = DEFAULT_MISS_TTL_S,
        miss_cache_size: int = DEFAULT_MISS_CACHE_SIZE,
        miss_lookups: int = MISS_LOOKUPS_PER_WINDOW,
        schema_names: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._registry = registry_name
        self._wait_s = wait_s
        self._sleep = sleep
        # Shipped schemas' fixed ids decode without a call, with or without Glue.
        self._definitions: dict[UUID, str] = dict(shipped_versions())
        self._unknown = UnknownIds(miss_ttl_s, miss_cache_size, miss_lookups, clock)
        self._schema_names = tuple(schema_names or shipped_schema_names())
        self._lock = threading.Lock()
        self._numbers_read: dict[str, set[int]] = {}  # schema -> version numbers read
        meta = getattr(client, "meta", None)
        self._region = str(getattr(meta, "region_name", None) or "<region>")

    @property
    def registry_name(self) -> str:
        """The registry's name."""
        return self._registry

    def check(self) -> str:
        """The registry's status (``AVAILABLE`` when usable); botocore errors propagate.

        ``NO_REGISTRY`` on an endpoint without Glue: the shipped schemas' fixed ids serve.
        """
        try:
            found = self._client.get_registry(RegistryId={"RegistryName": self._registry})
        except ClientError as exc:
            if registry_missing(exc):
                return "NO_REGISTRY"
            raise
        status = str(found.get("Status", "AVAILABLE"))
        if status != "AVAILABLE":
            raise RuntimeError(f"schema registry {self._registry} is {status}")
        return status

    def schema_for(self, version_id: UUID) -> str:
        """Return the definition registered as `version_id` (cached after the first call).

        Raises:
            UnknownSchemaVersion: No available version has this id.
            SchemaRegistryUnavailable: Throttled, access denied, server error, no connection.
            botocore.exceptions.ClientError: Any other registry error, unchanged.
        """
        cached = self._definitions.get(version_id)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._definitions.get(version_id)
            if cached is not None:
                return cached
            if self._unknown.known(version_id):
                raise UnknownSchemaVersion(version_id)
            if self._unknown.may_look_up():
                return self._lookup(version_id)
            if not self._unknown.listed:
                self._list_available()
                self._unknown.mark_listed()
            found = self._definitions.get(version_id)
            if found is None:
                raise UnknownSchemaVersion(version_id)
            return found

    def _unavailable(self, exc: ClientError | BotoCoreError) -> NoReturn:
        translated = unavailable(exc, self._registry, self._region)
        if translated is None:
            raise exc
        raise translated from exc

    def _lookup(self, version_id: UUID) -> str:
        """One GetSchemaVersion by id; a "not found" is remembered as a miss."""
        try:
            found = self._client.get_schema_version(SchemaVersionId=str(version_id))
        except ClientError as exc:
            if _code(exc) == _NOT_FOUND or registry_missing(exc):  # no Glue: nothing registered
                self._unknown.remember(version_id)
                raise UnknownSchemaVersion(version_id) from None
            self._unavailable(exc)
        except BotoCoreError as exc:
            self._unavailable(exc)
        if found.get("Status", "AVAILABLE") != "AVAILABLE":  # pending or failed: not yet
            raise UnknownSchemaVersion(version_id)
        definition = str(found["SchemaDefinition"])
        self._definitions[version_id] = definition
        return definition

    def _version(self, schema_name: str, number: dict[str, Any]) -> Mapping[str, Any] | None:
        """GetSchemaVersion of `schema_name` by number (None: no such schema or version)."""
        try:
            return self._client.get_schema_version(
                SchemaId={"RegistryName": self._registry, "SchemaName": schema_name},
                SchemaVersionNumber=number,
            )
        except ClientError as exc:
            if _code(exc) == _NOT_FOUND or registry_missing(exc):
                return None
            self._unavailable(exc)
        except BotoCoreError as exc:
            self._unavailable(exc)

    def _keep(self, version: Mapping[str, Any]) -> None:
        if version.get("Status", "AVAILABLE") == "AVAILABLE":
            version_id = UUID(str(version["SchemaVersionId"]))
            self._definitions[version_id] = str(version["SchemaDefinition"])

    def _list_available(self) -> None:
        """Cache every available version of `schema_names` not read before (by number)."""
        for name in self._schema_names:
            latest = self._version(name, {"LatestVersion": True})
            if latest is None:
                continue
            self._keep(latest)
            read = self._numbers_read.setdefault(name, set())
            newest = int(latest["VersionNumber"])
            read.add(newest)
            for number in range(1, newest):
                if number in read:
                    continue
                version = self._version(name, {"VersionNumber": number})
                if version is not None:
                    self._keep(version)
                read.add(number)

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
    """Register the shipped schemas in order (transaction v1, v2, label, decision, click event).

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
        ids[name] = registry.register(_full_name(definition), definition)
    return ids
