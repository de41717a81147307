"""Open-loop HTTP/1.1 load generator over keep-alive connections (asyncio + h11).

Requests are due at fixed intended times (``offsets_ns``; every 2 ms at 500 req/s). A
request's latency runs from its *intended* send time to the last byte of its response, so
coordinated omission is accounted for: when the server stalls, the requests due meanwhile
wait and carry the stall in their latency instead of being sent late and timed from then.

Pool: ``connections`` persistent connections opened before the run. A due request takes the
most recently freed one (LIFO, like urllib3's pool) or waits in a FIFO queue, and that wait
counts in its latency. The pool never grows: new connections would hide server queueing and
time TCP handshakes instead of the server. A connection the server closes is reopened.

Precision: h11 serialises every request before the run (a head per method, target and body
length; bodies verbatim); at send time the bytes are written first and the connection's h11
state machine is advanced afterwards. Responses are parsed by h11; ``Server-Timing`` and
bodies are kept raw and parsed after the run. The loop waits in ``select()`` (``epoll``
rounds timeouts up to whole ms) with 1 µs timer slack, and can busy-poll the last
``spin_us`` before each send (VM timer wake-ups come 30-300 µs late). Each request records
when the scheduler got to it (``scheduled_ns - intended_ns``: the client's own lag) and when
its bytes went out (``sent_ns``: later when it waited for a connection), so a reader can
tell a slow client from a slow server. Errors (non-2xx, timeouts, connection errors) are
recorded per request, never dropped: every request ends with an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import selectors
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from time import perf_counter_ns, time
from typing import Any, Generic, TypeVar

from bench.loadgen_http import PreparedRequest, _Connection
from bench.loadgen_stats import PENDING, TIMEOUT, LoadResult, percentile

Progress = Callable[[int, int, float, float], None]  # done, errors, window p99 ms, window max ms
C = TypeVar("C")


def schedule_ns(rate: float, duration_s: float) -> list[int]:
    """Intended send offsets (ns from the start) of a fixed `rate` (req/s) over `duration_s`."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    return [round(i * 1e9 / rate) for i in range(round(rate * duration_s))]


class Dispatcher(Generic[C]):
    """Which request goes on which connection: free connections LIFO, waiting requests FIFO."""

    def __init__(self) -> None:
        self.idle: list[C] = []
        self.waiting: deque[int] = deque()
        self.pool_waits = 0
        self.max_waiting = 0

    def arrive(self, index: int) -> C | None:
        """Request `index` is due: a free connection for it, or None (it waits in the queue)."""
        if self.idle:
            return self.idle.pop()
        self.waiting.append(index)
        self.pool_waits += 1
        self.max_waiting = max(self.max_waiting, len(self.waiting))
        return None

    def release(self, conn: C) -> int | None:
        """`conn` is free: the waiting request it must send now, or None (it goes idle)."""
        if self.waiting:
            return self.waiting.popleft()
        self.idle.append(conn)
        return None

    def discard(self, conn: C) -> None:
        """`conn` is gone: never hand it out again."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)


def lower_timer_slack(ns: int = 1000) -> bool:
    """Set this thread's timer slack (Linux prctl PR_SET_TIMERSLACK); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(29, ns, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class OpenLoopClient:
    """Send `requests[i]` at ``start + offsets_ns[i]`` over a fixed pool of connections.

    Options: `connections`; `timeout_s` (from the intended time: then it is a timeout error
    and its connection is replaced); `keep_bodies`; `spin_us` (busy-poll the loop, still
    reading responses, for the last stretch before each send; 0 when the client shares a CPU
    with the server); `progress(done, errors, p99 ms, max ms)` over the requests finished
    since the last call, every `progress_every_s`, at a moment when nothing is in flight.
    """

    def __init__(
        self, host: str, port: int, requests: Sequence[PreparedRequest], offsets_ns: Sequence[int],
        *, connections: int = 16, timeout_s: float = 5.0, keep_bodies: bool = False,
        spin_us: int = 0, progress: Progress | None = None, progress_every_s: float = 10.0,
    ) -> None:  # fmt: skip
        if len(requests) != len(offsets_ns):
            raise ValueError("one prepared request per intended send time")
        self.host, self.port, self.requests, self.offsets = host, port, requests, offsets_ns
        self.n_connections, self.timeout_ns = connections, int(timeout_s * 1e9)
        self.keep_bodies, self.spin_ns = keep_bodies, spin_us * 1000
        self.progress, self.progress_every_ns = progress, int(progress_every_s * 1e9)
        self.dispatch: Dispatcher[_Connection] = Dispatcher()
        self.result = LoadResult.empty(len(offsets_ns))
        self.live: set[_Connection] = set()
        self.finished: list[int] = []
        self.outstanding, self.errors, self.next_send, self.reported = len(offsets_ns), 0, 0, 0
        self.all_done = asyncio.Event()
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        self.live.add(conn)
        self.release(conn)

    async def _reopen(self) -> None:
        while not self.stopping:
            try:
                await self._open()
                self.result.reconnects += 1
                return
            except OSError as exc:  # the server is gone for now: the watchdog times out waiters
                self.result.errors_detail.append(f"reconnect failed: {exc}")
                await asyncio.sleep(0.05)

    def release(self, conn: _Connection) -> None:
        """`conn` is free: send the oldest waiting request on it, or keep it idle."""
        nxt = self.dispatch.release(conn)
        if nxt is not None:
            conn.send(nxt)

    def lost(self, conn: _Connection) -> None:
        """`conn` is gone: replace it (the pool keeps its size)."""
        self.dispatch.discard(conn)
        self.live.discard(conn)
        if not self.stopping:
            self._spawn(self._reopen())

    def completed(self, i: int) -> None:
        """Request `i` has its outcome."""
        self.finished.append(i)
        self.errors += self.result.is_error(i)
        self.outstanding -= 1
        if self.outstanding == 0:
            self.all_done.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.add(asyncio.get_running_loop().create_task(coro))

    def expire(self, now: int) -> None:
        """Time out in-flight and queued requests whose intended time is older than the timeout."""
        r, deadline = self.result, now - self.timeout_ns
        for conn in list(self.live):
            if conn.current >= 0 and r.intended_ns[conn.current] < deadline:
                conn.fail(TIMEOUT, "timed out in flight")
        waiting = self.dispatch.waiting
        while waiting and r.intended_ns[waiting[0]] < deadline:
            i = waiting.popleft()
            r.done_ns[i], r.outcome[i] = now, TIMEOUT
            r.errors_detail.append(f"request {i}: timed out waiting for a connection")
            self.completed(i)

    async def _watchdog(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.02)
            self.expire(perf_counter_ns())

    def _report(self) -> None:
        assert self.progress is not None
        since, self.reported = self.reported, len(self.finished)
        done, due = self.result.done_ns, self.result.intended_ns
        lat = sorted([(done[i] - due[i]) / 1e6 for i in self.finished[since:] if done[i]])
        self.progress(len(self.finished), self.errors, percentile(lat, 99), max(lat, default=0.0))

    async def _reporter(self, due: int) -> None:
        while not self.stopping:
            await asyncio.sleep(0.004)
            now = perf_counter_ns()
            idle = not self.dispatch.waiting and all(c.current < 0 for c in self.live)
            if now >= due and ((idle and self.next_send - now > 1_000_000) or now > due + 5e9):
                self._report()
                due += self.progress_every_ns

    async def run(self, start_wall: float | None = None) -> LoadResult:
        """Open the pool, then run the schedule (from `start_wall`, a time.time(), if given)."""
        r = self.result
        r.connections = self.n_connections
        await asyncio.gather(*(self._open() for _ in range(self.n_connections)))
        delay_ns = max(0, int(((start_wall or 0.0) - time()) * 1e9))
        t0 = perf_counter_ns() + delay_ns
        r.started_wall = time() + delay_ns / 1e9
        r.intended_ns[:] = [t0 + o for o in self.offsets]
        self._spawn(self._watchdog())
        if self.progress:
            self._spawn(self._reporter(t0 + self.progress_every_ns))
        sleep, spin = asyncio.sleep, self.spin_ns
        for i, intended in enumerate(r.intended_ns):
            self.next_send = intended
            now = perf_counter_ns()
            if intended - now > spin:
                await sleep((intended - now - spin) / 1e9)
            elif now >= intended:
                await sleep(0)  # behind: still let responses be read between sends
            while perf_counter_ns() < intended:
                await sleep(0)  # a loop pass: reads what arrived, then checks the clock again
            r.scheduled_ns[i] = perf_counter_ns()
            conn = self.dispatch.arrive(i)
            if conn is not None:
                conn.send(i)
        r.pool_waits, r.max_waiting = self.dispatch.pool_waits, self.dispatch.max_waiting
        if self.outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_done.wait(), self.timeout_ns / 1e9 + 1.0)
        r.elapsed_s = (perf_counter_ns() - t0) / 1e9
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        for conn in list(self.live):
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.gather(*self.tasks, asyncio.sleep(0), return_exceptions=True)
        pending = [i for i, o in enumerate(r.outcome) if o == PENDING]
        r.errors_detail += [f"request {i}: no outcome at the end of the run" for i in pending]
        if self.progress and self.reported < len(self.finished):
            self._report()
        return r


def run_open_loop(
    host: str, port: int, requests: Sequence[PreparedRequest], offsets_ns: Sequence[int],
    start_wall: float | None = None, **options: Any,
) -> LoadResult:  # fmt: skip
    """Run an `OpenLoopClient` on its own select()-based event loop; return its records.

    `options` go to `OpenLoopClient`. The collector is frozen and paused during the run
    (records are preallocated, so nothing piles up) and restored afterwards.
    """
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("loopback targets only")
    lower_timer_slack()
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    client = OpenLoopClient(host, port, requests, offsets_ns, **options)
    gc.collect()
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return loop.run_until_complete(client.run(start_wall))
    finally:
        loop.close()
        if enabled:
            gc.enable()
        gc.unfreeze()
