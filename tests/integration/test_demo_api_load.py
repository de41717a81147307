"""The demo's API load sender (`ApiLoad`) against a tiny keep-alive server on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from http_harness import loopback_http_server

from kestrel_local.demo_api_load import ApiLoad

KEY = "demo-key"


class Handler(BaseHTTPRequestHandler):
    """Records each body and key; answers 403 to a wrong key, 200 with Server-Timing else."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    bodies: ClassVar[list[dict[str, object]]] = []
    keys: ClassVar[set[str]] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.bodies.append(json.loads(body))
        Handler.keys.add(self.headers.get("x-api-key", ""))
        self.send_response(200 if self.headers.get("x-api-key") == KEY else 403)
        self.send_header("Content-Length", "2")
        self.send_header("Server-Timing", "app;dur=0.250")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_port() -> Iterator[int]:
    Handler.bodies, Handler.keys = [], set()
    with loopback_http_server(Handler) as port:
        yield port


def test_api_load_sends_the_records_at_its_rate_and_reports_each_request(server_port: int) -> None:
    records = [{"transaction_id": f"t{i}"} for i in range(50)]
    load = ApiLoad(server_port, KEY, records, rate=100.0, path="/v1/score")
    load.start()
    assert load.running()
    time.sleep(1.0)
    load.stop()
    assert not load.running()
    sent = len(Handler.bodies)
    assert 50 <= sent <= 110  # 100 per second for about a second
    assert len(load.latencies_ms) == sent and load.errors == 0
    assert load.in_handler_ms == [0.25] * sent
    assert Handler.keys == {KEY}
    assert all(body in records for body in Handler.bodies)


def test_api_load_counts_refused_and_unanswered_requests_as_errors(server_port: int) -> None:
    refused = ApiLoad(server_port, "wrong", [{"x": 1}], rate=50.0)
    refused.start()
    time.sleep(0.5)
    refused.stop()
    assert refused.errors == len(Handler.bodies) > 0
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as closed:
        port = closed.server_address[1]
    unanswered = ApiLoad(port, KEY, [{"x": 1}], rate=50.0)
    unanswered.start()
    time.sleep(0.3)
    unanswered.stop()
    assert unanswered.errors > 0 and unanswered.latencies_ms == []
