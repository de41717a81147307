"""The end-to-end benchmark's producer: a child process running Kestrel's producer at a rate.

The child simulates the Fraud Detection Handbook population once (`kestrel_training.simulator`),
then serves step commands: put records ``[start, start + rate * seconds)`` at ``rate``/s with
`kestrel_training.producer.produce` (Avro in Glue framing, partition key = customer, per-key
order kept), split by customer over a few threads. Record ``i`` is row ``i % rows`` of the
simulation with id ``<tag>-<i>`` and its event time shifted by ``i // rows`` simulated spans,
so ids never repeat and each customer's history keeps moving forward in time.

For every accepted record it keeps ``time.time()`` taken just before the PutRecords call that
accepted it (the put time of the freshness figures), and it adds accepted records to a shared
counter the parent reads live (the backlog is put minus finished).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np

from bench.e2e_logic import Population
from kestrel.features import DAY_MS

PRODUCERS = 2


@dataclass
class StepResult:
    """What one step put: accepted records, their put times (NaN: never accepted), errors."""

    start: int
    planned: int
    accepted: int
    seconds: float
    put_times: bytes  # float64[planned]: epoch seconds just before the accepting call
    first_put: float
    last_put: float
    errors: list[str]

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The put times (NaN where a record was never accepted)."""
        return np.frombuffer(self.put_times, dtype=np.float64)

    @property
    def achieved_rate(self) -> float:
        """Accepted records per second over the step: its planned length, or longer when the
        last put came later than planned (the producer fell behind its pace)."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def transaction_id(tag: str, index: int) -> str:
    """The id of record `index` (valid for kestrel.events: letters, digits, '-')."""
    return f"{tag}-{index:010d}"


class _Rows:
    """Column lists of the simulation and the span by which each pass shifts event times."""

    def __init__(self, population: Population) -> None:
        from kestrel_training.simulator import SimulatorConfig, simulate

        sim = simulate(
            SimulatorConfig(
                n_customers=population.customers,
                n_terminals=population.terminals,
                n_days=population.days,
                seed=population.seed,
            )
        )
        t = sim.transactions
        self.customers: list[str] = t["customer_id"].tolist()
        self.terminals: list[str] = t["terminal_id"].tolist()
        self.amounts: list[float] = [float(a) for a in t["amount"].tolist()]
        self.times: list[int] = [int(v) for v in t["event_time"].tolist()]
        self.span = (self.times[-1] // DAY_MS - self.times[0] // DAY_MS + 1) * DAY_MS
        self.lane = [hash(c) for c in self.customers]

    def __len__(self) -> int:
        return len(self.times)

    def record(self, tag: str, i: int) -> dict[str, Any]:
        row, lap = i % len(self.times), i // len(self.times)
        return {
            "transaction_id": transaction_id(tag, i),
            "customer_id": self.customers[row],
            "terminal_id": self.terminals[row],
            "amount": self.amounts[row],
            "event_time": self.times[row] + lap * self.span,
            "_i": i,
        }


class _TimedKinesis:
    """The PutRecords call of a boto3 client, noting each accepted record's put time."""

    def __init__(self, client: Any, counter: Synchronized[int], start: int, planned: int) -> None:
        self.client, self.counter, self.start = client, counter, start
        self.put_times = np.full(planned, np.nan)
        self.index_of: dict[bytes, int] = {}

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> Any:
        at = time.time()
        response = self.client.put_records(StreamName=StreamName, Records=Records)
        accepted = 0
        for entry, result in zip(Records, response["Records"], strict=True):
            if "ErrorCode" not in result:
                self.put_times[self.index_of.pop(entry["Data"]) - self.start] = at
                accepted += 1
        with self.counter.get_lock():
            self.counter.value += accepted
        return response


def _step(
    rows: _Rows,
    tag: str,
    stream: str,
    clients: list[Any],
    encode: Any,
    abort: Event,
    counter: Synchronized[int],
    start: int,
    rate: float,
    seconds: float,
) -> StepResult:
    """Put records [start, start + rate * seconds) at `rate`, split by customer over threads."""
    from kestrel_training.producer import produce, rate_pacer

    planned = int(rate * seconds)
    timed = [_TimedKinesis(c, counter, start, planned) for c in clients]
    lanes = len(clients)
    errors: list[str] = []

    def records(k: int) -> Iterator[dict[str, Any]]:
        n = len(rows)
        for i in range(start, start + planned):
            if rows.lane[i % n] % lanes == k:
                if abort.is_set():
                    return
                yield rows.record(tag, i)

    def run(k: int) -> None:
        def encoder(record: dict[str, Any]) -> bytes:
            data: bytes = encode(record)
            timed[k].index_of[data] = record["_i"]
            return data

        try:
            produce(
                records(k),
                stream,
                client=timed[k],  # type: ignore[arg-type]
                encoder=encoder,
                pacer=rate_pacer(rate / lanes),
            )
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"{type(exc).__name__}: {exc}")

    began = time.time()
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = np.full(planned, np.nan)
    for t in timed:
        merged = np.fmax(merged, t.put_times)
    accepted = merged[~np.isnan(merged)]
    first = float(accepted.min()) if len(accepted) else began
    last = float(accepted.max()) if len(accepted) else began
    return StepResult(
        start,
        planned,
        len(accepted),
        max(last - began, planned / rate, 1e-9),
        merged.tobytes(),
        first,
        last,
        errors,
    )


def _serve(
    conn: Connection,
    counter: Synchronized[int],
    abort: Event,
    endpoint: str,
    stream: str,
    registry: str,
    tag: str,
    population: Population,
    producers: int,
) -> None:
    """The child's loop: simulate, report ready, then run steps until told to stop."""
    import boto3
    from botocore.config import Config
    from kestrel_training.avro_encoding import avro_encoders

    from kestrel.adapters.glue_registry import GlueSchemaRegistry

    began = time.monotonic()
    rows = _Rows(population)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    glue = session.client("glue", endpoint_url=endpoint)
    encode = avro_encoders(GlueSchemaRegistry(glue, registry))["transactions"]
    config = Config(
        retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2, max_pool_connections=4
    )
    clients = [
        session.client("kinesis", endpoint_url=endpoint, config=config) for _ in range(producers)
    ]
    conn.send(("ready", len(rows), round(time.monotonic() - began, 1)))
    while True:
        command = conn.recv()
        if command[0] == "stop":
            return
        _, start, rate, seconds = command
        abort.clear()
        conn.send(_step(rows, tag, stream, clients, encode, abort, counter, start, rate, seconds))


class Producer:
    """The producer child process, driven step by step from the benchmark."""

    def __init__(
        self,
        endpoint: str,
        stream: str,
        registry: str,
        tag: str,
        population: Population,
        producers: int = PRODUCERS,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counter: Synchronized[int] = ctx.Value("q", 0)
        self.abort: Event = ctx.Event()
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve,
            args=(
                child,
                self.counter,
                self.abort,
                endpoint,
                stream,
                registry,
                tag,
                population,
                producers,
            ),
            name="e2e-producer",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.rows = 0
        self._pending = False

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        """Wait for the simulation; return its seconds."""
        if not self._conn.poll(timeout_s):
            raise TimeoutError("the producer did not get ready")
        _, self.rows, seconds = self._conn.recv()
        return float(seconds)

    @property
    def put(self) -> int:
        """Records accepted so far (all steps)."""
        return int(self.counter.value)

    def begin(self, start: int, rate: float, seconds: float) -> None:
        """Start a step (returns at once)."""
        self._conn.send(("step", start, rate, seconds))
        self._pending = True

    def done(self, timeout_s: float = 0.0) -> bool:
        """True when the step's result is ready."""
        return self._conn.poll(timeout_s)

    def result(self, timeout_s: float) -> StepResult:
        """The step's result (waits up to `timeout_s`)."""
        if not self._conn.poll(timeout_s):
            raise TimeoutError("the producer did not finish its step")
        self._pending = False
        result: StepResult = self._conn.recv()
        return result

    def stop(self) -> None:
        """Ask the child to stop, then make sure it is gone."""
        self.abort.set()
        try:
            if self._pending:
                self.result(60.0)
            self._conn.send(("stop",))
        except (OSError, EOFError, TimeoutError):
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
