"""boto3 clients for the local platform's endpoint, created once and shared between threads.

Every command line (runtime, producer, redrive, drift, demo, model export) uses the same
defaults when ``AWS_ENDPOINT_URL`` is a loopback endpoint (the embedded emulator,
LocalStack): region ``us-east-1`` and test credentials, unless the environment names its own
(`local_endpoint_defaults`). Real AWS endpoints get nothing: boto3 finds region and
credentials the usual way.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kestrel_local.template import DEFAULT_ACCOUNT_ID

# Credentials the embedded emulator accepts; they open nothing anywhere else.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
DEFAULT_REGION = "us-east-1"
# Names that resolve to loopback (LocalStack's HTTPS name resolves to 127.0.0.1).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localstack.cloud"})


def is_loopback_endpoint(url: str) -> bool:
    """True when `url` is an http(s) endpoint on this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        host = urlparse(url).hostname or ""
    except ValueError:
        return False
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_endpoint_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """Region and test credentials to add when AWS_ENDPOINT_URL is loopback and they are unset."""
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    if not endpoint or not is_loopback_endpoint(endpoint):
        return {}
    defaults: dict[str, str] = {}
    if not env.get("AWS_REGION") and not env.get("AWS_DEFAULT_REGION"):
        defaults["AWS_DEFAULT_REGION"] = DEFAULT_REGION
    if not env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_PROFILE"):
        defaults["AWS_ACCESS_KEY_ID"] = EMULATOR_CREDENTIALS["aws_access_key_id"]
        defaults["AWS_SECRET_ACCESS_KEY"] = EMULATOR_CREDENTIALS["aws_secret_access_key"]
    return defaults


def apply_local_endpoint_defaults(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put `local_endpoint_defaults` into `env` (default: os.environ); return what was added."""
    target = os.environ if env is None else env
    added = local_endpoint_defaults(target)
    target.update(added)
    return added


def endpoint_session() -> boto3.session.Session:
    """A boto3 session for AWS_ENDPOINT_URL, with the loopback defaults applied first."""
    apply_local_endpoint_defaults()
    return boto3.session.Session()


class AwsClients:
    """A cache of boto3 clients for one endpoint (the emulator, LocalStack) or real AWS."""

    def __init__(self, endpoint: str | None, region: str = "us-east-1") -> None:
        self.endpoint = endpoint
        self.region = region
        creds = EMULATOR_CREDENTIALS if endpoint else {}
        self._session = boto3.session.Session(
            region_name=region,
            aws_access_key_id=creds.get("aws_access_key_id"),
            aws_secret_access_key=creds.get("aws_secret_access_key"),
        )
        self._config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=64,
            connect_timeout=5,
            read_timeout=30,
        )
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._account_id: str | None = None

    def client(self, service: str) -> Any:
        """The shared client for `service` (boto3 clients are thread-safe)."""
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._session.client(
                    service,
                    endpoint_url=self.endpoint,
                    config=self._config,  # type: ignore[call-overload]
                )
            return self._clients[service]

    def account_id(self) -> str:
        """The endpoint's account id (STS), or the emulator's default when it cannot say."""
        if self._account_id is None:
            try:
                self._account_id = str(self.client("sts").get_caller_identity()["Account"])
            except (BotoCoreError, ClientError):
                self._account_id = DEFAULT_ACCOUNT_ID
        return self._account_id

    def queue_url_prefix(self) -> str:
        """Where queue URLs start on this endpoint, for queues not created yet."""
        return self.endpoint or f"https://sqs.{self.region}.amazonaws.com"

    def credentials_env(self) -> dict[str, str]:
        """Environment variables that give a function the same endpoint and credentials."""
        env = {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if self.endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
            env["AWS_ACCESS_KEY_ID"] = EMULATOR_CREDENTIALS["aws_access_key_id"]
            env["AWS_SECRET_ACCESS_KEY"] = EMULATOR_CREDENTIALS["aws_secret_access_key"]
        else:
            creds = self._session.get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                env["AWS_ACCESS_KEY_ID"] = frozen.access_key or ""
                env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key or ""
                if frozen.token:
                    env["AWS_SESSION_TOKEN"] = frozen.token
        return env
