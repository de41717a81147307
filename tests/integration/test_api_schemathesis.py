"""schemathesis against the running local API: hundreds of generated cases, no 5xx.

The API is ``python -m kestrel_local serve`` on a fresh stack (see test_scoring_api), and
schemathesis runs as its CLI (``python -m schemathesis.cli run <url>/openapi.json``) with
every check enabled, the API key header and a fixed seed (KESTREL_SCHEMATHESIS_SEED to
change it). The case count comes from schemathesis's JSON report and is checked against
the requests the server itself counted (/metrics). Only server errors fail the test; the
other checks' failures (spec/app disagreements) are reported as a warning, listed by code.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from api_harness import ApiClient, ApiServer, prometheus_samples, provision, running_api

pytestmark = pytest.mark.integration

MIN_CASES = 500
MAX_EXAMPLES = 200  # per operation; about 1,700 cases in all (9 operations), ~50 s
SEED = int(os.environ.get("KESTREL_SCHEMATHESIS_SEED", "20261129"))
RUN_TIMEOUT_S = 240


@pytest.fixture
def api(emulator_endpoint: str, redis_url: str, tmp_path: Path) -> Iterator[ApiServer]:
    """The local API on a fresh stack, Redis database 8 (flushed before and after)."""
    url = redis_url.rsplit("/", 1)[0] + "/8"
    store = redis.Redis.from_url(url)
    store.flushdb()
    app, _ = provision(emulator_endpoint, url, prefix="st")
    try:
        with running_api(app, emulator_endpoint, url, tmp_path / "api") as server:
            yield server
    finally:
        store.flushdb()
        store.close()


def requests_answered(server: ApiServer) -> Counter[str]:
    """The server's own request count by status (kestrel_api_requests_total)."""
    client = ApiClient(server)
    try:
        reply = client.request("GET", "/metrics")
    finally:
        client.close()
    assert reply.status == 200, reply.body
    counts: Counter[str] = Counter()
    for (name, labels), value in prometheus_samples(reply.body.decode()).items():
        if name == "kestrel_api_requests_total":
            counts[dict(labels)["status"]] += int(value)
    return counts


def interactions(ndjson: Path) -> list[dict[str, Any]]:
    """Every request/response pair schemathesis recorded in its NDJSON event log."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            response = node.get("response")
            if "request" in node and isinstance(response, dict) and "status_code" in response:
                found.append(node)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in ndjson.read_text().splitlines():
        walk(json.loads(line))
    return found


def describe(pair: dict[str, Any]) -> str:
    """METHOD uri -> status: body (short)."""
    request, response = pair["request"], pair["response"]
    content = response.get("content")
    if isinstance(content, dict) and "$base64" in content:
        text = base64.b64decode(content["$base64"]).decode(errors="replace")
    else:
        text = str(content or "")
    text = " ".join(re.sub(r"<[^>]*>", " ", text).split())  # HTML error pages: their text
    return f"{request['method']} {request['uri']} -> {response['status_code']}: {text[:160]}"


CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_api_schemathesis_finds_no_server_error_in_500_cases(
    api: ApiServer, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    json_report, ndjson_report = reports / "run.json", reports / "events.ndjson"
    before = requests_answered(api)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(CONFIG),
        "run", f"{api.url}/openapi.json",
        "--checks", "all",
        "--continue-on-failure",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--header", f"x-api-key: {api.key}",
        "--request-timeout", "10",
        "--report", "json,ndjson",
        "--report-json-path", str(json_report),
        "--report-ndjson-path", str(ndjson_report),
        "--output-truncate", "true",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    took = time.monotonic() - started
    output = (done.stdout + done.stderr)[-6000:]
    assert json_report.exists(), f"no report (exit {done.returncode}):\n{output}"
    report = json.loads(json_report.read_text())
    answered = requests_answered(api)

    assert report["complete"] is True, output
    assert report["errors"] == [], output  # network errors, crashes, unusable schema
    generated = int(report["test_cases"]["generated"])
    pairs = interactions(ndjson_report)
    reached_app = sum((answered - before).values())
    assert generated >= MIN_CASES, f"only {generated} cases generated"
    assert len(pairs) >= MIN_CASES, f"only {len(pairs)} requests recorded"
    assert reached_app >= MIN_CASES, f"the server counted only {reached_app} requests"

    # Every other check (status codes, schemas, content types, validation both ways)
    # passes too: the spec and the app agree.
    other = [
        f"{f['code']} {f['title']} x{f['count']} on {', '.join(f['operations'])}"
        for f in report["failures"]
        if f["code"] != "ST101"
    ]
    assert other == [], "; ".join(other)
    server_errors = [p for p in pairs if int(p["response"]["status_code"]) >= 500]
    counted_5xx = {status: n for status, n in answered.items() if status.startswith("5")}
    summary = Counter(describe(p) for p in server_errors).most_common(12)
    answered_5xx = len(server_errors) + sum(counted_5xx.values())
    assert answered_5xx == 0, (
        f"{len(server_errors)} of {len(pairs)} requests got a 5xx (server counted "
        f"{counted_5xx}) in {took:.0f} s, seed {SEED}:\n"
        + "\n".join(f"{n} x {line}" for line, n in summary)
    )
    assert not any(f["code"] == "ST101" for f in report["failures"]), output
