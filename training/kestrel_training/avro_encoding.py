"""Producer encoders for the streams' wire format: Glue Schema Registry framing + Avro."""

from __future__ import annotations

import os
from collections.abc import Callable

from kestrel.adapters.glue_fallback import register_shipped
from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.codec import AvroEncoder, schema_definition
from kestrel_local.aws import endpoint_session

# The schema each stream kind is written with (readers resolve any registered version).
WRITER_SCHEMAS = {
    "transactions": "transaction.v2",
    "labels": "label.v1",
    "clicks": "click_event.v1",
}


def avro_encoders(
    registry: GlueSchemaRegistry, warn: Callable[[str], None] | None = None
) -> dict[str, AvroEncoder]:
    """An Avro encoder per stream kind, with schemas registered (idempotently) first.

    On an endpoint without Glue (LocalStack's free plan), one warning, and the shipped
    schemas' fixed ids, which every decoder knows (`kestrel.shipped_schemas`).
    """
    versions = register_shipped(registry, warn)
    return {
        kind: AvroEncoder(schema_definition(name), versions[name])
        for kind, name in WRITER_SCHEMAS.items()
    }


def avro_encoder(kind: str) -> AvroEncoder:
    """The producer's ``--encoder avro``: registry SCHEMA_REGISTRY_NAME on AWS_ENDPOINT_URL."""
    if kind not in WRITER_SCHEMAS:
        raise ValueError(f"no Avro schema for {kind!r}: use one of {sorted(WRITER_SCHEMAS)}")
    glue = endpoint_session().client("glue")
    registry = GlueSchemaRegistry(glue, os.environ.get("SCHEMA_REGISTRY_NAME", "kestrel"))
    return avro_encoders(registry)[kind]
