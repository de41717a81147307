"""Unit tests for naming a challenger in the model pointer (and keeping it across exports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kestrel_training.registry import (
    ACTIVE_POINTER,
    clear_challenger,
    read_pointer,
    set_challenger,
    upload,
)
from test_shadow_challenger_source import LAYER, MemoryS3

BUCKET = "models-bucket"


def manifest(version: str) -> dict[str, object]:
    return {**json.loads((LAYER / "manifest.json").read_text()), "model_version": version}


def exported(root: Path, version: str) -> Path:
    """A model folder of `version`, as `registry export` writes it."""
    folder = root / version
    folder.mkdir()
    (folder / "model.onnx").write_bytes((LAYER / "model.onnx").read_bytes())
    (folder / "manifest.json").write_text(json.dumps(manifest(version)))
    return folder


def test_set_challenger_names_it_beside_the_champion_and_exports_keep_it(
    tmp_path: Path,
) -> None:
    s3 = MemoryS3()
    v1, v2, v3 = (exported(tmp_path, v) for v in ("1", "2", "3"))
    assert read_pointer(BUCKET, s3) is None
    with pytest.raises(ValueError, match="export the champion first"):
        set_challenger(v2, manifest("2"), BUCKET, s3)
    upload(v1, manifest("1"), BUCKET, s3)
    with pytest.raises(ValueError, match="is the champion already"):
        set_challenger(v1, manifest("1"), BUCKET, s3)
    pointer = set_challenger(v2, manifest("2"), BUCKET, s3)
    assert pointer["version"] == "1"
    entry = pointer["challenger"]
    assert (entry["version"], entry["model_key"], entry["manifest_key"]) == (
        "2", "models/2/model.onnx", "models/2/manifest.json",
    )  # fmt: skip
    assert json.loads(s3.objects["models/2/manifest.json"])["model_version"] == "2"
    upload(v3, manifest("3"), BUCKET, s3)  # a new champion: the challenger stays
    again = read_pointer(BUCKET, s3)
    assert again is not None and again["version"] == "3" and again["challenger"] == entry
    upload(v2, manifest("2"), BUCKET, s3)  # the challenger promoted: no longer one
    promoted = read_pointer(BUCKET, s3)
    assert promoted is not None and "challenger" not in promoted


def test_clear_challenger_removes_only_the_entry(tmp_path: Path) -> None:
    s3 = MemoryS3()
    assert clear_challenger(BUCKET, s3) is None  # no pointer at all
    upload(exported(tmp_path, "1"), manifest("1"), BUCKET, s3)
    assert clear_challenger(BUCKET, s3) is None  # no challenger
    set_challenger(exported(tmp_path, "2"), manifest("2"), BUCKET, s3)
    before = read_pointer(BUCKET, s3)
    assert clear_challenger(BUCKET, s3) == "2"
    after = json.loads(s3.objects[ACTIVE_POINTER])
    assert before is not None
    assert after == {k: v for k, v in before.items() if k != "challenger"}


def test_read_pointer_raises_other_errors() -> None:
    class Denied(MemoryS3):
        def get_object(self, Bucket: str, Key: str) -> dict[str, object]:
            error = PermissionError("AccessDenied")
            error.response = {"Error": {"Code": "AccessDenied"}}  # type: ignore[attr-defined]
            raise error

    with pytest.raises(PermissionError):
        read_pointer(BUCKET, Denied())
