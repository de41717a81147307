"""The transaction simulator of the *Fraud Detection Handbook* (Le Borgne et al.), vectorised.

Customers and terminals live on a 100 x 100 square; a customer pays at the terminals within
`radius`. Each day a customer makes Poisson(mean_nb_tx_per_day) transactions at a normally
distributed time of day (draws outside the day are dropped), with a normal amount around the
customer's mean (a negative draw is replaced by U(0, 2 * mean)). Frauds come from three
scenarios: (1) amount > 220; (2) two terminals a day are compromised for the next 28 days;
(3) three customers a day are compromised for the next 14 days, and a third of their
transactions in that window are multiplied by 5. A later scenario's label wins, as in the book.

Everything is drawn from one `numpy.random.SeedSequence(config.seed)`, split into independent
streams (profiles, each day's transactions, each scenario, label jitter), so the same seed
gives identical frames and turning a scenario off leaves the other draws unchanged.

`simulate(config)` returns a `Simulation`; `Simulation.write(dir)` / `read(dir)` store it as
parquet files plus a `manifest.json`. ``python -m kestrel_training.simulator --out DIR`` runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAY_S = 86_400
TIME_OF_DAY_MEAN_S = 43_200.0
TIME_OF_DAY_STD_S = 20_000.0
SCENARIO1_AMOUNT = 220.0
SCENARIO2_TERMINALS_PER_DAY = 2
SCENARIO2_DAYS = 28
SCENARIO3_CUSTOMERS_PER_DAY = 3
SCENARIO3_DAYS = 14
SCENARIO3_MULTIPLIER = 5.0
PROGRESS_CHUNK_DAYS = 30
FILES = ("transactions", "labels", "customers", "terminals", "compromises")
TRANSACTION_COLUMNS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "amount",
    "event_time",
    "is_fraud",
    "fraud_scenario",
)
LABEL_COLUMNS = ("transaction_id", "customer_id", "terminal_id", "is_fraud", "label_time")

Progress = Callable[[str], None]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class SimulatorConfig:
    """Parameters of one simulation (the book's defaults)."""

    n_customers: int = 5000
    n_terminals: int = 10000
    n_days: int = 183
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    label_delay_s: int = 604_800
    label_delay_jitter_s: int = 0  # when > 0, each label comes U{0..jitter} s later still
    fraud_scenarios: tuple[int, ...] = (1, 2, 3)

    @property
    def start_ms(self) -> int:
        """Midnight UTC of `start_date` in epoch milliseconds."""
        return int(pd.Timestamp(self.start_date, tz="UTC").value // 1_000_000)


@dataclass
class Simulation:
    """The simulator's output frames (see the module docstring for their meaning)."""

    config: SimulatorConfig
    transactions: pd.DataFrame
    labels: pd.DataFrame
    customers: pd.DataFrame
    terminals: pd.DataFrame
    compromises: pd.DataFrame  # scenario, entity_id, start_time, end_time (ms, end exclusive)

    def write(self, directory: str | Path) -> Path:
        """Write the frames as parquet files and `manifest.json`; return the manifest path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            getattr(self, name).to_parquet(out / f"{name}.parquet", index=False)
        digest = hashlib.sha256((out / "transactions.parquet").read_bytes()).hexdigest()
        manifest = {
            "generator": "kestrel_training.simulator",
            "config": dataclasses.asdict(self.config),
            "rows": {name: len(getattr(self, name)) for name in FILES},
            "frauds": int(self.transactions["is_fraud"].sum()),
            "fraud_rate": fraud_rate(self.transactions),
            "transactions_sha256": digest,
        }
        path = out / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        return path


def read(directory: str | Path) -> Simulation:
    """Read a simulation written by `Simulation.write`."""
    src = Path(directory)
    manifest = json.loads((src / "manifest.json").read_text())
    raw = manifest["config"]
    config = SimulatorConfig(**{**raw, "fraud_scenarios": tuple(raw["fraud_scenarios"])})
    frames = {name: pd.read_parquet(src / f"{name}.parquet") for name in FILES}
    return Simulation(config=config, **frames)


def read_frame(directory: str | Path, name: str) -> pd.DataFrame:
    """One frame (e.g. "transactions", "labels") of a written simulation."""
    return pd.read_parquet(Path(directory) / f"{name}.parquet")


def time_of_day_keep_probability() -> float:
    """P(0 < time of day < 86400) for the normal time-of-day draw."""
    return math.erf(TIME_OF_DAY_MEAN_S / (TIME_OF_DAY_STD_S * math.sqrt(2)))


def expected_transactions_per_day(config: SimulatorConfig) -> float:
    """E[transactions a day] when every customer has a terminal: 2 x customers x P(kept)."""
    return 2.0 * config.n_customers * time_of_day_keep_probability()


def fraud_rate(transactions: pd.DataFrame) -> float:
    """Share of fraudulent transactions (0 for an empty frame)."""
    return float(transactions["is_fraud"].mean()) if len(transactions) else 0.0


def _ids(prefix: str, index: IntArray, width: int) -> np.ndarray[Any, np.dtype[np.str_]]:
    """`prefix` + zero-padded `index`, e.g. C000042."""
    return np.strings.add(prefix, np.strings.zfill(index.astype(np.str_), width))


def _concat(arrays: list[IntArray]) -> IntArray:
    """The arrays joined end to end as int64 (empty when there are none)."""
    return np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)


def _width(n: int, minimum: int) -> int:
    """Digits needed for ids 0..n-1, at least `minimum`."""
    return max(minimum, len(str(max(n - 1, 0))))


def _available_terminals(
    customers: pd.DataFrame, terminals: pd.DataFrame, radius: float
) -> tuple[IntArray, IntArray]:
    """Terminals within `radius` of each customer, as CSR (offsets per customer, flat indices)."""
    cx, cy = customers["x"].to_numpy(), customers["y"].to_numpy()
    tx, ty = terminals["x"].to_numpy(), terminals["y"].to_numpy()
    counts: list[IntArray] = []
    flat: list[IntArray] = []
    block = max(1, 2_000_000 // max(len(tx), 1))
    for lo in range(0, len(cx), block):
        d2 = (cx[lo : lo + block, None] - tx[None, :]) ** 2 + (cy[lo : lo + block, None] - ty) ** 2
        near = d2 < radius * radius
        counts.append(near.sum(axis=1).astype(np.int64))
        flat.append(np.nonzero(near)[1].astype(np.int64))
    count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    return offsets, np.concatenate(flat) if flat else np.zeros(0, np.int64)


def _profiles(
    config: SimulatorConfig, seeds: list[np.random.SeedSequence]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer and terminal profile tables."""
    c_rng, t_rng = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    n, m = config.n_customers, config.n_terminals
    mean_amount = c_rng.uniform(5, 100, n)
    customers = pd.DataFrame(
        {
            "customer_id": _ids("C", np.arange(n), _width(n, 6)),
            "x": c_rng.uniform(0, 100, n),
            "y": c_rng.uniform(0, 100, n),
            "mean_amount": mean_amount,
            "std_amount": mean_amount / 2,
            "mean_nb_tx_per_day": c_rng.uniform(0, 4, n),
        }
    )
    terminals = pd.DataFrame(
        {
            "terminal_id": _ids("TERM", np.arange(m), _width(m, 5)),
            "x": t_rng.uniform(0, 100, m),
            "y": t_rng.uniform(0, 100, m),
        }
    )
    return customers, terminals


def _day(
    rng: np.random.Generator, customers: pd.DataFrame, offsets: IntArray, flat: IntArray
) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
    """One day's transactions: customer index, terminal index, amount, time of day (s)."""
    mean_amount = customers["mean_amount"].to_numpy()
    n_avail = np.diff(offsets)
    cust = np.repeat(np.arange(len(customers)), rng.poisson(customers["mean_nb_tx_per_day"]))
    tod = np.trunc(rng.normal(TIME_OF_DAY_MEAN_S, TIME_OF_DAY_STD_S, len(cust))).astype(np.int64)
    mean = mean_amount[cust]
    amount = rng.normal(mean, mean / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    pick = rng.integers(0, np.maximum(n_avail[cust], 1))
    keep = (tod > 0) & (tod < DAY_S) & (n_avail[cust] > 0)
    cust, pick, amount, tod = cust[keep], pick[keep], amount[keep], tod[keep]
    return cust, flat[offsets[cust] + pick], np.round(amount, 2), tod


def _scenario2(
    rng: np.random.Generator, config: SimulatorConfig, term: IntArray, day: IntArray
) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], list[tuple[int, int]]]:
    """Transactions at compromised terminals, and the (terminal, day) compromises."""
    compromised = np.zeros((config.n_terminals, config.n_days), dtype=bool)
    events: list[tuple[int, int]] = []
    per_day = min(SCENARIO2_TERMINALS_PER_DAY, config.n_terminals)
    for d in range(config.n_days):
        chosen = rng.choice(config.n_terminals, per_day, replace=False)
        compromised[chosen, d : d + SCENARIO2_DAYS] = True
        events.extend((int(t), d) for t in chosen)
    return compromised[term, day], events


def _scenario3(
    rng: np.random.Generator, config: SimulatorConfig, cust: IntArray, day: IntArray
) -> tuple[IntArray, list[tuple[int, int]]]:
    """Indices of transactions whose amount is multiplied, and the (customer, day) compromises."""
    order = np.argsort(cust, kind="stable")
    starts = np.searchsorted(cust[order], np.arange(config.n_customers + 1))
    taken = np.zeros(len(cust), dtype=bool)
    events: list[tuple[int, int]] = []
    per_day = min(SCENARIO3_CUSTOMERS_PER_DAY, config.n_customers)
    for d in range(config.n_days):
        chosen = rng.choice(config.n_customers, per_day, replace=False)
        events.extend((int(c), d) for c in chosen)
        window = np.concatenate([order[starts[c] : starts[c + 1]] for c in chosen])
        window = np.sort(window[(day[window] >= d) & (day[window] < d + SCENARIO3_DAYS)])
        free = window[~taken[window]]
        k = min(len(window) // 3, len(free))
        taken[rng.choice(free, k, replace=False)] = True
    return np.flatnonzero(taken), events


def simulate(config: SimulatorConfig | None = None, progress: Progress | None = None) -> Simulation:
    """Run the simulator; `progress` gets one line per chunk of simulated days."""
    config = config or SimulatorConfig()
    seeds = np.random.SeedSequence(config.seed).spawn(6)
    customers, terminals = _profiles(config, seeds)
    offsets, flat = _available_terminals(customers, terminals, config.radius)
    customers["n_terminals"] = np.diff(offsets)
    ints: dict[str, list[IntArray]] = {"cust": [], "term": [], "tod": [], "day": []}
    amounts: list[FloatArray] = []
    t0 = time.perf_counter()
    for d, seed in enumerate(seeds[2].spawn(config.n_days)):
        c, t, a, s = _day(np.random.default_rng(seed), customers, offsets, flat)
        for key, values in zip(ints, (c, t, s, np.full(len(c), d, np.int64)), strict=True):
            ints[key].append(values)
        amounts.append(a)
        if progress and ((d + 1) % PROGRESS_CHUNK_DAYS == 0 or d + 1 == config.n_days):
            done = sum(len(a) for a in amounts)
            progress(
                f"simulated days {d + 1}/{config.n_days}: {done:,} transactions "
                f"({time.perf_counter() - t0:.1f}s)"
            )
    cols = {key: _concat(values) for key, values in ints.items()}
    event_time = config.start_ms + (cols["day"] * DAY_S + cols["tod"]) * 1000
    order = np.argsort(event_time, kind="stable")  # ties: day, customer, draw order
    cust, term, day = cols["cust"][order], cols["term"][order], cols["day"][order]
    event_time = event_time[order]
    amount: FloatArray = (np.concatenate(amounts) if amounts else np.zeros(0))[order]

    scenario = np.zeros(len(cust), dtype=np.int8)
    compromises: list[tuple[int, str, int]] = []
    if 1 in config.fraud_scenarios:
        scenario[amount > SCENARIO1_AMOUNT] = 1
    if 2 in config.fraud_scenarios:
        hit, events2 = _scenario2(np.random.default_rng(seeds[3]), config, term, day)
        scenario[hit] = 2
        ids = terminals["terminal_id"].to_numpy()
        compromises += [(2, str(ids[t]), d) for t, d in events2]
    if 3 in config.fraud_scenarios:
        hit3, events3 = _scenario3(np.random.default_rng(seeds[4]), config, cust, day)
        amount[hit3] = np.round(amount[hit3] * SCENARIO3_MULTIPLIER, 2)
        scenario[hit3] = 3
        ids = customers["customer_id"].to_numpy()
        compromises += [(3, str(ids[c]), d) for c, d in events3]

    transactions = pd.DataFrame(
        {
            "transaction_id": _ids("T", np.arange(len(cust)), 10),
            "customer_id": customers["customer_id"].to_numpy()[cust],
            "terminal_id": terminals["terminal_id"].to_numpy()[term],
            "amount": amount.astype(np.float64),
            "event_time": event_time.astype(np.int64),
            "is_fraud": (scenario > 0).astype(np.int8),
            "fraud_scenario": scenario,
        }
    )
    return Simulation(
        config=config,
        transactions=transactions,
        labels=_labels(transactions, config, np.random.default_rng(seeds[5])),
        customers=customers,
        terminals=terminals,
        compromises=_compromise_frame(compromises, config),
    )


def _labels(tx: pd.DataFrame, config: SimulatorConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One delayed label per transaction, in label-time order."""
    delay = np.full(len(tx), config.label_delay_s * 1000, dtype=np.int64)
    if config.label_delay_jitter_s > 0:
        delay += rng.integers(0, config.label_delay_jitter_s + 1, len(tx)) * 1000
    labels = pd.DataFrame(
        {
            "transaction_id": tx["transaction_id"],
            "customer_id": tx["customer_id"],
            "terminal_id": tx["terminal_id"],
            "is_fraud": tx["is_fraud"].to_numpy().astype(bool),
            "label_time": tx["event_time"].to_numpy() + delay,
        }
    )
    return labels.sort_values(["label_time", "transaction_id"], ignore_index=True)


def _compromise_frame(rows: list[tuple[int, str, int]], config: SimulatorConfig) -> pd.DataFrame:
    """The compromise events as a frame with their active time range (ms, end exclusive)."""
    scenario = np.array([r[0] for r in rows], dtype=np.int8)
    start_day = np.array([r[2] for r in rows], dtype=np.int64)
    length = np.where(scenario == 2, SCENARIO2_DAYS, SCENARIO3_DAYS)
    return pd.DataFrame(
        {
            "scenario": scenario,
            "entity_id": pd.array([r[1] for r in rows], dtype="str"),
            "start_time": config.start_ms + start_day * DAY_S * 1000,
            "end_time": config.start_ms + (start_day + length) * DAY_S * 1000,
        }
    )


def summary(sim: Simulation, seconds: float | None = None) -> dict[str, Any]:
    """The headline figures of a simulation (what the CLI prints)."""
    tx = sim.transactions
    days = max(sim.config.n_days, 1)
    scenarios = tx["fraud_scenario"].value_counts()
    out: dict[str, Any] = {
        "transactions": len(tx),
        "frauds": int(tx["is_fraud"].sum()),
        "fraud_rate": round(fraud_rate(tx), 6),
        "transactions_per_day": round(len(tx) / days, 1),
        "frauds_per_day": round(int(tx["is_fraud"].sum()) / days, 1),
        "by_scenario": {str(s): int(scenarios.get(s, 0)) for s in (1, 2, 3)},
    }
    if seconds is not None:
        out["seconds"] = round(seconds, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: simulate and write a folder, report progress and a summary on stderr."""
    parser = argparse.ArgumentParser(prog="python -m kestrel_training.simulator")
    defaults = SimulatorConfig()
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--customers", type=int, default=defaults.n_customers)
    parser.add_argument("--terminals", type=int, default=defaults.n_terminals)
    parser.add_argument("--days", type=int, default=defaults.n_days)
    parser.add_argument("--start", default=defaults.start_date, help="first day, YYYY-MM-DD")
    parser.add_argument("--radius", type=float, default=defaults.radius)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--label-delay-s", type=int, default=defaults.label_delay_s)
    parser.add_argument("--label-delay-jitter-s", type=int, default=0)
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        n_customers=args.customers,
        n_terminals=args.terminals,
        n_days=args.days,
        start_date=args.start,
        radius=args.radius,
        seed=args.seed,
        label_delay_s=args.label_delay_s,
        label_delay_jitter_s=args.label_delay_jitter_s,
    )
    t0 = time.perf_counter()
    sim = simulate(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    manifest = sim.write(args.out)
    figures = summary(sim, time.perf_counter() - t0)
    print(f"wrote {manifest.parent}", file=sys.stderr)
    for key, value in figures.items():
        print(f"  {key}: {value}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
