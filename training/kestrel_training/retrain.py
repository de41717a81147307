"""Periodic retraining: train a challenger, promote it if it beats the champion, export.

One round (`run_once`):

1. train with `kestrel_training.train.train_once` (in process, default options). That
   registers a new ``kestrel-fraud`` version with the alias ``challenger``;
2. read the champion's test metrics from the MLflow registry (alias ``champion`` → its
   run's ``test.*`` metrics). A champion trained on other feature definitions (feature-set
   hash) counts as no champion, because scorers would refuse it anyway;
3. `decide`: promote when there is no champion, or when the challenger's test Average
   Precision beats the champion's by at least ``--min-improvement`` (default 0: any gain;
   a tie keeps the champion);
4. export the champion (new or kept) to ``layers/model/`` and, with ``--bucket``, to
   ``s3://<bucket>/models/<version>/`` with the active pointer (`registry.export_champion`).
   Exporting an unchanged champion again is harmless: scorers only swap when the
   pointer's version changes.

Each round ends with one ``retrain:`` line saying what happened.

    python -m kestrel_training.retrain --once [--bucket B] [--min-improvement 0.005]
    python -m kestrel_training.retrain --every 604800 [--bucket B]    # until SIGINT/SIGTERM

With ``--every`` the first round starts at once; the sleep between rounds wakes on
SIGINT/SIGTERM. A signal during a round lets that round finish (a second signal stops the
process at once). A failed round is logged and the loop waits for the next one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from kestrel.features import FEATURE_SET_HASH
from kestrel_training import registry, tracking
from kestrel_training.datasets import utc_now_iso

METRIC = "average_precision"  # the figure a challenger must improve (test week, as logged)
TEST_PREFIX = "test."  # how train.py names the test-week metrics of a run in MLflow
Log = Callable[[str], None]


@dataclass(frozen=True)
class Decision:
    """Whether to promote the challenger, and why (``champion_ap`` None: no champion)."""

    promote: bool
    reason: str
    challenger_ap: float
    champion_ap: float | None = None


@dataclass(frozen=True)
class Challenger:
    """The version a training round registered, with its test-week metrics."""

    version: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Champion:
    """The registry's current champion, with its test-week metrics and feature-set hash."""

    version: str
    metrics: Mapping[str, float]
    feature_set_hash: str | None = None


@dataclass(frozen=True)
class Steps:
    """What a round does, injectable so the loop can be tested without training."""

    train: Callable[[], Challenger]
    champion: Callable[[], Champion | None]
    promote: Callable[[str], object]
    export: Callable[[], str]  # exports the champion; returns "v<n> to <where>"


def decide(
    challenger_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    min_improvement: float = 0.0,
) -> Decision:
    """Promote when there is no champion, or when the challenger's AP is higher by at least
    `min_improvement` (and strictly higher). A challenger without a finite AP never wins; a
    champion without one always loses."""
    new = float(challenger_metrics.get(METRIC, math.nan))
    if not math.isfinite(new):
        return Decision(False, f"challenger has no finite test {METRIC}", new)
    old = None if champion_metrics is None else champion_metrics.get(METRIC)
    if old is None or not math.isfinite(old):
        reason = "no champion" if champion_metrics is None else f"champion has no test {METRIC}"
        return Decision(True, reason, new)
    gain = new - old
    # The tolerance keeps 0.71 - 0.70 (0.00999...) from failing a 0.01 threshold.
    if gain > 0 and gain >= min_improvement - 1e-12:
        return Decision(True, f"AP gain {gain:+.4f} >= {min_improvement:.4f}", new, old)
    if gain <= 0:
        return Decision(False, f"AP {gain:+.4f}: not better", new, old)
    return Decision(False, f"AP gain {gain:+.4f} < {min_improvement:.4f} needed", new, old)


def run_once(steps: Steps, min_improvement: float, log: Log) -> Decision:
    """Train, compare with the champion, promote if better, export the champion."""
    challenger = steps.train()
    champion = steps.champion()
    if champion is not None and champion.feature_set_hash not in (None, FEATURE_SET_HASH):
        log(
            f"champion v{champion.version} was trained on feature-set hash "
            f"{champion.feature_set_hash}, not the running {FEATURE_SET_HASH}: treated as absent"
        )
        champion = None
    decision = decide(challenger.metrics, champion.metrics if champion else None, min_improvement)
    against = (
        f"champion v{champion.version} AP {decision.champion_ap:.4f}"
        if champion is not None and decision.champion_ap is not None
        else f"champion {'v' + champion.version if champion else 'none'}"
    )
    summary = f"challenger v{challenger.version} AP {decision.challenger_ap:.4f} vs {against}"
    if decision.promote:
        steps.promote(challenger.version)
        outcome = f"promoted v{challenger.version} to @{registry.CHAMPION}"
    else:
        kept = f"v{champion.version}" if champion else "none"
        outcome = f"kept champion {kept}"
    exported = ""
    if decision.promote or champion is not None:
        exported = f"; exported {steps.export()}"
    log(f"{summary} ({decision.reason}): {outcome}{exported}")
    return decision


def run_every(round_: Callable[[], object], every: float, stop: threading.Event, log: Log) -> int:
    """Run `round_` now and then every `every` seconds until `stop` is set; return the count.

    The wait is `stop.wait`, so setting `stop` (a signal handler does) ends it at once.
    """
    rounds = 0
    while not stop.is_set():
        rounds += 1
        try:
            round_()
        except Exception:  # noqa: BLE001 - a scheduler outlives a failed round, and says so
            log(f"round {rounds} failed:\n{traceback.format_exc().rstrip()}")
        if stop.is_set():
            break
        log(f"next round in {every:g}s (SIGINT/SIGTERM stops)")
        if stop.wait(every):
            break
    log(f"stopped after {rounds} round(s)")
    return rounds


def install_stop_handlers(stop: threading.Event, log: Log) -> Callable[[], None]:
    """SIGINT/SIGTERM set `stop`; a second signal gets the default behaviour. Returns a
    function that restores the previous handlers (main thread only, as `signal` requires)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        log(f"{signal.Signals(signum).name}: stopping after the current round or sleep")
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def registry_steps(
    store: tracking.Tracking,
    train: Callable[[], Challenger],
    dest: Path,
    bucket: str | None,
) -> Steps:
    """The real steps on the local MLflow store in `store`."""

    def champion() -> Champion | None:
        client = tracking.client(store)
        if not client.search_registered_models(filter_string=f"name = '{tracking.MODEL_NAME}'"):
            return None
        aliases = client.get_registered_model(tracking.MODEL_NAME).aliases or {}
        if registry.CHAMPION not in aliases:
            return None
        version = client.get_model_version(tracking.MODEL_NAME, str(aliases[registry.CHAMPION]))
        run = client.get_run(version.run_id)
        metrics = {
            k.removeprefix(TEST_PREFIX): float(v)
            for k, v in run.data.metrics.items()
            if k.startswith(TEST_PREFIX)
        }
        return Champion(str(version.version), metrics, run.data.tags.get("feature_set_hash"))

    def export() -> str:
        version = registry.export_champion(dest, bucket, store)["model_version"]
        s3 = f" and s3://{bucket}/{registry.S3_PREFIX}/{version}/" if bucket else ""
        return f"v{version} to {dest}{s3}"

    return Steps(train, champion, lambda v: registry.promote(v, store), export)


def training_step(
    tracking_dir: Path | None, seed: int, quick: bool, progress: Log
) -> Callable[[], Challenger]:
    """Train once in process (train.py's API) and return the registered challenger."""

    def train() -> Challenger:
        from kestrel_training.candidates import QUICK_GRID
        from kestrel_training.train import TrainOptions, report, train_once

        base = TrainOptions(tracking_dir=tracking_dir)
        options = dataclasses.replace(
            base,
            sim_config=dataclasses.replace(base.sim_config, seed=seed),
            grid=QUICK_GRID if quick else base.grid,
        )
        result = train_once(options, progress)
        print(report([result]), flush=True)
        if result.version is None:
            raise RuntimeError("training did not register a model version")
        return Challenger(result.version, result.metrics.as_dict())

    return train


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line: --once | --every SECONDS, [--bucket B] [--min-improvement X]."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.retrain")
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="one round, then exit")
    when.add_argument("--every", type=_positive, metavar="SECONDS", help="a round every SECONDS")
    parser.add_argument("--bucket", help="also export to s3://BUCKET/models/<version>/")
    parser.add_argument(
        "--min-improvement", type=_non_negative, default=0.0, metavar="X",
        help="test AP gain the challenger needs over the champion (default 0: any gain)",
    )  # fmt: skip
    parser.add_argument("--dest", type=Path, default=registry.DEFAULT_DEST, help="model layer")
    parser.add_argument("--tracking-dir", type=Path, help="MLflow store (default mlruns/)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--quick", action="store_true", help="tiny grid (smoke runs)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    def log(line: str) -> None:
        print(f"{utc_now_iso()} retrain: {line}", flush=True)

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {line}", file=sys.stderr, flush=True)

    store = tracking.configure(args.tracking_dir)
    train = training_step(args.tracking_dir, args.seed, args.quick, progress)
    steps = registry_steps(store, train, args.dest, args.bucket)
    if args.once:
        run_once(steps, args.min_improvement, log)
        return 0
    stop = threading.Event()
    restore = install_stop_handlers(stop, log)
    try:
        run_every(lambda: run_once(steps, args.min_improvement, log), args.every, stop, log)
    finally:
        restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
