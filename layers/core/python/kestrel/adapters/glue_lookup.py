"""Lookups by schema version id made cheap and safe: misses remembered, errors given meaning.

`UnknownIds` remembers the ids the registry did not know, for a bounded time and up to a
bounded number, and budgets how many new ids are looked up one by one in each window (past
the budget, `kestrel.adapters.glue_registry.GlueSchemaRegistry` lists the registry instead).

`unavailable` turns the botocore errors that say "the registry cannot answer now" into
`kestrel.ports.SchemaRegistryUnavailable`, so the stream path retries the record (and the
rest of its batch) instead of dead-lettering it or failing the whole invocation:

- throttling (``ThrottlingException``, the code Glue answers with HTTP 400 "Rate exceeded",
  and the other request-rate codes AWS services use, such as ``TooManyRequestsException``),
  after botocore's own retries with exponential backoff (the client's ``retries``
  configuration) gave up;
- access denied (``AccessDeniedException``), with the exact permission that is missing:
  the action and resource AWS names in its message, or else the operation as
  ``glue:<Operation>`` on the registry's ARNs;
- a server error (HTTP 5xx, e.g. ``InternalServiceException``) or no connection at all.

Any other error (a bad request, a programming error) is left alone: it propagates unchanged.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from kestrel.ports import SchemaRegistryUnavailable

__all__ = [
    "ACCESS_DENIED_CODES",
    "THROTTLING_CODES",
    "UnknownIds",
    "missing_permission",
    "registry_missing",
    "unavailable",
]

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
    }
)
ACCESS_DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied"})
# Error codes with which an endpoint says it has no Glue at all (LocalStack answers 501).
_MISSING_CODES = frozenset({"InternalFailure", "NotImplemented", "UnknownOperationException"})
_MISSING_WORDS = ("not yet implemented", "pro feature", "not implemented", "not supported")
# AWS: "User: arn:aws:sts::123456789012:assumed-role/R/F is not authorized to perform:
# glue:GetSchemaVersion on resource: arn:aws:glue:us-east-1:123456789012:registry/kestrel ..."
_NOT_AUTHORIZED = re.compile(r"perform:\s*(?P<action>[\w:*-]+)\s+on resource:\s*(?P<arn>[^\s,;]+)")
_ACCOUNT = re.compile(r"arn:[\w-]+:(?:sts|iam)::(?P<account>\d{12}):")


class UnknownIds:
    """Unknown schema version ids remembered for a bounded time, and a budget of lookups.

    Not thread-safe: the registry calls it under its own lock.

    Args:
        ttl_s: How long a miss is remembered; also the length of a lookup window.
        size: How many misses are remembered (the least recently asked go first).
        lookups_per_window: New ids that may be looked up one by one per window.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        ttl_s: float,
        size: int,
        lookups_per_window: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s >= 0 or size < 1 or lookups_per_window < 0:
            raise ValueError(
                "a miss TTL >= 0 s, a miss cache size >= 1 and lookups per window >= 0 are "
                f"needed (got {ttl_s}, {size}, {lookups_per_window})"
            )
        self._ttl_s, self._size, self._budget = ttl_s, size, lookups_per_window
        self._clock = clock
        self._misses: OrderedDict[UUID, float] = OrderedDict()  # id -> when it expires
        self._window_start = -math.inf
        self._lookups = 0
        self._listed = False

    def __len__(self) -> int:
        """How many misses are held (expired ones included until asked for or evicted)."""
        return len(self._misses)

    def known(self, version_id: UUID) -> bool:
        """True while `version_id` is a remembered miss."""
        expires = self._misses.get(version_id)
        if expires is None:
            return False
        if expires > self._clock():
            self._misses.move_to_end(version_id)
            return True
        del self._misses[version_id]
        return False

    def remember(self, version_id: UUID) -> None:
        """Remember `version_id` as unknown for the TTL (evicting the oldest past the size)."""
        self._misses[version_id] = self._clock() + self._ttl_s
        self._misses.move_to_end(version_id)
        while len(self._misses) > self._size:
            self._misses.popitem(last=False)

    def may_look_up(self) -> bool:
        """Whether a new id may be looked up alone now (counts it); starts a window if due."""
        now = self._clock()
        if now - self._window_start >= self._ttl_s:
            self._window_start, self._lookups, self._listed = now, 0, False
        if self._listed or self._lookups >= self._budget:
            return False
        self._lookups += 1
        return True

    @property
    def listed(self) -> bool:
        """True once the registry was listed in the current window."""
        return self._listed

    def mark_listed(self) -> None:
        """The registry was just listed: ids not found are unknown until the window ends."""
        self._listed = True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def missing_permission(exc: ClientError, registry_name: str, region: str) -> str:
    """The permission an AccessDenied answer says is missing, as ``<action> on <resource>``.

    Args:
        exc: The access-denied error of one Glue call.
        registry_name: The registry the call was about.
        region: The client's region, to spell the registry's ARNs when AWS names no resource.
    """
    message = str(exc.response.get("Error", {}).get("Message", ""))
    found = _NOT_AUTHORIZED.search(message)
    if found:
        return f"{found['action']} on {found['arn']}"
    account_match = _ACCOUNT.search(message)
    account = account_match["account"] if account_match else "<account>"
    base = f"arn:aws:glue:{region}:{account}"
    return (
        f"glue:{exc.operation_name} on {base}:registry/{registry_name} "
        f"and {base}:schema/{registry_name}/*"
    )


def unavailable(
    exc: BotoCoreError | ClientError, registry_name: str, region: str
) -> SchemaRegistryUnavailable | None:
    """The `SchemaRegistryUnavailable` that `exc` amounts to, or None to let it propagate.

    Args:
        exc: An error raised by a Glue client call.
        registry_name: The registry the call was about (named in the detail).
        region: The client's region (for the ARNs of a missing permission).
    """
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code in THROTTLING_CODES:
            return SchemaRegistryUnavailable(
                "throttled",
                f"{code} on {exc.operation_name} in registry {registry_name}, "
                "still throttled after the client's retries with backoff",
            )
        if code in ACCESS_DENIED_CODES:
            permission = missing_permission(exc, registry_name, region)
            return SchemaRegistryUnavailable(
                "access_denied",
                f"missing permission {permission} (registry {registry_name}; "
                "grant it to the function's role)",
            )
        if _status(exc) >= 500:
            return SchemaRegistryUnavailable(
                "unavailable",
                f"{code or _status(exc)} on {exc.operation_name} in registry {registry_name}",
            )
        return None
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return SchemaRegistryUnavailable(
            "unavailable", f"{type(exc).__name__} in registry {registry_name}: {exc}"
        )
    return None


def registry_missing(exc: BaseException) -> bool:
    """True when `exc` says the endpoint has no Glue service at all (not a passing failure).

    LocalStack's free plan answers every Glue call with HTTP 501 (``InternalFailure``, "not
    included in your current license plan or has not yet been emulated"). There no version
    id is registered anywhere, so a lookup is a miss, not an outage to retry.
    """
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 501:
        return True
    message = str(error.get("Message", "")).lower()
    return str(error.get("Code", "")) in _MISSING_CODES and any(
        words in message for words in _MISSING_WORDS
    )
