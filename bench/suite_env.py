"""The suite's context: software versions, figures derived from parts' params, method notes."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Mapping
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
    "the API pins its server and Redis to the last CPU, the load generator to the first, and "
    "the feast part pins Feast's read loop, feast serve and Redis the same way; "
    "refs, emulator and e2e run unpinned (e2e puts the emulator, Redis, the runtime, its "
    "workers and the producer on the same 2 cores).",
    "Feast (feast part): a pinned feast[redis] in its own .venv-feast writes Kestrel's "
    "features of the API part's entities (each customer and terminal at its latest "
    "transaction) through its Redis online store into the suite's Redis (db 3); "
    "feast.read_* times get_online_features(...).to_dict() for one customer + one terminal in "
    "process, the counterpart of api.feature_read_*; feast.http_* loads feast serve "
    "(no access log, no worker recycling) as the API part loads /v1/score. "
    "ratio.feature_read_vs_feast_p99 = api.feature_read_p99_ms / feast.read_p99_ms (DESIGN: "
    "<= 0.5); ratio.score_http_vs_feast_http_p99 = api.http_p99_ms / feast.http_p99_ms.",
    "Shipped model (refs part): model.single_row_* time one-row onnxruntime calls on "
    "layers/model/model.onnx with the scorer's session options, on rows drawn from the "
    "manifest's reference quantiles; hot = back-to-back calls, cold = 32 MiB of other memory "
    "written before each call (an API request's other work evicts the model between calls, "
    "2 ms apart at 500 req/s). The cold p99 budget of 150 µs is the model's share of the "
    "in-handler 0.5 ms.",
    "Backfill (backfill part): bench/backfill.py loads the simulated days (default population) "
    "from the simulator's Parquet into an empty database of the suite's Redis with "
    "kestrel_ops.backfill (pipelines of 2,000 events, transactions and fraud labels in time "
    "order, no scoring), then loads them again (every event a replay); backfill.events_per_s "
    "counts transactions per second of wall time. ratio.backfill_vs_engine = "
    "backfill.events_per_s / engine.events_per_s (at least 1 wanted).",
    "Clickstream (click_engine and click_api parts): click_engine runs the ClickstreamFunction "
    "handler on Kinesis batches of 500 with its own redis-server, pinned as the engine "
    "(median of its repeats; Redis commands per event from INFO commandstats), then a "
    "degenerate user with a long history beside a light one (Redis µs and commands per "
    "click, in-order clicks); click_api loads POST /v1/propensity exactly as the api part "
    "loads /v1/score (same server, pinning, load generator and percentiles; a shorter "
    "run). Their bars are the fraud path's (issue 14): 25,000 events/s, Redis 25 µs and "
    "client 40 µs per event, HTTP p99 1 ms, in-handler p99 0.5 ms.",
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


def versions(feast: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Python, redis-server and the Python packages the figures depend on (Feast's, if run)."""
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
    feast_versions = (feast or {}).get("feast_versions", {})
    if "feast" in feast_versions:
        out["feast (.venv-feast)"] = str(feast_versions["feast"])
    return out


RATIOS = {  # name: (numerator, denominator), same run
    "ratio.feature_read_vs_feast_p99": ("api.feature_read_p99_ms", "feast.read_p99_ms"),
    "ratio.score_http_vs_feast_http_p99": ("api.http_p99_ms", "feast.http_p99_ms"),
    "ratio.backfill_vs_engine": ("backfill.events_per_s", "engine.events_per_s"),
}


def ratio_figures(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Kestrel's latency over Feast's and the backfill's rate over the engine's, for every
    pair of RATIOS the run measured both of."""
    out: dict[str, dict[str, Any]] = {}
    for name, (top, bottom) in RATIOS.items():
        a, b = (figures.get(n, {}).get("value") for n in (top, bottom))
        if not (isinstance(a, int | float) and isinstance(b, int | float)):
            continue
        if b > 0 and not math.isnan(a):
            out[name] = {"value": round(float(a) / float(b), 4), "unit": "ratio"}
    return out


def derived_figures(
    engine: dict[str, Any] | None,
    emulator: dict[str, Any] | None,
    figures: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Figures from parts' params and figures: Redis CPU ceiling, outcomes, Feast ratios."""
    out: dict[str, dict[str, Any]] = ratio_figures(figures or {})
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
