"""`make build` without the network: reproducible zips, Lambda's limits, layout, deps choice."""

from __future__ import annotations

import json
import os
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import build_lambda  # noqa: E402
import lambda_artifacts as la  # noqa: E402

TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Architectures: [arm64]
    Layers: [!Ref CodeLayer, !Ref DataLayer]
Resources:
  CodeLayer:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: layers/code}
  DataLayer:
    Type: AWS::Serverless::LayerVersion
    Properties: {ContentUri: layers/data}
  Fn:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: fn/, Handler: app.handler}
"""


def _project(root: Path) -> Path:
    """A small template with two plain layers and one function (no pip-built layer)."""
    files = {
        "fn/app.py": "def handler(event, context):\n    return event\n",
        "fn/__pycache__/app.cpython-311.pyc": "junk",
        "fn/.chalice/config.json": "{}",
        "fn/lib/util.py": "X = 1\n",
        "layers/code/python/pkg/__init__.py": "",
        "layers/code/python/pkg/mod.pyc": "junk",
        "layers/data/model.bin": "0123456789" * 100,
        "layers/data/manifest.json": "{}",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "template.yaml").write_text(TEMPLATE)
    return root / "template.yaml"


def _add_deps_layer(template: Path) -> Path:
    """Give the project a pip-built layer (Metadata BuildMethod + requirements.txt)."""
    deps = template.parent / "layers/deps"
    deps.mkdir(parents=True)
    (deps / "requirements.txt").write_text("redis==8.1.0\n")
    template.write_text(
        template.read_text().replace(
            "Resources:\n",
            "Resources:\n  DepsLayer:\n    Type: AWS::Serverless::LayerVersion\n"
            "    Properties: {ContentUri: layers/deps}\n    Metadata: {BuildMethod: python3.11}\n",
        )
    )
    return deps


def _touch_all(root: Path, when: int) -> None:
    for path in root.rglob("*"):
        os.utime(path, (when, when))


def test_build_lambda_zip_is_byte_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("b.py", "a/z.py", "a/b.txt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name * 50)
    _touch_all(src, 1_700_000_000)
    first = la.write_zip(la.collect_files(src), tmp_path / "one.zip")
    _touch_all(src, 1_800_000_000)
    os.chmod(src / "b.py", 0o600)  # group/other bits are normalised
    second = la.write_zip(la.collect_files(src, ""), tmp_path / "two.zip")
    assert first.sha256 == second.sha256
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.zip") as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == ["a/b.txt", "a/z.py", "b.py"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {stat.S_IMODE(i.external_attr >> 16) for i in infos} == {0o644}
    assert first.unzipped_bytes == sum(i.file_size for i in infos)
    assert first.files == 3


def test_build_lambda_zip_keeps_executable_bit_and_rejects_duplicates(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o700)
    result = la.write_zip([("bin/tool", tool)], tmp_path / "x.zip")
    with zipfile.ZipFile(result.path) as archive:
        assert stat.S_IMODE(archive.getinfo("bin/tool").external_attr >> 16) == 0o755
    with pytest.raises(ValueError, match="duplicate"):
        la.write_zip([("a", tool), ("a", tool)], tmp_path / "y.zip")


def test_build_lambda_collect_files_skips_caches_and_bytecode(tmp_path: Path) -> None:
    _project(tmp_path)
    assert [name for name, _ in la.collect_files(tmp_path / "fn")] == ["app.py", "lib/util.py"]
    names = [name for name, _ in la.collect_files(tmp_path / "layers/code", "opt/")]
    assert names == ["opt/python/pkg/__init__.py"]


def _result(unzipped: int, zipped: int = 1) -> la.ZipResult:
    return la.ZipResult(Path("x.zip"), "ab" * 32, zipped, unzipped, 1)


def test_build_lambda_size_check_names_the_function_over_250_mb() -> None:
    ok = la.check_function("Small", _result(la.MB), [("Deps", _result(200 * la.MB))])
    assert ok.errors == ()
    assert ok.unzipped_bytes == 201 * la.MB
    over = la.check_function("Big", _result(10 * la.MB), [("Deps", _result(245 * la.MB))])
    assert over.unzipped_bytes == 255 * la.MB
    assert len(over.errors) == 1
    assert "Big" in over.errors[0] and "255.0 MB" in over.errors[0]
    assert "Deps" in over.errors[0]


def test_build_lambda_size_check_allows_at_most_five_layers() -> None:
    layers = [(f"L{i}", _result(1)) for i in range(6)]
    check = la.check_function("Fn", _result(1), layers)
    assert check.errors == ("Fn: 6 layers, Lambda allows 5",)
    assert la.check_function("Fn", _result(1), layers[:5]).errors == ()


def test_build_lambda_warns_only_on_zips_over_direct_upload_limit() -> None:
    warnings = la.upload_warnings(
        {"Deps": _result(1, zipped=51 * la.MB), "Core": _result(1, zipped=la.MB)}
    )
    assert len(warnings) == 1 and warnings[0].startswith("Deps: 51.0 MB")


def test_build_lambda_platform_tags_follow_runtime_glibc() -> None:
    tags = la.platform_tags("arm64", la.RUNTIME_GLIBC["python3.11"])
    assert tags[0] == "manylinux_2_26_aarch64"
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert la.platform_tags("x86_64", la.RUNTIME_GLIBC["python3.12"])[0] == (
        "manylinux_2_34_x86_64"
    )


@pytest.mark.parametrize(
    ("filename", "glibc"),
    [
        ("onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl", (2, 28)),
        (
            "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            (2, 27),
        ),
        ("protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", (2, 17)),
        ("redis-8.1.0-py3-none-any.whl", None),
    ],
)
def test_build_lambda_wheel_glibc(filename: str, glibc: tuple[int, int] | None) -> None:
    assert la.wheel_glibc(filename) == glibc


def _item(name: str, requested: bool, requires: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "version": "1.0", "requires_dist": requires},
        "requested": requested,
        "download_info": {"url": "x", "archive_info": {"hashes": {"sha256": name * 2}}},
    }


REPORT: dict[str, Any] = {
    "install": [
        _item("chalice", True, ["botocore>=1", "click", "six"]),
        _item("aws-lambda-powertools", True, ["jmespath<2", "boto3; extra == 'aws-sdk'"]),
        _item("onnxruntime", True, ["numpy", "colorama; platform_system == 'Windows'"]),
        _item("botocore", False, ["jmespath", "python-dateutil", "urllib3"]),
        _item("python_dateutil", False, ["six"]),
        _item("six", False),
        _item("urllib3", False),
        _item("jmespath", False),
        _item("click", False),
        _item("numpy", False),
        _item("colorama", False),
    ]
}


def test_build_lambda_deps_leave_out_runtime_provided_and_cli_only_packages() -> None:
    env = la.target_environment("3.11", "x86_64")
    pins = la.select_runtime_packages(REPORT, env)
    assert [pin.name for pin in pins] == [
        "aws-lambda-powertools",
        "chalice",
        "jmespath",
        "numpy",
        "onnxruntime",
    ]
    text = la.pinned_requirements(pins)
    assert "jmespath==1.0 --hash=sha256:jmespathjmespath" in text.splitlines()


def test_build_lambda_deps_follow_requested_extras() -> None:
    report = {
        "install": [
            {**_item("lib", True, ["extra-dep; extra == 'fast'"]), "requested_extras": ["fast"]},
            _item("extra_dep", False),
        ]
    }
    env = la.target_environment("3.11", "arm64")
    assert [p.name for p in la.select_runtime_packages(report, env)] == ["extra-dep", "lib"]


def test_build_lambda_pinned_requirements_drop_hashes_unless_all_known() -> None:
    pins = [la.Pinned("a", "1", "f" * 64), la.Pinned("b", "2", None)]
    assert la.pinned_requirements(pins) == "a==1\nb==2\n"


def test_build_lambda_prune_install_drops_pip_records_and_scripts(tmp_path: Path) -> None:
    target = tmp_path / "python"
    for name in (
        "pkg/__init__.py",
        "pkg/__pycache__/x.pyc",
        "pkg-1.0.dist-info/METADATA",
        "pkg-1.0.dist-info/RECORD",
        "pkg-1.0.dist-info/INSTALLER",
        "pkg-1.0.dist-info/direct_url.json",
        "bin/pkg-cli",
    ):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text("x")
    la.prune_install(target)
    left = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert left == ["pkg-1.0.dist-info/METADATA", "pkg/__init__.py"]


def test_build_lambda_deps_cache_key_tracks_inputs(tmp_path: Path) -> None:
    req, con = tmp_path / "requirements.txt", tmp_path / "constraints.txt"
    req.write_text("redis==8.1.0\n")
    con.write_text("redis==8.1.0\n")
    key = build_lambda.deps_cache_key(req, con, "x86_64", "python3.11")
    assert key == build_lambda.deps_cache_key(req, con, "x86_64", "python3.11")
    assert key != build_lambda.deps_cache_key(req, con, "arm64", "python3.11")
    assert key != build_lambda.deps_cache_key(req, con, "x86_64", "python3.12")
    con.write_text("redis==8.0.0\n")
    assert key != build_lambda.deps_cache_key(req, con, "x86_64", "python3.11")


def test_build_lambda_reads_functions_and_layers_of_repo_template() -> None:
    plan = build_lambda.read_plan(REPO / "template.yaml")
    assert {"TransactionsFunction", "LabelsFunction", "ApiFunction"} <= set(plan.functions)
    assert plan.runtime.startswith("python3")
    assert plan.architectures in (("x86_64",), ("arm64",))
    deps = [layer for layer in plan.layers.values() if layer.requirements is not None]
    assert [layer.logical_id for layer in deps] == ["DepsLayer", "DriftDepsLayer"]
    for name in plan.functions:
        assert len(plan.function_layers[name]) <= la.MAX_LAYERS
    assert plan.function_layers["TransactionsFunction"] == ("CoreLayer", "ModelLayer", "DepsLayer")
    assert plan.function_layers["DriftFunction"] == ("CoreLayer", "ModelLayer", "DriftDepsLayer")


def test_build_lambda_builds_layout_and_manifest_reproducibly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _project(tmp_path / "proj")
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert build_lambda.main(["--template", str(template), "--out", str(out_a)]) == 0
    _touch_all(tmp_path / "proj", 1_600_000_000)
    assert build_lambda.main(["--template", str(template), "--out", str(out_b)]) == 0
    manifest = json.loads((out_a / "manifest.json").read_text())
    assert (out_b / "manifest.json").read_text() == (out_a / "manifest.json").read_text()
    assert manifest["runtime"] == "python3.11"
    assert manifest["architecture"] == "arm64"  # from the template's Architectures
    artifacts = manifest["artifacts"]
    assert set(artifacts) == {"CodeLayer", "DataLayer", "Fn"}
    assert artifacts["Fn"]["layers"] == ["CodeLayer", "DataLayer"]
    assert artifacts["Fn"]["kind"] == "function" and artifacts["DataLayer"]["kind"] == "layer"
    for entry in artifacts.values():
        assert la.sha256_file(out_a / entry["path"]) == entry["sha256"]
    with zipfile.ZipFile(out_a / "Fn.zip") as archive:
        assert archive.namelist() == ["app.py", "lib/util.py"]
    with zipfile.ZipFile(out_a / "DataLayer.zip") as archive:
        assert archive.namelist() == ["manifest.json", "model.bin"]  # at the root: /opt
    with zipfile.ZipFile(out_a / "CodeLayer.zip") as archive:
        assert archive.namelist() == ["python/pkg/__init__.py"]
    expected = sum(artifacts[n]["unzipped_bytes"] for n in ("Fn", "CodeLayer", "DataLayer"))
    assert artifacts["Fn"]["unzipped_bytes_with_layers"] == expected
    table = capsys.readouterr().out
    assert "Fn" in table and artifacts["Fn"]["sha256"][:12] in table and "ok" in table


def test_build_lambda_exits_1_naming_a_function_over_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _project(tmp_path / "proj")
    monkeypatch.setattr(la, "UNZIPPED_LIMIT", 500)
    assert build_lambda.main(["--template", str(template), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "error: Fn:" in err and "MB unzipped with its layers" in err


def test_build_lambda_skip_deps_without_cache_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _project(tmp_path / "proj")
    _add_deps_layer(template)
    args = ["--template", str(template), "--out", str(tmp_path / "o"), "--skip-deps"]
    assert build_lambda.main(args) == 1
    assert "build once without --skip-deps" in capsys.readouterr().err


def test_build_lambda_skip_deps_reuses_a_layer_built_from_the_same_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _project(tmp_path / "proj")
    deps = _add_deps_layer(template)
    out = tmp_path / "o"
    staged = tmp_path / "staged"
    (staged / "python/redis").mkdir(parents=True)
    (staged / "python/redis/__init__.py").write_text("")
    built = la.write_zip(la.collect_files(staged), out / "DepsLayer.zip")
    key = build_lambda.deps_cache_key(
        deps / "requirements.txt", tmp_path / "proj/constraints.txt", "arm64", "python3.11"
    )
    (out / "manifest.json").write_text(
        json.dumps({"artifacts": {"DepsLayer": {"cache_key": key, "sha256": built.sha256}}})
    )
    assert build_lambda.main(["--template", str(template), "--out", str(out), "--skip-deps"]) == 0
    assert "DepsLayer: reusing" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"]["DepsLayer"]["cache_key"] == key
    assert manifest["artifacts"]["DepsLayer"]["sha256"] == built.sha256


def test_build_lambda_failed_build_leaves_no_stale_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = _project(tmp_path / "proj")
    out = tmp_path / "o"
    assert build_lambda.main(["--template", str(template), "--out", str(out)]) == 0
    _add_deps_layer(template)
    assert build_lambda.main(["--template", str(template), "--out", str(out), "--skip-deps"]) == 1
    assert not (out / "manifest.json").exists()
    assert "--skip-deps" in capsys.readouterr().err
