"""Unit tests for the Fraud Detection Handbook transaction simulator (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kestrel_training.simulator import (
    LABEL_COLUMNS,
    TRANSACTION_COLUMNS,
    Simulation,
    SimulatorConfig,
    main,
    read,
    simulate,
    time_of_day_keep_probability,
)

TINY = SimulatorConfig(n_customers=100, n_terminals=200, n_days=10, seed=3)
SMALL = SimulatorConfig(n_customers=500, n_terminals=1000, n_days=60, seed=11)
DAY_MS = 86_400_000
# The book's rules, written out here (not imported) so a changed constant fails the tests.
SCENARIO2_TERMINALS_PER_DAY, SCENARIO2_DAYS = 2, 28
SCENARIO3_CUSTOMERS_PER_DAY, SCENARIO3_DAYS = 3, 14


@pytest.fixture(scope="module")
def small() -> Simulation:
    """The 500-customer, 1000-terminal, 60-day simulation most tests inspect."""
    return simulate(SMALL)


@pytest.fixture(scope="module")
def small_without_scenario3() -> Simulation:
    """The same simulation with scenario 3 turned off (its draws are independent)."""
    return simulate(dataclasses.replace(SMALL, fraud_scenarios=(1, 2)))


def frames(sim: Simulation) -> list[pd.DataFrame]:
    """Every frame of a simulation."""
    return [sim.transactions, sim.labels, sim.customers, sim.terminals, sim.compromises]


def ramp_days(n_days: int, window: int) -> int:
    """Sum over days of how many daily compromises are active (windows start on day 0)."""
    return sum(min(d + 1, window) for d in range(n_days))


def normal_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_simulate_same_seed_gives_identical_frames() -> None:
    first, second = simulate(TINY), simulate(TINY)
    for a, b in zip(frames(first), frames(second), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_simulate_different_seed_gives_different_transactions() -> None:
    other = simulate(dataclasses.replace(TINY, seed=TINY.seed + 1))
    base = simulate(TINY)
    assert not base.customers["x"].equals(other.customers["x"])
    assert not base.transactions["amount"].equals(other.transactions["amount"])


def test_simulate_transactions_have_exact_schema(small: Simulation) -> None:
    tx = small.transactions
    assert tuple(tx.columns) == TRANSACTION_COLUMNS
    for column in ("transaction_id", "customer_id", "terminal_id"):
        assert pd.api.types.is_string_dtype(tx[column]), column
    assert tx["amount"].dtype == np.float64
    assert tx["event_time"].dtype == np.int64
    assert tx["is_fraud"].dtype == np.int8
    assert tx["fraud_scenario"].dtype == np.int8
    assert tx["transaction_id"].str.fullmatch(r"T\d{10}").all()
    assert tx["transaction_id"].is_unique
    assert tx["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert tx["terminal_id"].str.fullmatch(r"TERM\d{5}").all()
    assert set(tx["is_fraud"].unique()) == {0, 1}
    assert set(tx["fraud_scenario"].unique()) == {0, 1, 2, 3}
    assert (tx["is_fraud"] == (tx["fraud_scenario"] > 0)).all()


def test_simulate_sorts_by_event_time_then_transaction_id(small: Simulation) -> None:
    tx = small.transactions
    assert tx["event_time"].is_monotonic_increasing
    expected = tx.sort_values(["event_time", "transaction_id"], ignore_index=True)
    pd.testing.assert_frame_equal(tx, expected)
    numbers = tx["transaction_id"].str[1:].astype(int)
    assert (numbers.to_numpy() == np.arange(len(tx))).all()


def test_simulate_amounts_are_non_negative_cents(small: Simulation) -> None:
    amount = small.transactions["amount"].to_numpy()
    assert (amount >= 0).all()
    assert np.allclose(amount * 100, np.round(amount * 100), rtol=0, atol=1e-6)


def test_simulate_amounts_follow_customer_normal_with_negative_redraw(small: Simulation) -> None:
    # amount/mean = 1 + Z/2, with Z < -2 (negative amount) redrawn as U(0, 2). Then
    # E = 1 + phi(2)/2 = 1.0270 and sd = 0.4735; clipping at 0 instead would give E = 1.0041,
    # and std = mean instead of mean/2 would give sd near 0.9. Tolerance: 0.01 on each.
    legit = small.transactions[small.transactions["fraud_scenario"] == 0]
    means = legit["customer_id"].map(small.customers.set_index("customer_id")["mean_amount"])
    ratio = legit["amount"] / means
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    tail = normal_tail(2.0)
    mean = 1 + phi2 / 2
    second = (1 - tail) * 1.25 + phi2 * 0.5 + tail * 4 / 3
    assert ratio.mean() == pytest.approx(mean, abs=0.01)
    assert ratio.std() == pytest.approx(math.sqrt(second - mean**2), abs=0.01)


def test_simulate_event_times_fall_inside_the_simulated_days(small: Simulation) -> None:
    event_time = small.transactions["event_time"].to_numpy()
    start = SMALL.start_ms
    assert start == 1_522_540_800_000  # 2018-04-01T00:00Z
    assert event_time.min() >= start
    assert event_time.max() < start + SMALL.n_days * DAY_MS
    time_of_day = (event_time - start) % DAY_MS
    assert (time_of_day > 0).all()  # draws at or below 0 s are discarded
    assert (time_of_day % 1000 == 0).all()
    # N(43200, 20000) s: the middle of the day is busiest and both edges are reached.
    hours = time_of_day // 3_600_000
    counts = np.bincount(hours, minlength=24)
    assert counts.argmax() in (11, 12)
    assert counts[0] > 0 and counts[23] > 0


def test_simulate_terminals_are_within_radius_of_customer(small: Simulation) -> None:
    tx = small.transactions
    cust = small.customers.set_index("customer_id")
    term = small.terminals.set_index("terminal_id")
    dx = cust.loc[tx["customer_id"], "x"].to_numpy() - term.loc[tx["terminal_id"], "x"].to_numpy()
    dy = cust.loc[tx["customer_id"], "y"].to_numpy() - term.loc[tx["terminal_id"], "y"].to_numpy()
    assert (np.hypot(dx, dy) < SMALL.radius).all()
    lonely = small.customers.loc[small.customers["n_terminals"] == 0, "customer_id"]
    assert not tx["customer_id"].isin(lonely).any()


def test_simulate_scenario1_frauds_are_amounts_over_220(small: Simulation) -> None:
    tx = small.transactions
    assert (tx.loc[tx["fraud_scenario"] == 1, "amount"] > 220).all()
    assert (tx.loc[tx["is_fraud"] == 0, "amount"] <= 220).all()


def test_simulate_scenario2_frauds_are_at_terminals_compromised_within_28_days(
    small: Simulation,
) -> None:
    tx = small.transactions
    comp = small.compromises[small.compromises["scenario"] == 2]
    assert len(comp) == SCENARIO2_TERMINALS_PER_DAY * SMALL.n_days
    assert ((comp["end_time"] - comp["start_time"]) == SCENARIO2_DAYS * DAY_MS).all()
    pairs = tx.merge(comp, left_on="terminal_id", right_on="entity_id")
    active = pairs[
        (pairs["event_time"] >= pairs["start_time"]) & (pairs["event_time"] < pairs["end_time"])
    ]
    in_window = set(active["transaction_id"])
    scenario2 = set(tx.loc[tx["fraud_scenario"] == 2, "transaction_id"])
    assert scenario2 and scenario2 <= in_window
    # Conversely every transaction in a window is fraud (scenario 3 may relabel it).
    assert set(tx.loc[tx["transaction_id"].isin(in_window), "fraud_scenario"]) <= {2, 3}


def test_simulate_scenario3_multiplies_a_third_of_compromised_transactions_by_5(
    small: Simulation, small_without_scenario3: Simulation
) -> None:
    tx, base = small.transactions, small_without_scenario3.transactions
    same = ["transaction_id", "customer_id", "terminal_id", "event_time"]
    pd.testing.assert_frame_equal(tx[same], base[same])
    hit = (tx["fraud_scenario"] == 3).to_numpy()
    assert hit.any()
    expected = np.round(base["amount"].to_numpy()[hit] * 5, 2)
    assert np.array_equal(tx["amount"].to_numpy()[hit], expected)
    assert np.array_equal(tx["amount"].to_numpy()[~hit], base["amount"].to_numpy()[~hit])
    comp = small.compromises[small.compromises["scenario"] == 3]
    assert len(comp) == SCENARIO3_CUSTOMERS_PER_DAY * SMALL.n_days
    assert ((comp["end_time"] - comp["start_time"]) == SCENARIO3_DAYS * DAY_MS).all()
    pairs = tx.merge(comp, left_on="customer_id", right_on="entity_id")
    active = pairs[
        (pairs["event_time"] >= pairs["start_time"]) & (pairs["event_time"] < pairs["end_time"])
    ]
    in_window = tx["transaction_id"].isin(set(active["transaction_id"]))
    assert not (hit & ~in_window.to_numpy()).any()
    # A third per daily draw, rounded down (floor costs up to ~1 of ~80 per draw); a customer
    # compromised twice within 14 days loses another third of the overlap: band 0.30-0.36.
    assert 0.30 <= hit.sum() / in_window.sum() <= 0.36


def test_simulate_labels_arrive_after_the_feedback_delay(small: Simulation) -> None:
    labels, tx = small.labels, small.transactions
    assert tuple(labels.columns) == LABEL_COLUMNS
    assert labels["is_fraud"].dtype == bool
    assert labels["label_time"].dtype == np.int64
    assert labels["label_time"].is_monotonic_increasing
    joined = labels.merge(tx, on="transaction_id", suffixes=("", "_tx"))
    assert len(joined) == len(tx) == len(labels)
    assert ((joined["label_time"] - joined["event_time"]) == 604_800_000).all()
    assert (joined["is_fraud"] == (joined["is_fraud_tx"] == 1)).all()
    assert (joined["customer_id"] == joined["customer_id_tx"]).all()


def test_simulate_label_jitter_adds_up_to_jitter_seconds() -> None:
    sim = simulate(dataclasses.replace(TINY, label_delay_s=60, label_delay_jitter_s=3600))
    joined = sim.labels.merge(sim.transactions, on="transaction_id")
    delay = joined["label_time"] - joined["event_time"]
    assert delay.min() >= 60_000
    assert delay.max() <= 3_660_000
    assert delay.nunique() > 100
    assert sim.labels["label_time"].is_monotonic_increasing


def test_simulate_transactions_per_day_match_profile_expectation(small: Simulation) -> None:
    # E[tx/day] = P(0 < N(43200, 20000) < 86400) x sum of mean_nb_tx_per_day over customers
    # with a terminal within r. Given the drawn profiles the total is Poisson (~58k, sd 0.4%):
    # tolerance 2% (dropping the time-of-day discard alone would be +3.2%).
    tx, cust = small.transactions, small.customers
    keep = time_of_day_keep_probability()
    assert keep == pytest.approx(0.9692, abs=1e-4)
    per_day = len(tx) / SMALL.n_days
    with_terminal = cust["n_terminals"] > 0
    given_profiles = keep * cust.loc[with_terminal, "mean_nb_tx_per_day"].sum()
    assert per_day == pytest.approx(given_profiles, rel=0.02)
    # Before the profiles are drawn: 2 x customers x P(has terminal) x keep; the mean of
    # 500 U(0, 4) has sd 2.6%, so 10% is a ~4 sd band.
    ex_ante = 2 * SMALL.n_customers * with_terminal.mean() * keep
    assert per_day == pytest.approx(ex_ante, rel=0.10)


def test_simulate_fraud_rates_match_the_three_scenarios(
    small: Simulation, small_without_scenario3: Simulation
) -> None:
    tx = small.transactions
    share = tx["fraud_scenario"].value_counts(normalize=True)
    # Scenario 2: on day d, 2 x min(d + 1, 28) terminals are compromised, each carrying on
    # average 1/n_terminals of the traffic -> 4.34% here. Overlaps and scenario 3 relabelling
    # take a few %, terminal traffic varies (sd ~7% over seeds): band +-25%.
    s2 = SCENARIO2_TERMINALS_PER_DAY * ramp_days(SMALL.n_days, SCENARIO2_DAYS)
    s2_expected = s2 / (SMALL.n_terminals * SMALL.n_days)
    assert share[2] == pytest.approx(s2_expected, rel=0.25)
    # Scenario 3: 3 x min(d + 1, 14) compromised customers, a third of their traffic -> 2.50%;
    # floors and overlaps take ~4%, customer rates vary (sd ~3%): band +-15%.
    s3 = SCENARIO3_CUSTOMERS_PER_DAY * ramp_days(SMALL.n_days, SCENARIO3_DAYS) / 3
    s3_expected = s3 / (SMALL.n_customers * SMALL.n_days)
    assert share[3] == pytest.approx(s3_expected, rel=0.15)
    # Scenario 1 alone (other scenarios off): P(N(m, m/2) > 220) summed over transactions.
    only1 = simulate(dataclasses.replace(SMALL, fraud_scenarios=(1,))).transactions
    means = only1["customer_id"].map(small.customers.set_index("customer_id")["mean_amount"])
    s1_expected = sum(normal_tail((220 - m) / (m / 2)) for m in means)
    assert (only1["fraud_scenario"] == 1).sum() == pytest.approx(s1_expected, rel=0.35)
    total = s1_expected / len(tx) + s2_expected + s3_expected
    assert tx["is_fraud"].mean() == pytest.approx(total, rel=0.2)
    assert small_without_scenario3.transactions["fraud_scenario"].max() == 2


def test_simulation_write_then_read_round_trips(small: Simulation, tmp_path: Path) -> None:
    manifest_path = small.write(tmp_path / "sim")
    back = read(tmp_path / "sim")
    assert back.config == SMALL
    for a, b in zip(frames(small), frames(back), strict=True):
        pd.testing.assert_frame_equal(a, b)
    manifest = json.loads(manifest_path.read_text())
    digest = hashlib.sha256((tmp_path / "sim" / "transactions.parquet").read_bytes()).hexdigest()
    assert manifest["transactions_sha256"] == digest
    assert manifest["rows"]["transactions"] == len(small.transactions)
    assert manifest["rows"]["labels"] == len(small.labels)
    assert manifest["fraud_rate"] == pytest.approx(small.transactions["is_fraud"].mean())
    assert manifest["config"]["n_customers"] == SMALL.n_customers


def test_simulator_cli_writes_folder_and_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--out", str(tmp_path), "--customers", "50", "--terminals", "100", "--days", "31"]
    assert main([*args, "--start", "2020-01-01", "--seed", "5", "--label-delay-s", "10"]) == 0
    err = capsys.readouterr().err
    assert "simulated days 30/31" in err and "simulated days 31/31" in err
    assert "transactions:" in err and "fraud_rate:" in err and "by_scenario:" in err
    sim = read(tmp_path)
    assert sim.config.start_date == "2020-01-01" and sim.config.seed == 5
    assert sim.transactions["event_time"].min() >= 1_577_836_800_000
    delay = sim.labels["label_time"].to_numpy() - sim.transactions["event_time"].to_numpy()
    assert (delay == 10_000).all()


@pytest.mark.slow
def test_simulate_default_config_matches_book_figures() -> None:
    tx = simulate().transactions
    assert len(tx) == pytest.approx(1_754_155, rel=0.03)
    assert tx["is_fraud"].mean() == pytest.approx(0.0084, rel=0.05)
    assert tx["is_fraud"].sum() / 183 == pytest.approx(85, rel=0.06)
