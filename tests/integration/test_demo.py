"""`make demo` end to end, short: services up, provision, stream, summary, everything stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kestrel_local.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _kestrel_local(env: dict[str, str], *args: str, timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_demo_streams_decides_parks_poison_and_summarises(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AWS_ENDPOINT_URL", "REDIS_URL"}
    }
    env.update(
        KESTREL_RUN_DIR=str(tmp_path / "run"),
        KESTREL_EMULATOR_PORT=str(free_port()),
        KESTREL_REDIS_PORT=str(free_port()),
        KESTREL_STACK_NAME="kdemo",
    )
    redis_url = f"RedisUrl=redis://127.0.0.1:{env['KESTREL_REDIS_PORT']}/0"
    port = free_port()
    _kestrel_local(env, "kestrel_local", "up")
    try:
        _kestrel_local(env, "kestrel_local", "provision", "--parameter-overrides", redis_url)
        _kestrel_local(env, "kestrel_local", "register-schemas")
        out = _kestrel_local(
            env,
            "kestrel_local.demo",
            *("--rate", "400", "--duration", "10", "--poison", "6", "--api-rate", "20"),
            *("--click-rate", "100", "--click-api-rate", "10"),
            *("--backfill-days", "2"),
            *("--port", str(port), "--exit"),
        )
    finally:
        _kestrel_local(env, "kestrel_local", "down")
    assert "Kestrel demo summary" in out
    assert "backfilling the 2 days before the stream (2018-04-01 to 2018-04-03" in out
    summary = json.loads((tmp_path / "run" / "demo-summary.json").read_text())
    assert summary["events_sent"] == summary["events_decided"] == 4000
    decided = sum(summary["decisions"][d] for d in ("approve", "review", "decline"))
    assert decided == 4000
    assert summary["decisions"]["degraded"] == 0
    assert summary["api_requests"] > 0 and summary["api_errors"] == 0
    assert summary["freshness_p99_ms"] > 0
    assert summary["model_version"]
    # Two simulated days (about 19,000 transactions) were loaded before the stream started.
    assert summary["backfill"].startswith("2 days before the stream (2018-04-01 to 2018-04-03)")
    assert summary["test_set_ap"] > 0
    # The drift check ran over the demo's event log (one cold-start day: its verdict varies).
    assert summary["drift"].split()[0] in {"ok", "watch", "drift", "unknown"}
    assert "rows)" in summary["drift"]
    # Every poison record is parked once, with the redrive finding it still broken.
    assert summary["poison_parked"] == summary["poison_injected"] == 6
    assert summary["redrive"]["poison"] == {
        "read": 6,
        "re-put": 0,
        "still poison": 6,
        "errors": 0,
    }
    assert summary["redrive"]["on-failure"]["errors"] == 0
    # The clicks streamed beside the transactions: every one processed once (its event id in
    # its session hash), each user's propensity stored, and the figures of both families.
    clicks = summary["clicks"]
    assert clicks["sent"] == clicks["processed"] == 1000
    assert 0 < clicks["users_scored"] == clicks["users"]
    assert sum(clicks["histogram"]) >= 1000  # per attempt: a retried batch counts again
    assert len(clicks["deciles"]) == 9 and clicks["deciles"] == sorted(clicks["deciles"])
    assert all(0.0 <= q <= 1.0 for q in clicks["deciles"])
    assert 0 < clicks["freshness_p50_ms"] <= clicks["freshness_p99_ms"]
    assert clicks["api_requests"] > 0 and clicks["api_errors"] == 0
    assert clicks["model_version"]
    assert "Clicks streamed / processed" in out and "/v1/propensity" in out
    assert "| clicks " in out  # the progress line shows the clickstream
