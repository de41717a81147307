"""Compare a suite run with the committed baseline of its machine class; exit 1 on regression.

Usage: ``python bench/compare.py [RUN.json] [--baseline PATH] [--threshold 0.2] [--set-baseline]``
(``make bench-compare``). RUN defaults to the newest ``bench/results/bench-*.json``; the
baseline is ``bench/results/baseline-<machine class>.json`` (class "<cores>c-<cpu vendor>",
e.g. ``2c-amd``), a copy of a chosen run (``--set-baseline`` writes it from RUN).

Only ratios are compared, never absolute times: each figure with a same-run ceiling
(`bench.suite_report.SPECS`) is divided by that ceiling, and a ratio more than `threshold`
(20%) below the baseline's is a regression, as is any loss or error where there was none,
or a compared figure missing from the run. Exit codes: 0 no regression, 1 regression,
2 no baseline or another machine class.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/compare.py
    sys.path.insert(0, str(REPO))

from bench.results_io import RESULTS_DIR, machine_class  # noqa: E402
from bench.suite_report import SPECS, ratios, value  # noqa: E402

HEALTH = sorted({h for spec in SPECS for h in spec.health})


@dataclass(frozen=True)
class Finding:
    """One compared quantity."""

    name: str
    baseline: float | None
    current: float | None
    change: float | None  # current / baseline - 1
    regression: bool
    note: str = ""


def compare(
    current: dict[str, Any], baseline: dict[str, Any], threshold: float = 0.2
) -> list[Finding]:
    """Ratio changes (regression below -threshold), health counters, missing figures."""
    now, then = ratios(current), ratios(baseline)
    findings = []
    for name in sorted(set(now) | set(then)):
        new, old = now.get(name, {}).get("ratio"), then.get(name, {}).get("ratio")
        if old is None:
            findings.append(Finding(name, None, new, None, False, "not in the baseline"))
            continue
        if new is None:
            findings.append(Finding(name, old, None, None, True, "missing from this run"))
            continue
        change = new / old - 1 if old else 0.0
        ceiling = now[name]["ceiling"]
        findings.append(
            Finding(name, old, new, round(change, 4), change < -threshold, f"ratio to {ceiling}")
        )
    figures, base_figures = current.get("figures", {}), baseline.get("figures", {})
    for name in HEALTH:
        new_v, old_v = value(figures, name), value(base_figures, name)
        if new_v is None and old_v is None:
            continue
        bad = new_v is not None and new_v > 0 and (old_v is None or new_v > old_v)
        findings.append(Finding(name, old_v, new_v, None, bad, "count (must stay 0)"))
    return findings


def table(findings: list[Finding], threshold: float) -> str:
    """A plain-text table of the findings."""
    lines = [f"{'quantity':<40} {'baseline':>10} {'this run':>10} {'change':>8}  verdict"]
    for f in findings:
        base = "—" if f.baseline is None else f"{f.baseline:.4g}"
        cur = "—" if f.current is None else f"{f.current:.4g}"
        change = "" if f.change is None else f"{f.change:+.1%}"
        verdict = "REGRESSION" if f.regression else "ok"
        lines.append(f"{f.name:<40} {base:>10} {cur:>10} {change:>8}  {verdict} ({f.note})")
    lines.append(
        f"regression: a ratio more than {threshold:.0%} below the baseline's, "
        "any new loss or error, or a compared figure missing"
    )
    return "\n".join(lines)


def newest_run(results: Path = RESULTS_DIR) -> Path | None:
    """The newest bench-*.json (by name: names carry the UTC time)."""
    runs = sorted(results.glob("bench-*.json"))
    return runs[-1] if runs else None


def baseline_path(doc: dict[str, Any], results: Path = RESULTS_DIR) -> Path:
    """bench/results/baseline-<machine class of the run>.json."""
    cls = doc.get("machine_class") or machine_class()
    return results / f"baseline-{cls}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a bench-*.json (default: newest)")
    parser.add_argument("--baseline", type=Path, help="default: baseline-<machine class>.json")
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--set-baseline", action="store_true", help="make RUN the baseline")
    args = parser.parse_args(argv)
    run = args.run or newest_run()
    if run is None:
        print("no bench-*.json in bench/results: run `make bench` first", file=sys.stderr)
        return 2
    current = json.loads(run.read_text())
    base = args.baseline or baseline_path(current)
    if args.set_baseline:
        shutil.copyfile(run, base)
        print(f"baseline for {current.get('machine_class')}: {base} (from {run})")
        return 0
    if not base.exists():
        print(
            f"no baseline {base} for machine class {current.get('machine_class')}: "
            f"review a quiet run, then `python bench/compare.py {run} --set-baseline`",
            file=sys.stderr,
        )
        return 2
    baseline = json.loads(base.read_text())
    if baseline.get("machine_class") != current.get("machine_class"):
        print(
            f"{run} is {current.get('machine_class')}, {base} is "
            f"{baseline.get('machine_class')}: not comparable",
            file=sys.stderr,
        )
        return 2
    findings = compare(current, baseline, args.threshold)
    print(f"{run.name} vs {base.name} (baseline commit {baseline.get('commit', '?')[:12]})")
    print(table(findings, args.threshold))
    return 1 if any(f.regression for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
