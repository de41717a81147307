"""Registry errors as boto3 really raises them: a loopback endpoint answering like Glue does.

The emulator cannot throttle or deny, so a small HTTP server on 127.0.0.1 answers every
request the way AWS Glue's JSON protocol does (HTTP 400, ``__type`` naming the error), and
a real boto3 client with Kestrel's own client configuration (`kestrel.connections`) calls it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config

from kestrel.adapters.glue_registry import GlueSchemaApi, GlueSchemaRegistry
from kestrel.connections import BOTO_CONFIG
from kestrel.ports import SchemaRegistryUnavailable

pytestmark = pytest.mark.integration
DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/kestrel-TransactionsRole/fn is not "
    "authorized to perform: glue:GetSchemaVersion on resource: "
    "arn:aws:glue:us-east-1:123456789012:registry/kestrel because no identity-based policy "
    "allows the glue:GetSchemaVersion action"
)


class GlueAnswers:
    """What the fake endpoint answers (status, error type, message) and what it was asked."""

    def __init__(self) -> None:
        self.status, self.error, self.message = 400, "ThrottlingException", "Rate exceeded"
        self.targets: list[str] = []


@pytest.fixture
def endpoint() -> Iterator[tuple[str, GlueAnswers]]:
    answers = GlueAnswers()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answers.targets.append(str(self.headers.get("X-Amz-Target")))
            body = json.dumps({"__type": answers.error, "message": answers.message}).encode()
            self.send_response(answers.status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


NO_RETRIES = Config(retries={"mode": "standard", "max_attempts": 0})


def registry(url: str, config: Config = BOTO_CONFIG) -> GlueSchemaRegistry:
    client = boto3.client(
        "glue",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=config,
    )
    return GlueSchemaRegistry(cast(GlueSchemaApi, client), "kestrel")


def test_throttling_is_retried_with_backoff_then_raised_as_unavailable(
    endpoint: tuple[str, GlueAnswers],
) -> None:
    url, answers = endpoint

    with pytest.raises(SchemaRegistryUnavailable) as info:
        registry(url).schema_for(uuid.uuid4())

    assert info.value.kind == "throttled"
    assert "ThrottlingException on GetSchemaVersion in registry kestrel" in info.value.detail
    # BOTO_CONFIG's standard retry mode: max_attempts 3 retries after the first attempt
    # (botocore rewrites it as total_max_attempts 4 once a client is built), with backoff.
    retries = cast(dict[str, int], getattr(BOTO_CONFIG, "retries"))  # noqa: B009 - untyped
    attempts = retries.get("total_max_attempts", retries.get("max_attempts", 0) + 1)
    assert attempts == 4
    assert answers.targets == ["AWSGlue.GetSchemaVersion"] * attempts


@pytest.mark.parametrize(
    ("message", "permission"),
    [
        (
            DENIED,
            "glue:GetSchemaVersion on arn:aws:glue:us-east-1:123456789012:registry/kestrel",
        ),
        (
            "Access denied",
            "glue:GetSchemaVersion on arn:aws:glue:us-east-1:<account>:registry/kestrel and "
            "arn:aws:glue:us-east-1:<account>:schema/kestrel/*",
        ),
    ],
    ids=["aws-message", "bare-message"],
)
def test_access_denied_names_the_missing_permission_and_is_not_retried(
    endpoint: tuple[str, GlueAnswers], message: str, permission: str
) -> None:
    url, answers = endpoint
    answers.error, answers.message = "AccessDeniedException", message

    with pytest.raises(SchemaRegistryUnavailable) as info:
        registry(url).schema_for(uuid.uuid4())

    assert info.value.kind == "access_denied"
    assert f"missing permission {permission} (registry kestrel;" in info.value.detail
    assert answers.targets == ["AWSGlue.GetSchemaVersion"]


def test_a_server_error_is_unavailable_and_a_bad_request_propagates_unchanged(
    endpoint: tuple[str, GlueAnswers],
) -> None:
    url, answers = endpoint
    answers.status, answers.error = 500, "InternalServiceException"
    with pytest.raises(SchemaRegistryUnavailable) as info:
        registry(url, NO_RETRIES).schema_for(uuid.uuid4())
    assert info.value.kind == "unavailable"
    assert "InternalServiceException on GetSchemaVersion" in info.value.detail

    answers.status, answers.error = 400, "InvalidInputException"
    with pytest.raises(Exception) as other:
        registry(url, NO_RETRIES).schema_for(uuid.uuid4())
    assert type(other.value).__name__ == "InvalidInputException"
