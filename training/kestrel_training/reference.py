"""Recompute an exported model's reference distributions from the rows it was trained on.

    python -m kestrel_training.reference [--model-dir layers/model] [--seed 0] [--sim-dir DIR]

The manifest records its training and test ranges and the sha256 of both datasets. This
tool simulates the default configuration with `--seed` (cached under ``.run/sim/`` as
``make train`` does), rebuilds those rows with the shared feature definitions, refuses
unless both fingerprints equal the manifest's, scores the test rows with the folder's own
``model.onnx`` (onnxruntime, as the scorers do) and rewrites ``reference_distributions``
(`kestrel_training.manifest`). Nothing else in the manifest changes, and ``model.onnx`` is
only read: the model, its metrics and its thresholds stay as they were. A model exported
before the percentile grids and the score reference existed gets them this way, without
retraining.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kestrel.adapters.onnx_model import OnnxModel
from kestrel.features import FEATURE_NAMES
from kestrel_training.candidates import features
from kestrel_training.datasets import build_from_simulation, fingerprint
from kestrel_training.manifest import reference_distributions
from kestrel_training.protocol import Split, train_test
from kestrel_training.simulator import SimulatorConfig
from kestrel_training.train import TrainOptions, simulation_folder

ROOT = Path(__file__).resolve().parents[2]


class FingerprintMismatch(RuntimeError):
    """The rebuilt rows are not the rows the model was trained and tested on."""


def split_of(manifest: dict[str, Any]) -> Split:
    """The manifest's train/test split (default lengths, its training start)."""
    split = Split(train_start=manifest["training_range"]["train_start"])
    recorded = {**manifest["training_range"], **manifest["test_range"]}
    if split.describe() != recorded:
        raise FingerprintMismatch(f"split {split.describe()} is not the manifest's {recorded}")
    return split


def recompute(
    model_dir: Path,
    seed: int = 0,
    sim_dir: Path | None = None,
    progress: Any = print,
    config: SimulatorConfig | None = None,
) -> dict[str, Any]:
    """The manifest of `model_dir` with recomputed reference distributions (not written).

    `config` is the simulation the model was trained on (default: the default one, `seed`).
    """
    manifest: dict[str, Any] = json.loads((model_dir / "manifest.json").read_text())
    split = split_of(manifest)
    options = TrainOptions(sim_config=config or SimulatorConfig(seed=seed), sim_dir=sim_dir)
    folder = simulation_folder(options, progress)
    first, last = split.describe()["train_start"], split.describe()["test_end"]
    progress(f"dataset: point-in-time features {first}..{last} from {folder}")
    train, test = train_test(build_from_simulation(folder, first, last), split)
    for name, frame in (("train", train), ("test", test)):
        got, want = fingerprint(frame)["sha256"], manifest["dataset"][name]["sha256"]
        if got != want:
            raise FingerprintMismatch(
                f"{name} rows: sha256 {got[:12]} is not the manifest's {want[:12]}: not the "
                f"simulation this model was trained on (another --seed?)"
            )
    progress(f"dataset: train {len(train):,} and test {len(test):,} rows match the manifest")
    scores = OnnxModel(model_dir / "model.onnx", manifest).predict_proba(features(test))
    manifest["reference_distributions"] = reference_distributions(
        train, FEATURE_NAMES, scores=np.asarray(scores)
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: recompute and rewrite the manifest's reference distributions."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.reference")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "layers" / "model")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed of the model")
    parser.add_argument("--sim-dir", type=Path, help="simulation cache (default .run/sim)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {line}", file=sys.stderr, flush=True)

    try:
        manifest = recompute(args.model_dir, args.seed, args.sim_dir, progress)
    except FingerprintMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = args.model_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path}: reference distributions of model {manifest['model_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
