"""The load generator's HTTP/1.1 side: requests serialised with h11, one keep-alive connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING

import h11

from bench.loadgen_stats import CONNECTION_ERROR, RESPONSE

if TYPE_CHECKING:
    from bench.loadgen import OpenLoopClient


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One request serialised ahead of time: its exact bytes and the h11 events they encode."""

    wire: bytes
    head: h11.Request
    body: bytes


def prepare_requests(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]], bodies: Iterable[bytes]
) -> list[PreparedRequest]:
    """Serialise one request per body with h11 (a head per distinct body length, shared)."""
    heads: dict[int, tuple[h11.Request, bytes]] = {}
    out = []
    for body in bodies:
        if len(body) not in heads:
            head = h11.Request(
                method=method,
                target=target,
                headers=[("Host", host), *headers, ("Content-Length", str(len(body)))],
            )
            heads[len(body)] = (head, h11.Connection(h11.CLIENT).send(head) or b"")
        head, head_bytes = heads[len(body)]
        out.append(PreparedRequest(head_bytes + body, head, body))  # h11 writes bodies verbatim
    return out


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends prepared requests, parses responses with h11."""

    def __init__(self, client: OpenLoopClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.current = -1
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, i: int) -> None:
        """Write request `i` now; advance h11's state machine afterwards (off the clock)."""
        assert self.transport is not None
        prepared = self.client.requests[i]
        self.current = i
        self.client.result.sent_ns[i] = perf_counter_ns()
        self.transport.write(prepared.wire)
        self.h11.send(prepared.head)
        if prepared.body:
            self.h11.send(h11.Data(data=prepared.body))
        self.h11.send(h11.EndOfMessage())

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        i, result = self.current, self.client.result
        if i < 0:  # bytes nobody asked for: the connection is out of step, drop it
            self.fail(CONNECTION_ERROR, "unsolicited data")
            return
        try:
            self.h11.receive_data(data)
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Response):
                    result.status[i] = event.status_code
                    timing = [v for k, v in event.headers if k == b"server-timing"]
                    result.server_timing[i] = b",".join(timing)
                elif isinstance(event, h11.Data) and self.client.keep_bodies:
                    result.bodies[i] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.finish(now)
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    self.fail(CONNECTION_ERROR, "closed mid-response")
                    return
        except h11.ProtocolError as exc:
            self.fail(CONNECTION_ERROR, f"protocol error: {exc}")

    def finish(self, now: int) -> None:
        """The response to the current request is complete: record it, take the next one."""
        i, result = self.current, self.client.result
        result.done_ns[i], result.outcome[i] = now, RESPONSE
        self.current = -1
        self.client.completed(i)
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self.client.release(self)
        else:  # the server closes this connection (Connection: close): reopen one
            self.drop()

    def fail(self, outcome: int, why: str) -> None:
        """Record the current request (if any) as failed and drop the connection."""
        if self.current >= 0:
            result, i = self.client.result, self.current
            result.done_ns[i], result.outcome[i] = perf_counter_ns(), outcome
            result.errors_detail.append(f"request {i}: {why}")
            self.current = -1
            self.client.completed(i)
        self.drop()

    def drop(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.client.lost(self)

    def eof_received(self) -> None:
        if self.current >= 0:  # a response delimited by the close itself
            self.data_received(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(CONNECTION_ERROR, f"connection lost: {exc or 'closed by server'}")
