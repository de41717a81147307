"""The Feast benchmark's Kestrel side: Feast's own virtualenv, the feature tables, the driver.

`ensure_feast` installs a pinned Feast with its Redis extra into ``.venv-feast`` (never the
project's dependencies) behind a stamp, so a second run costs one file read. `entity_tables`
computes Kestrel's features (every FEATURE_NAMES, with the offline code of kestrel_training) for
the entities `bench/api.py` seeds, each at its latest transaction. `run_driver` runs
bench/feast_driver.py inside .venv-feast and `parse_driver_output` reads the JSON it prints.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kestrel_training.offline_features import offline_features
from kestrel_training.simulator import SimulatorConfig, simulate

from kestrel.features import DAY_MS, FEATURE_NAMES

REPO = Path(__file__).resolve().parent.parent
FEAST_VENV = REPO / ".venv-feast"
FEAST_SPEC = "feast[redis]==0.67.0"  # the pinned Feast; its stamp changes when this does
STAMP = ".kestrel-feast-stamp"
PREFIX = "bench."  # the ids bench/api.py seeds
VIEWS = ("customer", "terminal")

Runner = Callable[[Sequence[str], float], "tuple[int, str]"]


class FeastUnavailable(RuntimeError):
    """Feast could not be installed: the part is skipped with this reason."""


class DriverError(RuntimeError):
    """The Feast driver failed or printed no result: the part fails."""


def run_command(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run `argv`; its exit code and combined output (124 and a note when it timed out)."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout_s:.0f} s"
    except OSError as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr


def tail(text: str, lines: int = 6) -> str:
    """The last meaningful lines of a tool's output (pip's index warnings left out)."""
    kept = [line for line in text.splitlines() if line.strip() and "is ignored" not in line]
    short = [line if len(line) <= 200 else f"{line[:97]}...{line[-100:]}" for line in kept]
    return " | ".join(short[-lines:])


def ensure_feast(
    venv: Path = FEAST_VENV,
    spec: str = FEAST_SPEC,
    run: Runner = run_command,
    timeout_s: float = 900.0,
) -> Path:
    """The python of `venv` with `spec` installed; installs it once (stamp: the spec).

    Raises:
        FeastUnavailable: venv creation, pip or the import check failed (the reason).
    """
    python, stamp = venv / "bin" / "python", venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == spec:
        return python
    if not python.exists():
        code, out = run([sys.executable, "-m", "venv", str(venv)], 120)
        if code:
            raise FeastUnavailable(f"python -m venv {venv.name} failed: {tail(out)}")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--retries", "1", "--timeout", "30"]
    code, out = run([*pip, spec], timeout_s)
    if code:
        raise FeastUnavailable(f"pip install {spec} failed (exit {code}): {tail(out)}")
    code, out = run([str(python), "-c", "import feast; print(feast.__version__)"], 120)
    if code:
        raise FeastUnavailable(f"import feast failed after installing {spec}: {tail(out)}")
    stamp.write_text(spec + "\n")
    return python


def view_of(feature: str) -> str:
    """Which entity a feature is read for: terminal windows by terminal, the rest by customer."""
    return "terminal" if feature.startswith("TERMINAL_ID_") else "customer"


@dataclass
class Tables:
    """Per view its join key, features, entity ids and rows; the (customer, terminal) pairs."""

    views: dict[str, dict[str, Any]]
    pairs: list[tuple[str, str]]
    transactions: int
    event_time_s: float

    def draw(self, rng: random.Random, n: int) -> list[tuple[str, str]]:
        """`n` (customer, terminal) pairs of seeded transactions (busy customers more often)."""
        return [rng.choice(self.pairs) for _ in range(n)]


def entity_tables(config: SimulatorConfig, now_ms: int) -> Tables:
    """Every feature of every seeded customer and terminal at its latest transaction.

    The simulation is bench/api.py's (same config and seed, shifted to end now); features
    are Kestrel's offline ones, so Feast serves the values Kestrel would compute.
    """
    sim = simulate(config)
    shift = now_ms - (config.start_ms + config.n_days * DAY_MS)
    tx = sim.transactions.assign(event_time=sim.transactions["event_time"] + shift)
    labels = sim.labels.assign(label_time=sim.labels["label_time"] + shift)
    tx = tx.sort_values(["event_time", "transaction_id"], ignore_index=True)
    latest = {view: set(tx.groupby(f"{view}_id")["event_time"].idxmax().tolist()) for view in VIEWS}
    keep = tx.index.isin(sorted(latest["customer"] | latest["terminal"]))
    table = offline_features(tx, labels, keep).set_index("transaction_id")
    views: dict[str, dict[str, Any]] = {}
    for view in VIEWS:
        names = [f for f in FEATURE_NAMES if view_of(f) == view]
        rows = tx.loc[sorted(latest[view])]
        values = table.loc[rows["transaction_id"], names]
        views[view] = {
            "join_key": f"{view}_id",
            "features": names,
            "ids": [PREFIX + str(v) for v in rows[f"{view}_id"].tolist()],
            "rows": values.to_numpy(dtype=float).tolist(),
        }
    pairs = list(
        zip(
            (PREFIX + str(v) for v in tx["customer_id"].tolist()),
            (PREFIX + str(v) for v in tx["terminal_id"].tolist()),
            strict=True,
        )
    )
    return Tables(views, pairs, len(tx), now_ms / 1000)


def feature_refs(views: dict[str, dict[str, Any]]) -> list[str]:
    """Feast's feature references, ``<view>_features:<name>``, in the driver's order."""
    return [f"{name}_features:{f}" for name, view in views.items() for f in view["features"]]


def driver_spec(
    tables: Tables, repo: Path, connection: str, rows: list[tuple[str, str]], warmup: int,
    cpu: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The JSON document bench/feast_driver.py reads."""
    return {
        "repo": str(repo),
        "project": "kestrel_bench",
        "connection_string": connection,
        "event_time_s": tables.event_time_s,
        "views": tables.views,
        "entity_rows": [list(row) for row in rows],
        "warmup": warmup,
        "cpu": cpu,
    }


def connection_string(redis_url: str) -> str:
    """Feast's ``host:port,db=N`` form of a ``redis://host:port/N`` URL."""
    rest = redis_url.split("://", 1)[-1]
    address, _, db = rest.partition("/")
    return f"{address.rsplit('@', 1)[-1]},db={int(db or 0)}"


def parse_driver_output(text: str) -> dict[str, Any]:
    """The driver's JSON document: the last stdout line that parses as a JSON object.

    Raises:
        DriverError: no such line, or it lacks the timed reads.
    """
    for line in reversed(text.strip().splitlines()):
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("read_ns"), list):
            return doc
    raise DriverError(f"the Feast driver printed no result: {tail(text)}")


def run_driver(python: Path, spec: dict[str, Any], workdir: Path, timeout_s: float) -> Any:
    """Run bench/feast_driver.py with Feast's python on `spec`; its parsed JSON document."""
    spec_path = workdir / "driver-spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / "driver.log"
    argv = [str(python), "-P", str(REPO / "bench" / "feast_driver.py"), str(spec_path)]
    with log_path.open("w") as err:
        try:
            done = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout_s,
                check=False, env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise DriverError(f"the Feast driver timed out after {timeout_s:.0f} s") from exc
    if done.returncode:
        log = log_path.read_text(errors="replace")
        raise DriverError(f"the Feast driver exited {done.returncode}: {tail(log)}")
    return parse_driver_output(done.stdout)
