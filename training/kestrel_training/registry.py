"""The model registry's lifecycle: promote a version to ``champion`` and export the champion.

`promote(version)` moves the ``champion`` alias of ``kestrel-fraud`` to `version`. The
command line's ``promote`` first checks that the version is better than the champion
(`kestrel_training.promotion`) and refuses otherwise, unless ``--force``.

`export_champion(dest)` writes the champion to the model layer folder (default
``layers/model/``): ``model.onnx`` and ``manifest.json``. The manifest holds the model
version, the ordered feature names, the feature-set hash, the training range, the test
metrics, the decision thresholds (rule in `kestrel_training.manifest`) and the reference
feature distributions (quantile bins) for drift checks, plus the ONNX input/output names.

With a bucket, the export also uploads to S3 (boto3; ``AWS_ENDPOINT_URL`` selects the
local emulator)::

    s3://<bucket>/models/<version>/model.onnx
    s3://<bucket>/models/<version>/manifest.json
    s3://<bucket>/models/active.json   {"version", "model_key", "manifest_key", ...}

The pointer is written last, so a scorer that follows it always finds both files. A
``challenger`` entry already in the pointer is kept (unless it names the new champion).

`set_challenger` uploads a version the same way and names it in the pointer's
``challenger`` entry, beside the champion: the stream then shadow-scores every transaction
with it (`kestrel.adapters.onnx_challenger`); `clear_challenger` removes the entry.

    python -m kestrel_training.registry promote 3 [--force]
    python -m kestrel_training.registry export [--dest layers/model] [--bucket B]
    python -m kestrel_training.registry shadow --bucket B [--alias challenger] [--off]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel_training import tracking
from kestrel_training.datasets import utc_now_iso

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEST = ROOT / "layers" / "model"
CHAMPION, CHALLENGER = "champion", "challenger"
MANIFEST_FILE = "manifest.json"
S3_PREFIX = "models"
ACTIVE_POINTER = f"{S3_PREFIX}/active.json"
CHALLENGER_ENTRY = "challenger"


def promote(version: str | int, store: tracking.Tracking | None = None) -> str:
    """Move the champion alias to `version` (which must exist); return the version."""
    store = store or tracking.configure()
    client = tracking.client(store)
    model_version = client.get_model_version(tracking.MODEL_NAME, str(version))
    client.set_registered_model_alias(tracking.MODEL_NAME, CHAMPION, model_version.version)
    return str(model_version.version)


def build_manifest(
    version: str, summary: dict[str, Any], run_id: str, alias: str = CHAMPION
) -> dict[str, Any]:
    """The exported manifest: the training summary plus version and provenance."""
    if summary.get("feature_names") != list(FEATURE_NAMES):
        print("warning: the champion was trained on other feature names", file=sys.stderr)
    return {
        "model_name": tracking.MODEL_NAME,
        "model_version": version,
        "alias": alias,
        "mlflow_run_id": run_id,
        "exported_at": utc_now_iso(),
        "feature_names": summary["feature_names"],
        "feature_set_hash": summary["feature_set_hash"],
        "onnx": summary["onnx"],
        "model": summary["model"],
        "training_range": summary["training_range"],
        "test_range": summary["test_range"],
        "metrics": summary["metrics"],
        "validation_metrics": summary["validation_metrics"],
        "decision_thresholds": summary["decision_thresholds"],
        "reference_distributions": summary["reference_distributions"],
        "dataset": summary["dataset"],
    }


def export_champion(
    dest: str | Path = DEFAULT_DEST,
    bucket: str | None = None,
    store: tracking.Tracking | None = None,
    s3: Any = None,
    alias: str = CHAMPION,
) -> dict[str, Any]:
    """Write the aliased version's model.onnx and manifest.json to `dest`; upload if a bucket."""
    store = store or tracking.configure()
    import mlflow

    client = tracking.client(store)
    version = client.get_model_version_by_alias(tracking.MODEL_NAME, alias)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{tracking.MODEL_NAME}@{alias}",
                dst_path=tmp,
                tracking_uri=store.uri,
            )
        )
        summary = json.loads((local / tracking.SUMMARY_FILE).read_text())
        manifest = build_manifest(str(version.version), summary, str(version.run_id), alias)
        shutil.copyfile(local / tracking.ONNX_FILE, out / tracking.ONNX_FILE)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if bucket:
        upload(out, manifest, bucket, s3)
    return manifest


def _s3(s3: Any) -> Any:
    if s3 is None:
        from kestrel_local.aws import endpoint_session

        s3 = endpoint_session().client("s3")  # honours AWS_ENDPOINT_URL
    return s3


def _put_version(folder: Path, version: str, bucket: str, s3: Any) -> dict[str, str]:
    """Upload model and manifest under models/<version>/; return their keys."""
    keys = {}
    for name in (tracking.ONNX_FILE, MANIFEST_FILE):
        key = f"{S3_PREFIX}/{version}/{name}"
        s3.put_object(Bucket=bucket, Key=key, Body=(folder / name).read_bytes())
        keys[name] = key
    return keys


def read_pointer(bucket: str, s3: Any = None) -> dict[str, Any] | None:
    """The active pointer, or None when the bucket has none yet (other errors raise)."""
    s3 = _s3(s3)
    try:
        body = s3.get_object(Bucket=bucket, Key=ACTIVE_POINTER)["Body"].read()
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404"):
            return None
        raise
    pointer = json.loads(body)
    if not isinstance(pointer, dict):
        raise ValueError(f"s3://{bucket}/{ACTIVE_POINTER} is not a JSON object")
    return pointer


def _write_pointer(pointer: dict[str, Any], bucket: str, s3: Any) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=ACTIVE_POINTER,
        Body=json.dumps(pointer).encode(),
        ContentType="application/json",
    )


def upload(folder: Path, manifest: dict[str, Any], bucket: str, s3: Any = None) -> str:
    """Upload model and manifest under models/<version>/, then move the active pointer."""
    s3 = _s3(s3)
    version = manifest["model_version"]
    keys = _put_version(folder, version, bucket, s3)
    pointer: dict[str, Any] = {
        "model_name": manifest["model_name"],
        "version": version,
        "model_key": keys[tracking.ONNX_FILE],
        "manifest_key": keys[MANIFEST_FILE],
        "feature_set_hash": manifest["feature_set_hash"],
        "updated_at": utc_now_iso(),
    }
    challenger = (read_pointer(bucket, s3) or {}).get(CHALLENGER_ENTRY)
    if isinstance(challenger, dict) and str(challenger.get("version")) != str(version):
        pointer[CHALLENGER_ENTRY] = challenger  # still shadow-scored beside the new champion
    _write_pointer(pointer, bucket, s3)
    return ACTIVE_POINTER


def set_challenger(
    folder: Path, manifest: dict[str, Any], bucket: str, s3: Any = None
) -> dict[str, Any]:
    """Upload a version and name it as the pointer's challenger; return the new pointer."""
    s3 = _s3(s3)
    pointer = read_pointer(bucket, s3)
    if pointer is None:
        raise ValueError(
            f"s3://{bucket}/{ACTIVE_POINTER} does not exist: export the champion first "
            f"(make model-layer MODEL_BUCKET={bucket})"
        )
    version = str(manifest["model_version"])
    if version == str(pointer.get("version")):
        raise ValueError(f"version {version} is the champion already: nothing to shadow-score")
    keys = _put_version(folder, version, bucket, s3)
    pointer[CHALLENGER_ENTRY] = {
        "version": version,
        "model_key": keys[tracking.ONNX_FILE],
        "manifest_key": keys[MANIFEST_FILE],
        "feature_set_hash": manifest["feature_set_hash"],
        "updated_at": utc_now_iso(),
    }
    _write_pointer(pointer, bucket, s3)
    return pointer


def clear_challenger(bucket: str, s3: Any = None) -> str | None:
    """Remove the pointer's challenger entry (shadow scoring stops); return its version."""
    s3 = _s3(s3)
    pointer = read_pointer(bucket, s3)
    if pointer is None or CHALLENGER_ENTRY not in pointer:
        return None
    entry = pointer.pop(CHALLENGER_ENTRY)
    _write_pointer(pointer, bucket, s3)
    return str(entry.get("version")) if isinstance(entry, dict) else None


def shadow(alias: str, bucket: str, store: tracking.Tracking, off: bool = False) -> str:
    """Set the aliased version as the bucket's challenger (or, `off`, remove it); say what."""
    if off:
        removed = clear_challenger(bucket)
        return f"challenger {removed} removed" if removed else "no challenger was set"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_champion(Path(tmp), None, store, alias=alias)
        set_challenger(Path(tmp), manifest, bucket)
    version = manifest["model_version"]
    return (
        f"{tracking.MODEL_NAME} version {version} (@{alias}) is the challenger in "
        f"s3://{bucket}/{ACTIVE_POINTER}: the stream shadow-scores it from its next pointer check"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: promote VERSION [--force] | export [...] | shadow --bucket B [--off]."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.registry")
    parser.add_argument("--tracking-dir", type=Path, help="MLflow store (default mlruns/)")
    commands = parser.add_subparsers(dest="command", required=True)
    promote_cmd = commands.add_parser(
        "promote", help="move the champion alias to VERSION if it is better (or --force)"
    )
    promote_cmd.add_argument("version")
    promote_cmd.add_argument(
        "--force", action="store_true", help="promote even without evidence that it is better"
    )
    export_cmd = commands.add_parser("export", help="write the champion to the model layer")
    export_cmd.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    export_cmd.add_argument("--bucket", help="also upload to s3://BUCKET/models/<version>/")
    export_cmd.add_argument("--alias", default=CHAMPION)
    shadow_cmd = commands.add_parser(
        "shadow", help="name the aliased version as the challenger the stream shadow-scores"
    )
    shadow_cmd.add_argument("--bucket", required=True, help="the models bucket (MODEL_BUCKET)")
    shadow_cmd.add_argument("--alias", default=CHALLENGER)
    shadow_cmd.add_argument("--off", action="store_true", help="remove the challenger instead")
    args = parser.parse_args(argv)
    store = tracking.configure(args.tracking_dir)
    if args.command == "promote":
        return _promote(args.version, store, args.force)
    if args.command == "shadow":
        try:
            print(shadow(args.alias, args.bucket, store, off=args.off))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    manifest = export_champion(args.dest, args.bucket, store, alias=args.alias)
    if manifest["feature_set_hash"] != FEATURE_SET_HASH:
        print(
            f"warning: exported model's feature-set hash {manifest['feature_set_hash']} differs "
            f"from the running definitions' {FEATURE_SET_HASH}; scorers will refuse it",
            file=sys.stderr,
        )
    where = (
        f" and s3://{args.bucket}/{S3_PREFIX}/{manifest['model_version']}/" if args.bucket else ""
    )
    print(
        f"exported {tracking.MODEL_NAME} version {manifest['model_version']} "
        f"(@{args.alias}) to {args.dest}{where}"
    )
    return 0


def _promote(version: str, store: tracking.Tracking, force: bool) -> int:
    """`make promote`: move the alias if the evidence allows it (or forced); 1 if refused."""
    from kestrel_training.promotion import promote_checked

    moved, check = promote_checked(version, store, force)
    evidence = "" if check.evidence == "none" else f" ({check.evidence})"
    if not moved:
        print(
            f"refused: {tracking.MODEL_NAME} version {check.version} stays out, "
            f"v{check.champion} stays @{CHAMPION}: {check.reason}{evidence}. "
            "Promote anyway with --force (make promote VERSION=n FORCE=1).",
            file=sys.stderr,
        )
        return 1
    forced = " (forced)" if not check.allowed else ""
    print(
        f"{tracking.MODEL_NAME} version {check.version} is now @{CHAMPION}{forced}: "
        f"{check.reason}{evidence}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
