"""Unit tests for where the challenger comes from: its folder, or the S3 pointer's entry."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from kestrel.adapters.onnx_challenger import build_challenger
from kestrel.adapters.onnx_model import build_scorer
from kestrel.scoring import Scorer
from kestrel.settings import Settings, default_model_dir

LAYER = Path(default_model_dir())
POINTER = "models/active.json"


class NoSuchKey(Exception):
    """What botocore raises for a missing key, as far as callers look at it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"NoSuchKey: {key}")
        self.response = {"Error": {"Code": "NoSuchKey"}}


class MemoryS3:
    """The three S3 calls the model sources make, on an in-memory bucket."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.downloads: list[str] = []

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise NoSuchKey(Key)
        return {"Body": io.BytesIO(self.objects[Key])}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> dict[str, Any]:
        self.objects[Key] = Body
        return {}

    def download_file(self, bucket: str, key: str, path: str) -> None:
        self.downloads.append(key)
        Path(path).write_bytes(self.objects[key])

    def add_version(self, version: str, feature_set_hash: str | None = None) -> dict[str, str]:
        manifest = json.loads((LAYER / "manifest.json").read_text())
        manifest["model_version"] = version
        if feature_set_hash is not None:
            manifest["feature_set_hash"] = feature_set_hash
        keys = {"model_key": f"models/{version}/model.onnx",
                "manifest_key": f"models/{version}/manifest.json"}  # fmt: skip
        self.objects[keys["model_key"]] = (LAYER / "model.onnx").read_bytes()
        self.objects[keys["manifest_key"]] = json.dumps(manifest).encode()
        return {"version": version, **keys}

    def point(self, champion: dict[str, str], challenger: Any = None) -> None:
        body = {**champion, **({} if challenger is None else {"challenger": challenger})}
        self.objects[POINTER] = json.dumps(body).encode()


def scorers(s3: MemoryS3, **env: str) -> tuple[Scorer, Scorer | None]:
    settings = Settings.from_env(
        {"MODEL_DIR": str(LAYER), "MODEL_BUCKET": "models-bucket", "MODEL_REFRESH_S": "0", **env}
    )
    champion = build_scorer(settings, s3_client=s3)
    return champion, build_challenger(settings, champion)


LAYER_VERSION = json.loads((LAYER / "manifest.json").read_text())["model_version"]


def test_challenger_named_in_the_pointer_is_loaded_at_cold_start() -> None:
    s3 = MemoryS3()
    s3.point(s3.add_version(LAYER_VERSION), s3.add_version("v-next"))
    champion, challenger = scorers(s3)
    assert challenger is not None
    assert (champion.model_version, challenger.model_version) == (LAYER_VERSION, "v-next")
    assert s3.downloads == ["models/v-next/manifest.json", "models/v-next/model.onnx"]


def test_no_pointer_means_no_challenger_and_no_error() -> None:
    champion, challenger = scorers(MemoryS3())
    assert challenger is not None and challenger.model_version is None
    assert challenger.metrics() == {
        "rejected_models": 0, "model_refresh_errors": 0, "model_swaps": 0,
    }  # fmt: skip
    assert champion.model_version == LAYER_VERSION


def test_challenger_follows_the_pointer_swaps_refuses_and_withdraws() -> None:
    s3 = MemoryS3()
    current = s3.add_version(LAYER_VERSION)
    s3.point(current)
    champion, challenger = scorers(s3)
    assert challenger is not None and challenger.model_version is None

    def look() -> str | None:
        champion.refresh(force=True)  # the champion reads the pointer ...
        challenger.refresh(force=True)  # ... and the challenger looks at what it read
        return challenger.model_version

    s3.point(current, s3.add_version("v2"))
    assert look() == "v2"
    assert look() == "v2" and s3.downloads.count("models/v2/model.onnx") == 1
    s3.point(current, s3.add_version("v3", feature_set_hash="0" * 16))
    assert look() == "v2" and challenger.rejected_models == 1  # refused, v2 stays
    assert look() == "v2" and challenger.rejected_models == 1  # not offered again
    assert "models/v3/model.onnx" not in s3.downloads  # refused on its manifest alone
    s3.point(current)  # the entry is gone: no challenger, at once
    assert look() is None
    s3.point(current, {**current})  # an entry naming the champion itself is no challenger
    assert look() is None
    s3.point(current, {"version": "v4"})  # malformed: refused once, then ignored
    assert look() is None and challenger.rejected_models == 2
    assert look() is None and challenger.rejected_models == 2
    s3.point(current, s3.add_version("v5"))
    assert look() == "v5" and champion.model_version == LAYER_VERSION
    assert champion.metrics()["model_swaps"] == 0


def test_a_challenger_folder_serves_until_the_pointer_says_otherwise(tmp_path: Path) -> None:
    s3 = MemoryS3()
    folder = tmp_path / "challenger"
    folder.mkdir()
    manifest = json.loads((LAYER / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "model_version": "folder-7"}))
    (folder / "model.onnx").write_bytes((LAYER / "model.onnx").read_bytes())
    s3.point(s3.add_version(LAYER_VERSION))
    champion, challenger = scorers(s3, CHALLENGER_MODEL_DIR=str(folder))
    assert challenger is not None and challenger.model_version == "folder-7"
    champion.refresh(force=True)
    challenger.refresh(force=True)
    assert challenger.model_version is None  # the pointer, once read, names none


@pytest.mark.parametrize("with_folder", [False, True])
def test_without_a_bucket_only_a_folder_sets_a_challenger(with_folder: bool) -> None:
    env = {"MODEL_DIR": str(LAYER)}
    if with_folder:
        env["CHALLENGER_MODEL_DIR"] = str(LAYER)
    settings = Settings.from_env(env)
    challenger = build_challenger(settings, build_scorer(settings))
    if with_folder:
        assert challenger is not None and challenger.model_version == LAYER_VERSION
    else:
        assert challenger is None
