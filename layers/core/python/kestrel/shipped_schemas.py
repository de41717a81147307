"""Fixed schema version ids for the schemas Kestrel ships, for endpoints without a registry.

A Glue Schema Registry frame names its writer schema by a version id the registry hands out.
Where no registry exists (LocalStack's free plan has no Glue), producer and consumer still
have to agree on an id for each shipped schema. Each shipped schema therefore also has a
fixed id: a UUID-5 of its canonical definition (JSON with sorted keys, no spaces), the same
on every machine and in every process, and different for any other definition. Ids handed
out by Glue are random (version 4) UUIDs, so they never collide with these.

A decoder knows these ids without asking anyone (`kestrel.adapters.glue_registry` seeds its
cache with `shipped_versions`), so a frame written with one decodes with or without Glue:
the definition it names is the one in this package, byte for byte.
"""

from __future__ import annotations

import json
from functools import cache
from uuid import UUID, uuid5

from kestrel.codec import SHIPPED_SCHEMAS, schema_definition

__all__ = ["SCHEMA_ID_NAMESPACE", "canonical", "shipped_id", "shipped_ids", "shipped_versions"]

# The UUID-5 namespace of shipped schema ids (fixed forever: changing it changes every id).
SCHEMA_ID_NAMESPACE = UUID("6b2f1f0e-6c1b-5e43-9d4a-6b657374726c")


def canonical(definition: str) -> str:
    """The definition as canonical JSON (sorted keys, no spaces): what the id is made from."""
    return json.dumps(json.loads(definition), sort_keys=True, separators=(",", ":"))


def shipped_id(name: str) -> UUID:
    """The fixed version id of a shipped schema, e.g. ``transaction.v2``."""
    return uuid5(SCHEMA_ID_NAMESPACE, canonical(schema_definition(name)))


@cache
def shipped_ids() -> dict[str, UUID]:
    """The fixed version id of every shipped schema, keyed by file stem."""
    return {name: shipped_id(name) for name in SHIPPED_SCHEMAS}


@cache
def shipped_versions() -> dict[UUID, str]:
    """`{fixed version id: definition}` of every shipped schema (a decoder's known writers)."""
    return {version_id: schema_definition(name) for name, version_id in shipped_ids().items()}
