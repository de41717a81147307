"""Where the engine's time goes: timers around the handler's parts, script µs, cProfile."""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import pstats
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kestrel import record_decoding, streaming
from kestrel.adapters import redis_evalsha
from kestrel.adapters.kinesis_decisions import KinesisDecisionStream
from kestrel.adapters.redis_decisions import RedisDecisions
from kestrel.adapters.redis_wire import InFlight

if TYPE_CHECKING:
    from bench.engine import Bench


class StoreWire(InFlight):
    """The store's `InFlight` (in `run_in_parts`), its own class so that its calls are timed
    apart from the decisions' (which use `InFlight` through `send_batch`)."""


@contextlib.contextmanager
def phase_timers(bench: Bench, totals: dict[str, float]) -> Iterator[None]:
    """Wrap the handler's parts with wall-clock timers (summed into `totals`), then restore."""
    targets: list[tuple[Any, str]] = [
        (bench.app, "lambda_handler"), (bench.path, "run"), (record_decoding, "decode_base64"),
        (bench.store, "_calls"), (bench.store, "_commands"), (bench.store._batches, "_resend"),
        (bench.store, "_applied"), (StoreWire, "send"), (StoreWire, "read"),
        (streaming, "feature_vector"),
        (streaming, "decide_with_model"), (streaming, "shadow_score"), (RedisDecisions, "publish"),
        (KinesisDecisionStream, "publish"),
        (bench.path._event_log, "write_batch"), (bench.app, "respond"),
    ]  # fmt: skip
    saved = []
    for owner, attr in targets:
        original = getattr(owner, attr)
        saved.append((owner, attr, original, attr in vars(owner)))
        setattr(owner, attr, _timed(original, attr, totals))
    decoder = bench.path._decoder  # frozen: a timed copy stands in for it
    bench.path._decoder = dataclasses.replace(
        decoder,
        decode=_timed(decoder.decode, "_decode", totals),
        check=_timed(decoder.check, "check_not_ahead_of_arrival", totals),
    )
    setattr(redis_evalsha, "InFlight", StoreWire)  # noqa: B010 - not re-exported there
    try:
        yield
    finally:
        setattr(redis_evalsha, "InFlight", InFlight)  # noqa: B010
        bench.path._decoder = decoder
        for owner, attr, original, own in reversed(saved):
            setattr(owner, attr, original) if own else delattr(owner, attr)


def _timed(function: Any, name: str, totals: dict[str, float]) -> Any:
    """`function`, its wall-clock time summed into ``totals[name]``."""

    def timed(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return function(*args, **kw)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0

    return timed


# The stages' figure names (engine.stage.<name>_us), by their label in the breakdown.
STAGES = {
    "decode: base64 + Avro + validation": "decode",
    "store: build script calls": "store_calls",
    "store: NOSCRIPT check": "store_script_check",
    "store: Redis executing the scripts (overlaps the client's work; not in the total)": (
        "store_redis"
    ),
    "store: RESP pack and send a part": "store_wire",
    "store: waiting for a part's replies (Redis not hidden by client work), reading them": (
        "store_wait"
    ),
    "store: replies -> aggregates": "store_replies",
    "feature_vector": "feature_vector",
    "score: model, thresholds, reasons": "score",
    "decisions: Redis SET NX + stream records": "decisions",
    "shadow: the hook alone (no challenger set)": "shadow_hook",
    "path: outcome and log rows": "path",
    "event log: JSON lines + gzip (level 1)": "event_log",
    "Powertools: BatchProcessor response": "powertools_response",
    "Powertools: metrics add + EMF flush, logger": "powertools_metrics",
    "total handler (wall)": "handler_total",
}


def breakdown(t: dict[str, float], events: int, server_us: float) -> dict[str, float]:
    """Non-overlapping µs per event of the handler, from the nested phase totals."""
    decode = t["decode_base64"] + t["_decode"] + t["check_not_ahead_of_arrival"]
    parts = {
        "decode: base64 + Avro + validation": decode,
        "store: build script calls": t["_calls"] + t["_commands"],
        "store: NOSCRIPT check": t["_resend"],
        "store: Redis executing the scripts (overlaps the client's work; not in the total)": (
            server_us * events / 1e6
        ),
        "store: RESP pack and send a part": t["send"],
        "store: waiting for a part's replies (Redis not hidden by client work), reading them": (
            t["read"]
        ),
        "store: replies -> aggregates": t["_applied"],
        "feature_vector": t["feature_vector"],
        "score: model, thresholds, reasons": t["decide_with_model"],
        "decisions: Redis SET NX + stream records": t["publish"],
        "shadow: the hook alone (no challenger set)": t.get("shadow_score", 0.0),
        "path: outcome and log rows": t["run"] - decode - t["_calls"] - t["_commands"]
        - t["send"] - t["read"] - t["_resend"] - t["_applied"] - t["feature_vector"]
        - t["decide_with_model"] - t["publish"] - t["write_batch"]
        - t.get("shadow_score", 0.0),
        "event log: JSON lines + gzip (level 1)": t["write_batch"],
        "Powertools: BatchProcessor response": t["respond"],
        "Powertools: metrics add + EMF flush, logger": t["lambda_handler"] - t["run"]
        - t["respond"],
        "total handler (wall)": t["lambda_handler"],
    }  # fmt: skip
    return {name: round(s / events * 1e6, 2) for name, s in parts.items()}


def profile(bench: Bench, batch: int, events: int) -> dict[str, Any]:
    """Per-event µs of the handler's parts, each script's server µs (slow log), cProfile."""
    redis_client, totals = bench.server.client, dict[str, float]()
    start, prepared = bench.prepare(events, batch)
    redis_client.config_set("slowlog-log-slower-than", 0)  # scripts and their commands
    redis_client.config_set("slowlog-max-len", 30 * events + 100)
    redis_client.slowlog_reset()
    redis_client.config_resetstat()
    with phase_timers(bench, totals):
        done = bench.invoke(prepared)
    bench.stream.cursor = start + done
    usec = bench.server.evalsha_usec()[1]
    kinds = {bench.store._customer.sha: "customer", bench.store._terminal.sha: "terminal"}
    server: dict[str, list[int]] = {"customer": [], "terminal": []}
    for entry in redis_client.slowlog_get(30 * events + 100):
        parts = bytes(entry.get("command", b"")).split()
        if len(parts) > 1 and parts[0].upper() == b"EVALSHA" and parts[1].decode() in kinds:
            server[kinds[parts[1].decode()]].append(int(entry["duration"]))
    redis_client.config_set("slowlog-log-slower-than", 10_000)
    out: dict[str, Any] = {
        "batch": batch, "events": done,
        "breakdown_us_per_event": breakdown(totals, done, usec / done),
        "server_evalsha_us_per_script": {
            k: round(statistics.fmean(v), 2) if v else 0.0 for k, v in server.items()
        },
        "note": "wall µs from timers around the handler's parts (slow log on: Redis slower); "
        "server script µs from SLOWLOG durations",
    }  # fmt: skip
    start, prepared = bench.prepare(events, batch)
    profiler = cProfile.Profile()
    done = profiler.runcall(bench.invoke, prepared)
    bench.stream.cursor = start + done
    rows = sorted(
        ((tt, ct, n, f"{Path(file).parent.name}/{Path(file).name}:{line}({func})")
         for (file, line, func), (_, n, tt, ct, _) in pstats.Stats(profiler).stats.items()),  # type: ignore[attr-defined]
        reverse=True,
    )  # fmt: skip
    out["cprofile_events"] = done
    out["cprofile_top_tottime"] = [
        {"function": where, "calls": n, "tottime_us_per_event": round(tt / done * 1e6, 2),
         "cumtime_us_per_event": round(ct / done * 1e6, 2)}
        for tt, ct, n, where in rows[:15]
    ]  # fmt: skip
    return out
