"""The clickstream's online feature store on Redis: one atomic, idempotent script per event.

The key layout and the script are in `kestrel.adapters.redis_click_lua`: per user, three
entity logs of the fraud store (views, product views, purchases) and a hash per session,
all in the user's slot. `apply_clicks` runs the script once per event in ``apply`` mode:
it stores the event once (an event id the session already holds changes nothing) and
returns the `kestrel.click_features` aggregates as of the event; `preview_clicks` runs it
in ``preview`` mode (what ``apply`` would return, writing nothing; `preview_history` also
says whether the user has other events); `user_aggregates` reads a user's windows at a
moment without an event (the logs in ``peek`` mode). A batch is one
pipeline: one round trip (per node on a cluster).

As in `kestrel.adapters.redis_features`, the script is loaded once and sent with EVALSHA;
a NOSCRIPT is answered by loading it again and resending in order
(`kestrel.adapters.redis_evalsha`). `apply_clicks_in_parts` (the stream) sends the next
part before the results of this one are read, so Redis runs it while the caller scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kestrel.adapters.redis_click_lua import CLICK_LUA, user_keys
from kestrel.adapters.redis_evalsha import EvalBatches
from kestrel.adapters.redis_scripts import PEEK_ID
from kestrel.click_events import ClickEvent, ClickType
from kestrel.click_features import (
    CLICK_KINDS,
    VIEW_WINDOWS,
    AppliedClick,
    ClickAggregates,
    SessionAggregates,
)
from kestrel.features import cents

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

_WINDOWS = len(VIEW_WINDOWS)
# A user read (no event): a kind of no log, so every log answers in peek mode, and a
# session id no event can have (ids are never empty), so the session part is empty.
_NO_KIND = len(CLICK_KINDS)
_NO_SESSION = ""


class RedisClickStore:
    """Online store of the aggregates behind `kestrel.click_features`, on Redis or a cluster.

    Args:
        client: a `redis.Redis` or `redis.cluster.RedisCluster`; the script is registered
            on it once and run with EVALSHA, reloaded where a server lost it.

    Every method sends one pipeline. A Redis error on one event comes back as that
    position's exception in the result list, so callers can fail only that event; a
    connection error or timeout raises for the whole batch.
    """

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        self._script = client.register_script(CLICK_LUA)
        self._batches = EvalBatches(client, [self._script], rerun=_keep_applied)

    def apply_clicks(self, events: Sequence[ClickEvent]) -> list[AppliedClick | Exception]:
        """Apply each event once and return its aggregates, in input order."""
        return [
            reply if isinstance(reply, Exception) else _applied(reply)
            for reply in self._run("apply", events)
        ]

    def apply_clicks_in_parts(
        self, parts: Iterable[Sequence[ClickEvent]]
    ) -> Iterator[list[AppliedClick | Exception]]:
        """`apply_clicks` on each part in turn, the next part already sent to Redis while
        the caller works on this one's results (on a cluster, one part at a time)."""
        commands = ([self._command("apply", e, None) for e in part] for part in parts)
        for replies in self._batches.run_in_parts(commands):
            yield [r if isinstance(r, Exception) else _applied(r) for r in replies]

    def preview_clicks(self, events: Sequence[ClickEvent]) -> list[ClickAggregates | Exception]:
        """The aggregates `apply_clicks` would return now, writing nothing."""
        return [
            reply if isinstance(reply, Exception) else _aggregates(reply)
            for reply in self._run("preview", events)
        ]

    def preview_history(self, events: Sequence[ClickEvent]) -> list[AppliedClick | Exception]:
        """`preview_clicks` with whether each user has other events (``applied`` is False)."""
        return [
            reply if isinstance(reply, Exception) else _applied(reply)
            for reply in self._run("preview", events)
        ]

    def user_aggregates(self, user_id: str, as_of_ms: int) -> tuple[ClickAggregates, bool]:
        """The user's windows at `as_of_ms` (no event: the logs in ``peek`` mode at (as_of,
        PEEK_ID), an empty session), and whether the user has any stored event."""
        probe = ClickEvent(PEEK_ID, user_id, _NO_SESSION, ClickType.PAGE_VIEW, as_of_ms)
        reply = self._run("peek", [probe], kind=_NO_KIND)[0]
        if isinstance(reply, Exception):
            raise reply
        _, views, product_views, purchases = reply
        return _aggregates(reply), max(views[4], product_views[4], purchases[4]) > 0

    def ping(self) -> None:
        """Raise unless the store answers."""
        self._client.ping()

    def _run(self, mode: str, events: Sequence[ClickEvent], kind: int | None = None) -> list[Any]:
        """One EVALSHA per event in one pipeline; each reply (or its exception) in order."""
        return self._batches.run([self._command(mode, event, kind) for event in events])

    def _command(self, mode: str, e: ClickEvent, kind: int | None) -> tuple[str | int, ...]:
        keys = user_keys(e.user_id, e.session_id)
        price = cents(e.price) if e.price is not None else 0
        code = CLICK_KINDS.index(e.event_type.value) if kind is None else kind
        return (
            "EVALSHA", self._script.sha, len(keys), *keys, mode, e.event_id, e.event_time_ms,
            code, price, e.product_id or "", e.category or "",
        )  # fmt: skip


def _aggregates(reply: Any) -> ClickAggregates:
    session, views, product_views, purchases = reply
    return ClickAggregates(
        views=_counts(views, _WINDOWS),
        product_views=_counts(product_views, _WINDOWS + 1),
        price_cents_30d=int(product_views[2] - product_views[6 + 2 * _WINDOWS]),
        purchases_30d=_counts(purchases, 1)[0],
        last_purchase_ms=purchases[3] if purchases[3] >= 0 else None,
        session=SessionAggregates(
            events=session[1],
            products=session[2],
            categories=session[3],
            cart_net=session[4],
            start_ms=session[5],
        ),
    )


def _counts(reply: Any, windows: int) -> tuple[int, ...]:
    """Per window: this event's position minus the window pointer's (entity script reply)."""
    k = reply[1]
    return tuple(k - reply[5 + 2 * w] for w in range(windows))


def _keep_applied(first: Any, again: Any) -> Any:
    """A call that ran, resent after a NOSCRIPT: the replay's aggregates, with whether the
    first call stored the event."""
    return [[first[0][0], *again[0][1:]], *again[1:]]


def _applied(reply: Any) -> AppliedClick:
    session, views, product_views, purchases = reply
    others = max(views[4], product_views[4], purchases[4])
    return AppliedClick(
        aggregates=_aggregates(reply),
        applied=session[0] == 1,
        user_known=others > 0 or session[1] > 1,
    )
