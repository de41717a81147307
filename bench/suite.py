"""Run every benchmark, each bounded in time, and write one result beside a Markdown report.

Usage: ``python bench/suite.py [--size full|medium|tiny] [--results-dir DIR] [--only a,b]``
(``make bench``). Starts its own emulator and redis-server on free loopback ports (never
``make up``'s), then runs, each as its own process with a time budget and its progress
lines prefixed: ``refs`` (redis-benchmark, EVALSHA of the feature scripts, onnxruntime),
``emulator`` (Kinesis PutRecords/GetRecords at 1M records), ``engine`` (TransactionsFunction
in process, real Redis), ``backfill`` (simulated days from Parquet into Redis through
``kestrel_ops backfill``'s code), ``click_engine`` (ClickstreamFunction in process, its own
redis-server, shorter than ``make bench-click-engine``), ``api`` (HTTP, open loop),
``click_api`` (``POST /v1/propensity``, measured as ``api`` with a shorter run), ``feast``
(a pinned Feast in its own .venv-feast on the same Redis; "skipped" with the reason when it
cannot be installed) and ``e2e`` (sustained rate, freshness).
Writes ``<results>/bench-<UTC>.json`` (DESIGN.md's format plus machine_class, versions,
ratios and every part's own params) and ``<results>/bench-<UTC>.md`` (the table of
`bench.suite_report`). Exit 1 when a part failed or any loss or error was counted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/suite.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

from bench.results_io import RESULTS_DIR, RESULTS_DIR_ENV, git_commit, machine, machine_class  # noqa: E402
from bench.suite_env import NOTES, derived_figures, versions  # noqa: E402
from bench.suite_report import markdown, ratios  # noqa: E402
from kestrel_local.services import running_services  # noqa: E402

STARTED = time.monotonic()


def say(line: str) -> None:
    """A progress line on stderr, with the suite's elapsed time."""
    elapsed = int(time.monotonic() - STARTED)
    print(f"[suite {elapsed // 60:02d}:{elapsed % 60:02d}] {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Part:
    """One benchmark: its script and arguments, time budget and result file prefix."""

    name: str
    argv: list[str]
    budget_s: float
    prefix: str = ""


@dataclass
class PartResult:
    """What one part produced."""

    name: str
    budget_s: float
    seconds: float = 0.0
    exit_code: int | None = None
    error: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    file: str = ""


def parts(
    size: str, redis_base: str, endpoint: str, emulator_pid: int, workdir: Path = Path("/tmp")
) -> list[Part]:
    """The parts of a run of `size` against the suite's services."""
    e2e = f"bench/e2e.py --size {size} --endpoint {endpoint} --redis-url {redis_base}/1 "
    e2e += f"--emulator-pid {emulator_pid}"
    refs = f"bench/refs.py --redis-url {redis_base}/2 --size {size}"
    feast = f"bench/feast.py --redis-url {redis_base}/3"
    backfill = f"bench/backfill.py --redis-url {redis_base}/4 --no-ref"
    if size == "full":
        plan = [
            ("refs", refs, 180),
            ("emulator", "bench/emulator.py --records 1000000 --max-seconds 150", 240),
            ("engine", "bench/engine.py --seconds 10 --profile-events 10000", 420),
            ("backfill", f"{backfill} --days 30", 150),
            (
                "click_engine",
                "bench/click_engine.py --events 30000 --warmup 50000 "
                "--heavy-clicks 50000 --heavy-events 2000",
                150,
            ),
            ("api", "bench/api.py", 300),
            ("click_api", "bench/click_api.py --duration 30 --warmup 3 --feature-reads 3000", 150),
            ("feast", feast, 300),
            ("e2e", e2e, 1080),
        ]
    elif size == "medium":
        plan = [
            ("refs", refs, 120),
            ("emulator", "bench/emulator.py --records 200000 --window 20000 "
             "--read-records 50000 --max-seconds 60", 120),
            ("engine", "bench/engine.py --seconds 5 --repeats 2 --days 45 --warmup-days 10 "
             "--profile-events 3000", 300),
            ("backfill", f"{backfill} --days 10", 60),
            ("click_engine", "bench/click_engine.py --events 15000 --warmup 20000 --repeats 2 "
             "--heavy-clicks 20000 --heavy-events 1000", 90),
            ("api", "bench/api.py --duration 20 --warmup 3 --days 10 --customers 1000 "
             "--terminals 2000 --feature-reads 3000", 180),
            ("click_api", "bench/click_api.py --duration 15 --warmup 3 --days 7 --users 500 "
             "--feature-reads 2000", 120),
            ("feast", f"{feast} --duration 15 --warmup 3 --days 10 --customers 1000 "
             "--terminals 2000 --reads 3000", 240),
            ("e2e", e2e, 480),
        ]  # fmt: skip
    else:
        plan = [
            ("refs", refs, 60),
            ("emulator", "bench/emulator.py --records 5000 --window 1000 --read-records 2000 "
             "--producers 1", 60),
            ("engine", "bench/engine.py --quick", 90),
            ("backfill", f"{backfill} --days 2 --customers 500 --terminals 1000", 45),
            ("click_engine", "bench/click_engine.py --quick", 60),
            ("api", "bench/api.py --rate 50 --duration 2 --warmup 1 --days 2 --customers 50 "
             "--terminals 100 --feature-reads 200 --connections 4", 90),
            ("click_api", "bench/click_api.py --rate 50 --duration 2 --warmup 1 --days 2 "
             "--users 50 --feature-reads 200 --connections 4", 60),
            ("feast", f"{feast} --rate 50 --duration 2 --warmup 1 --days 2 --customers 50 "
             "--terminals 100 --reads 200 --connections 4", 180),
            ("e2e", e2e, 120),
        ]  # fmt: skip
    prefix = {"engine": "engine_quick", "click_engine": "click_engine_quick"}
    prefix = prefix if size == "tiny" else {}
    extra = {"e2e": ["--workdir", str(workdir / "e2e")]}  # a path may hold spaces
    return [
        Part(name, argv.split() + extra.get(name, []), budget, prefix.get(name, ""))
        for name, argv, budget in plan
    ]


def run_part(part: Part, env: dict[str, str], parts_dir: Path) -> PartResult:
    """Run one part as a child process within its budget; read the result it wrote."""
    result = PartResult(part.name, part.budget_s)
    say(f"{part.name}: starting (budget {part.budget_s:.0f} s): {' '.join(part.argv)}")
    before = set(parts_dir.glob("*.json"))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *part.argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def echo() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            say(f"{part.name}: {line.rstrip()}")

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        result.exit_code = proc.wait(timeout=part.budget_s)
    except subprocess.TimeoutExpired:
        result.error = f"timed out after {part.budget_s:.0f} s (stopped)"
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                result.exit_code = proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(5)
    result.seconds = round(time.monotonic() - t0, 1)
    prefix = (part.prefix or part.name) + "-"
    new = sorted(p for p in set(parts_dir.glob("*.json")) - before if p.name.startswith(prefix))
    if new:
        doc = json.loads(new[-1].read_text())
        result.figures, result.params, result.file = doc["figures"], doc["params"], new[-1].name
    elif not result.error:
        result.error = f"exit code {result.exit_code} and no result file"
    if result.exit_code not in (0, None) and not result.error:
        result.error = f"exit code {result.exit_code} (result written; see its figures)"
    say(
        f"{part.name}: done in {result.seconds:.0f} s, exit {result.exit_code}, "
        f"{len(result.figures)} figures{', ' + result.error if result.error else ''}"
    )
    return result


def document(size: str, results: list[PartResult], stamp: str, wall_s: float) -> dict[str, Any]:
    """The suite's result document (DESIGN.md's format plus extras)."""
    figures: dict[str, Any] = {}
    for r in results:
        figures.update(r.figures)
    params = {r.name: r.params for r in results}
    figures.update(derived_figures(params.get("engine"), params.get("emulator"), figures))
    doc: dict[str, Any] = {
        "benchmark": "bench",
        "commit": git_commit(),
        "machine": machine(),
        "machine_class": machine_class(),
        "stamp": stamp,
        "versions": versions(params.get("feast")),
        "params": {
            "size": size,
            "wall_seconds": round(wall_s, 1),
            "notes": NOTES,
            "parts": {
                r.name: {
                    "seconds": r.seconds,
                    "budget_s": r.budget_s,
                    "exit_code": r.exit_code,
                    "error": r.error,
                    "file": r.file,
                    "skipped": r.params.get("skipped", ""),
                }
                for r in results
            },
            **{r.name: r.params for r in results},
        },
        "figures": figures,
    }
    doc["ratios"] = ratios(doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=("full", "medium", "tiny"), default="full")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--only",
        help="comma-separated parts (refs,emulator,engine,backfill,click_engine,api,click_api,"
        "feast,e2e)",
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and part results here")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kestrel-bench-"))
    parts_dir = workdir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    say(f"size {args.size}; work folder {workdir}")
    results: list[PartResult] = []
    with running_services(workdir / "services") as services:
        redis_base = services.redis_url.rsplit("/", 1)[0]
        say(f"emulator {services.endpoint}, redis-server {redis_base} (this run's own)")
        env = {
            **os.environ,
            RESULTS_DIR_ENV: str(parts_dir),
            "PYTHONUNBUFFERED": "1",
            "AWS_ENDPOINT_URL": services.endpoint,
            "REDIS_URL": f"{redis_base}/0",
            "KESTREL_RUN_DIR": str(workdir / "run"),
        }
        pid = services.emulator.process.pid
        chosen = parts(args.size, redis_base, services.endpoint, pid, workdir)
        if args.only:
            wanted = set(args.only.split(","))
            chosen = [p for p in chosen if p.name in wanted]
        for part in chosen:
            results.append(run_part(part, env, parts_dir))
    doc = document(args.size, results, stamp, time.monotonic() - STARTED)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"bench-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    report = markdown(doc)
    out.with_suffix(".md").write_text(report)
    print(report)
    say(f"wrote {out} and {out.with_suffix('.md').name} in {time.monotonic() - STARTED:.0f} s")
    figures = doc["figures"]
    bad = [r.name for r in results if r.error]
    counts = [
        n
        for n in ("e2e.lost", "e2e.errors", "api.errors", "clickstream.api_errors", "engine.failed")
        if figures.get(n, {}).get("value")
    ]
    if bad or counts:
        say(f"FAILED: parts {bad or 'ok'}; non-zero {counts or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
