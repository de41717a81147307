"""The one loader of sample events (events/*.json), shared by `make invoke` and the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_event(path: str | Path) -> dict[str, Any]:
    """Read a JSON event file; a missing file or bad JSON raises ValueError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read event file ({exc.strerror})") from None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(event, dict):
        raise ValueError(f"{path}: an event must be a JSON object")
    return event
