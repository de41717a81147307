"""The propensity model's registry lifecycle: promote a version, export one to its own layer.

The fraud model's conventions (`kestrel_training.registry`), under its own names:
``kestrel-propensity`` in the same local MLflow store, aliases ``challenger`` (set by
training) and ``champion``; the layer folder ``layers/propensity-model/propensity/``
(``model.onnx`` + ``manifest.json``, on Lambda ``/opt/propensity/``); and with a bucket::

    s3://<bucket>/models/propensity/<version>/model.onnx
    s3://<bucket>/models/propensity/<version>/manifest.json
    s3://<bucket>/models/propensity/active.json   {"model_name", "version", "model_key",
                                                   "manifest_key", "feature_set_hash", ...}

written pointer last, so a scorer that follows it (`kestrel.adapters.onnx_propensity`)
always finds both files. Promotion has no evidence check yet (the fraud model's compares
live decisions): `promote` moves the alias it is told to.

    python -m kestrel_training.propensity_registry export [--alias champion] [--bucket B]
    python -m kestrel_training.propensity_registry promote 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kestrel.click_features import CLICK_FEATURE_NAMES, CLICK_FEATURE_SET_HASH
from kestrel_training import tracking
from kestrel_training.datasets import utc_now_iso

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "kestrel-propensity"
DEFAULT_DEST = ROOT / "layers" / "propensity-model" / "propensity"
S3_PREFIX = "models/propensity"
ACTIVE_POINTER = f"{S3_PREFIX}/active.json"
MANIFEST_FILE = "manifest.json"
CHAMPION = "champion"
SUMMARY_KEYS = (
    "feature_names", "feature_set_hash", "onnx", "model", "label", "training_range",
    "test_range", "metrics", "ceiling_metrics", "validation_metrics", "decision_thresholds",
    "reference_distributions", "dataset",
)  # fmt: skip


def promote(version: str | int, store: tracking.Tracking, alias: str = CHAMPION) -> str:
    """Move `alias` of kestrel-propensity to `version` (which must exist); return it."""
    client = tracking.client(store)
    found = client.get_model_version(MODEL_NAME, str(version))
    client.set_registered_model_alias(MODEL_NAME, alias, found.version)
    return str(found.version)


def build_manifest(
    version: str, summary: dict[str, Any], run_id: str, alias: str
) -> dict[str, Any]:
    """The exported manifest: the training summary plus version and provenance."""
    return {
        "model_name": MODEL_NAME,
        "model_version": version,
        "alias": alias,
        "mlflow_run_id": run_id,
        "exported_at": utc_now_iso(),
        **{key: summary[key] for key in SUMMARY_KEYS},
    }


def export(
    dest: str | Path = DEFAULT_DEST,
    alias: str = CHAMPION,
    bucket: str | None = None,
    store: tracking.Tracking | None = None,
    s3: Any = None,
) -> dict[str, Any]:
    """Write the aliased version's model.onnx and manifest.json to `dest`; upload if a bucket."""
    store = store or tracking.configure(experiment=MODEL_NAME)
    import mlflow

    version = tracking.client(store).get_model_version_by_alias(MODEL_NAME, alias)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{MODEL_NAME}@{alias}", dst_path=tmp, tracking_uri=store.uri
            )
        )
        summary = json.loads((local / tracking.SUMMARY_FILE).read_text())
        manifest = build_manifest(str(version.version), summary, str(version.run_id), alias)
        shutil.copyfile(local / tracking.ONNX_FILE, out / tracking.ONNX_FILE)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if bucket:
        upload(out, manifest, bucket, s3)
    return manifest


def upload(folder: Path, manifest: dict[str, Any], bucket: str, s3: Any = None) -> str:
    """Upload model and manifest under models/propensity/<version>/, then the pointer."""
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")  # honours AWS_ENDPOINT_URL
    version = str(manifest["model_version"])
    keys = {}
    for name in (tracking.ONNX_FILE, MANIFEST_FILE):
        keys[name] = f"{S3_PREFIX}/{version}/{name}"
        s3.put_object(Bucket=bucket, Key=keys[name], Body=(folder / name).read_bytes())
    pointer = {
        "model_name": MODEL_NAME,
        "version": version,
        "model_key": keys[tracking.ONNX_FILE],
        "manifest_key": keys[MANIFEST_FILE],
        "feature_set_hash": manifest["feature_set_hash"],
        "updated_at": utc_now_iso(),
    }
    s3.put_object(
        Bucket=bucket,
        Key=ACTIVE_POINTER,
        Body=json.dumps(pointer).encode(),
        ContentType="application/json",
    )
    return ACTIVE_POINTER


def main(argv: list[str] | None = None) -> int:
    """Command line: export [--dest D --alias A --bucket B] | promote VERSION [--alias A]."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.propensity_registry")
    parser.add_argument("--tracking-dir", type=Path, help="MLflow store (default mlruns/)")
    commands = parser.add_subparsers(dest="command", required=True)
    export_cmd = commands.add_parser("export", help="write a version to the propensity layer")
    export_cmd.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    export_cmd.add_argument("--alias", default=CHAMPION)
    export_cmd.add_argument("--bucket", help=f"also upload to s3://BUCKET/{S3_PREFIX}/<version>/")
    promote_cmd = commands.add_parser("promote", help="move an alias (default champion)")
    promote_cmd.add_argument("version")
    promote_cmd.add_argument("--alias", default=CHAMPION)
    args = parser.parse_args(argv)
    store = tracking.configure(args.tracking_dir, experiment=MODEL_NAME)
    if args.command == "promote":
        version = promote(args.version, store, args.alias)
        print(f"{MODEL_NAME} version {version} is now @{args.alias}")
        return 0
    manifest = export(args.dest, args.alias, args.bucket, store)
    if manifest["feature_set_hash"] != CLICK_FEATURE_SET_HASH or manifest["feature_names"] != list(
        CLICK_FEATURE_NAMES
    ):
        print(
            "warning: the exported model was trained on other clickstream features; "
            "scorers will refuse it",
            file=sys.stderr,
        )
    where = f" and s3://{args.bucket}/{S3_PREFIX}/" if args.bucket else ""
    print(
        f"exported {MODEL_NAME} version {manifest['model_version']} (@{args.alias}) "
        f"to {args.dest}{where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
