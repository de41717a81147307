"""The built template (`make build`): code URIs on the build's zips, upload, S3 locations.

`tools/build_lambda.py` zips each function and layer and calls `write_built_template`, which
writes `build/template.json`: the SAM template with every local `CodeUri`/`ContentUri`
pointing at its zip, the runtime and architecture the build was made for, and no
`Metadata.BuildMethod` (the zips are final). `sam deploy --template-file build/template.json`
and `kestrel_local.cfn_deploy` deploy it as it is: no `sam build`, nothing rebuilt on the way.
"""

from __future__ import annotations

import copy
import hashlib
import json
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
BUILT_TEMPLATE = "template.json"


@dataclass(frozen=True, slots=True)
class Artifact:
    """A built zip one resource of the template ships."""

    logical_id: str
    property: str
    path: Path


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where an uploaded artifact lives."""

    bucket: str
    key: str


def _code_uri(resource: Mapping[str, Any], globals_section: Mapping[str, Any]) -> Any:
    kind = resource["Type"]
    defaults = globals_section.get(_GLOBALS_SECTION.get(kind, ""), {}) or {}
    return (resource.get("Properties") or {}).get(
        ARTIFACT_PROPERTIES[kind], defaults.get(ARTIFACT_PROPERTIES[kind])
    )


def write_built_template(
    template: Mapping[str, Any],
    zips: Mapping[str, Path],
    out: Path,
    runtime: str,
    architecture: str,
) -> Path:
    """Write `out`: the template on the built zips (paths relative to `out`), for this runtime.

    `zips` maps every function and layer logical id with a local code folder to its zip.
    """
    built = copy.deepcopy(dict(template))
    function_globals = (built.get("Globals") or {}).get("Function")
    if isinstance(function_globals, dict):
        function_globals.pop("CodeUri", None)
        if "Runtime" in function_globals:
            function_globals["Runtime"] = runtime
        if "Architectures" in function_globals:
            function_globals["Architectures"] = [architecture]
    for logical_id, resource in built["Resources"].items():
        prop = ARTIFACT_PROPERTIES.get(resource["Type"])
        if prop is None:
            continue
        properties = resource.setdefault("Properties", {})
        value = _code_uri(template["Resources"][logical_id], template.get("Globals") or {})
        if isinstance(value, str) and not value.startswith("s3://"):
            if logical_id not in zips:
                raise TemplateError(f"{logical_id}.{prop}: no built zip for {value!r}")
            properties[prop] = (
                Path(zips[logical_id]).resolve().relative_to(out.parent.resolve()).as_posix()
            )
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            if "CompatibleRuntimes" in properties:
                properties["CompatibleRuntimes"] = [runtime]
            if "CompatibleArchitectures" in properties:
                properties["CompatibleArchitectures"] = [architecture]
            metadata = resource.get("Metadata") or {}
            for key in ("BuildMethod", "BuildArchitecture"):
                metadata.pop(key, None)
            if "Metadata" in resource and not metadata:
                del resource["Metadata"]
        else:
            if "Runtime" in properties:
                properties["Runtime"] = runtime
            if "Architectures" in properties:
                properties["Architectures"] = [architecture]
    out.write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
    return out


def built_artifacts(template: Mapping[str, Any], template_dir: Path) -> list[Artifact]:
    """Every function and layer zip a built template names locally; folders are refused."""
    globals_section = template.get("Globals") or {}
    found: list[Artifact] = []
    for logical_id, resource in template["Resources"].items():
        prop = ARTIFACT_PROPERTIES.get(resource["Type"])
        if prop is None:
            continue
        value = _code_uri(resource, globals_section)
        if not isinstance(value, str) or value.startswith("s3://"):
            continue  # already an S3 location (a mapping or an s3:// URI)
        path = (template_dir / value).resolve()
        if path.is_dir():
            raise TemplateError(
                f"{logical_id}.{prop}: {value!r} is a source folder; deploy the built template "
                f"(`make build` writes build/{BUILT_TEMPLATE})"
            )
        if not path.is_file():
            raise TemplateError(f"{logical_id}.{prop}: {path} does not exist (run `make build`)")
        found.append(Artifact(logical_id, prop, path))
    return found


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
    """Upload every zip (creating the bucket if needed); their locations by logical id."""
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
        data = artifact.path.read_bytes()
        key = artifact_key(artifact.logical_id, data, prefix)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        locations[artifact.logical_id] = S3Location(bucket, key)
    return locations


# CloudFormation takes at most 51,200 bytes of TemplateBody (AWS and LocalStack alike); a
# longer template goes by TemplateURL from the artifact bucket, as `sam deploy` does.
MAX_TEMPLATE_BODY = 51_200


def template_source(clients: AwsClients, bucket: str, body: str) -> dict[str, str]:
    """CreateStack's ``TemplateBody``, or a ``TemplateURL`` in `bucket` for a long template."""
    if len(body.encode()) <= MAX_TEMPLATE_BODY:
        return {"TemplateBody": body}
    key = artifact_key("template", body.encode(), "templates/").replace(".zip", ".json")
    clients.client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode())
    if clients.endpoint:
        # Path style on the endpoint; moto reads a URL as path style only when it names
        # "localhost" (else it takes the host's first label for the bucket).
        endpoint = clients.endpoint.rstrip("/").replace("://127.0.0.1:", "://localhost:")
        return {"TemplateURL": f"{endpoint}/{bucket}/{key}"}
    return {"TemplateURL": f"https://{bucket}.s3.{clients.region}.amazonaws.com/{key}"}
