"""Reference ceilings measured on this machine, in this run: Redis and onnxruntime.

Usage: ``python bench/refs.py --redis-url redis://127.0.0.1:PORT/2 [--size full|medium|tiny]``.

- ``redis-benchmark`` against the given redis-server (unpinned, 50 clients, random keys):
  SET and HSET unpipelined and with ``-P 32``;
- ``redis-benchmark`` running ``EVALSHA`` of Kestrel's own feature scripts
  (`kestrel.adapters.redis_scripts`: the customer script and the terminal script, the two
  scripts of every event) in ``preview`` mode, on one customer with 60 transactions over
  30 days and one terminal with 38 over 38 days (2 of them labelled fraud), with the
  arguments `RedisFeatureStore` sends and a random transaction id per call (``__rand_int__``).
  ``preview`` runs every read of ``apply`` and writes nothing, so repeated calls see the same
  state; ``apply`` would grow one entity without bound under ``redis-benchmark``;
- onnxruntime on ``layers/model/model.onnx`` (one thread, as the scorer): single-row
  and batch-of-500 inference, `kestrel_training.onnx_export.measure_latency`, on synthetic
  rows (``ref.onnx_*``), and the shipped model's single-row p50/p99 hot (back-to-back) and
  cold (32 MiB of other memory written before each call, as an API request's other work
  evicts the model between calls) on rows drawn from the manifest's reference quantiles
  (``model.single_row_*``), with the scorer's session options.

Each figure is the median of ``repeats`` runs; each ``redis-benchmark`` run is sized to last
about ``seconds`` from a short calibration run (not counted). Writes ``<results>/refs-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/refs.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from bench.results_io import write_result  # noqa: E402
from kestrel.adapters.redis_features import RedisFeatureStore  # noqa: E402
from kestrel.events import Label, Transaction  # noqa: E402
from kestrel.features import DAY_MS, FEATURE_NAMES  # noqa: E402
from kestrel.settings import default_model_dir  # noqa: E402

CLIENTS = 50
DEPTH = 32


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[bench-refs] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Size:
    """How long each measurement runs."""

    seconds: float
    repeats: int
    min_requests: int
    onnx_calls: int
    cold_calls: int


SIZES = {
    "full": Size(seconds=2.0, repeats=3, min_requests=20_000, onnx_calls=2000, cold_calls=600),
    "medium": Size(seconds=1.0, repeats=2, min_requests=10_000, onnx_calls=1000, cold_calls=300),
    "tiny": Size(seconds=0.2, repeats=1, min_requests=2000, onnx_calls=200, cold_calls=100),
}


def parse_csv(text: str) -> dict[str, dict[str, float]]:
    """``redis-benchmark --csv`` output: test name -> {"rps": ..., "p50_latency_ms": ...}.

    Redis 7 writes a header row (``"test","rps","avg_latency_ms",...``) and one row per
    test; Redis 6 and older write rows of ``"TEST","rps"`` without a header. Progress
    lines and anything that is not a row are ignored.
    """
    out: dict[str, dict[str, float]] = {}
    header = ["test", "rps"]
    for row in csv.reader(io.StringIO(text.replace("\r", "\n"))):
        if len(row) < 2:
            continue
        if row[0] == "test":
            header = row
            continue
        values: dict[str, float] = {}
        for name, cell in zip(header[1:], row[1:], strict=False):
            try:
                values[name] = float(cell)
            except ValueError:
                break
        if "rps" in values:
            out[row[0]] = values
    return out


def redis_benchmark(port: int, db: int, requests: int, extra: list[str]) -> dict[str, Any]:
    """One ``redis-benchmark --csv`` run; the parsed rows."""
    cmd = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--dbnum",
        str(db),
        "-c",
        str(CLIENTS),
        "-n",
        str(requests),
        "--csv",
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    rows = parse_csv(done.stdout)
    if not rows:
        raise RuntimeError(f"no result from {' '.join(cmd[:12])}: {done.stdout[-300:]}")
    return rows


def measure(port: int, db: int, size: Size, extra: list[str]) -> dict[str, list[float]]:
    """Calibrate, then `repeats` runs of about `seconds`: requests/s per test, per run."""
    calibration = redis_benchmark(port, db, size.min_requests, extra)
    slowest = min(r["rps"] for r in calibration.values())
    n = max(size.min_requests, int(slowest * size.seconds))
    runs: dict[str, list[float]] = {}
    for _ in range(size.repeats):
        for test, row in redis_benchmark(port, db, n, extra).items():
            runs.setdefault(test, []).append(row["rps"])
    return runs


def median(values: list[float]) -> float:
    return round(float(statistics.median(values)), 1)


def seed_entities(store: RedisFeatureStore, now_ms: int) -> tuple[Transaction, int, int]:
    """One customer (60 tx in 30 days) and one terminal (38 in 38 days, 2 frauds)."""
    half_day = DAY_MS // 2
    txs = [
        Transaction(f"ref-c-{i}", "ref-customer", f"ref-t-{i % 7}", 10.0 + i, now_ms - i * half_day)
        for i in range(1, 61)
    ] + [
        Transaction(f"ref-t-{i}", f"ref-c-{i}", "ref-terminal", 20.0 + i, now_ms - i * DAY_MS)
        for i in range(1, 39)
    ]
    store.apply_transactions(sorted(txs, key=lambda t: t.event_time_ms))
    labels = [
        Label(f"ref-t-{i}", f"ref-c-{i}", "ref-terminal", True, now_ms - (i - 9) * DAY_MS)
        for i in (10, 20)
    ]
    store.apply_labels(labels)
    probe = Transaction("ref-probe", "ref-customer", "ref-terminal", 42.0, now_ms + 60_000)
    return probe, 60, 38


def evalsha_args(store: RedisFeatureStore, probe: Transaction) -> dict[str, list[str]]:
    """The EVALSHA command lines `RedisFeatureStore` sends for `probe` (id randomized)."""
    rid = "ref-__rand_int__"
    calls = {
        "customer": store._customer_call(
            "preview", rid, probe.customer_id, probe.event_time_ms, int(probe.amount * 100)
        ),
        "terminal": store._terminal_call("preview", rid, probe.terminal_id, probe.event_time_ms),
    }
    return {
        name: ["EVALSHA", script.sha, str(len(keys)), *keys, *map(str, args)]
        for name, (script, keys, args) in calls.items()
    }


def redis_refs(url: str, size: Size) -> tuple[dict[str, tuple[float, str]], dict[str, Any]]:
    """SET/HSET and feature-script EVALSHA ceilings of the redis-server at `url`."""
    client = redis.Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    port, db = int(kwargs["port"]), int(kwargs.get("db", 0))
    client.flushdb()
    figures: dict[str, tuple[float, str]] = {}
    raw: dict[str, Any] = {}
    for label, extra in (("", []), ("_pipelined", ["-P", str(DEPTH)])):
        runs = measure(port, db, size, ["-r", "100000", "-t", "set,hset", *extra])
        raw[f"set_hset{label}"] = runs
        figures[f"ref.redis_set{label}_per_s"] = (median(runs["SET"]), "ops/s")
        figures[f"ref.redis_hset{label}_per_s"] = (median(runs["HSET"]), "ops/s")
        log(
            f"SET{label} {figures[f'ref.redis_set{label}_per_s'][0]:,.0f}/s, "
            f"HSET{label} {figures[f'ref.redis_hset{label}_per_s'][0]:,.0f}/s"
        )
    client.flushdb()
    store = RedisFeatureStore(client)
    probe, n_customer, n_terminal = seed_entities(store, int(time.time() * 1000))
    commands = evalsha_args(store, probe)
    rates: dict[str, float] = {}
    for label, extra in (("_unpipelined", []), ("", ["-P", str(DEPTH)])):
        for entity, command in commands.items():
            runs = measure(port, db, size, ["-r", "1000000000", *extra, *command])
            rate = median(next(iter(runs.values())))
            rates[f"{entity}{label}"] = rate
            raw[f"evalsha_{entity}{label}"] = runs
            figures[f"ref.redis_evalsha_{entity}_script{label}_per_s"] = (rate, "calls/s")
        pair = 1 / (1 / rates[f"customer{label}"] + 1 / rates[f"terminal{label}"])
        figures[f"ref.redis_evalsha_feature_script{label}_per_s"] = (round(pair, 1), "events/s")
        customer, terminal = rates[f"customer{label}"], rates[f"terminal{label}"]
        log(
            f"EVALSHA feature scripts ({'-P 32' if extra else 'unpipelined'}): {pair:,.0f}/s "
            f"(customer {customer:,.0f}/s, terminal {terminal:,.0f}/s)"
        )
    info = client.info("server")
    client.flushdb()
    params = {
        "redis_benchmark": {
            "clients": CLIENTS,
            "pipeline": DEPTH,
            "random_keys": 100_000,
            "runs_per_s": raw,
            "placement": "unpinned (OS placement)",
        },
        "evalsha": {
            "mode": "preview (all reads of apply, no writes)",
            "commands": commands,
            "customer_transactions": n_customer,
            "terminal_transactions": n_terminal,
            "per_event": "1 / (1/customer + 1/terminal): both scripts run per event",
        },
        "redis_server": info.get("redis_version"),
    }
    return figures, params


def manifest_rows(manifest: dict[str, Any], n: int, seed: int = 7) -> np.ndarray:
    """`n` float32 rows, each feature drawn from the manifest's reference quantile grid."""
    rng = np.random.default_rng(seed)
    grids = manifest["reference_distributions"]["features"]
    return np.column_stack(
        [rng.choice(np.asarray(grids[name]["quantiles"]), n) for name in FEATURE_NAMES]
    ).astype(np.float32)


def onnx_refs(size: Size) -> tuple[dict[str, tuple[float, str]], dict[str, Any]]:
    """Inference on the shipped model (each figure the median of repeats): single row and
    batch of 500 on synthetic rows (``ref.*``); single row hot and cold on rows like the
    model's inputs (``model.*``)."""
    from kestrel_training.onnx_export import EVICT_BYTES, measure_latency

    folder = Path(default_model_dir())
    onnx_bytes = (folder / "model.onnx").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    rng = np.random.default_rng(7)
    n_features = len(FEATURE_NAMES)
    x = np.abs(rng.normal(loc=5.0, scale=20.0, size=(4096, n_features)))
    x[:, 1:3] = rng.integers(0, 2, size=(4096, 2))
    runs = [
        measure_latency(onnx_bytes, x, calls=size.onnx_calls, cold_calls=0)
        for _ in range(size.repeats)
    ]
    single = median([r.single_row_median_us for r in runs])
    batch = round(float(statistics.median(r.batch_per_row_us for r in runs)), 3)
    log(f"onnxruntime: {single} µs single row, {batch} µs per row in batches of 500")
    rows = manifest_rows(manifest, 4096)
    model_runs = [
        measure_latency(onnx_bytes, rows, size.onnx_calls, cold_calls=size.cold_calls)
        for _ in range(size.repeats)
    ]
    model = {
        "p50": median([r.single_row_median_us for r in model_runs]),
        "p99": median([r.single_row_p99_us for r in model_runs]),
        "cold_p50": median([r.cold_single_row_median_us or math.nan for r in model_runs]),
        "cold_p99": median([r.cold_single_row_p99_us or math.nan for r in model_runs]),
    }
    log(
        f"shipped model v{manifest.get('model_version')} single row: hot p50 {model['p50']} / "
        f"p99 {model['p99']} µs, cold p50 {model['cold_p50']} / p99 {model['cold_p99']} µs"
    )
    figures = {
        "ref.onnx_single_row_us": (single, "µs"),
        "ref.onnx_batch500_per_row_us": (batch, "µs"),
        **{f"model.single_row_{name}_us": (v, "µs") for name, v in model.items()},
    }
    params = {
        "model": str(folder / "model.onnx"),
        "threads": 1,
        "warm_up_calls": 50,
        "calls_per_repeat": size.onnx_calls,
        "rows": "synthetic feature rows (|N(5, 20)|, weekend/night flags 0/1)",
        "runs": [r.__dict__ for r in runs],
        "shipped_model": {
            "version": manifest.get("model_version"),
            "model": manifest.get("model", {}),
            "rows": "each feature drawn from the manifest's reference quantiles (seed 7)",
            "session_options": "kestrel.adapters.onnx_model.session_options (the scorer's)",
            "cold": f"{EVICT_BYTES // 2**20} MiB of other memory written before each call",
            "cold_calls_per_repeat": size.cold_calls,
            "runs": [r.__dict__ for r in model_runs],
        },
    }
    return figures, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--redis-url", required=True, help="redis-server to measure (a db to flush)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    figures, params = redis_refs(args.redis_url, size)
    onnx_figures, onnx_params = onnx_refs(size)
    params = {
        "redis": params,
        "onnx": onnx_params,
        "size": args.size,
        "statistic": f"median of {size.repeats} runs",
    }
    path = write_result("refs", params, figures | onnx_figures)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
