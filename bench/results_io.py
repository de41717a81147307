"""Write benchmark results as JSON in the shared format of DESIGN.md's Contracts section."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_DIR_ENV = "KESTREL_BENCH_RESULTS_DIR"  # set by bench/suite.py for the parts it runs


def git_commit(repo: Path = RESULTS_DIR.parent.parent) -> str:
    """The checked-out commit (``git rev-parse HEAD``), or "uncommitted" when there is none."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "uncommitted"
    return out.stdout.strip() or "uncommitted"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's "model name" from /proc/cpuinfo, or "unknown"."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def memory_gb(meminfo: Path = Path("/proc/meminfo")) -> float:
    """Total memory in GB (MemTotal from /proc/meminfo), or 0.0 when unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def machine() -> dict[str, Any]:
    """The machine block: cores, cpu model and memory."""
    return {"cores": os.cpu_count() or 1, "cpu": cpu_model(), "memory_gb": memory_gb()}


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """ "amd", "intel", another vendor_id in lower case, or the machine's architecture."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                known = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}
                return known.get(vendor, vendor.lower() or "unknown")
    except OSError:
        pass
    return os.uname().machine.lower() or "unknown"


def machine_class(cores: int | None = None, vendor: str | None = None) -> str:
    """The class results are compared within: "<cores>c-<cpu vendor>", e.g. "2c-amd"."""
    return f"{cores or os.cpu_count() or 1}c-{vendor or cpu_vendor()}"


def write_result(
    benchmark: str,
    params: dict[str, Any],
    figures: dict[str, tuple[float, str]],
    results_dir: Path | None = None,
) -> Path:
    """Write ``<results_dir>/<benchmark>-<UTC timestamp>.json`` and return its path.

    `results_dir` defaults to ``$KESTREL_BENCH_RESULTS_DIR`` when set, else bench/results.
    """
    results_dir = results_dir or Path(os.environ.get(RESULTS_DIR_ENV) or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "benchmark": benchmark,
        "commit": git_commit(),
        "machine": machine(),
        "params": params,
        "figures": {name: {"value": v, "unit": unit} for name, (v, unit) in figures.items()},
    }
    path = results_dir / f"{benchmark}-{stamp}.json"
    suffix = 1
    while path.exists():
        path = results_dir / f"{benchmark}-{stamp}-{suffix}.json"
        suffix += 1
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
