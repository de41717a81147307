"""HTTP/1.1 on the wire for the local API server: a small, total request-head parser and
responses serialised in one buffer.

`parse_head` reads a request's head (request line and header fields) from the bytes a
connection has received so far. It returns None while the head is incomplete, a `Head`
when it is whole and valid, or a `Refusal` (status and reason) for anything else: it never
raises, whatever the bytes (`tests/unit/test_http_wire.py` checks it on arbitrary input).
It does what the API needs and no more: origin-form targets, Content-Length bodies (a
Transfer-Encoding is refused with 501, so a body is never misread as the next request),
HTTP/1.0 and 1.1 with keep-alive as RFC 9112 defines it, and ``Expect: 100-continue``.

Limits: a head over MAX_HEAD_BYTES or with more than MAX_HEADERS fields is 431, a body over
MAX_BODY_BYTES is 413 (API Gateway and Lambda refuse bodies of that size too), an HTTP
version other than 1.x is 505. A refused request closes the connection: after a malformed
head the server cannot know where the next request starts.

`response_bytes` builds the status line, the fields and the body as one ``bytes``, so a
response goes out in one ``send`` (with TCP_NODELAY on the socket, no Nagle delay).
http.server's parser (the ``email`` package's) costs more than the rest of a request's
handling outside the app; this one is a few string operations per field.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 6 * 1024 * 1024  # a synchronous Lambda invocation's payload limit

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/(\d)\.(\d)\r?")
# Header lines, each with its line end (token name, colon, value without CTLs but HTAB),
# then the blank line that ends the head.
_FIELD_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r?\n)*\r?\n")
_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Head:
    """A valid request head: header names lower-cased, repeated fields joined with ", "."""

    method: str
    target: str
    headers: dict[str, str]
    content_length: int
    keep_alive: bool
    expect_continue: bool
    size: int  # bytes of the head, its blank line included; the body starts there


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the server answers with `status` and then closes the connection."""

    status: int
    reason: str


def parse_head(data: bytes | bytearray) -> Head | Refusal | None:
    """The request head at the start of `data`; None while it is incomplete."""
    stop = _head_end(data)
    if stop is None:
        if len(data) > MAX_HEAD_BYTES:
            return Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
        return None
    start, size = stop
    line_end = data.find(b"\n", 0, start)
    if line_end < 0:  # the head is its request line alone
        line_end, fields = start, b"\n"
    else:  # the header lines, each with its line end, then the blank line
        fields = bytes(data[line_end + 1 : size])
    matched = _REQUEST_LINE.fullmatch(data, 0, line_end)
    if matched is None or matched.group(3) != b"1":
        return _bad_request_line(bytes(data[:line_end]).removesuffix(b"\r"))
    if fields.count(b"\n") - 1 > MAX_HEADERS:
        return Refusal(431, f"more than {MAX_HEADERS} header fields")
    if not _FIELD_LINES.fullmatch(fields):
        return Refusal(400, "a header field must be a token name, a colon and a value "
                       "without control characters (no line folding)")  # fmt: skip
    headers: dict[str, str] = {}
    for line in fields.decode("latin-1").split("\n")[:-2]:
        name, _, value = line.partition(":")
        key, text = name.lower(), value.strip(" \t\r")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    method, target = matched.group(1).decode("ascii"), matched.group(2).decode("ascii")
    return _head(method, target, matched.group(4), headers, size)


def _head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """Where the blank line ending the head starts and ends (CRLF or bare LF lines)."""
    at = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
    if at >= 0 and data.find(b"\n\n", 0, at) < 0 and data.find(b"\n\r\n", 0, at) < 0:
        return at, at + 4
    end = _END.search(data, 0, MAX_HEAD_BYTES + 4)
    return None if end is None else (end.start(), end.end())


def _bad_request_line(line: bytes) -> Refusal:
    """Why a request line is refused."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return Refusal(400, "request line must be: method, target, HTTP version")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return Refusal(400, "method must be a token")
    if not _TARGET.fullmatch(target):
        return Refusal(400, "request target must be an absolute path of visible ASCII")
    if _VERSION.fullmatch(version) is None:
        return Refusal(400, "not an HTTP version")
    return Refusal(505, "only HTTP/1.0 and HTTP/1.1 are served")


def _head(
    method: str, target: str, minor: bytes, headers: dict[str, str], size: int
) -> Head | Refusal:
    """The head's framing: body length, keep-alive, 100-continue; or its refusal."""
    if "transfer-encoding" in headers:
        return Refusal(501, "Transfer-Encoding is not supported: send a Content-Length")
    length = 0
    raw = headers.get("content-length")
    if raw is not None:
        if not _decimal(raw):  # maybe the same length repeated: "3, 3"
            values = {v.strip(" \t") for v in raw.split(",")}
            if len(values) != 1:
                return Refusal(400, "conflicting Content-Length values")
            raw = values.pop()
            if not _decimal(raw):
                return Refusal(400, "Content-Length must be a decimal number")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            return Refusal(413, f"body over {MAX_BODY_BYTES} bytes")
    connection = headers.get("connection")
    if connection is None:
        keep_alive = minor != b"0"
    else:
        tokens = {t.strip(" \t").lower() for t in connection.split(",")}
        keep_alive = "keep-alive" in tokens if minor == b"0" else "close" not in tokens
    expect = "expect" in headers and headers["expect"].lower() == "100-continue"
    return Head(method, target, headers, length, keep_alive, expect and minor != b"0", size)


def _decimal(text: str) -> bool:
    """1 to 19 ASCII digits."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def response_bytes(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    keep_alive: bool,
    head_only: bool = False,
) -> bytes:
    """Status line, fields (Content-Length and Connection set here) and body, as one buffer.

    CR and LF in a field value become spaces, so an app's header cannot split the response.
    `head_only` (a HEAD request) keeps the Content-Length of the body but leaves it out.
    """
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    for name, value in headers:
        if name.lower() in ("content-length", "connection", "transfer-encoding"):
            continue
        lines.append(f"{name}: {value}" if _plain(value) else f"{name}: {_flatten(value)}")
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head if head_only or status in (204, 304) or status < 200 else head + body


def refusal_bytes(refusal: Refusal) -> bytes:
    """A refused request's JSON answer, closing the connection."""
    body = (
        '{"error":"bad_request","field":"","problem":'
        + _json_string(f"{refusal.status} {_REASONS.get(refusal.status, '')}: {refusal.reason}")
        + "}"
    ).encode()
    return response_bytes(refusal.status, [("Content-Type", "application/json")], body, False)


def _plain(value: str) -> bool:
    return "\r" not in value and "\n" not in value


def _flatten(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def _json_string(text: str) -> str:
    """`text` as a JSON string (the reasons here are ASCII without quotes or backslashes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_server_timing(value: bytes | str, metric: str = "app") -> float | None:
    """The ``dur`` (ms) of `metric` in a Server-Timing value (``app;dur=0.21, db;dur=0.1``)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    for entry in text.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name != metric:
            continue
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "dur":
                with contextlib.suppress(ValueError):
                    return float(raw.strip().strip('"'))
        return None
    return None
