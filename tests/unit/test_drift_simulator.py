"""The drift check on simulated traffic: the same distribution stays quiet, shifts are flagged.

Reference: one week (7 days) of a small simulation (1,000 customers, 2,000 terminals, seed
0), its point-in-time features computed with the shared definitions (`datasets`), scored by
the shipped model, summarised by `kestrel_training.manifest` as the manifest's reference is.
Windows: the last day (24 hours, DriftFunction's default window) of simulations with the
same configuration and other seeds (a new population of customers and terminals, so a
harder test than one population over time), or with a shift applied before the features are
computed (inflated amounts, a card-testing attack). The false-alarm rate over 20 seeds is
printed; docs/drift.md quotes it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from drift_doubles import shipped_manifest
from kestrel_training.candidates import features
from kestrel_training.datasets import build_dataset, fingerprint
from kestrel_training.manifest import reference_distributions
from kestrel_training.protocol import Split, train_test
from kestrel_training.reference import FingerprintMismatch, recompute
from kestrel_training.simulator import SimulatorConfig, simulate

from kestrel.adapters.onnx_model import OnnxModel
from kestrel.adapters.scipy_drift import ScipyDriftStatistics
from kestrel.drift import DriftReport, Reference, ScoredWindow, Status, check
from kestrel.features import DAY_MS, FEATURE_NAMES
from kestrel.settings import default_model_dir

CONFIG = SimulatorConfig(n_customers=1000, n_terminals=2000, n_days=45)
FALSE_ALARM_SEEDS = range(1, 21)
Frames = tuple[pd.DataFrame, pd.DataFrame]
Shift = Callable[[pd.DataFrame, pd.DataFrame], Frames]
STATS = ScipyDriftStatistics()


def _day(index: int) -> str:
    return str((pd.Timestamp(CONFIG.start_date) + pd.Timedelta(days=index)).date().isoformat())


def _rows(seed: int, first: int, shift: Shift | None = None) -> pd.DataFrame:
    """Point-in-time feature rows of days `first`..the last of a simulation (shift applied)."""
    sim = simulate(SimulatorConfig(**{**CONFIG.__dict__, "seed": seed}))
    tx, labels = sim.transactions, sim.labels
    if shift is not None:
        tx, labels = shift(tx, labels)
    return build_dataset(tx, labels, _day(first), _day(CONFIG.n_days - 1))


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    """The shipped model (what scored the traffic)."""
    return OnnxModel.from_folder(default_model_dir())


@pytest.fixture(scope="module")
def reference(model: OnnxModel) -> Reference:
    """Seed 0's last week, summarised the way the manifest's reference is."""
    week = _rows(0, CONFIG.n_days - 7)
    manifest = shipped_manifest()
    manifest["reference_distributions"] = reference_distributions(
        week, FEATURE_NAMES, scores=model.predict_proba(features(week))
    )
    return Reference.from_manifest(manifest)


def _check(model: OnnxModel, reference: Reference, rows: pd.DataFrame) -> DriftReport:
    end = (CONFIG.start_ms // DAY_MS + CONFIG.n_days) * DAY_MS
    window = ScoredWindow(
        end - DAY_MS,
        end,
        rows[list(FEATURE_NAMES)].to_numpy(np.float64),
        model.predict_proba(features(rows)),
    )
    return check(window, reference, STATS, end)


def test_drift_same_distribution_false_alarm_rate_over_20_seeds(
    model: OnnxModel, reference: Reference, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = [_check(model, reference, _rows(s, CONFIG.n_days - 1)) for s in FALSE_ALARM_SEEDS]
    statuses = [r.status for r in reports]
    judged = [c for r in reports for c in r.features.values() if c.status is not Status.UNKNOWN]
    psi_max = max(c.psi or 0.0 for c in judged)
    d_max = max(c.ks_stat or 0.0 for c in judged)
    rows = [r.window.rows for r in reports]
    with capsys.disabled():
        print(
            f"\ndrift false alarms: {statuses.count(Status.DRIFT)}/{len(reports)} seeds drift, "
            f"{statuses.count(Status.WATCH)}/{len(reports)} watch (24 h windows of "
            f"{min(rows)}-{max(rows)} rows, {CONFIG.n_customers} customers); largest PSI "
            f"{psi_max:.3f}, largest KS D {d_max:.3f} among {len(judged)} judged features"
        )
    assert Status.UNKNOWN not in statuses
    assert statuses.count(Status.DRIFT) == 0
    assert statuses.count(Status.WATCH) <= 2  # measured: 0 of 20


def _inflate(tx: pd.DataFrame, labels: pd.DataFrame) -> Frames:
    """Every amount times 1.5 (prices went up, or a currency changed)."""
    return tx.assign(amount=(tx["amount"] * 1.5).round(2)), labels


def card_testing(share: float, seed: int = 7) -> Shift:
    """A new fraud pattern: `share` of the day's customers each get a burst of 6 tiny payments.

    The bursts (0.50 to 3.00, 30 s apart, at a terminal the customer uses) are labelled fraud.
    """

    def shift(tx: pd.DataFrame, labels: pd.DataFrame) -> Frames:
        rng = np.random.default_rng(seed)
        day_start = int(tx["event_time"].max()) // DAY_MS * DAY_MS
        today = tx[tx["event_time"] >= day_start]
        terminal = today.groupby("customer_id")["terminal_id"].first()
        chosen = rng.choice(terminal.index.to_numpy(), int(share * len(terminal)), replace=False)
        starts = day_start + rng.integers(0, DAY_MS - 600_000, len(chosen))
        burst = pd.DataFrame(
            [
                (f"X{i:06d}{k}", c, terminal[c], round(rng.uniform(0.5, 3.0), 2), t + k * 30_000)
                for i, (c, t) in enumerate(zip(chosen, starts, strict=True))
                for k in range(6)
            ],
            columns=["transaction_id", "customer_id", "terminal_id", "amount", "event_time"],
        ).assign(is_fraud=1, fraud_scenario=4)
        fraud = burst[["transaction_id", "customer_id", "terminal_id"]].assign(
            is_fraud=True, label_time=burst["event_time"] + 7 * DAY_MS
        )
        return pd.concat([tx, burst], ignore_index=True), pd.concat([labels, fraud])

    return shift


def test_drift_flags_amounts_inflated_by_half(model: OnnxModel, reference: Reference) -> None:
    report = _check(model, reference, _rows(101, CONFIG.n_days - 1, _inflate))
    assert report.status is Status.DRIFT
    assert {"TX_AMOUNT", "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW", "score"} <= set(report.drifted)
    # Ratios to the customer's own history do not move: every amount moved alike.
    assert "CUSTOMER_ID_AMOUNT_OVER_30DAY_AVG" not in report.drifted
    amount = report.features["TX_AMOUNT"]
    assert amount.ks_stat is not None and amount.ks_stat > 0.2


def test_drift_flags_a_card_testing_attack(
    model: OnnxModel, reference: Reference, capsys: pytest.CaptureFixture[str]
) -> None:
    curve = {
        share: _check(model, reference, _rows(202, CONFIG.n_days - 1, card_testing(share)))
        for share in (0.01, 0.05, 0.10)
    }
    with capsys.disabled():
        print(
            "\ndrift vs card testing (share of customers attacked): "
            + ", ".join(f"{s:.0%} {r.status.value} {len(r.drifted)}" for s, r in curve.items())
        )
    attack = curve[0.10]
    assert attack.status is Status.DRIFT
    expected = {"CUSTOMER_ID_NB_TX_10MIN_WINDOW", "CUSTOMER_ID_SECONDS_SINCE_PREV_TX", "TX_AMOUNT"}
    assert expected <= set(attack.drifted)


def test_drift_reference_recompute_matches_training_rows_or_refuses(tmp_path: Path) -> None:
    config = SimulatorConfig(n_customers=100, n_terminals=200, n_days=136, seed=4)
    split = Split()
    describe = split.describe()
    dataset = build_dataset(
        simulate(config).transactions, simulate(config).labels,
        describe["train_start"], describe["test_end"],
    )  # fmt: skip
    train, test = train_test(dataset, split)
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(Path(default_model_dir(), "model.onnx"), folder / "model.onnx")
    manifest = shipped_manifest()
    manifest["dataset"] = {"train": fingerprint(train), "test": fingerprint(test)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    out = recompute(folder, sim_dir=tmp_path / "sim", progress=lambda _: None, config=config)
    scores = OnnxModel.from_folder(folder).predict_proba(features(test))
    assert out["reference_distributions"] == reference_distributions(
        train, FEATURE_NAMES, scores=scores
    )
    assert {k: v for k, v in out.items() if k != "reference_distributions"} == {
        k: v for k, v in manifest.items() if k != "reference_distributions"
    }
    manifest["dataset"]["test"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FingerprintMismatch, match="test rows"):
        recompute(folder, sim_dir=tmp_path / "sim", progress=lambda _: None, config=config)
