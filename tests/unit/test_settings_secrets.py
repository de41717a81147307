"""Settings never show the Redis password or the API key: not in repr, not in any error.

Malformed URLs included: the password is found by position (between ``scheme://`` and the
last ``@``), not by a URL parser that may give up on the rest, and a value with no scheme
is not shown at all.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kestrel.settings import LocalSettings, Settings, SettingsError, redact_url

SECRET = "hunter2-Zq9"
KEY = "api-key-Xk7"


def test_settings_repr_masks_the_api_key_and_every_redis_password() -> None:
    settings = Settings.from_env({
        "REDIS_URL": f"rediss://kestrel:{SECRET}@cache.internal:6379/0",
        "REDIS_PASSWORD": SECRET + "-env",
        "KESTREL_API_KEY": KEY,
    })  # fmt: skip
    for shown in (repr(settings), str(settings), f"{settings!r}", str([settings])):
        assert SECRET not in shown and KEY not in shown
    assert "redis_url='rediss://kestrel:***@cache.internal:6379/0'" in repr(settings)
    assert "api_key='***'" in repr(settings) and "api_auth='app'" in repr(settings)
    assert "api_key=''" in repr(Settings.from_env({}))
    # The values themselves are intact.
    assert settings.api_key == KEY and SECRET in settings.redis_url


def test_local_settings_repr_masks_the_redis_password() -> None:
    local = LocalSettings.from_env({"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:7000/1"})
    assert SECRET not in repr(local)
    assert "redis_url='redis://:***@127.0.0.1:7000/1'" in repr(local)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@cache:6379",  # wrong scheme
        f"redis://:{SECRET}@[::1",  # unclosed IPv6 host: urllib itself fails
        f"redis://:{SECRET}@[::1]:notaport",
        f"tcp://:{SECRET}/with/slash@cache:6379",  # a / in the password
        f"redis//:{SECRET}@cache:6379",  # no scheme at all
        f"redis:/:{SECRET}@cache",
        SECRET,  # the password pasted in place of the URL
        f"re dis://:{SECRET}@cache",
        f"http://cache:6379/0?password={SECRET}",
        f"http://:{SECRET}@cache\n:6379",
        f"redis://:{SECRET}@cache:6379/0\u2100",  # NFKC trouble in the netloc
        f"redis://:{SECRET}@ca\u2100che:6379",
    ],
)
@pytest.mark.parametrize("reader", [Settings.from_env, LocalSettings.from_env])
def test_settings_errors_about_malformed_redis_urls_never_show_the_password(
    url: str, reader: object
) -> None:
    assert callable(reader)
    try:
        reader({"REDIS_URL": url})
    except SettingsError as exc:
        assert str(exc).startswith("REDIS_URL: ")
        assert SECRET not in str(exc)
        assert SECRET not in repr(exc)
    else:  # accepted as a URL: then only repr could show it
        assert SECRET not in repr(reader({"REDIS_URL": url}))


@given(
    st.sampled_from(["", "redis://", "rediss://user", "http://", "redis:/"]),
    st.text(),
    st.text(min_size=1).filter(lambda p: "*" not in p),  # not the mask itself
    st.text(),
)
def test_settings_redis_url_errors_never_show_a_password_of_any_shape(
    scheme: str, before: str, password: str, after: str
) -> None:
    url = f"{scheme}{before}:{password}@{after}"
    for reader in (Settings.from_env, LocalSettings.from_env):
        try:
            settings = reader({"REDIS_URL": url})
        except SettingsError as exc:
            assert f":{password}@" not in str(exc)
        else:
            assert f":{password}@" not in repr(settings)


def test_settings_redact_url_keeps_what_helps_and_masks_the_rest() -> None:
    assert redact_url("redis://127.0.0.1:6399/0") == "redis://127.0.0.1:6399/0"
    assert redact_url(f"rediss://user:{SECRET}@h:1") == "rediss://user:***@h:1"
    assert redact_url(f"redis://{SECRET}@h:1") == "redis://***@h:1"  # a token alone
    assert redact_url(f"redis://:a@b:{SECRET}@h") == "redis://:***@h"  # @ in the password
    assert redact_url(f"redis://h/0?Password={SECRET}&db=2") == "redis://h/0?Password=***&db=2"
    assert redact_url(SECRET) == "***"


def test_settings_api_key_never_reaches_an_error() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"KESTREL_API_KEY": KEY, "REDIS_URL": f"nope://:{SECRET}@h"})
    assert KEY not in str(caught.value) and SECRET not in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"KESTREL_API_KEY": KEY, "KESTREL_API_AUTH": "gateway"})
    assert KEY not in str(caught.value)
