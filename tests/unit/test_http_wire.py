"""The local API server's HTTP/1.1 parser and response writer (`kestrel_local.http_wire`)."""

from __future__ import annotations

import http.client
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from totality_strategies import TOTALITY

from kestrel_local.http_wire import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    Head,
    Refusal,
    parse_head,
    parse_server_timing,
    refusal_bytes,
    response_bytes,
)

SCORE = (
    b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"X-API-Key: k\r\nContent-Length: 2\r\n\r\n{}"
)


def _head(data: bytes) -> Head:
    head = parse_head(data)
    assert isinstance(head, Head), head
    return head


def test_http_wire_reads_a_request_head_with_lower_case_names() -> None:
    head = _head(SCORE)
    assert (head.method, head.target, head.content_length) == ("POST", "/v1/score", 2)
    assert head.headers["x-api-key"] == "k" and head.headers["content-type"] == "application/json"
    assert head.keep_alive and not head.expect_continue
    assert SCORE[head.size :] == b"{}"


@pytest.mark.parametrize("cut", [0, 1, 10, len(SCORE) - 4, len(SCORE) - 3])
def test_http_wire_waits_for_the_rest_of_a_head(cut: int) -> None:
    assert parse_head(SCORE[:cut]) is None


def test_http_wire_accepts_bare_line_feeds_and_joins_repeated_fields() -> None:
    head = _head(b"GET /health HTTP/1.1\nAccept: a\nAccept: b\n\n")
    assert head.headers["accept"] == "a, b" and head.content_length == 0


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True), ("1.1", "close", False), ("1.1", "Keep-Alive, Close", False),
        ("1.0", None, False), ("1.0", "keep-alive", True),
    ],
)  # fmt: skip
def test_http_wire_keeps_connections_alive_as_rfc_9112_says(
    version: str, connection: str | None, keep_alive: bool
) -> None:
    field = f"Connection: {connection}\r\n" if connection else ""
    head = _head(f"GET / HTTP/{version}\r\n{field}\r\n".encode())
    assert head.keep_alive is keep_alive


def test_http_wire_notes_expect_100_continue_on_http_1_1_only() -> None:
    assert _head(
        b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n"
    ).expect_continue
    assert not _head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTPS/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(), 413),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", 431),
        (b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n", 431),
    ],
)
def test_http_wire_refuses_bad_heads_with_a_status(data: bytes, status: int) -> None:
    refused = parse_head(data)
    assert isinstance(refused, Refusal) and refused.status == status, refused


def test_http_wire_takes_a_body_at_the_limit_and_repeated_equal_lengths() -> None:
    at_limit = _head(f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n".encode())
    assert at_limit.content_length == MAX_BODY_BYTES
    assert _head(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").content_length == 3


@TOTALITY
@given(st.binary(max_size=600) | st.builds(lambda tail: SCORE[:80] + tail, st.binary()))
def test_http_wire_parser_is_total_on_any_bytes(data: bytes) -> None:
    head = parse_head(data)
    assert head is None or isinstance(head, (Head, Refusal))
    if isinstance(head, Head):
        assert 0 < head.size <= len(data) and 0 <= head.content_length <= MAX_BODY_BYTES
    if isinstance(head, Refusal):
        assert 400 <= head.status <= 505


@TOTALITY
@given(
    st.binary(max_size=300)
    | st.text(max_size=300)
    | st.builds(lambda tail: "app;dur=" + tail, st.text(max_size=40))
)
def test_server_timing_parser_is_total_on_any_value(value: bytes | str) -> None:
    duration = parse_server_timing(value)
    assert duration is None or isinstance(duration, float)


def _read(raw: bytes, method: str = "GET") -> http.client.HTTPResponse:
    class Sock:
        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(raw)

    response = http.client.HTTPResponse(Sock(), method=method)  # type: ignore[arg-type]
    response.begin()
    return response


def test_http_wire_response_is_one_buffer_http_client_reads() -> None:
    raw = response_bytes(200, [("Content-Type", "application/json"), ("X-A", "1")], b"{}", True)
    response = _read(raw)
    assert response.status == 200 and response.read() == b"{}"
    assert response.getheader("content-length") == "2" and response.getheader("x-a") == "1"
    assert response.getheader("connection") is None


def test_http_wire_response_closes_strips_framing_fields_and_line_breaks() -> None:
    fields = [("Content-Length", "99"), ("X-Evil", "a\r\nSet-Cookie: x=1")]
    response = _read(response_bytes(404, fields, b"nope", False))
    assert response.getheader("content-length") == "4" and response.read() == b"nope"
    assert response.getheader("connection") == "close" and response.getheader("set-cookie") is None


def test_http_wire_head_response_keeps_the_length_but_not_the_body() -> None:
    raw = response_bytes(405, [], b"0123456789", True, head_only=True)
    assert raw.endswith(b"Content-Length: 10\r\n\r\n")


def test_http_wire_refusal_is_json_naming_the_status_and_closes() -> None:
    response = _read(refusal_bytes(Refusal(431, "request head over 16384 bytes")))
    assert response.status == 431 and response.getheader("connection") == "close"
    assert b'"problem":"431 Request Header Fields Too Large: request head' in response.read()
