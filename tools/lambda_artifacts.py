"""Pure parts of the Lambda build: reproducible zips, Lambda's size limits, deps selection.

Nothing here touches the network or the template; `build_lambda.py` drives it.

Reproducible zips: entries sorted by name, every timestamp 1980-01-01 00:00, permissions
0644 (0755 when the source file is executable), no directory entries, no `__pycache__` or
`*.pyc`, DEFLATE at a fixed level. The same files give the same bytes, so the same sha256
(with the same zlib: a different zlib build may compress differently).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement

# Lambda's quotas (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
MB = 1024 * 1024
UNZIPPED_LIMIT = 250 * MB  # function code + all its layers, unzipped
DIRECT_UPLOAD_LIMIT = 50 * MB  # zipped, direct upload; via S3 a bigger zip is accepted
MAX_LAYERS = 5

FIXED_DATE = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 9
EXCLUDED_DIRS = frozenset({"__pycache__", ".chalice", ".git", ".mypy_cache", ".pytest_cache"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")

# Highest glibc of the OS under each Lambda Python runtime: Amazon Linux 2 (2.26) up to
# python3.11, Amazon Linux 2023 (2.34) from python3.12. A manylinux_2_X wheel needs X <= this.
RUNTIME_GLIBC: Mapping[str, tuple[int, int]] = {
    "python3.9": (2, 26),
    "python3.10": (2, 26),
    "python3.11": (2, 26),
    "python3.12": (2, 34),
    "python3.13": (2, 34),
    "python3.14": (2, 34),
}
ARCH_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}

# The Lambda Python runtime ships boto3 and botocore (and so their dependencies): the deps
# layer leaves them out, and with them every package that only they need.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore"})
# Packages whose own requirements serve only their command-line tools: at run time Chalice
# imports chalice.app, which needs the standard library alone (click, botocore, pip,
# setuptools, inquirer... are for the `chalice` CLI). Installed without their requirements.
RUNTIME_LEAVES = frozenset({"chalice"})
# pip's install records: RECORD hashes console scripts whose shebang embeds the build's
# interpreter path; INSTALLER/REQUESTED/direct_url.json describe the install, not the code.
PIP_RECORD_FILES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


@dataclass(frozen=True, slots=True)
class ZipResult:
    """What one written zip holds: its hash, sizes and number of files."""

    path: Path
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    files: int


@dataclass(frozen=True, slots=True)
class Pinned:
    """One distribution chosen for the deps layer, pinned to the exact wheel pip resolved."""

    name: str
    version: str
    sha256: str | None


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def collect_files(root: Path, prefix: str = "") -> list[tuple[str, Path]]:
    """Every file under `root` as (archive name, path), without caches or bytecode."""
    entries: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
        for name in files:
            if name.endswith(EXCLUDED_SUFFIXES):
                continue
            path = Path(folder) / name
            if not path.is_file():
                continue
            entries.append((prefix + path.relative_to(root).as_posix(), path))
    return sorted(entries)


def write_zip(entries: Iterable[tuple[str, Path]], dest: Path) -> ZipResult:
    """Write a byte-for-byte reproducible zip of `entries` to `dest` (atomically)."""
    ordered = sorted(entries)
    names = [name for name, _ in ordered]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{dest.name}: duplicate archive names {duplicates[:5]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    unzipped = 0
    with zipfile.ZipFile(partial, "w") as archive:
        for name, path in ordered:
            mode = path.stat().st_mode
            perms = 0o755 if mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            info.create_system = 3  # unix, so external_attr carries the mode
            info.external_attr = (stat.S_IFREG | perms) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = path.read_bytes()
            unzipped += len(data)
            archive.writestr(
                info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL
            )
    partial.replace(dest)
    return ZipResult(dest, sha256_file(dest), dest.stat().st_size, unzipped, len(ordered))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def zip_stats(path: Path) -> ZipResult:
    """Sizes and hash of an existing zip (for a reused deps layer)."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    return ZipResult(
        path, sha256_file(path), path.stat().st_size, sum(i.file_size for i in infos), len(infos)
    )


def prune_install(target: Path) -> None:
    """Drop what `pip install --target` adds beyond the packages: scripts, install records."""
    for path in sorted(target.rglob("*"), reverse=True):
        if path.is_dir() and path.name == "__pycache__":
            for item in path.iterdir():
                item.unlink()
            path.rmdir()
        elif path.is_file() and (
            path.name in PIP_RECORD_FILES and path.parent.name.endswith(".dist-info")
        ):
            path.unlink()
    scripts = target / "bin"
    if scripts.is_dir():
        for item in sorted(scripts.rglob("*"), reverse=True):
            if item.is_dir() and not item.is_symlink():
                item.rmdir()
            else:
                item.unlink()
        scripts.rmdir()


def platform_tags(arch: str, glibc: tuple[int, int]) -> list[str]:
    """pip `--platform` values for every manylinux wheel that runs on this glibc and arch."""
    machine = ARCH_MACHINE[arch]
    major, top = glibc
    return [f"manylinux_{major}_{minor}_{machine}" for minor in range(top, 16, -1)] + [
        f"manylinux2014_{machine}"
    ]


def wheel_glibc(filename: str) -> tuple[int, int] | None:
    """The lowest glibc a wheel file supports, from its manylinux tags (None: not manylinux)."""
    found: list[tuple[int, int]] = []
    for tag in filename.removesuffix(".whl").split("-")[-1].split("."):
        match = re.match(r"manylinux_(\d+)_(\d+)_", tag)
        if match:
            found.append((int(match[1]), int(match[2])))
        elif tag.startswith("manylinux2014_"):
            found.append((2, 17))
        elif tag.startswith("manylinux2010_"):
            found.append((2, 12))
        elif tag.startswith("manylinux1_"):
            found.append((2, 5))
    return min(found) if found else None


def target_environment(python_version: str, arch: str) -> dict[str, str]:
    """PEP 508 marker values of the Lambda runtime (not of the machine running the build)."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "os_name": "posix",
        "platform_machine": ARCH_MACHINE[arch],
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_release": "",
        "platform_version": "",
    }


def select_runtime_packages(
    report: Mapping[str, Any],
    environment: Mapping[str, str],
    provided: frozenset[str] = RUNTIME_PROVIDED,
    leaves: frozenset[str] = RUNTIME_LEAVES,
) -> list[Pinned]:
    """The packages the deps layer needs, from a `pip install --dry-run --report` report.

    Starts at the requested packages and follows requirements (markers evaluated for the
    Lambda runtime, extras as requested), never into packages the runtime provides and never
    out of `leaves`. So botocore's jmespath stays only because powertools needs it too.
    """
    by_name: dict[str, Mapping[str, Any]] = {
        canonical(item["metadata"]["name"]): item for item in report.get("install", [])
    }
    queue: list[tuple[str, frozenset[str]]] = [
        (name, frozenset(item.get("requested_extras") or ()))
        for name, item in by_name.items()
        if item.get("requested")
    ]
    seen: dict[str, set[str]] = {}
    while queue:
        name, extras = queue.pop()
        if name in provided or name not in by_name:
            continue
        if name in seen and extras <= seen[name]:
            continue
        known = seen.setdefault(name, set())
        known.update(extras)
        if name in leaves:
            continue
        for raw in by_name[name]["metadata"].get("requires_dist") or []:
            requirement = Requirement(raw)
            if requirement.marker is not None and not _marker_holds(
                requirement.marker, environment, known
            ):
                continue
            queue.append((canonical(requirement.name), frozenset(requirement.extras)))
    pins = []
    for name in sorted(seen):
        item = by_name[name]
        hashes = (item.get("download_info") or {}).get("archive_info", {}).get("hashes") or {}
        pins.append(Pinned(name, str(item["metadata"]["version"]), hashes.get("sha256")))
    return pins


def _marker_holds(marker: Marker, environment: Mapping[str, str], extras: set[str]) -> bool:
    env = dict(environment)
    for extra in ["", *sorted(extras)]:
        env["extra"] = extra
        if marker.evaluate(env):
            return True
    return False


def pinned_requirements(pins: Sequence[Pinned]) -> str:
    """A requirements file for `pip install --no-deps`, with hashes when pip gave them all."""
    with_hashes = all(pin.sha256 for pin in pins)
    lines = [
        f"{pin.name}=={pin.version}" + (f" --hash=sha256:{pin.sha256}" if with_hashes else "")
        for pin in pins
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class FunctionCheck:
    """One function's size against Lambda's limits."""

    function: str
    unzipped_bytes: int
    layers: int
    errors: tuple[str, ...]


def check_function(
    function: str, code: ZipResult, layers: Sequence[tuple[str, ZipResult]]
) -> FunctionCheck:
    """Check the 250 MB unzipped (code + layers) and 5-layer limits for one function."""
    total = code.unzipped_bytes + sum(result.unzipped_bytes for _, result in layers)
    errors = []
    if total > UNZIPPED_LIMIT:
        errors.append(
            f"{function}: {total / MB:.1f} MB unzipped with its layers "
            f"({', '.join(name for name, _ in layers) or 'none'}) exceeds Lambda's "
            f"{UNZIPPED_LIMIT / MB:.0f} MB"
        )
    if len(layers) > MAX_LAYERS:
        errors.append(f"{function}: {len(layers)} layers, Lambda allows {MAX_LAYERS}")
    return FunctionCheck(function, total, len(layers), tuple(errors))


def upload_warnings(artifacts: Mapping[str, ZipResult]) -> list[str]:
    """Zips too big for a direct upload (they must go through S3, as sam/cfn deploy does)."""
    return [
        f"{name}: {result.zipped_bytes / MB:.1f} MB zipped is over the "
        f"{DIRECT_UPLOAD_LIMIT / MB:.0f} MB direct-upload limit; upload it through S3"
        for name, result in sorted(artifacts.items())
        if result.zipped_bytes > DIRECT_UPLOAD_LIMIT
    ]


def format_table(artifacts: Mapping[str, ZipResult], checks: Sequence[FunctionCheck]) -> str:
    """The artifact table and the per-function totals, as plain text."""
    lines = [f"{'artifact':<24} {'zipped MB':>10} {'unzipped MB':>12} {'files':>6}  sha256"]
    for name, result in sorted(artifacts.items()):
        lines.append(
            f"{name:<24} {result.zipped_bytes / MB:>10.2f} {result.unzipped_bytes / MB:>12.2f} "
            f"{result.files:>6}  {result.sha256[:12]}"
        )
    lines.append("")
    lines.append(f"{'function':<24} {'layers':>6} {'unzipped MB with layers':>24} {'limit':>7}")
    for check in checks:
        verdict = "OVER" if check.errors else "ok"
        lines.append(
            f"{check.function:<24} {check.layers:>6} {check.unzipped_bytes / MB:>24.2f} "
            f"{UNZIPPED_LIMIT / MB:>5.0f}MB  {verdict}"
        )
    return "\n".join(lines)
