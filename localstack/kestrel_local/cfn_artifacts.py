"""Local CodeUri/ContentUri folders of a SAM template: reproducible zips, upload, S3 URIs."""

from __future__ import annotations

import copy
import hashlib
import io
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kestrel_local.aws import AwsClients
from kestrel_local.template import TemplateError

ARTIFACT_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}
_GLOBALS_SECTION = {"AWS::Serverless::Function": "Function"}
# Fixed entry time (the earliest a zip can hold), so the same folder gives the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True, slots=True)
class Artifact:
    """A local folder one resource of the template ships as a zip."""

    logical_id: str
    property: str
    folder: Path


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where an uploaded artifact lives."""

    bucket: str
    key: str


def local_artifacts(template: Mapping[str, Any], template_dir: Path) -> list[Artifact]:
    """Every function code and layer content folder the template names locally."""
    globals_section = template.get("Globals") or {}
    found: list[Artifact] = []
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        prop = ARTIFACT_PROPERTIES.get(kind)
        if prop is None:
            continue
        defaults = globals_section.get(_GLOBALS_SECTION.get(kind, ""), {}) or {}
        value = (resource.get("Properties") or {}).get(prop, defaults.get(prop))
        if not isinstance(value, str) or value.startswith("s3://"):
            continue  # already an S3 location (a mapping or an s3:// URI)
        folder = (template_dir / value).resolve()
        if not folder.is_dir():
            raise TemplateError(f"{logical_id}.{prop}: folder {folder} does not exist")
        found.append(Artifact(logical_id, prop, folder))
    return found


def zip_folder(folder: Path) -> bytes:
    """The folder as a zip, byte-identical for identical contents (entries sorted, fixed time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or _skipped(relative):
                continue
            info = zipfile.ZipInfo(relative.as_posix(), date_time=_ZIP_TIME)
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def _skipped(relative: Path) -> bool:
    return bool(_SKIPPED_PARTS.intersection(relative.parts)) or relative.suffix in (
        _SKIPPED_SUFFIXES
    )


def artifact_key(logical_id: str, data: bytes, prefix: str = "artifacts/") -> str:
    """A content-addressed key: a changed zip gets a new key, so CloudFormation sees a change."""
    return f"{prefix}{logical_id}-{hashlib.sha256(data).hexdigest()[:16]}.zip"


def rewrite_code_uris(
    template: Mapping[str, Any], locations: Mapping[str, S3Location]
) -> dict[str, Any]:
    """A copy of the template whose resources in `locations` point at their S3 artifact."""
    out = copy.deepcopy(dict(template))
    for logical_id, where in locations.items():
        resource = out["Resources"].get(logical_id)
        if resource is None or resource["Type"] not in ARTIFACT_PROPERTIES:
            raise TemplateError(f"{logical_id}: not a serverless function or layer of the template")
        properties = resource.setdefault("Properties", {})
        properties[ARTIFACT_PROPERTIES[resource["Type"]]] = {
            "Bucket": where.bucket,
            "Key": where.key,
        }
    return out


def upload_artifacts(
    clients: AwsClients, bucket: str, artifacts: Iterable[Artifact], prefix: str = "artifacts/"
) -> dict[str, S3Location]:
    """Zip and upload every artifact (creating the bucket if needed); their locations by id."""
    s3 = clients.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        args: dict[str, Any] = {"Bucket": bucket}
        if clients.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": clients.region}
        s3.create_bucket(**args)
    locations: dict[str, S3Location] = {}
    for artifact in artifacts:
        data = zip_folder(artifact.folder)
        key = artifact_key(artifact.logical_id, data, prefix)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        locations[artifact.logical_id] = S3Location(bucket, key)
    return locations
