"""Schema registration that survives an endpoint without a Glue Schema Registry.

LocalStack's free plan has no Glue: every Glue call answers HTTP 501 ("not yet implemented
or pro feature"). There, `register_shipped` warns once and hands out the shipped schemas'
fixed ids (`kestrel.shipped_schemas`), which every decoder knows without a registry, so
producers, the runtime, the API and redrive still agree on every frame. On AWS and on the
embedded emulator it registers in Glue as before (`register_all`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

from botocore.exceptions import ClientError

from kestrel.adapters.glue_lookup import registry_missing
from kestrel.adapters.glue_registry import GlueSchemaRegistry, register_all
from kestrel.shipped_schemas import shipped_ids

__all__ = ["NO_REGISTRY_WARNING", "register_shipped", "registry_missing"]

logger = logging.getLogger(__name__)

NO_REGISTRY_WARNING = (
    "this endpoint has no Glue schema registry (LocalStack's free plan has none): the "
    "shipped schemas are used with their fixed ids, which the stream functions, the API and "
    "redrive know without a registry"
)


def register_shipped(
    registry: GlueSchemaRegistry, warn: Callable[[str], None] | None = None
) -> dict[str, UUID]:
    """Register the shipped schemas in Glue; without Glue, warn once and use the fixed ids.

    Returns the version id of each shipped schema, keyed by file stem (``transaction.v2``).
    Any other registry error propagates unchanged.
    """
    try:
        return register_all(registry)
    except ClientError as exc:
        if not registry_missing(exc):
            raise
    (warn or logger.warning)(NO_REGISTRY_WARNING)
    return dict(shipped_ids())
