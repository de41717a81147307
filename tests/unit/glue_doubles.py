"""A Glue double for the schema lookup tests: GetSchemaVersion as Glue answers it, counted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

from botocore.exceptions import ClientError

from kestrel.adapters.glue_registry import GlueSchemaApi
from kestrel.codec import schema_definition

V1 = UUID("11111111-1111-4111-8111-111111111111")
V2 = UUID("22222222-2222-4222-8222-222222222222")
LABEL = UUID("33333333-3333-4333-8333-333333333333")
CLICK = UUID("44444444-4444-4444-8444-444444444444")


def client_error(code: str, message: str = "", status: int = 400) -> ClientError:
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message or code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(cast(Any, response), "GetSchemaVersion")


class CountingGlue:
    """GetSchemaVersion as Glue answers it, over a few schemas; counts every call.

    `fail` (when set) is raised by every call instead, as a throttled or denied client would.
    """

    def __init__(self) -> None:
        self.schemas: dict[str, list[tuple[UUID, str]]] = {
            "kestrel.Transaction": [
                (V1, schema_definition("transaction.v1")),
                (V2, schema_definition("transaction.v2")),
            ],
            "kestrel.Label": [(LABEL, schema_definition("label.v1"))],
            "kestrel.ClickEvent": [(CLICK, schema_definition("click_event.v1"))],
        }
        self.calls: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    @property
    def api(self) -> GlueSchemaApi:
        return cast(GlueSchemaApi, self)

    def get_schema_version(self, **kwargs: Any) -> Mapping[str, Any]:
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        if "SchemaVersionId" in kwargs:
            for versions in self.schemas.values():
                for version_id, definition in versions:
                    if str(version_id) == kwargs["SchemaVersionId"]:
                        return self._answer(version_id, definition, 0)
            raise client_error("EntityNotFoundException")
        schema = self.schemas.get(kwargs["SchemaId"]["SchemaName"])
        if not schema:
            raise client_error("EntityNotFoundException")
        wanted = kwargs["SchemaVersionNumber"]
        number = len(schema) if wanted.get("LatestVersion") else wanted["VersionNumber"]
        version_id, definition = schema[number - 1]
        return self._answer(version_id, definition, number)

    @staticmethod
    def _answer(version_id: UUID, definition: str, number: int) -> Mapping[str, Any]:
        return {
            "SchemaVersionId": str(version_id),
            "SchemaDefinition": definition,
            "VersionNumber": number,
            "Status": "AVAILABLE",
        }
