"""The model registry's lifecycle: promote a version to ``champion`` and export the champion.

`promote(version)` moves the ``champion`` alias of ``kestrel-fraud`` to `version`.

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

The pointer is written last, so a scorer that follows it always finds both files.

    python -m kestrel_training.registry promote 3
    python -m kestrel_training.registry export [--dest layers/model] [--bucket B]
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


def upload(folder: Path, manifest: dict[str, Any], bucket: str, s3: Any = None) -> str:
    """Upload model and manifest under models/<version>/, then move the active pointer."""
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")  # honours AWS_ENDPOINT_URL
    version = manifest["model_version"]
    keys = {}
    for name in (tracking.ONNX_FILE, MANIFEST_FILE):
        key = f"{S3_PREFIX}/{version}/{name}"
        s3.put_object(Bucket=bucket, Key=key, Body=(folder / name).read_bytes())
        keys[name] = key
    pointer = {
        "model_name": manifest["model_name"],
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
    """Command line: promote VERSION | export [--dest D] [--bucket B]."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.registry")
    parser.add_argument("--tracking-dir", type=Path, help="MLflow store (default mlruns/)")
    commands = parser.add_subparsers(dest="command", required=True)
    promote_cmd = commands.add_parser("promote", help="move the champion alias to VERSION")
    promote_cmd.add_argument("version")
    export_cmd = commands.add_parser("export", help="write the champion to the model layer")
    export_cmd.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    export_cmd.add_argument("--bucket", help="also upload to s3://BUCKET/models/<version>/")
    export_cmd.add_argument("--alias", default=CHAMPION)
    args = parser.parse_args(argv)
    store = tracking.configure(args.tracking_dir)
    if args.command == "promote":
        version = promote(args.version, store)
        print(f"{tracking.MODEL_NAME} version {version} is now @{CHAMPION}")
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


if __name__ == "__main__":
    sys.exit(main())
