"""`make build` for real: the deps layer from pip's index, the repo template's artifacts.

Named `_pip` so that its module name differs from tests/unit/test_build_lambda.py (the test
folders are not packages; pytest and mypy need unique basenames).
"""

from __future__ import annotations

import glob
import json
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import build_lambda  # noqa: E402
import lambda_artifacts as la  # noqa: E402

pytestmark = pytest.mark.integration

TEMPLATE_RUNTIME = build_lambda.read_plan(REPO / "template.yaml").runtime
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "urllib3", "dateutil", "six.py")
IMPORTED_AT_RUN_TIME = (
    "onnxruntime",
    "numpy",
    "redis",
    "hiredis",
    "fastavro",
    "aws_lambda_powertools",
    "chalice",
    "prometheus_client",
    "pybreaker",
)


def _interpreter(runtime: str) -> str | None:
    """A Python of the runtime's version on this machine (this one, PATH, pyenv), or None."""
    version = runtime.removeprefix("python")
    candidates = [sys.executable, shutil.which(f"python{version}") or ""]
    candidates += sorted(glob.glob(str(Path.home() / f".pyenv/versions/{version}.*/bin/python3")))
    for candidate in filter(None, candidates):
        done = subprocess.run(
            [candidate, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def _build(out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code = build_lambda.main(["--out", str(out), "--arch", "x86_64", *extra])
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return code, manifest


def test_build_lambda_pip_builds_artifacts_within_lambda_limits(
    lambda_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The session's build of the template (the conftest's `lambda_build`, as `make build`).
    runtime = TEMPLATE_RUNTIME
    out = lambda_build.parent / "lambda"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["runtime"], manifest["architecture"]) == (runtime, "x86_64")
    artifacts = manifest["artifacts"]
    assert {"CoreLayer", "ModelLayer", "DepsLayer", "TransactionsFunction"} <= set(artifacts)
    for name, entry in artifacts.items():
        assert la.sha256_file(out / entry["path"]) == entry["sha256"], name
        if entry["kind"] == "function":
            assert entry["unzipped_bytes_with_layers"] <= la.UNZIPPED_LIMIT
            assert len(entry["layers"]) <= la.MAX_LAYERS
    with zipfile.ZipFile(out / "DepsLayer.zip") as archive:
        names = archive.namelist()
    tops = {name.split("/")[1] for name in names}
    assert all(name.startswith("python/") for name in names)
    assert {"onnxruntime", "numpy", "redis", "aws_lambda_powertools", "chalice"} <= tops
    assert not tops & set(RUNTIME_PROVIDED), "the Lambda runtime ships boto3 and its deps"
    assert "bin" not in tops
    assert not [n for n in names if n.endswith(("/RECORD", ".pyc")) or "__pycache__" in n]
    with zipfile.ZipFile(out / "ModelLayer.zip") as archive:
        assert {"model.onnx", "manifest.json"} <= set(archive.namelist())
    with zipfile.ZipFile(out / "CoreLayer.zip") as archive:
        assert "python/kestrel/__init__.py" in archive.namelist()

    # Importable from the layers alone (no site-packages) when an interpreter of the runtime's
    # Python is here: the machine's architecture must match too.
    python = _interpreter(runtime)
    if python is not None and platform.machine() == "x86_64":
        opt = tmp_path / "opt"
        for layer in ("DepsLayer", "CoreLayer", "ModelLayer"):
            with zipfile.ZipFile(out / f"{layer}.zip") as archive:
                archive.extractall(opt)
        probe = (
            f"import sys; sys.path[:0] = [{str(opt / 'python')!r}]; "
            + "".join(f"import {module}; " for module in IMPORTED_AT_RUN_TIME)
            + f"import onnxruntime as ort; ort.InferenceSession({str(opt / 'model.onnx')!r})"
        )
        done = subprocess.run(
            [python, "-S", "-I", "-c", probe], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]

    # The built template names each zip (relative to itself) and keeps nothing to rebuild.
    built = json.loads(lambda_build.read_text())["Resources"]
    for name, entry in artifacts.items():
        prop = "CodeUri" if entry["kind"] == "function" else "ContentUri"
        assert built[name]["Properties"][prop] == f"lambda/{entry['path']}", name
    assert "BuildMethod" not in built["DepsLayer"].get("Metadata", {})

    # Same inputs: --skip-deps reuses the deps layer, and every artifact hashes the same.
    code, again = _build(out, "--runtime", runtime, "--skip-deps")
    assert code == 0
    assert "DepsLayer: reusing" in capsys.readouterr().err
    assert {n: e["sha256"] for n, e in again["artifacts"].items()} == {
        n: e["sha256"] for n, e in artifacts.items()
    }


@pytest.mark.slow
def test_build_lambda_pip_deps_layer_is_reproducible_from_scratch(tmp_path: Path) -> None:
    hashes = []
    for name in ("one", "two"):
        code, manifest = _build(tmp_path / name, "--runtime", "python3.12")
        assert code == 0
        hashes.append({n: e["sha256"] for n, e in manifest["artifacts"].items()})
    assert hashes[0] == hashes[1]
