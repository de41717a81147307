"""Train Kestrel's fraud model on the Handbook protocol, export it to ONNX, log and register it.

The flow: simulate (default config, cached under ``.run/sim/seed-<n>/``) → point-in-time
dataset (`datasets`) → prequential model selection over a small grid under a latency
budget (`candidates`: the best mean AP among candidates whose rows visit at most
NODE_VISIT_BUDGET tree nodes) → fit the best of each family on the training week and
evaluate on the test week (`protocol`) → convert the chosen model with skl2onnx and check
onnxruntime's probabilities against scikit-learn's on the whole test set (max abs diff
<= 1e-5, else fail) → time single-row (hot and cold) and batch inference → log to the
local MLflow store (`tracking`) and register the model as ``kestrel-fraud`` with alias
``challenger`` → print our figures beside the book's → write ``bench/results/train-<UTC>.json``.

    python -m kestrel_training.train                 # default simulation, seed 0
    python -m kestrel_training.train --seeds 0 1 2   # mean and spread over seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kestrel.features import FEATURE_NAMES, FEATURE_SET_HASH
from kestrel_training import tracking
from kestrel_training.candidates import (
    COLD_P99_BUDGET_US,
    DEFAULT_GRID,
    QUICK_GRID,
    Candidate,
    CandidateResult,
    best_per_family,
    features,
    fit,
    prequential_select,
    scores,
)
from kestrel_training.datasets import TARGET, build_from_simulation, day_date, fingerprint
from kestrel_training.manifest import decision_thresholds, reference_distributions
from kestrel_training.onnx_export import (
    INPUT_NAME,
    PARITY_TOLERANCE,
    PROBABILITIES,
    Latency,
    check_parity,
    measure_latency,
    to_onnx,
)
from kestrel_training.protocol import (
    Metrics,
    Split,
    comparison_table,
    evaluate,
    required_days,
    selection_folds,
    train_test,
)
from kestrel_training.simulator import SimulatorConfig, simulate

ROOT = Path(__file__).resolve().parents[2]
SIM_CACHE = ROOT / ".run" / "sim"
Progress = Callable[[str], None]


@dataclass
class TrainOptions:
    """Everything one training run needs (defaults: the book's protocol, default simulation)."""

    sim_config: SimulatorConfig = field(default_factory=SimulatorConfig)
    sim_dir: Path | None = None  # a simulation folder, or where to cache one
    split: Split = field(default_factory=Split)
    n_folds: int = 4
    grid: tuple[Candidate, ...] = DEFAULT_GRID
    n_jobs: int = 2
    tracking_dir: Path | None = None
    register: bool = True
    latency_calls: int = 2000
    plots: bool = True


@dataclass
class TrainResult:
    """What one training run produced."""

    seed: int
    chosen: Candidate
    metrics: Metrics
    by_family: list[tuple[str, Metrics]]
    selection: list[CandidateResult]
    parity_max_abs_diff: float
    latency: Latency
    fingerprint: dict[str, Any]
    run_id: str | None = None
    version: str | None = None
    seconds: float = 0.0
    plots: str = ""


def simulation_folder(options: TrainOptions, progress: Progress) -> Path:
    """The given simulation folder, else a cached one (simulated when missing or different)."""
    given = options.sim_dir
    if given is not None and (given / "manifest.json").exists():
        progress(f"simulation: using {given}")
        return given
    folder = (given or SIM_CACHE) / f"seed-{options.sim_config.seed}"
    wanted = json.loads(json.dumps(dataclasses.asdict(options.sim_config)))
    manifest = folder / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["config"] == wanted:
        progress(f"simulation: reusing {folder}")
        return folder
    progress(f"simulation: {options.sim_config} → {folder}")
    simulate(options.sim_config, progress=lambda line: progress(f"  {line}")).write(folder)
    return folder


def train_once(options: TrainOptions, progress: Progress) -> TrainResult:
    """Run the whole flow once (see the module docstring)."""
    started = time.perf_counter()
    folder = simulation_folder(options, progress)
    split, folds = options.split, selection_folds(options.split, options.n_folds)
    first, last = required_days([split, *folds])
    progress(f"dataset: point-in-time features {first}..{last} from {folder}")
    dataset = build_from_simulation(folder, first, last)
    dataset_fp = fingerprint(dataset)
    progress(f"dataset: {dataset_fp['rows']:,} rows, {dataset_fp['frauds']:,} frauds")
    train, test = train_test(dataset, split)
    if not len(train) or not len(test) or not train[TARGET].any():
        raise SystemExit(f"the simulation in {folder} does not cover {split.describe()}")

    progress(f"selection: {len(options.grid)} candidates x {len(folds)} prequential folds")
    seed = options.sim_config.seed
    results = prequential_select(dataset, folds, options.grid, options.n_jobs, seed, progress)
    chosen = results[0].candidate
    progress(
        f"selection: chose {chosen.name}, {results[0].mean_node_visits:,.0f} nodes/row"
        f" (budget {results[0].node_budget:,.0f}{'' if results[0].within_budget else ', OVER'})"
    )

    by_family: list[tuple[str, Metrics]] = []
    chosen_model: Any = None
    chosen_scores = np.zeros(0)
    for best in best_per_family(results):
        model = fit(best.candidate, train, options.n_jobs, seed)
        predicted = scores(model, test)
        by_family.append((best.candidate.name, evaluate(test, predicted)))
        progress(f"test: {best.candidate.name}: {_figures(by_family[-1][1])}")
        if best.candidate == chosen:
            chosen_model, chosen_scores = model, predicted
    metrics = dict(by_family)[chosen.name]

    onnx_bytes = to_onnx(chosen_model, len(FEATURE_NAMES))
    diff = check_parity(onnx_bytes, chosen_model, features(test))
    progress(
        f"onnx: {len(onnx_bytes) / 1e6:.1f} MB, parity max abs diff {diff:.2e} on {len(test):,}"
    )
    latency = measure_latency(onnx_bytes, features(test), calls=options.latency_calls)
    progress(f"onnx: {latency.describe()}")
    if (latency.cold_single_row_p99_us or 0.0) > COLD_P99_BUDGET_US:
        progress(f"onnx: WARNING cold single-row p99 over the {COLD_P99_BUDGET_US:g} µs budget")
    result = TrainResult(
        seed, chosen, metrics, by_family, results, diff, latency, dataset_fp, seconds=0.0
    )
    _log(options, result, onnx_bytes, train, test, chosen_scores, progress)
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _figures(m: Metrics) -> str:
    return f"AUC {m.auc_roc:.3f}, AP {m.average_precision:.3f}, CP@100 {m.card_precision_100:.3f}"


def training_summary(
    result: TrainResult,
    options: TrainOptions,
    train: Any,
    test: Any,
    test_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """The JSON stored beside model.onnx (the base of the exported manifest)."""
    chosen = next(r for r in result.selection if r.candidate == result.chosen)
    return {
        "model": {
            "family": result.chosen.family,
            "params": dict(result.chosen.params),
            "node_visits_per_row": round(chosen.mean_node_visits, 1),
            "node_visit_budget": chosen.node_budget,
        },
        "feature_names": list(FEATURE_NAMES),
        "feature_set_hash": FEATURE_SET_HASH,
        "onnx": {"input": INPUT_NAME, "output": PROBABILITIES, "fraud_column": 1},
        "training_range": {k: v for k, v in options.split.describe().items() if "train" in k},
        "test_range": {k: v for k, v in options.split.describe().items() if "test" in k},
        "metrics": {
            **result.metrics.as_dict(),
            "cp100_per_day": list(result.metrics.cp100_per_day),
        },
        "validation_metrics": {
            m: chosen.mean(m) for m in ("auc_roc", "average_precision", "card_precision_100")
        },
        "decision_thresholds": decision_thresholds(np.concatenate(chosen.validation_scores)),
        "reference_distributions": reference_distributions(
            train, FEATURE_NAMES, scores=test_scores
        ),
        "dataset": {
            "all": result.fingerprint,
            "train": fingerprint(train),
            "test": fingerprint(test),
        },
        "simulator": dataclasses.asdict(options.sim_config),
        "parity_max_abs_diff": result.parity_max_abs_diff,
        "latency": dataclasses.asdict(result.latency),
    }


def _log(
    options: TrainOptions,
    result: TrainResult,
    onnx_bytes: bytes,
    train: Any,
    test: Any,
    test_scores: np.ndarray,
    progress: Progress,
) -> None:
    """Log to MLflow, register with alias challenger when asked."""
    summary = training_summary(result, options, train, test, test_scores)
    store = tracking.configure(options.tracking_dir)
    params: dict[str, Any] = {
        "model_family": result.chosen.family,
        **{f"model.{k}": v for k, v in result.chosen.params},
        "seed": result.seed,
        "n_folds": options.n_folds,
        "grid": [c.name for c in options.grid],
        **{f"split.{k}": v for k, v in options.split.describe().items()},
        "feature_set_hash": FEATURE_SET_HASH,
        "dataset.sha256": result.fingerprint["sha256"],
        "dataset.rows": result.fingerprint["rows"],
        "dataset.range": f"{result.fingerprint['first_day']}..{result.fingerprint['last_day']}",
        "train.sha256": summary["dataset"]["train"]["sha256"],
        "train.rows": len(train),
        "test.rows": len(test),
    }
    metrics = {f"test.{k}": v for k, v in result.metrics.as_dict().items()}
    for k, v in summary["validation_metrics"].items():
        metrics[f"validation.{k}"] = v
    metrics.update(
        {
            "onnx.parity_max_abs_diff": result.parity_max_abs_diff,
            "onnx.single_row_median_us": result.latency.single_row_median_us,
            "onnx.single_row_p99_us": result.latency.single_row_p99_us,
            "onnx.cold_single_row_median_us": result.latency.cold_single_row_median_us or 0.0,
            "onnx.cold_single_row_p99_us": result.latency.cold_single_row_p99_us or 0.0,
            "onnx.batch_per_row_us": result.latency.batch_per_row_us,
        }
    )
    dicts = {
        "features.json": {"feature_names": list(FEATURE_NAMES), "hash": FEATURE_SET_HASH},
        "dataset_fingerprint.json": summary["dataset"],
        "selection.json": [
            {
                "candidate": r.candidate.name,
                "node_visits_per_row": r.mean_node_visits,
                "within_budget": r.within_budget,
                "folds": [m.as_dict() for m in r.folds],
            }
            for r in result.selection
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        plot_files: list[Path] = []
        if not options.plots:
            result.plots = "off"
        elif tracking.plots_available():
            days = [day_date(d).isoformat() for d in options.split.test_day_numbers]
            plot_files = tracking.write_plots(
                Path(tmp), test[TARGET].to_numpy(), test_scores, result.metrics.cp100_per_day, days
            )
            result.plots = "logged"
        else:
            result.plots = "skipped: matplotlib is not installed"
            progress("plots: skipped, matplotlib is not installed")
        result.run_id = tracking.log_run(
            store, f"seed-{result.seed}-{result.chosen.family}", params, metrics, onnx_bytes,
            summary, dicts, plot_files, {"feature_set_hash": FEATURE_SET_HASH},
        )  # fmt: skip
    progress(f"mlflow: run {result.run_id} in {store.directory}")
    if options.register:
        result.version = tracking.register(store, result.run_id)
        progress(f"mlflow: registered {tracking.MODEL_NAME} version {result.version} @challenger")


def aggregate(results: Sequence[TrainResult]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation over seeds of the chosen models' figures."""
    out = {}
    for metric in ("auc_roc", "average_precision", "card_precision_100"):
        values = [getattr(r.metrics, metric) for r in results]
        out[metric] = (float(np.mean(values)), float(np.std(values)))
    return out


def report(results: Sequence[TrainResult]) -> str:
    """The comparison with the book, per seed and (for several seeds) mean ± spread."""
    ours: list[tuple[str, Metrics]] = []
    for r in results:
        ours += [(f"seed {r.seed} {name}", m) for name, m in r.by_family if name != r.chosen.name]
        ours.append((f"seed {r.seed} chosen {r.chosen.name}", r.metrics))
    lines = [comparison_table(ours)]
    if len(results) > 1:
        spread = aggregate(results)
        lines.append(
            f"chosen models over seeds {[r.seed for r in results]}: "
            + ", ".join(f"{k} {mean:.3f} ± {std:.3f}" for k, (mean, std) in spread.items())
        )
    return "\n".join(lines)


def write_results(results: Sequence[TrainResult], options: TrainOptions) -> Path:
    """bench/results/train-<UTC>.json with the mean figures and per-seed detail."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.results_io import write_result

    spread = aggregate(results)
    params = {
        "seeds": [r.seed for r in results],
        "split": options.split.describe(),
        "n_folds": options.n_folds,
        "grid": [c.name for c in options.grid],
        "feature_set_hash": FEATURE_SET_HASH,
        "chosen": {str(r.seed): r.chosen.name for r in results},
        "per_seed": {str(r.seed): r.metrics.as_dict() for r in results},
        "std": {k: std for k, (_, std) in spread.items()},
        "model_versions": {str(r.seed): r.version for r in results},
        "seconds": {str(r.seed): r.seconds for r in results},
    }
    figures: dict[str, tuple[float, str]] = {
        "model.auc_roc": (round(spread["auc_roc"][0], 4), "ratio"),
        "model.average_precision": (round(spread["average_precision"][0], 4), "ratio"),
        "model.card_precision_100": (round(spread["card_precision_100"][0], 4), "ratio"),
        "model.onnx_single_row_us": (
            float(np.median([r.latency.single_row_median_us for r in results])),
            "µs",
        ),
        "model.onnx_single_row_cold_p99_us": (
            float(np.median([r.latency.cold_single_row_p99_us or 0.0 for r in results])),
            "µs",
        ),
        "model.onnx_batch500_per_row_us": (
            float(np.median([r.latency.batch_per_row_us for r in results])),
            "µs",
        ),
    }
    return write_result("train", params, figures)


def main(argv: list[str] | None = None) -> int:
    """Command line: train (optionally over several seeds), print, write results."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="simulator seeds")
    parser.add_argument("--sim-dir", type=Path, help=f"simulation cache (default {SIM_CACHE})")
    parser.add_argument("--folds", type=int, default=4, help="prequential folds")
    parser.add_argument("--quick", action="store_true", help="tiny grid (smoke runs)")
    parser.add_argument("--tracking-dir", type=Path, help="MLflow store (default mlruns/)")
    parser.add_argument("--no-register", action="store_true", help="log without registering")
    parser.add_argument("--no-results", action="store_true", help="skip bench/results JSON")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {line}", file=sys.stderr, flush=True)

    if len(args.seeds) > 1 and args.sim_dir and (args.sim_dir / "manifest.json").exists():
        parser.error("--sim-dir holds one simulation; with several --seeds give a cache folder")
    results = []
    base = TrainOptions(
        sim_dir=args.sim_dir,
        n_folds=args.folds,
        grid=QUICK_GRID if args.quick else DEFAULT_GRID,
        tracking_dir=args.tracking_dir,
    )
    for i, seed in enumerate(args.seeds):
        options = dataclasses.replace(
            base,
            sim_config=dataclasses.replace(base.sim_config, seed=seed),
            register=not args.no_register and i == 0,
        )
        progress(f"=== seed {seed} ===")
        results.append(train_once(options, progress))
    print(report(results))
    for r in results:
        print(
            f"seed {r.seed}: {r.chosen.name}, parity {r.parity_max_abs_diff:.2e} "
            f"(<= {PARITY_TOLERANCE:g}), ONNX {r.latency.single_row_median_us} µs/row single, "
            f"{r.latency.batch_per_row_us} µs/row batch {r.latency.batch_size}, plots {r.plots}, "
            f"model version {r.version or '-'}, {r.seconds}s"
        )
    if not args.no_results:
        print(f"results: {write_results(results, base)}")
    total = time.perf_counter() - t0
    print(f"total {total:.0f}s")
    return 0 if all(math.isfinite(r.metrics.average_precision) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
