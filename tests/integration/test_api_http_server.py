"""The local API's HTTP server (`kestrel_local.api_http`) on a real loopback socket.

A small Chalice app stands in for Kestrel's (the full app over this server is in
test_scoring_api): these tests are about the wire, keep-alive, framing and refusals.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest
from chalice.app import Chalice, Response
from chalice.config import Config
from chalice.local import CustomLocalChalice, LocalChalice

from kestrel_local.api_http import LocalApiServer
from kestrel_local.processes import LOOPBACK

pytestmark = pytest.mark.integration


def _app() -> Chalice:
    app = Chalice(app_name="wire-test")

    @app.route("/echo", methods=["POST"])
    def echo() -> Response:
        request = app.current_request
        assert request is not None
        return Response(
            body=request.raw_body or b"",
            headers={"Content-Type": "text/plain", "X-Seen-Key": request.headers.get("x-k", "")},
        )

    @app.route("/items/{item}", methods=["GET"])
    def item(item: str) -> dict[str, str]:
        return {"item": item}

    @app.route("/boom", methods=["GET"])
    def boom() -> dict[str, str]:
        raise RuntimeError("view failed")

    CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
    app.__class__ = CustomLocalChalice
    return app


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    """The server on a free loopback port, serving in a thread."""
    app = _app()
    config = Config.create(chalice_stage="dev", app_name=app.app_name, lambda_timeout=10)
    served = LocalApiServer(app, config, LOOPBACK, 0)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server.server_close()
    thread.join(5)


def _raw(server: LocalApiServer, data: bytes, until_close: bool = True) -> bytes:
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(data)
        if not until_close:
            return sock.recv(65536)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_api_http_server_answers_many_requests_on_one_keep_alive_connection(
    server: LocalApiServer,
) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
    conn.connect()
    first = conn.sock
    for i in range(50):
        conn.request("POST", "/echo", f"body {i}".encode(), {"X-K": "v"})
        reply = conn.getresponse()
        assert reply.status == 200 and reply.read() == f"body {i}".encode()
        assert reply.getheader("x-seen-key") == "v"
    conn.request("GET", "/items/a%2Fb%20c")
    reply = conn.getresponse()
    assert reply.status == 200 and reply.read() == b'{"item":"a/b c"}'  # decoded once
    assert conn.sock is first
    conn.close()


def test_api_http_server_answers_pipelined_requests_in_order(server: LocalApiServer) -> None:
    one = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
    data = one + b"one" + one + b"two" + b"GET /items/z HTTP/1.1\r\nConnection: close\r\n\r\n"
    raw = _raw(server, data)
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.index(b"one") < raw.index(b"two") < raw.index(b'{"item":"z"}')
    assert b"Connection: close" in raw


def test_api_http_server_sends_undeclared_methods_to_the_app_and_head_without_body(
    server: LocalApiServer,
) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
    conn.request("TRACE", "/echo")
    reply = conn.getresponse()
    assert reply.status == 405 and b"Unsupported method" in reply.read()
    conn.request("HEAD", "/items/x")
    reply = conn.getresponse()
    assert reply.status == 405 and reply.read() == b""
    conn.request("GET", "/no/such/route")
    reply = conn.getresponse()
    assert reply.status == 403 and b"Missing Authentication Token" in reply.read()
    conn.request("GET", "/boom")
    reply = conn.getresponse()
    assert reply.status == 500 and reply.read()
    conn.close()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /items/x HTTP/1.1\r\n" + b"X-Big: " + b"y" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /items/x HTTP/3.0\r\n\r\n", 505),
    ],
)
def test_api_http_server_refuses_bad_requests_with_json_and_closes(
    server: LocalApiServer, data: bytes, status: int
) -> None:
    raw = _raw(server, data)
    assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:200]
    assert b"Connection: close" in raw and raw.endswith(b"}")


def test_api_http_server_sends_100_continue_before_the_body(server: LocalApiServer) -> None:
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"body")


def test_api_http_server_survives_a_client_that_leaves_mid_request(
    server: LocalApiServer,
) -> None:
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
    conn.request("GET", "/items/still-up")
    assert conn.getresponse().status == 200
    conn.close()
