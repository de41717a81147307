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
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB
_DIGITS = re.compile(rb"[0-9]{1,19}")
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
    end = _END.search(data, 0, MAX_HEAD_BYTES + 4)
    if end is None:
        if len(data) > MAX_HEAD_BYTES:
            return Refusal(431, f"request head over {MAX_HEAD_BYTES} bytes")
        return None
    lines = bytes(data[: end.start()]).split(b"\n")
    request_line = lines[0].removesuffix(b"\r")
    if not request_line and len(lines) == 1:
        return Refusal(400, "empty request line")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return Refusal(400, "request line must be: method, target, HTTP version")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return Refusal(400, "method must be a token")
    if not _TARGET.fullmatch(target):
        return Refusal(400, "request target must be an absolute path of visible ASCII")
    matched = _VERSION.fullmatch(version)
    if matched is None:
        return Refusal(400, "not an HTTP version")
    if matched.group(1) != b"1":
        return Refusal(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if len(lines) - 1 > MAX_HEADERS:
        return Refusal(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.removesuffix(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return Refusal(400, "header field must be a token name, a colon and a value")
        value = value.strip(b" \t")
        if _VALUE_BAD.search(value):
            return Refusal(400, "control character in a header field value")
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return _head(method.decode("ascii"), target.decode("ascii"), matched, headers, end.end())


def _head(
    method: str, target: str, version: re.Match[bytes], headers: dict[str, str], size: int
) -> Head | Refusal:
    """The head's framing: body length, keep-alive, 100-continue; or its refusal."""
    if "transfer-encoding" in headers:
        return Refusal(501, "Transfer-Encoding is not supported: send a Content-Length")
    length = 0
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1:
            return Refusal(400, "conflicting Content-Length values")
        raw = values.pop().encode("latin-1")
        if not _DIGITS.fullmatch(raw):
            return Refusal(400, "Content-Length must be a decimal number")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            return Refusal(413, f"body over {MAX_BODY_BYTES} bytes")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    minor = version.group(2)
    keep_alive = "keep-alive" in tokens if minor == b"0" else "close" not in tokens
    expect = headers.get("expect", "").lower() == "100-continue" and minor != b"0"
    return Head(method, target, headers, length, keep_alive, expect, size)


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
