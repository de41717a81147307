"""The local API's key (`make serve`): KESTREL_API_KEY, else .run/api-key; never none at all."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel_local.api_server import API_KEY_FILE, ServeError, api_key

REPO = Path(__file__).resolve().parents[2]


def test_api_server_key_from_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / API_KEY_FILE).write_text("from-file\n")
    assert api_key(str(tmp_path), {"KESTREL_API_KEY": " from-env "}) == "from-env"


def test_api_server_key_file_is_made_once_private_and_random(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    key = api_key(str(run_dir), {"KESTREL_API_KEY": "  "})  # blank: not a key
    path = run_dir / API_KEY_FILE
    assert len(key) >= 24 and path.read_text() == key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_key(str(run_dir), {}) == key
    assert api_key(str(tmp_path / "other"), {}) != key


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_api_server_refuses_an_empty_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / API_KEY_FILE
    path.write_text(content)
    with pytest.raises(ServeError, match="api-key is empty") as caught:
        api_key(str(tmp_path), {})
    assert str(path) in str(caught.value)
    assert path.read_text() == content  # left as it was, for the user to fix


def test_api_server_refuses_a_key_file_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / API_KEY_FILE).mkdir()
    with pytest.raises(ServeError, match="cannot read the API key"):
        api_key(str(tmp_path), {})


def test_kestrel_local_serve_refuses_an_empty_key_file_before_anything_else(
    tmp_path: Path,
) -> None:
    # What `make serve` runs. It stops at the key: no emulator is needed, none is reached.
    (tmp_path / API_KEY_FILE).write_text("\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "KESTREL_RUN_DIR": str(tmp_path),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # the discard port: never asked
    }
    done = subprocess.run(
        [sys.executable, "-m", "kestrel_local", "serve", "--template", str(REPO / "template.yaml")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"error: {tmp_path / API_KEY_FILE} is empty" in done.stderr
    assert "scoring API" not in done.stderr
