"""Redis TLS and AUTH: REDIS_URL (rediss://, user:password@), REDIS_PASSWORD, REDIS_TLS_CA_CERTS.

Settings errors name the variable and never show a password; the client factories hand the
options to redis-py (checked on the connection pool, no network: redis-py connects lazily).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kestrel import clients
from kestrel.settings import LocalSettings, Settings, SettingsError


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return str(path)


@pytest.fixture
def fresh_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment of our own for `clients.settings()`, and no cached clients either side."""
    for key in ("REDIS_URL", "REDIS_PASSWORD", "REDIS_TLS_CA_CERTS", "REDIS_BUDGET_MS",
                "REDIS_CLUSTER"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    clients.reset()
    yield monkeypatch
    clients.reset()


def test_settings_redis_tls_defaults_are_plain_local_redis() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6399/0"
    assert settings.redis_password == ""
    assert settings.redis_tls_ca_certs is None


def test_settings_redis_tls_accepts_rediss_with_auth_and_ca(ca_file: str) -> None:
    url = "rediss://kestrel:s3cret@clustercfg.kestrel.abc123.use1.cache.amazonaws.com:6379"
    settings = Settings.from_env(
        {"REDIS_URL": url, "REDIS_PASSWORD": "other", "REDIS_TLS_CA_CERTS": ca_file}
    )
    assert settings.redis_url == url
    assert settings.redis_password == "other"
    assert settings.redis_tls_ca_certs == ca_file


def test_settings_redis_tls_password_stays_out_of_repr() -> None:
    settings = Settings.from_env({"REDIS_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings)


def test_settings_redis_tls_bad_scheme_names_variable_without_password() -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL: ") as caught:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@cache.example:6379"})
    assert "hunter2" not in str(caught.value)
    assert "user:***@cache.example:6379" in str(caught.value)


def test_settings_redis_tls_local_settings_hide_password_too() -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_URL: ") as caught:
        LocalSettings.from_env({"REDIS_URL": "tcp://:hunter2@cache.example:6379"})
    assert "hunter2" not in str(caught.value)


def test_settings_redis_tls_ca_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(SettingsError, match=r"^REDIS_TLS_CA_CERTS: .*PEM") as caught:
        Settings.from_env({"REDIS_URL": "rediss://cache:6379", "REDIS_TLS_CA_CERTS": str(missing)})
    assert str(missing) in str(caught.value)


def test_settings_redis_tls_ca_needs_rediss_url(ca_file: str) -> None:
    with pytest.raises(SettingsError, match=r"^REDIS_TLS_CA_CERTS: .*rediss://"):
        Settings.from_env({"REDIS_URL": "redis://cache:6379", "REDIS_TLS_CA_CERTS": ca_file})


def test_settings_redis_tls_plain_url_gives_plain_connections(
    fresh_clients: pytest.MonkeyPatch,
) -> None:
    fresh_clients.setenv("REDIS_URL", "redis://cache.internal:6390/2")
    client = clients.redis_client()
    assert isinstance(client, redis.Redis)  # one server: REDIS_CLUSTER is unset
    pool = client.connection_pool
    assert pool.connection_class is redis.Connection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6390, 2)
    assert kwargs.get("password") is None
    assert "ssl_ca_certs" not in kwargs


@pytest.mark.parametrize("factory", [clients.redis_client, clients.api_redis_client])
def test_settings_redis_tls_factories_pass_tls_and_auth(
    fresh_clients: pytest.MonkeyPatch, ca_file: str, factory: object
) -> None:
    fresh_clients.setenv("REDIS_URL", "rediss://cache.internal:6379/0")
    fresh_clients.setenv("REDIS_PASSWORD", "hunter2")
    fresh_clients.setenv("REDIS_TLS_CA_CERTS", ca_file)
    assert callable(factory)
    client = factory()
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["password"] == "hunter2"
    assert kwargs["ssl_ca_certs"] == ca_file
    assert kwargs["host"] == "cache.internal"


@pytest.mark.parametrize("factory", [clients.redis_client, clients.api_redis_client])
def test_settings_redis_tls_url_credentials_win(
    fresh_clients: pytest.MonkeyPatch, factory: object
) -> None:
    fresh_clients.setenv("REDIS_URL", "rediss://kestrel:from-url@cache.internal:6379")
    fresh_clients.setenv("REDIS_PASSWORD", "from-env")
    assert callable(factory)
    kwargs = factory().connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("kestrel", "from-url")
    assert "ssl_ca_certs" not in kwargs


def test_settings_redis_tls_api_client_keeps_its_budget(fresh_clients: pytest.MonkeyPatch) -> None:
    fresh_clients.setenv("REDIS_URL", "rediss://cache.internal:6379")
    fresh_clients.setenv("REDIS_BUDGET_MS", "15")
    client = clients.api_redis_client()
    assert isinstance(client, redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == pytest.approx(0.015)
    assert kwargs["socket_connect_timeout"] == pytest.approx(0.015)
