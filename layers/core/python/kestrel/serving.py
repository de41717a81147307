"""The scoring service behind the API: features as if applied, the model, and safe fallbacks.

`ScoringService.score` previews each transaction's aggregates from the online store
(writing nothing), builds the same feature vectors as the stream path and decides with
`kestrel.decisions.decide_with_model`, so a transaction scored here and then on the
stream, with the store unchanged in between, gets the same score.

Degradation, never an error: every store call goes through a circuit breaker
(`pybreaker`). A failure or a reply slower than the budget (the Redis client's socket
timeout, REDIS_BUDGET_MS) counts; after BREAKER_FAIL_MAX failures in a row the breaker
opens and the store is not called for BREAKER_RESET_S seconds, then one trial call
half-opens it and a success closes it. While the store is unavailable, or when no model
is loaded, a transaction is decided by `kestrel.decisions.Rules` on the request alone
and flagged `degraded`. Reads that have no fallback (entity features, stored decisions)
raise `StoreUnavailable` instead. `health` checks the store and the schema registry at most
once per HEALTH_MAX_AGE_S, so a flood of health probes costs one check a second.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker

from kestrel.decisions import (
    DecisionRecord,
    Degraded,
    Rules,
    decide_with_model,
    decide_with_rules,
    now_ms,
)
from kestrel.events import Transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    FEATURE_NAMES,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    TransactionPreview,
    feature_vector,
)
from kestrel.ports import DecisionLookup, FeatureReader
from kestrel.scoring import NoModelError, Scorer

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEALTH_MAX_AGE_S = 1.0  # a /health answer is reused this long: a flood costs one check a second

_NO_CUSTOMER = CustomerAggregates((0,) * len(CUSTOMER_WINDOWS), (0,) * len(CUSTOMER_WINDOWS), None)
_NO_TERMINAL = TerminalAggregates((0,) * len(TERMINAL_WINDOWS), (0,) * len(TERMINAL_WINDOWS))
CUSTOMER_FEATURES = tuple(
    n for n in FEATURE_NAMES if n.startswith("CUSTOMER_ID_") and "OVER_30DAY_AVG" not in n
)
TERMINAL_FEATURES = tuple(n for n in FEATURE_NAMES if n.startswith("TERMINAL_ID_"))


class StoreUnavailable(RuntimeError):
    """The online store failed, timed out, or its circuit breaker is open."""


@dataclass(frozen=True, slots=True)
class EntityFeatures:
    """An entity's features at a moment (no transaction), and whether the store knows it."""

    entity_id: str
    as_of_ms: int
    features: dict[str, float]
    known: bool


def _entity_features(
    entity_id: str, at: int, values: Sequence[float], names: Sequence[str], known: bool
) -> EntityFeatures:
    """The named subset of a feature vector (FEATURE_NAMES order) as an entity's features."""
    named = dict(zip(FEATURE_NAMES, values, strict=True))
    return EntityFeatures(entity_id, at, {n: named[n] for n in names}, known)


def make_breaker(fail_max: int, reset_s: float) -> pybreaker.CircuitBreaker:
    """The store's circuit breaker: open after `fail_max` failures, retry after `reset_s`.

    Errors of the caller's own input or code (ValueError, ArithmeticError, TypeError,
    LookupError) are not counted: only the store's failures open it.
    """
    return pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=reset_s,
        name="redis",
        exclude=[ValueError, ArithmeticError, TypeError, LookupError],
    )


class ScoringService:
    """Scores transactions and serves features and decisions for the API."""

    def __init__(
        self,
        reader: FeatureReader,
        scorer: Scorer | None,
        decisions: DecisionLookup,
        rules: Rules,
        breaker: pybreaker.CircuitBreaker,
        registry_check: Callable[[], Any],
        clock_ms: Callable[[], int] = now_ms,
        health_max_age_s: float = HEALTH_MAX_AGE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader, self._scorer, self._decisions = reader, scorer, decisions
        self._rules, self._breaker = rules, breaker
        self._registry_check, self._clock_ms = registry_check, clock_ms
        self._health_max_age_s, self._monotonic = health_max_age_s, monotonic
        self._health: tuple[float, dict[str, Any]] | None = None
        self._health_lock = threading.Lock()

    @property
    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._breaker.current_state)

    @property
    def model_version(self) -> str | None:
        """The served model's version (None: rules only)."""
        return self._scorer.model_version if self._scorer else None

    def score(self, transactions: Sequence[Transaction]) -> list[DecisionRecord]:
        """Decide each transaction from features as if applied now, or by rules if degraded."""
        try:
            previews: list[TransactionPreview | Exception] = self._store(
                self._reader.preview_transactions, transactions
            )
        except StoreUnavailable:
            previews = [StoreUnavailable()] * len(transactions)
        results: list[DecisionRecord | None] = [None] * len(transactions)
        ok: list[tuple[int, Transaction, TransactionPreview]] = []
        for i, (tx, preview) in enumerate(zip(transactions, previews, strict=True)):
            if isinstance(preview, Exception):
                results[i] = decide_with_rules(
                    self._rules, tx, (Degraded.FEATURE_STORE_UNAVAILABLE,), "api"
                )
            else:
                ok.append((i, tx, preview))
        if ok:
            for (i, _, _), record in zip(ok, self._decide(ok), strict=True):
                results[i] = record
        return [r for r in results if r is not None]

    def customer_features(self, customer_id: str) -> EntityFeatures:
        """A customer's features now; raise `StoreUnavailable` if the store is not there."""
        at = self._clock_ms()
        aggregates, known = self._store(self._reader.customer_aggregates, customer_id, at)
        values = feature_vector(0.0, at, aggregates, _NO_TERMINAL)
        return _entity_features(customer_id, at, values, CUSTOMER_FEATURES, known)

    def terminal_features(self, terminal_id: str) -> EntityFeatures:
        """A terminal's features now; raise `StoreUnavailable` if the store is not there."""
        at = self._clock_ms()
        aggregates, known = self._store(self._reader.terminal_aggregates, terminal_id, at)
        values = feature_vector(0.0, at, _NO_CUSTOMER, aggregates)
        return _entity_features(terminal_id, at, values, TERMINAL_FEATURES, known)

    def decision(self, transaction_id: str) -> DecisionRecord | None:
        """The stream's decision for a transaction; raise `StoreUnavailable` if unreachable."""
        return self._store(self._decisions.decision, transaction_id)

    def health(self) -> dict[str, Any]:
        """Each dependency's state (store, model, registry), checked at most once a max age."""
        # Concurrent callers wait for the one check under way; a degraded result is logged
        # with its details, which /health shows only to a caller with the key.
        with self._health_lock:
            cached = self._health
            if cached is None or self._monotonic() - cached[0] >= self._health_max_age_s:
                fresh = self._check_health()
                if fresh["status"] != "ok":
                    logger.warning("health degraded: %s", fresh["checks"])
                cached = self._health = (self._monotonic(), fresh)
        return copy.deepcopy(cached[1])

    def _check_health(self) -> dict[str, Any]:
        checks: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        try:
            self._store(self._reader.ping)
            checks["redis"] = {"ok": True}
        except StoreUnavailable as exc:
            checks["redis"] = {"ok": False, "detail": str(exc)}
        checks["redis"]["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        checks["redis"]["breaker"] = self.breaker_state
        version = self._scorer.model_version if self._scorer else None
        checks["model"] = {"ok": version is not None, "version": version}
        if version is None:
            checks["model"]["detail"] = "no usable model is loaded: scoring uses rules only"
        try:
            self._registry_check()
            checks["schema_registry"] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - report any registry failure, do not raise
            checks["schema_registry"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        healthy = all(check["ok"] for check in checks.values())
        return {"status": "ok" if healthy else "degraded", "checks": checks}

    def _decide(
        self, ok: list[tuple[int, Transaction, TransactionPreview]]
    ) -> list[DecisionRecord]:
        txs = [tx for _, tx, _ in ok]
        cold = [preview.cold_start for _, _, preview in ok]
        if self._scorer is not None:
            vectors = [
                feature_vector(tx.amount, tx.event_time_ms, p.customer, p.terminal)
                for _, tx, p in ok
            ]
            try:
                return decide_with_model(self._scorer, txs, vectors, "api", cold)
            except NoModelError:
                degraded = Degraded.NO_MODEL
            except Exception as exc:  # noqa: BLE001 - a failing model degrades, never a 500
                logger.error("model failed, deciding by rules: %s: %s", type(exc).__name__, exc)
                degraded = Degraded.MODEL_ERROR
        else:
            degraded = Degraded.NO_MODEL
        return [
            decide_with_rules(self._rules, tx, (degraded,), "api", flags)
            for tx, flags in zip(txs, cold, strict=True)
        ]

    def _store(self, call: Callable[..., T], *args: Any) -> T:
        """Call the store through the breaker; any failure becomes `StoreUnavailable`."""
        return call_store(self._breaker, "feature store", call, *args)


def call_store(
    breaker: pybreaker.CircuitBreaker, name: str, call: Callable[..., T], *args: Any
) -> T:
    """`call(*args)` through `breaker`; an open breaker or any failure is `StoreUnavailable`."""
    try:
        return breaker.call(call, *args)
    except pybreaker.CircuitBreakerError as exc:
        raise StoreUnavailable(f"feature store circuit breaker is open: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any store failure degrades, never a 500
        logger.warning("%s call failed: %s: %s", name, type(exc).__name__, exc)
        raise StoreUnavailable(f"feature store failed: {type(exc).__name__}: {exc}") from None
