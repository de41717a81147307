"""The open-loop load generator against a tiny keep-alive HTTP/1.1 server on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from http_harness import loopback_http_server

from bench.loadgen import run_open_loop, schedule_ns
from bench.loadgen_http import prepare_requests
from bench.loadgen_stats import summary

STALL_AT, STALL_S = 20, 0.2  # the server sleeps before answering this request (0-based)


class Handler(BaseHTTPRequestHandler):
    """Echoes a JSON body back with Server-Timing; stalls once."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen = 0

    def do_POST(self) -> None:
        started = time.perf_counter()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Handler.seen == STALL_AT:
            time.sleep(STALL_S)
        Handler.seen += 1
        status = 200 if self.headers.get("x-api-key") == "k" else 403
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Server-Timing", f"app;dur={(time.perf_counter() - started) * 1e3:.3f}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_port() -> Iterator[int]:
    Handler.seen = 0
    with loopback_http_server(Handler) as port:
        yield port


def test_loadgen_http_times_a_server_stall_from_the_intended_send_times(server_port: int) -> None:
    offsets = schedule_ns(200, 1.0)  # one request every 5 ms
    bodies = [f'{{"i":{i}}}'.encode() for i in range(len(offsets))]
    host = f"127.0.0.1:{server_port}"
    requests = prepare_requests("POST", "/", host, [("x-api-key", "k")], bodies)
    result = run_open_loop(
        "127.0.0.1", server_port, requests, offsets, connections=1, keep_bodies=True, timeout_s=2.0
    )
    s = summary(result)
    assert s["requests"] == 200 and s["errors"] == 0, result.errors_detail[:5]
    assert s["statuses"] == {"200": 200} and result.bodies == bodies
    assert s["in_handler_ms"]["count"] == 200 and s["in_handler_ms"]["max"] >= STALL_S * 1e3
    # One connection: the requests due during the stall queued behind it, and their latency
    # counts from when they were due (not from when they could finally be sent).
    next_one = STALL_AT + 1
    assert result.latency_ms(next_one) >= STALL_S * 1e3 - 5 - 1
    assert (result.done_ns[next_one] - result.sent_ns[next_one]) / 1e6 < 50
    assert s["pool_waits"] >= 30 and s["latency_ms"]["max"] >= STALL_S * 1e3
    assert s["latency_ms"]["p50"] < 50  # outside the stall, requests are quick
