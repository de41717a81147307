"""Dead-letter payloads too large for a queue message, kept in the stack's bucket.

Layout::

    s3://<bucket>/dead-letters/<stream name>/<shard id>/<sequence number>.b64

An object holds a poison record's data exactly as its dead letter would have carried it:
the base64 text of the Kinesis event (``payload_b64``), so even data that is not valid
base64 is kept as it came. The key is the record's stream coordinates, so a retried batch
overwrites its own object instead of adding a copy. The dead letter in the queue carries
the object's ``s3://`` URI instead of the payload (`kestrel.adapters.sqs_dead_letters`),
and the redrive reads it back with `S3DeadLetterPayloads.get`. Objects are never deleted
by Kestrel: they stay after a redrive, as the record's archive.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from kestrel.ports import DeadLetter

PREFIX = "dead-letters/"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def payload_sha256(payload_b64: str) -> str:
    """The hex SHA-256 of a payload's base64 text (what a pointer carries to check it)."""
    return hashlib.sha256(payload_b64.encode("utf-8", "surrogatepass")).hexdigest()


def _part(text: str) -> str:
    """One key segment: the characters of stream names and sequence numbers, else ``_``."""
    part = _UNSAFE.sub("_", text)[:256]
    return "_" if part in {"", ".", ".."} else part


class S3DeadLetterPayloads:
    """Stores and reads back dead-letter payloads under one prefix of one bucket.

    Args:
        client: A boto3 S3 client (created once per container, see `kestrel.clients`).
        bucket: The stack's bucket (``EVENT_LOG_BUCKET``), the one the event log writes to.
        prefix: The folder of the payloads, ``dead-letters/``.

    Raises:
        ValueError: If `bucket` is empty (the setting is missing).
    """

    def __init__(self, client: Any, bucket: str, prefix: str = PREFIX) -> None:
        if not bucket:
            raise ValueError("EVENT_LOG_BUCKET: dead-letter payloads need a bucket name")
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/"

    def key(self, letter: DeadLetter) -> str:
        """The object key of `letter`'s payload (from its stream coordinates)."""
        stream = letter.stream_arn.rsplit("/", 1)[-1]
        return (
            f"{self._prefix}{_part(stream)}/{_part(letter.shard_id)}/"
            f"{_part(letter.sequence_number)}.b64"
        )

    def put(self, letter: DeadLetter) -> str:
        """Store `letter`'s payload; returns its ``s3://`` URI once S3 has it (errors propagate)."""
        key = self.key(letter)
        self._client.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=letter.payload_b64.encode("utf-8", "surrogatepass"),
            ContentType="text/plain; charset=utf-8",
            Metadata={"reason": letter.reason, "sha256": payload_sha256(letter.payload_b64)},
        )
        return f"s3://{self._bucket}/{key}"

    def get(self, uri: str) -> str:
        """Read back the payload (base64 text) a pointer names.

        Raises:
            ValueError: The URI is not under this bucket's prefix (a pointer anywhere else
                is refused, so a planted message cannot make the redrive read other data).
            botocore.exceptions.ClientError: S3 errors, e.g. the object is gone.
        """
        own = f"s3://{self._bucket}/{self._prefix}"
        key = uri.removeprefix(f"s3://{self._bucket}/")
        if not uri.startswith(own) or {".", ".."} & set(key.split("/")):
            raise ValueError(f"{uri!r} is not under {own}")
        answer = self._client.get_object(Bucket=self._bucket, Key=key)
        return bytes(answer["Body"].read()).decode("utf-8", "surrogatepass")
