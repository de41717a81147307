"""The online feature store on Redis: one atomic, idempotent script per entity and event.

Keys and the script are in `kestrel.adapters.redis_scripts`: every customer and terminal is
an entity log with running totals and window pointers, so applying an in-order event and
reading any window costs a constant number of Redis operations, whatever the history.
`apply_transactions` runs, per transaction, the entity script on its customer and on its
terminal in ``apply`` mode; each stores the transaction once (a replayed event changes
nothing) and returns the aggregates of `kestrel.features` as of the event time. Because
the windows are exact and end at the event time, a replay returns the same aggregates as
the first pass, unless an older event of the same entity arrived in between (then it
returns what a first pass would return now). `preview_transactions` runs the same script
in ``preview`` mode: the aggregates ``apply`` would return, writing nothing (the scoring
API). All scripts of a batch go in one pipeline: one round trip per batch (per node on a
cluster). `apply_transactions_in_parts` (the stream) writes each part before the results
of the one before it are read, so Redis runs a part while the caller scores the last.

Scripts are loaded once and sent with EVALSHA; a NOSCRIPT is answered by loading them
again and resending in order (`kestrel.adapters.redis_evalsha`). On Redis Cluster every
script touches one entity, so one slot.

`apply_labels` records fraud labels on the terminal (once per transaction) and links them
to the transaction whichever of the two arrives first. `apply_in_order` sends a history of
transactions and labels in its own order with the same calls (the backfill,
``python -m kestrel_ops backfill``).

Memory: customers keep 33 days and terminals 40 days of transactions (the lookback plus
three days for late events), dropped in chunks on write; keys expire when an entity goes
quiet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kestrel.adapters.redis_evalsha import EvalBatches
from kestrel.adapters.redis_scripts import (
    CUSTOMER_LABEL_LUA,
    CUSTOMER_LUA,
    CUSTOMER_RETENTION_MS,
    LABEL_LUA,
    PEEK_ID,
    TERMINAL_LUA,
    TERMINAL_RETENTION_MS,
    customer_fraud_key,
    customer_keys,
    terminal_keys,
)
from kestrel.adapters.redis_wire import Command
from kestrel.events import Label, Transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    TERMINAL_WINDOWS,
    AppliedTransaction,
    CustomerAggregates,
    TerminalAggregates,
    TransactionPreview,
    cents,
    day_start_ms,
)

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.commands.core import Script

# One script call of a batch: the script, its keys (one slot) and its arguments.
_Call = tuple["Script", list[str], list[str | int]]


class RedisFeatureStore:
    """Online store of the aggregates behind `kestrel.features`, on Redis or Redis Cluster.

    Args:
        client: a `redis.Redis` or `redis.cluster.RedisCluster`; scripts are registered on it
            once and run with EVALSHA, reloaded where a server lost them (redis-py does it
            on a single node, the store on a cluster).

    Every method sends one pipeline. A Redis error on one script comes back as that
    position's exception in the result list, so callers can fail only the affected events;
    a connection error or timeout raises for the whole batch.
    """

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        self._customer = client.register_script(CUSTOMER_LUA)
        self._terminal = client.register_script(TERMINAL_LUA)
        self._label = client.register_script(LABEL_LUA)
        self._customer_label = client.register_script(CUSTOMER_LABEL_LUA)
        self._batches = EvalBatches(
            client,
            [self._customer, self._terminal, self._label, self._customer_label],
            rerun=_keep_added,
        )
        self._nc = len(CUSTOMER_WINDOWS)
        self._nt = len(TERMINAL_WINDOWS)

    def apply_transactions(
        self, updates: Sequence[Transaction]
    ) -> list[AppliedTransaction | Exception]:
        """Apply each transaction once and return its aggregates, in input order."""
        replies = self._run(self._calls("apply", updates))
        return [self._applied(replies[2 * i], replies[2 * i + 1]) for i in range(len(updates))]

    def apply_transactions_in_parts(
        self, parts: Iterable[Sequence[Transaction]]
    ) -> Iterator[list[AppliedTransaction | Exception]]:
        """`apply_transactions` on each part in turn, the next part already sent to Redis
        while the caller works on this one's results (on a cluster, one part at a time)."""
        commands = (self._commands(self._calls("apply", part)) for part in parts)
        for replies in self._batches.run_in_parts(commands):
            yield [self._applied(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]

    def preview_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[TransactionPreview | Exception]:
        """The aggregates `apply_transactions` would return now, writing nothing."""
        replies = self._run(self._calls("preview", transactions))
        return [self._preview(replies[2 * i], replies[2 * i + 1]) for i in range(len(transactions))]

    def customer_aggregates(
        self, customer_id: str, as_of_ms: int
    ) -> tuple[CustomerAggregates, bool]:
        """The customer's aggregates at `as_of_ms` (no transaction), and whether it is known."""
        reply = self._run([self._customer_call("peek", PEEK_ID, customer_id, as_of_ms, 0)])[0]
        if isinstance(reply, Exception):
            raise reply
        return self._customer_aggregates(reply), reply[4] > 0

    def terminal_aggregates(
        self, terminal_id: str, as_of_ms: int
    ) -> tuple[TerminalAggregates, bool]:
        """The terminal's aggregates at `as_of_ms` (no transaction), and whether it is known."""
        reply = self._run([self._terminal_call("peek", PEEK_ID, terminal_id, as_of_ms)])[0]
        if isinstance(reply, Exception):
            raise reply
        return self._terminal_aggregates(reply), reply[4] > 0

    def ping(self) -> None:
        """Raise unless the store answers."""
        self._client.ping()

    def _calls(self, mode: str, transactions: Sequence[Transaction]) -> list[_Call]:
        calls: list[_Call] = []
        for u in transactions:
            calls += self._transaction_calls(mode, u)
        return calls

    def _transaction_calls(self, mode: str, u: Transaction) -> tuple[_Call, _Call]:
        """The customer's and the terminal's script call for one transaction."""
        return (
            self._customer_call(
                mode, u.transaction_id, u.customer_id, u.event_time_ms, cents(u.amount)
            ),
            self._terminal_call(mode, u.transaction_id, u.terminal_id, u.event_time_ms),
        )

    def _label_calls(self, label: Label) -> tuple[_Call, _Call]:
        """The terminal's and the card's script call recording one fraud label."""
        return (
            (
                self._label,
                terminal_keys(label.terminal_id),
                [label.transaction_id, label.label_time_ms, TERMINAL_RETENTION_MS],
            ),
            (
                self._customer_label,
                [customer_fraud_key(label.customer_id)],
                [label.transaction_id, label.label_time_ms, CUSTOMER_RETENTION_MS],
            ),
        )

    def _customer_call(
        self, mode: str, transaction_id: str, customer_id: str, time_ms: int, amount_cents: int
    ) -> _Call:
        return (
            self._customer,
            customer_keys(customer_id),
            [mode, transaction_id, time_ms, amount_cents],
        )

    def _terminal_call(
        self, mode: str, transaction_id: str, terminal_id: str, time_ms: int
    ) -> _Call:
        return (
            self._terminal,
            terminal_keys(terminal_id),
            [mode, transaction_id, time_ms, 0, day_start_ms(time_ms)],
        )

    def load_history(self, kind: str, entity_id: str, rows: Sequence[tuple[str, int, int]]) -> int:
        """Apply one entity's past transactions, (id, time ms, cents) each; return how many
        were new. `kind` is ``customer`` or ``terminal``; used to rebuild a store (migration).
        """
        calls: list[_Call] = []
        for transaction_id, time_ms, amount_cents in sorted(rows, key=lambda r: (r[1], r[0])):
            if kind == "customer":
                calls.append(
                    self._customer_call("apply", transaction_id, entity_id, time_ms, amount_cents)
                )
            else:
                calls.append(self._terminal_call("apply", transaction_id, entity_id, time_ms))
        added = 0
        for reply in self._run(calls):
            if isinstance(reply, Exception):
                raise reply
            added += int(reply[0])
        return added

    def link_terminal_labels(self, terminal_id: str, labels: Sequence[tuple[str, int]]) -> None:
        """Record fraud labels, (transaction id, label time ms) each, on one terminal only."""
        calls: list[_Call] = [
            (self._label, terminal_keys(terminal_id), [tid, at, TERMINAL_RETENTION_MS])
            for tid, at in labels
        ]  # fmt: skip
        for reply in self._run(calls):
            if isinstance(reply, Exception):
                raise reply

    def apply_labels(self, labels: Sequence[Label]) -> list[bool | Exception]:
        """Record fraud labels once each, on terminal and card; True where this call did."""
        return self.apply_in_order(labels)

    def apply_in_order(self, events: Sequence[Transaction | Label]) -> list[bool | Exception]:
        """Apply transactions and labels in exactly this order, in one pipeline (a backfill).

        Each event gets the script calls `apply_transactions` or `apply_labels` would send
        for it alone, so a store fed a history this way holds what a stream that applied
        the same events in the same order holds. Nothing is read back but whether each
        event was new: True where this call stored it, False for a replay, a transaction
        older than its entities' retention or a label that is not fraud (none of which
        changes anything), or the Redis error of one of its scripts.
        """
        calls: list[_Call] = []
        for event in events:
            if isinstance(event, Transaction):
                calls += self._transaction_calls("apply", event)
            elif event.is_fraud:
                calls += self._label_calls(event)
        replies = iter(self._run(calls))
        results: list[bool | Exception] = []
        for event in events:
            if isinstance(event, Label) and not event.is_fraud:
                results.append(False)
                continue
            first, second = next(replies), next(replies)
            failed = next((r for r in (first, second) if isinstance(r, Exception)), None)
            results.append(failed if failed is not None else _added(first) or _added(second))
        return results

    def _run(self, calls: list[_Call]) -> list[Any]:
        """Send `calls` in one pipeline; return each reply (or its exception) in order."""
        return self._batches.run(self._commands(calls))

    @staticmethod
    def _commands(calls: list[_Call]) -> list[Command]:
        """EVALSHA commands (on a cluster, each goes to its slot's primary)."""
        return [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]

    def _applied(self, customer: Any, terminal: Any) -> AppliedTransaction | Exception:
        if isinstance(customer, Exception):
            return customer
        if isinstance(terminal, Exception):
            return terminal
        return AppliedTransaction(
            customer=self._customer_aggregates(customer),
            terminal=self._terminal_aggregates(terminal),
            applied=bool(customer[0]) or bool(terminal[0]),
            customer_known=customer[4] > 0,
            terminal_known=terminal[4] > 0,
        )

    def _preview(self, customer: Any, terminal: Any) -> TransactionPreview | Exception:
        if isinstance(customer, Exception):
            return customer
        if isinstance(terminal, Exception):
            return terminal
        return TransactionPreview(
            customer=self._customer_aggregates(customer),
            terminal=self._terminal_aggregates(terminal),
            customer_known=customer[4] > 0,
            terminal_known=terminal[4] > 0,
        )

    def _customer_aggregates(self, reply: Any) -> CustomerAggregates:
        # added, k, running total at k, previous time, others, (pointer, total) per window
        k, total, previous = reply[1], reply[2], reply[3]
        pointers = reply[5 : 5 + 2 * self._nc]
        return CustomerAggregates(
            counts=tuple(k - b for b in pointers[0::2]),
            sums_cents=tuple(total - c for c in pointers[1::2]),
            previous_time_ms=previous if previous >= 0 else None,
        )

    def _terminal_aggregates(self, reply: Any) -> TerminalAggregates:
        # added, k, total, previous, others, (pointer, total) at t - D and per window, frauds
        upper = reply[5]
        heads = reply[7 : 7 + 2 * self._nt : 2]
        return TerminalAggregates(
            counts=tuple(upper - b for b in heads),
            frauds=tuple(reply[5 + 2 * (self._nt + 1) :]),
        )


def _keep_added(first: Any, again: Any) -> Any:
    """A call that ran, resent after a NOSCRIPT: the replay's aggregates, with whether the
    first call stored the event (a label call: its first reply)."""
    if isinstance(first, list) and isinstance(again, list):
        return [first[0], *again[1:]]
    return first


def _added(reply: Any) -> bool:
    """Whether a script stored its event: an entity script's first value is 1 (2: too old
    to keep), a label script's reply is 1."""
    return bool((reply[0] if isinstance(reply, list) else reply) == 1)
