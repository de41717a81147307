"""The local API's HTTP server: keep-alive connections, one thread each, into Chalice's gateway.

Each connection gets a thread (as with ``chalice local``'s threaded server, so a slow
request or an idle browser never blocks another client) that reads requests with
`kestrel_local.http_wire`, hands each to Chalice's `LocalGateway` (the same routing,
Lambda event, authorizer and app call as ``chalice local``) and writes the answer back in
one ``send`` on a TCP_NODELAY socket. What changes against ``chalice local``'s
http.server handler, besides speed:

- path parameters reach the app percent-decoded once, as API Gateway sends them;
- every method reaches Chalice (405 where no route declares it, as on API Gateway), HEAD
  answers without a body;
- a malformed, oversized or chunked request gets a JSON 4xx/5xx and the connection closes;
- an error outside the app (in the gateway) is logged and answered 500, never a dropped
  connection;
- scoring requests (SERIAL_ROUTES) run one at a time, as in one Lambda container: two at
  once under the GIL only take turns mid-request, each paying for the other's work and the
  hand-overs. A scoring request that arrives meanwhile waits before the app (its HTTP
  latency counts the wait; its handler time, Server-Timing, does not). Other routes (health,
  metrics, telemetry, the dashboard) run alongside, so a slow one never holds up scoring.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import socketserver
import threading
from typing import Any
from urllib.parse import unquote

from chalice.app import Chalice
from chalice.config import Config
from chalice.local import (
    LambdaContext,
    LambdaEventConverter,
    LocalGateway,
    LocalGatewayException,
    RouteMatcher,
)

from kestrel_local.http_wire import (
    CONTINUE,
    Head,
    Refusal,
    parse_head,
    refusal_bytes,
    response_bytes,
)

logger = logging.getLogger(__name__)

RECV_BYTES = 65536
SERIAL_ROUTES = frozenset({"/v1/score", "/v1/score/batch", "/v1/propensity"})
_GATEWAY_ERROR = b'{"error":"internal_error","field":"","problem":"the local gateway failed"}'


class DecodedPathEvents(LambdaEventConverter):
    """Lambda events as API Gateway sends them: path parameters percent-decoded.

    chalice local passes them still percent-encoded; the app validates the decoded value.
    A path without a query that names a route without parameters is looked up directly
    (the same route `RouteMatcher` finds, without its URL parsing and route scan).
    """

    def __init__(self, matcher: RouteMatcher, binary_types: list[str] | None = None) -> None:
        super().__init__(matcher, binary_types)
        self._static = {
            route: route
            for route in matcher.route_urls
            if "{" not in route and matcher.match_route(route).route == route
        }

    def create_lambda_event(self, *args: Any, **kwargs: Any) -> Any:
        """Chalice's event, its path parameters percent-decoded."""
        event = super().create_lambda_event(*args, **kwargs)
        params = event.get("pathParameters")
        if params:
            event["pathParameters"] = {name: unquote(value) for name, value in params.items()}
        return event

    def fast_event(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> Any:
        """The event of a request for a parameterless route (headers already lower-case)."""
        route = self._static.get(path[:-1] if path.endswith("/") and path != "/" else path)
        if route is None or "?" in path or "#" in path or (body and self._is_binary(headers)):
            return self.create_lambda_event(method, path, headers, body)
        return {
            "requestContext": {
                "httpMethod": method, "resourcePath": route,
                "identity": {"sourceIp": self.LOCAL_SOURCE_IP}, "path": path,
            },
            "headers": headers, "pathParameters": {}, "stageVariables": {},
            "multiValueQueryStringParameters": None, "body": body,
        }  # fmt: skip


class FastGateway(LocalGateway):
    """Chalice's local API Gateway with `DecodedPathEvents` as its event converter."""

    def __init__(self, app_object: Chalice, config: Config) -> None:
        super().__init__(app_object, config)
        self.events = DecodedPathEvents(
            RouteMatcher(list(app_object.routes)), app_object.api.binary_types
        )
        self.event_converter = self.events
        self._serial = threading.Lock()
        timeout_s = config.lambda_timeout
        if timeout_s is None:
            timeout_s = self.MAX_LAMBDA_EXECUTION_TIME
        self._context = (config.function_name, config.lambda_memory_size, timeout_s * 1000)

    def _generate_lambda_context(self) -> LambdaContext:
        """Chalice's context, the config read once (a new request id each time)."""
        name, memory, timeout_ms = self._context
        return LambdaContext(function_name=name, memory_size=memory, max_runtime_ms=timeout_ms)

    def _generate_lambda_event(
        self, method: str, path: str, headers: Any, body: bytes | None
    ) -> Any:
        return self.events.fast_event(method, path, headers, body)

    def answer(self, head: Head, body: bytes) -> bytes:
        """The whole HTTP response to one request, from the app (or the gateway's error)."""
        path = head.target
        if path.startswith("//"):  # as http.server: never read as a network path
            path = "/" + path.lstrip("/")
        head_only = head.method == "HEAD"
        try:
            if path in SERIAL_ROUTES:
                with self._serial:
                    response = self.handle_request(head.method, path, head.headers, body or None)
            else:
                response = self.handle_request(head.method, path, head.headers, body or None)
        except LocalGatewayException as exc:
            fields = {"Content-Type": "application/json", **exc.headers}
            return response_bytes(
                exc.CODE, fields.items(), exc.body or b"", head.keep_alive, head_only
            )
        fields = dict(response["headers"])
        multi = response.get("multiValueHeaders") or {}
        fields.update(multi)
        payload = response.get("body")
        if payload is None:
            return response_bytes(
                response["statusCode"], _pairs(fields), b"", head.keep_alive, head_only
            )
        if response.get("isBase64Encoded"):
            payload = base64.b64decode(payload)
        elif isinstance(payload, str):
            payload = payload.encode("utf-8")
        fields.setdefault("Content-Type", "application/json")
        return response_bytes(
            response["statusCode"], _pairs(fields), payload, head.keep_alive, head_only
        )


def _pairs(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Header pairs, a list value giving one field per item."""
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        if isinstance(value, list):
            pairs += [(name, str(v)) for v in value]
        else:
            pairs.append((name, str(value)))
    return pairs


class ApiConnection(socketserver.BaseRequestHandler):
    """One client connection: requests in order, each answered in one send."""

    server: ApiHttpServer

    def handle(self) -> None:
        """Serve requests until the client closes, asks to close, or sends a bad request."""
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        gateway = self.server.gateway
        buffer = bytearray()
        while True:
            head = parse_head(buffer)
            while head is None:
                chunk = sock.recv(RECV_BYTES)
                if not chunk:
                    return
                buffer += chunk
                head = parse_head(buffer)
            if isinstance(head, Refusal):
                sock.sendall(refusal_bytes(head))
                return
            end = head.size + head.content_length
            if head.expect_continue and len(buffer) < end:
                sock.sendall(CONTINUE)
            while len(buffer) < end:
                chunk = sock.recv(max(RECV_BYTES, end - len(buffer)))
                if not chunk:
                    return
                buffer += chunk
            body = bytes(buffer[head.size : end])
            del buffer[:end]
            try:
                out = gateway.answer(head, body)
            except Exception:
                logger.exception("%s %s: the local gateway failed", head.method, head.target)
                fields = [("Content-Type", "application/json")]
                sock.sendall(response_bytes(500, fields, _GATEWAY_ERROR, False))
                return
            sock.sendall(out)
            if not head.keep_alive:
                return

    def finish(self) -> None:
        """Close quietly (the client may already be gone)."""
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_WR)


class ApiHttpServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server whose connections are `ApiConnection`s on `gateway`."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], gateway: FastGateway) -> None:
        self.gateway = gateway
        super().__init__(address, ApiConnection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (reset by the client, ...) is logged at debug level."""
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class LocalApiServer:
    """The app served on `host`:`port` (what ``chalice local``'s LocalDevServer offers)."""

    def __init__(self, app: Chalice, config: Config, host: str, port: int) -> None:
        self.app_object, self.host = app, host
        self.server = ApiHttpServer((host, port), FastGateway(app, config))
        self.port = int(self.server.server_address[1])

    def serve_forever(self) -> None:
        """Serve until `shutdown`."""
        self.server.serve_forever()

    def shutdown(self) -> None:
        """Stop serving (call from another thread)."""
        self.server.shutdown()
