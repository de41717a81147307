"""Every setting Kestrel reads from the environment, typed and validated in one place.

A bad value raises `SettingsError` naming the variable. The README's configuration
table lists the same names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, TypeVar
from urllib.parse import parse_qs, urlparse

from kestrel.events import DEFAULT_MAX_FUTURE_S

T = TypeVar("T")

ApiAuth = Literal["app", "gateway"]
API_AUTH_MODES: tuple[ApiAuth, ...] = ("app", "gateway")
# Fields never shown by repr (a URL field shows with its password masked, see `redact_url`).
_SECRET_FIELDS = frozenset({"api_key", "redis_password"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:/*")  # also the malformed redis:/ or redis:
# A query parameter that may carry a secret (redis-py reads ?password=... too).
_SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*", re.IGNORECASE)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message starts with the variable's name."""


def _read(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key, "").strip()
    return value or default


def _parse(
    env: Mapping[str, str],
    key: str,
    default: str,
    parse: Callable[[str], T],
    *,
    secret: bool = False,
) -> T:
    raw = _read(env, key, default)
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        # A secret's value (a Redis URL may carry a password) never reaches the message,
        # not even through the parser's own words.
        problem, shown = str(exc), repr(raw)
        if secret:
            problem = _scrub(problem, raw)
            shown = repr(redact_url(raw)) if "://" in raw else "a value without scheme://"
        raise SettingsError(f"{key}: {problem} (got {shown})") from None


def redact_url(raw: str) -> str:
    """`raw` with any password in it masked, however malformed the URL.

    Everything between the scheme (``redis://``, or a malformed ``redis:/``) and the last
    ``@`` is user-info: the user name before its first ``:`` stays, the rest becomes
    ``***``; so does the value of a query parameter named like a password, secret or token.
    A value with no scheme becomes ``***`` as a whole, since it may be a bare password.
    """
    scheme = _SCHEME.match(raw)
    if scheme is None:
        return "***"
    rest = _SECRET_QUERY.sub(r"\1***", raw[scheme.end() :])
    if "@" not in rest:
        return scheme.group() + rest
    userinfo, host = rest.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme.group()}{masked}@{host}"


def _scrub(text: str, raw: str) -> str:
    """`text` without the secret part of `raw`: its user-info, or all of it if no URL."""
    scheme = _SCHEME.match(raw)
    rest = raw[scheme.end() :] if scheme else raw
    secret = rest.rsplit("@", 1)[0] if "@" in rest else ("" if "://" in raw else raw)
    return text.replace(secret, "***") if secret else text


def _safe_repr(value: Settings | LocalSettings) -> str:
    """`repr(value)` of a settings dataclass: secrets as ***, URLs without their password."""
    shown = []
    for item in fields(value):
        if not item.repr:
            continue
        got = getattr(value, item.name)
        if item.name in _SECRET_FIELDS:
            text = "'***'" if got else "''"
        elif isinstance(got, str) and ("@" in got or _SECRET_QUERY.search(got)):
            text = repr(redact_url(got))
        else:
            text = repr(got)
        shown.append(f"{item.name}={text}")
    return f"{type(value).__name__}({', '.join(shown)})"


def _port(raw: str) -> int:
    port = int(raw)
    if not 1 <= port <= 65535:
        raise ValueError("must be a TCP port between 1 and 65535")
    return port


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:  # also refuses NaN
        raise ValueError("must be a number of at least 0")
    return value


def _miss_ttl(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 3600:  # also refuses NaN and infinity: a miss is trusted for a while
        raise ValueError("must be a number of seconds between 0 and 3600")
    return value


def _probability(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a probability between 0 and 1")
    return value


def _optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    def parse_optional(raw: str) -> T | None:
        return parse(raw) if raw else None

    return parse_optional


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a number above 0")
    return value


def _redis_url(raw: str) -> str:
    try:
        scheme = urlparse(raw).scheme
    except ValueError:  # e.g. an unclosed [IPv6] host; urllib's message may quote the URL
        raise ValueError("is not a valid URL") from None
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return raw


def _flag(raw: str) -> bool:
    value = raw.lower()
    if value not in {"true", "false"}:
        raise ValueError("must be true or false")
    return value == "true"


def _cluster_url(raw: str) -> None:
    """Refuse a REDIS_URL that a Redis Cluster client cannot use (a socket, a database)."""
    parsed = urlparse(raw)
    if parsed.scheme not in {"redis", "rediss"}:
        raise SettingsError("REDIS_CLUSTER: needs a redis:// or rediss:// REDIS_URL, not a socket")
    database = parse_qs(parsed.query).get("db", [parsed.path.strip("/") or "0"])[0]
    if database != "0":
        raise SettingsError(
            f"REDIS_CLUSTER: a cluster has database 0 only (REDIS_URL asks for {database!r})"
        )


def _ca_file(raw: str) -> str:
    if not os.path.isfile(raw):
        raise ValueError("must be the path of a readable PEM file of CA certificates")
    return raw


def _http_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def _api_auth(raw: str) -> ApiAuth:
    if raw not in API_AUTH_MODES:
        raise ValueError("must be app (the app checks x-api-key) or gateway (API Gateway does)")
    return raw


def _loopback(raw: str) -> str:
    if raw not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError("local servers bind to loopback only (127.0.0.1, localhost or ::1)")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """What a Kestrel function needs at run time, locally and on AWS."""

    region: str
    aws_endpoint_url: str | None
    redis_url: str
    stage: str
    transactions_stream: str
    labels_stream: str
    decisions_stream: str
    poison_dlq_url: str
    event_log_bucket: str
    schema_registry: str = "kestrel"
    schema_miss_ttl_s: float = 60.0
    schema_miss_cache_size: int = 1024
    model_dir: str = "/opt"
    model_bucket: str = ""
    model_pointer_key: str = "models/active.json"
    model_refresh_s: float = 15.0
    challenger_model_dir: str = ""
    propensity_model_dir: str = "/opt/propensity"
    propensity_pointer_key: str = "models/propensity/active.json"
    api_key: str = ""
    api_auth: ApiAuth = "app"
    redis_password: str = field(default="", repr=False)
    redis_tls_ca_certs: str | None = None
    redis_cluster: bool = False
    redis_budget_ms: float = 20.0
    breaker_fail_max: int = 5
    breaker_reset_s: float = 2.0
    review_threshold: float | None = None
    decline_threshold: float | None = None
    rule_review_amount: float = 150.0
    rule_night_review_amount: float = 100.0
    rule_decline_amount: float = 220.0
    decision_ttl_s: int = 30 * 24 * 3600
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    on_failure_queue_url: str = ""
    drift_window_s: int = 24 * 3600
    drift_max_objects: int = 400
    drift_min_rows: int = 500
    drift_status_ttl_s: int = 3 * 3600

    def __repr__(self) -> str:
        """The fields, with the API key and Redis password masked (see `redact_url`)."""
        return _safe_repr(self)

    @property
    def dlq_urls(self) -> dict[str, str]:
        """The dead-letter queue URLs by role (``poison``, ``on_failure``)."""
        return {"poison": self.poison_dlq_url, "on_failure": self.on_failure_queue_url}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the function settings from `env` (default: the process environment)."""
        env = os.environ if env is None else env
        endpoint = _read(env, "AWS_ENDPOINT_URL", "")
        redis_url = _parse(env, "REDIS_URL", "redis://127.0.0.1:6399/0", _redis_url, secret=True)
        ca_certs = _parse(env, "REDIS_TLS_CA_CERTS", "", _optional(_ca_file))
        if ca_certs and urlparse(redis_url).scheme != "rediss":
            raise SettingsError(
                "REDIS_TLS_CA_CERTS: applies to TLS connections only; REDIS_URL must be rediss://"
            )
        api_key = _read(env, "KESTREL_API_KEY", "")
        api_auth = _parse(env, "KESTREL_API_AUTH", "app", _api_auth)
        if api_auth == "gateway" and api_key:
            raise SettingsError(
                "KESTREL_API_AUTH: gateway leaves the key check to API Gateway, so "
                "KESTREL_API_KEY must be unset (or set KESTREL_API_AUTH=app)"
            )
        cluster = _parse(env, "REDIS_CLUSTER", "false", _flag)
        if cluster:
            _cluster_url(redis_url)
        return cls(
            region=_read(env, "AWS_REGION", _read(env, "AWS_DEFAULT_REGION", "us-east-1")),
            aws_endpoint_url=_parse(env, "AWS_ENDPOINT_URL", endpoint, _http_url)
            if endpoint
            else None,
            redis_url=redis_url,
            stage=_read(env, "KESTREL_STAGE", "local"),
            transactions_stream=_read(env, "TRANSACTIONS_STREAM", "kestrel-transactions"),
            labels_stream=_read(env, "LABELS_STREAM", "kestrel-labels"),
            decisions_stream=_read(env, "DECISIONS_STREAM", "kestrel-decisions"),
            poison_dlq_url=_read(env, "POISON_DLQ_URL", ""),
            event_log_bucket=_read(env, "EVENT_LOG_BUCKET", ""),
            schema_registry=_read(env, "SCHEMA_REGISTRY_NAME", "kestrel"),
            schema_miss_ttl_s=_parse(env, "SCHEMA_MISS_TTL_S", "60", _miss_ttl),
            schema_miss_cache_size=_parse(env, "SCHEMA_MISS_CACHE_SIZE", "1024", _positive_int),
            model_dir=_read(env, "MODEL_DIR", default_model_dir()),
            model_bucket=_read(env, "MODEL_BUCKET", ""),
            model_pointer_key=_read(env, "MODEL_POINTER_KEY", "models/active.json"),
            model_refresh_s=_parse(env, "MODEL_REFRESH_S", "15", _non_negative_float),
            challenger_model_dir=_read(env, "CHALLENGER_MODEL_DIR", ""),
            propensity_model_dir=_read(env, "PROPENSITY_MODEL_DIR", default_propensity_dir()),
            propensity_pointer_key=_read(
                env, "PROPENSITY_POINTER_KEY", "models/propensity/active.json"
            ),
            api_key=api_key,
            api_auth=api_auth,
            # Not stripped: a password is taken as it is. A password in REDIS_URL wins.
            redis_password=env.get("REDIS_PASSWORD", ""),
            redis_tls_ca_certs=ca_certs,
            redis_cluster=cluster,
            redis_budget_ms=_parse(env, "REDIS_BUDGET_MS", "20", _positive_float),
            breaker_fail_max=_parse(env, "BREAKER_FAIL_MAX", "5", _positive_int),
            breaker_reset_s=_parse(env, "BREAKER_RESET_S", "2", _positive_float),
            review_threshold=_parse(env, "DECISION_REVIEW_THRESHOLD", "", _optional(_probability)),
            decline_threshold=_parse(
                env, "DECISION_DECLINE_THRESHOLD", "", _optional(_probability)
            ),
            rule_review_amount=_parse(env, "RULE_REVIEW_AMOUNT", "150", _non_negative_float),
            rule_night_review_amount=_parse(
                env, "RULE_NIGHT_REVIEW_AMOUNT", "100", _non_negative_float
            ),
            rule_decline_amount=_parse(env, "RULE_DECLINE_AMOUNT", "220", _non_negative_float),
            decision_ttl_s=_parse(env, "DECISION_TTL_S", "2592000", _positive_int),
            max_future_s=_parse(
                env, "MAX_FUTURE_S", f"{DEFAULT_MAX_FUTURE_S:g}", _non_negative_float
            ),
            on_failure_queue_url=_read(env, "ON_FAILURE_QUEUE_URL", ""),
            drift_window_s=_parse(env, "DRIFT_WINDOW_S", "86400", _positive_int),
            drift_max_objects=_parse(env, "DRIFT_MAX_OBJECTS", "400", _positive_int),
            drift_min_rows=_parse(env, "DRIFT_MIN_ROWS", "500", _positive_int),
            drift_status_ttl_s=_parse(env, "DRIFT_STATUS_TTL_S", "10800", _positive_int),
        )


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """What the local stack (emulator, redis-server, local Lambda runtime) needs on a laptop."""

    run_dir: str
    emulator_host: str
    emulator_port: int
    redis_port: int
    stack_name: str
    aws_endpoint_url: str | None
    redis_url: str | None
    max_concurrency: int
    retry_backoff_s: float
    poll_interval_s: float
    short_read_pause_s: float = 0.1

    def __repr__(self) -> str:
        """The fields, with any Redis password masked (see `redact_url`)."""
        return _safe_repr(self)

    @property
    def endpoint(self) -> str:
        """The AWS endpoint the local tools talk to: the user's, or the embedded emulator's."""
        return self.aws_endpoint_url or f"http://{self.emulator_host}:{self.emulator_port}"

    @property
    def redis(self) -> str:
        """The Redis URL the local tools use: the user's, or the embedded redis-server's."""
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def embedded_emulator(self) -> bool:
        """True when no external endpoint is configured, so `up` starts the moto server."""
        return self.aws_endpoint_url is None

    @property
    def embedded_redis(self) -> bool:
        """True when no external Redis is configured, so `up` starts redis-server."""
        return self.redis_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalSettings:
        """Read and validate the local-stack settings from `env` (default: os.environ)."""
        env = os.environ if env is None else env
        endpoint = _read(env, "AWS_ENDPOINT_URL", "")
        redis_url = _read(env, "REDIS_URL", "")
        return cls(
            run_dir=os.path.abspath(_read(env, "KESTREL_RUN_DIR", ".run")),
            emulator_host=_parse(env, "KESTREL_EMULATOR_HOST", "127.0.0.1", _loopback),
            emulator_port=_parse(env, "KESTREL_EMULATOR_PORT", "5050", _port),
            redis_port=_parse(env, "KESTREL_REDIS_PORT", "6399", _port),
            stack_name=_read(env, "KESTREL_STACK_NAME", "kestrel"),
            aws_endpoint_url=_parse(env, "AWS_ENDPOINT_URL", endpoint, _http_url)
            if endpoint
            else None,
            redis_url=_parse(env, "REDIS_URL", redis_url, _redis_url, secret=True)
            if redis_url
            else None,
            max_concurrency=_parse(env, "KESTREL_MAX_CONCURRENCY", "4", _positive_int),
            retry_backoff_s=_parse(env, "KESTREL_RETRY_BACKOFF_S", "0.2", _non_negative_float),
            poll_interval_s=_parse(env, "KESTREL_POLL_INTERVAL_S", "0.05", _non_negative_float),
            short_read_pause_s=_parse(
                env, "KESTREL_SHORT_READ_PAUSE_S", "0.1", _non_negative_float
            ),
        )


def default_model_dir() -> str:
    """Where the model layer is when MODEL_DIR is unset.

    On Lambda, layers unpack under ``/opt``, so the model layer's files are
    ``/opt/model.onnx`` and ``/opt/manifest.json``. Elsewhere (tests, the local Lambda
    runtime, the API server), it is the repository's ``layers/model`` folder, found from
    this package's place in the repository (``layers/core/python/kestrel``).
    """
    if os.path.isfile("/opt/manifest.json"):
        return "/opt"
    repo_layers = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    local = os.path.join(os.path.abspath(repo_layers), "model")
    return local if os.path.isdir(local) else "/opt"


def default_propensity_dir() -> str:
    """Where the propensity model layer is when PROPENSITY_MODEL_DIR is unset: its files are
    ``/opt/propensity/`` on Lambda, else the repository's ``layers/propensity-model/propensity``."""
    if os.path.isfile("/opt/propensity/manifest.json"):
        return "/opt/propensity"
    repo_layers = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    local = os.path.join(os.path.abspath(repo_layers), "propensity-model", "propensity")
    return local if os.path.isdir(local) else "/opt/propensity"
