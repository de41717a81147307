"""Drift reports on S3 (`kestrel.drift_job.DriftReportSink`) and the active model manifest.

Reports, in the event-log bucket::

    s3://<bucket>/drift/reports/dt=<YYYY-MM-DD>/<checked_at, e.g. 20261129T101500123Z>.json
    s3://<bucket>/drift/latest.json                           the same body, the newest report

The manifest the drift check compares with is the active model's: the one the
``models/active.json`` pointer names when a model bucket is set and the pointer exists
(what the scorers serve, see `kestrel.adapters.onnx_model`), else the model layer's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPORT_PREFIX = "drift"


class S3DriftReports:
    """Writes each drift report under ``drift/reports/`` and as ``drift/latest.json``.

    Args:
        client: A boto3 S3 client.
        bucket: The bucket (the event-log bucket).
        prefix: The folder of the reports (default ``drift``).

    Raises:
        ValueError: If `bucket` is empty.
    """

    def __init__(self, client: S3Client, bucket: str, prefix: str = REPORT_PREFIX) -> None:
        if not bucket:
            raise ValueError("EVENT_LOG_BUCKET: drift reports go to the event log bucket")
        self._client, self._bucket, self._prefix = client, bucket, prefix.strip("/")

    def write(self, report: Mapping[str, Any]) -> str:
        """Store `report`; return the S3 URI of the dated copy."""
        checked_at = str(report["checked_at"])
        stamp = checked_at.replace("-", "").replace(":", "").replace(".", "")
        key = f"{self._prefix}/reports/dt={checked_at[:10]}/{stamp}.json"
        body = json.dumps(dict(report), indent=2, allow_nan=False).encode()
        for target in (key, f"{self._prefix}/latest.json"):
            self._client.put_object(
                Bucket=self._bucket, Key=target, Body=body, ContentType="application/json"
            )
        return f"s3://{self._bucket}/{key}"


def active_manifest(
    model_dir: str | Path, client: S3Client | None = None, bucket: str = "", pointer_key: str = ""
) -> dict[str, Any]:
    """The active model's manifest: the S3 pointer's when there is one, else the layer's.

    Raises:
        OSError, ValueError: The layer's manifest cannot be read.
        botocore.exceptions.ClientError: S3 failed for another reason than a missing pointer.
    """
    if client is not None and bucket and pointer_key:
        try:
            raw = client.get_object(Bucket=bucket, Key=pointer_key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
                raise
        else:
            pointer = json.loads(raw)
            body = client.get_object(Bucket=bucket, Key=str(pointer["manifest_key"]))["Body"]
            loaded: dict[str, Any] = json.loads(body.read())
            return loaded
    manifest: dict[str, Any] = json.loads((Path(model_dir) / "manifest.json").read_text())
    return manifest
