"""The suite's context: software versions, figures derived from parts' params, method notes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PACKAGES = (
    "onnxruntime",
    "moto",
    "redis",
    "hiredis",
    "boto3",
    "botocore",
    "numpy",
    "fastavro",
    "aws-lambda-powertools",
    "chalice",
    "werkzeug",
)

NOTES = [
    "Warm-ups are excluded from every figure: engine (the first simulated days applied to the "
    "store before timing), API (seconds of load before the timed run, 1,000 untimed feature "
    "reads), e2e (one empty invoke per worker, then a warm-up step at a low rate), "
    "redis-benchmark (a calibration run sizes the timed runs), onnxruntime (50 calls).",
    "Repeats: engine, median of repeated runs per batch size (sizes interleaved); "
    "redis-benchmark and onnxruntime, median of repeated runs; API, one open-loop run, "
    "nearest-rank percentiles over every request; e2e, one hold at the found rate, freshness "
    "percentiles over every event of its run; emulator, one fill. Counts are in each part's "
    "params.",
    "Loss and errors are counted over every e2e step, warm-up and failed probes included: an "
    "event is lost when its decision is missing from Redis after the stream drained; errors "
    "are function errors, partial batch failures, discarded records and producer failures.",
    "e2e sustained rate: the achieved put rate of a hold whose backlog (put minus finished by "
    "the event-source mapping) did not grow, that drained, lost nothing and had no error.",
    "Freshness: the decision's decided_at (set in the handler after the features were "
    "written) minus time.time() just before the PutRecords call that accepted the event; one "
    "host, one clock. At 5,000 events/s, or over the hold when less was sustained (the "
    "figure e2e.freshness_rate_events_per_s says which).",
    "Ceilings come from the same run: e2e against the lowest of the emulator's PutRecords "
    "and GetRecords rates and the engine; the engine against Redis running both feature "
    "scripts (redis-benchmark EVALSHA, -P 32, preview mode on a realistic customer and "
    "terminal). ref.redis_engine_cpu_ceiling_events_per_s is 1e6 / the Redis CPU µs per event "
    "the engine measured.",
    "CPU placement: the engine pins redis-server to the last CPU and itself to the others; "
    "the API pins its server and Redis to the last CPU, the load generator to the first; "
    "refs, emulator and e2e run unpinned (e2e puts the emulator, Redis, the runtime, its "
    "workers and the producer on the same 2 cores).",
    "The earlier project's claims (8k events/s, p95 120 ms, 15 s freshness) are its own "
    "statements, not measured here.",
]


def _redis_version() -> str:
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return "not found"
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else out.strip()[:40]


def versions() -> dict[str, str]:
    """Python, redis-server and the Python packages the figures depend on."""
    out = {
        "python": sys.version.split()[0],
        "redis-server": _redis_version(),
        "kernel": os.uname().release,
    }
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def derived_figures(
    engine: dict[str, Any] | None, emulator: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Figures read from parts' params: the engine's Redis CPU ceiling and outcome counts."""
    out: dict[str, dict[str, Any]] = {}
    if engine:
        best = str(engine.get("best_batch"))
        redis_us = engine.get("redis_cpu_us_per_event", {}).get(best)
        if redis_us:
            out["ref.redis_engine_cpu_ceiling_events_per_s"] = {
                "value": round(1e6 / float(redis_us), 1),
                "unit": "events/s",
            }
        outcomes = engine.get("outcomes", {})
        for name in ("failed", "duplicates"):
            if name in outcomes:
                out[f"engine.{name}"] = {"value": int(outcomes[name]), "unit": "count"}
    if emulator and "fill_level" in emulator:
        out["emulator.fill_level"] = {"value": int(emulator["fill_level"]), "unit": "records"}
    return out
