"""Build the template's Lambda artifacts: one reproducible zip per function and per layer.

    python tools/build_lambda.py [--arch x86_64|arm64] [--out build/lambda] [--skip-deps]

The template (read with the local runtime's own reader, `kestrel_local`) names the functions,
their CodeUri folders, their layers' ContentUri folders, the runtime and the architecture.

* A function zip holds its CodeUri folder (no `__pycache__`, no `.chalice/`).
* A layer zip holds its ContentUri folder as it is (core: `python/kestrel/...`; model:
  `model.onnx` and `manifest.json` at the root, so under /opt), except a layer with a
  `Metadata.BuildMethod: python3.x` and a `requirements.txt`: that one is built from manylinux
  wheels for the runtime's Python, architecture and glibc (Amazon Linux 2 for python3.11,
  Amazon Linux 2023 from python3.12) into `python/`.
* Deps layer, in two pip steps. (1) `pip install --dry-run --report` resolves the requirements
  under constraints.txt for the Lambda platform. (2) From that report, the packages the code
  needs at run time are kept: boto3/botocore come with the Lambda runtime, so they and what
  only they need (s3transfer, urllib3, python-dateutil, six...) are left out; Chalice's own
  requirements serve its CLI only (chalice.app needs the standard library), so they are left
  out too. Those exact versions are installed with `--no-deps --require-hashes` (the hashes of
  the wheels step 1 chose) and pip's install records (RECORD, INSTALLER, bin/) are dropped.
* `template.json` beside the output folder (`build/template.json`) is the template on these
  zips (`kestrel_local.cfn_artifacts.write_built_template`): `sam deploy --template-file
  build/template.json` and `make deploy-localstack` deploy it without `sam build`.
* Sizes are checked against Lambda's limits (250 MB unzipped per function with its layers,
  5 layers; zips over 50 MB warn: they must go through S3). Exit 1 names the function.
* `manifest.json` in the output folder lists every artifact (path relative to the manifest,
  sha256, sizes, architecture, runtime) and the deps layer's cache key: a hash of its inputs
  (requirements, constraints, architecture, Python, glibc, this tool's exclusions).
  `--skip-deps` reuses the deps zip of the previous build when that key is unchanged.

Progress goes to stderr; the size table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lambda_artifacts as la

from kestrel_local.cfn_artifacts import BUILT_TEMPLATE, write_built_template
from kestrel_local.functions import LAYER_TYPES, FunctionSpec, functions_of
from kestrel_local.provision import _names
from kestrel_local.template import Stack, TemplateError, load_template

REPO = Path(__file__).resolve().parent.parent
TOOL_VERSION = "1"


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class LayerSource:
    """One layer of the template: where its content is and whether pip builds it."""

    logical_id: str
    folder: Path
    requirements: Path | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What the template asks to build."""

    runtime: str
    architectures: tuple[str, ...]
    functions: Mapping[str, FunctionSpec]
    layers: Mapping[str, LayerSource]
    function_layers: Mapping[str, tuple[str, ...]]


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"build: {message}", file=sys.stderr, flush=True)


def read_plan(template: Path) -> Plan:
    """Functions, layers, runtime and architectures of a SAM template."""
    stack = Stack(load_template(template))
    _names(stack, "http://localhost")
    functions = functions_of(stack, template.parent)
    layers: dict[str, LayerSource] = {}
    by_folder: dict[Path, str] = {}
    for logical_id, resource in stack.resources.items():
        if resource["Type"] not in LAYER_TYPES or not stack.resource_enabled(logical_id):
            continue
        props = resource.get("Properties") or {}
        content = props.get("ContentUri", props.get("Content"))
        if not isinstance(content, str):
            raise BuildError(f"{logical_id}.ContentUri: must be a local folder")
        folder = (template.parent / content).resolve()
        method = str((resource.get("Metadata") or {}).get("BuildMethod", ""))
        requirements = folder / "requirements.txt"
        pip_built = method.startswith("python") and requirements.is_file()
        layers[logical_id] = LayerSource(logical_id, folder, requirements if pip_built else None)
        by_folder[folder] = logical_id
    function_layers = {
        name: tuple(by_folder[folder] for folder in spec.layer_dirs)
        for name, spec in sorted(functions.items())
    }
    runtimes = sorted({spec.runtime for spec in functions.values()})
    if len(runtimes) != 1:
        raise BuildError(f"the functions use {runtimes or 'no'} runtimes; this build needs one")
    archs = tuple(sorted({a for spec in functions.values() for a in spec.architectures}))
    return Plan(runtimes[0], archs, functions, layers, function_layers)


def deps_cache_key(requirements: Path, constraints: Path, arch: str, runtime: str) -> str:
    """Hash of everything the deps layer is built from."""
    inputs = {
        "tool": TOOL_VERSION,
        "requirements": requirements.read_text(),
        "constraints": constraints.read_text() if constraints.is_file() else "",
        "arch": arch,
        "runtime": runtime,
        "glibc": la.RUNTIME_GLIBC[runtime],
        "provided": sorted(la.RUNTIME_PROVIDED),
        "leaves": sorted(la.RUNTIME_LEAVES),
        "dropped": sorted(la.PIP_RECORD_FILES),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _pip(args: Sequence[str], what: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(
            line
            for line in done.stderr.splitlines()
            if not line.startswith("WARNING: Location")  # unreachable extra indexes
        )[-3000:]
        raise BuildError(f"{what} failed (pip exit {done.returncode}):\n{tail}")


def _platform_args(arch: str, runtime: str, glibc: tuple[int, int] | None = None) -> list[str]:
    python_version = runtime.removeprefix("python")
    args = ["--implementation", "cp", "--python-version", python_version]
    args += ["--only-binary=:all:"]
    for tag in la.platform_tags(arch, glibc or la.RUNTIME_GLIBC[runtime]):
        args += ["--platform", tag]
    return args


def _resolve(
    requirements: Path,
    constraints: Path,
    arch: str,
    runtime: str,
    work: Path,
    glibc: tuple[int, int] | None = None,
) -> dict[str, Any]:
    report = work / "report.json"
    args = ["install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report)]
    args += ["--target", str(work / "dry-run"), "-r", str(requirements)]
    if constraints.is_file():
        args += ["-c", str(constraints)]
    _pip(args + _platform_args(arch, runtime, glibc), "resolving the deps layer")
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


def _glibc_diagnosis(
    requirements: Path, constraints: Path, arch: str, runtime: str, work: Path
) -> str:
    """Which pinned wheels need a newer glibc than the runtime's OS has (or '' if unknown)."""
    try:
        report = _resolve(requirements, constraints, arch, runtime, work, glibc=(2, 40))
    except BuildError:
        return ""
    limit = la.RUNTIME_GLIBC[runtime]
    too_new = []
    for item in report.get("install", []):
        filename = str(item["download_info"]["url"]).rsplit("/", 1)[-1]
        needs = la.wheel_glibc(filename)
        if needs and needs > limit:
            meta = item["metadata"]
            too_new.append(f"{meta['name']}=={meta['version']} (glibc {needs[0]}.{needs[1]})")
    if not too_new:
        return ""
    return (
        f"\nThese pins have no wheel for {runtime}'s glibc {limit[0]}.{limit[1]} on {arch}: "
        f"{', '.join(too_new)}. Pin versions with manylinux2014 wheels, or move the template "
        "to a runtime on Amazon Linux 2023 (python3.12+, glibc 2.34)."
    )


def build_deps_layer(
    source: LayerSource, constraints: Path, arch: str, runtime: str, dest: Path
) -> la.ZipResult:
    """Resolve, select, install and zip the pip-built layer."""
    assert source.requirements is not None
    with tempfile.TemporaryDirectory(prefix="kestrel-deps-") as tmp:
        work = Path(tmp)
        progress(f"{source.logical_id}: resolving {source.requirements.name} for {runtime} {arch}")
        try:
            report = _resolve(source.requirements, constraints, arch, runtime, work)
        except BuildError as exc:
            hint = _glibc_diagnosis(source.requirements, constraints, arch, runtime, work)
            raise BuildError(f"{exc}{hint}") from None
        python_version = runtime.removeprefix("python")
        pins = la.select_runtime_packages(report, la.target_environment(python_version, arch))
        progress(
            f"{source.logical_id}: installing {len(pins)} packages "
            f"({', '.join(f'{p.name}=={p.version}' for p in pins)})"
        )
        pinned = work / "pinned.txt"
        pinned.write_text(la.pinned_requirements(pins))
        target = work / "layer" / "python"
        args = ["install", "--quiet", "--no-deps", "--no-compile", "--ignore-installed"]
        args += ["--target", str(target), "-r", str(pinned)]
        _pip(args + _platform_args(arch, runtime), "installing the deps layer")
        la.prune_install(target)
        progress(f"{source.logical_id}: zipping")
        return la.write_zip(la.collect_files(work / "layer"), dest)


def _previous_manifest(out: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded


def build(
    template: Path,
    out: Path,
    arch: str | None,
    skip_deps: bool,
    runtime: str | None = None,
    constraints: Path | None = None,
) -> int:
    """Build every artifact, check sizes, write the manifest; 0 when every function fits."""
    plan = read_plan(template)
    runtime = runtime or plan.runtime
    if runtime not in la.RUNTIME_GLIBC:
        raise BuildError(f"runtime {runtime}: not a Lambda Python runtime this build knows")
    if arch is None:
        if len(plan.architectures) != 1:
            raise BuildError(f"the functions use {list(plan.architectures)}: pass --arch")
        arch = plan.architectures[0]
    if arch not in la.ARCH_MACHINE:
        raise BuildError(f"--arch {arch}: use one of {sorted(la.ARCH_MACHINE)}")
    if arch not in plan.architectures:
        progress(
            f"warning: the template's functions declare {list(plan.architectures)}, building {arch}"
        )
    constraints = constraints or template.parent / "constraints.txt"
    previous = _previous_manifest(out).get("artifacts", {})
    out.mkdir(parents=True, exist_ok=True)
    # A manifest only ever describes a finished build: drop the last one until this one is.
    (out / "manifest.json").unlink(missing_ok=True)
    results: dict[str, la.ZipResult] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name, layer in sorted(plan.layers.items()):
        dest = out / f"{name}.zip"
        entry: dict[str, Any] = {"kind": "layer", "source": _rel(layer.folder, template.parent)}
        if layer.requirements is not None:
            key = deps_cache_key(layer.requirements, constraints, arch, runtime)
            entry["cache_key"] = key
            old = previous.get(name, {})
            if skip_deps and old.get("cache_key") == key and dest.is_file():
                result = la.zip_stats(dest)
                if result.sha256 != old.get("sha256"):
                    raise BuildError(
                        f"{dest}: changed since it was built; build without --skip-deps"
                    )
                progress(f"{name}: reusing {dest} (inputs unchanged, key {key[:12]})")
            elif skip_deps:
                raise BuildError(
                    f"--skip-deps: no deps layer built from these inputs in {out} "
                    f"(key {key[:12]}); build once without --skip-deps"
                )
            else:
                result = build_deps_layer(layer, constraints, arch, runtime, dest)
        else:
            progress(f"{name}: zipping {entry['source']}")
            result = la.write_zip(la.collect_files(layer.folder), dest)
        results[name] = result
        entries[name] = entry
    for name, spec in sorted(plan.functions.items()):
        progress(f"{name}: zipping {_rel(spec.code_dir, template.parent)}")
        results[name] = la.write_zip(la.collect_files(spec.code_dir), out / f"{name}.zip")
        entries[name] = {
            "kind": "function",
            "source": _rel(spec.code_dir, template.parent),
            "handler": spec.handler,
            "layers": list(plan.function_layers[name]),
        }
    checks = [
        la.check_function(
            name, results[name], [(layer, results[layer]) for layer in plan.function_layers[name]]
        )
        for name in sorted(plan.functions)
    ]
    for name, entry in entries.items():
        result = results[name]
        entry.update(
            path=result.path.name,
            sha256=result.sha256,
            zipped_bytes=result.zipped_bytes,
            unzipped_bytes=result.unzipped_bytes,
            files=result.files,
        )
    for check in checks:
        entries[check.function]["unzipped_bytes_with_layers"] = check.unzipped_bytes
    manifest = {
        "runtime": runtime,
        "architecture": arch,
        "template": _rel(template, template.parent),
        "limits": {
            "unzipped_bytes": la.UNZIPPED_LIMIT,
            "layers": la.MAX_LAYERS,
            "direct_upload_zipped_bytes": la.DIRECT_UPLOAD_LIMIT,
        },
        "artifacts": dict(sorted(entries.items())),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(la.format_table(results, checks))
    for warning in la.upload_warnings(results):
        progress(f"warning: {warning}")
    errors = [error for check in checks for error in check.errors]
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    progress(f"wrote {len(results)} artifacts and manifest.json to {out}")
    if errors:
        return 1
    built = write_built_template(
        load_template(template),
        {name: result.path for name, result in results.items()},
        out.parent / BUILT_TEMPLATE,
        runtime,
        arch,
    )
    progress(f"wrote {_rel(built, template.parent)}: the template on these zips (deploy this one)")
    return 0


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=REPO / "template.yaml")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "build" / "lambda",
        help="output folder (default build/lambda)",
    )
    parser.add_argument(
        "--arch", choices=sorted(la.ARCH_MACHINE), help="default: the template's Architectures"
    )
    parser.add_argument("--runtime", help="default: the template's Runtime (only to try another)")
    parser.add_argument(
        "--constraints",
        type=Path,
        help="pip constraints (default: constraints.txt next to the template)",
    )
    parser.add_argument(
        "--skip-deps",
        action="store_true",
        help="reuse the deps layer of the last build if its inputs are unchanged",
    )
    args = parser.parse_args(argv)
    try:
        return build(
            args.template.resolve(),
            args.out.resolve(),
            args.arch,
            args.skip_deps,
            args.runtime,
            args.constraints,
        )
    except (BuildError, TemplateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, TemplateError) else 1


if __name__ == "__main__":
    sys.exit(main())
