"""MLflow on a local backend only: a SQLite file and an artifact folder under ``mlruns/``.

`configure(directory)` points MLflow's tracking and registry at
``sqlite:///<directory>/mlflow.db`` with artifacts in ``<directory>/artifacts`` and turns
telemetry off (MLFLOW_DISABLE_TELEMETRY, DO_NOT_TRACK) before MLflow is imported, so
nothing leaves the machine. Runs go to the experiment ``kestrel-fraud``; models are
registered under the name ``kestrel-fraud``.

The UI over the same store (what ``make mlflow-ui`` runs)::

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/mlflow ui --host 127.0.0.1 --port 5001 \
        --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "mlruns"
EXPERIMENT = "kestrel-fraud"
MODEL_NAME = "kestrel-fraud"
MODEL_ARTIFACT_DIR = "model"
SUMMARY_FILE = "training_summary.json"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Tracking:
    """Where the local MLflow store lives."""

    directory: Path
    uri: str
    experiment_id: str


def offline_environment() -> None:
    """Environment that keeps MLflow local and silent (call before importing mlflow)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def configure(directory: str | Path | None = None, experiment: str = EXPERIMENT) -> Tracking:
    """Point MLflow at the local store in `directory` (default: mlruns/ in the repo); runs go
    to `experiment` (created when missing)."""
    offline_environment()
    import mlflow

    folder = Path(directory or os.environ.get("KESTREL_MLRUNS_DIR") or DEFAULT_DIR).resolve()
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_REGISTRY_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(
            experiment, artifact_location=(folder / "artifacts").as_uri()
        )
    else:
        experiment_id = found.experiment_id
    return Tracking(folder, uri, experiment_id)


def client(tracking: Tracking) -> Any:
    """An MlflowClient on the local store."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(
    folder: Path,
    labels: np.ndarray,
    scores: np.ndarray,
    cp_per_day: Sequence[float],
    days: list[str],
) -> list[Path]:
    """ROC, precision-recall and CP@100-per-day plots as PNG files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    paths = []
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    for name, (x, y, xlabel, ylabel) in {
        "roc.png": (fpr, tpr, "false positive rate", "true positive rate"),
        "pr.png": (recall, precision, "recall", "precision"),
    }.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(x, y)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"test week: {name[:-4].upper()}")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=80)
        plt.close(fig)
        paths.append(folder / name)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(days, cp_per_day)
    ax.set(ylabel="card precision@100", title="CP@100 per test day", ylim=(0, 1))
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(folder / "cp_at_100_per_day.png", dpi=80)
    plt.close(fig)
    paths.append(folder / "cp_at_100_per_day.png")
    return paths


def log_run(
    tracking: Tracking,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    onnx_bytes: bytes,
    summary: dict[str, Any],
    dicts: dict[str, Any],
    plot_files: Sequence[Path] = (),
    tags: dict[str, str] | None = None,
) -> str:
    """Log one training run (params, metrics, model folder, JSON, plots); return the run id."""
    import mlflow

    with (
        mlflow.start_run(experiment_id=tracking.experiment_id, run_name=run_name) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.set_tags(tags or {})
        model_dir = Path(tmp) / MODEL_ARTIFACT_DIR
        model_dir.mkdir()
        (model_dir / ONNX_FILE).write_bytes(onnx_bytes)
        (model_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_artifacts(str(model_dir), artifact_path=MODEL_ARTIFACT_DIR)
        for name, value in dicts.items():
            mlflow.log_dict(value, name)
        for path in plot_files:
            mlflow.log_artifact(str(path), artifact_path="plots")
        return str(run.info.run_id)


def register(
    tracking: Tracking,
    run_id: str,
    alias: str = "challenger",
    model_name: str = MODEL_NAME,
    description: str = "Kestrel fraud model (ONNX, FEATURE_NAMES order)",
) -> str:
    """Register the run's model folder as a new `model_name` version with `alias`."""
    mlflow_client = client(tracking)
    if not mlflow_client.search_registered_models(filter_string=f"name = '{model_name}'"):
        mlflow_client.create_registered_model(model_name, description=description)
    run = mlflow_client.get_run(run_id)
    version = mlflow_client.create_model_version(
        model_name, f"{run.info.artifact_uri}/{MODEL_ARTIFACT_DIR}", run_id=run_id
    )
    mlflow_client.set_registered_model_alias(model_name, alias, version.version)
    return str(version.version)
