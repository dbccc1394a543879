"""Flask: a refresh writes the values it changed into ``app.config`` (on both transports).

The app is ``tests/flask_app``; its sessions and tokens are signed with ``app.config["SECRET_KEY"]``.
"""

from __future__ import annotations

import gc
import secrets
import weakref
from typing import Any

import pytest
from flask import Flask

import secretboot
from secretboot.contrib.flask import SecretBoot
from tests.flask_app import create_app


@pytest.fixture
def params(ssm: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """SECRET_KEY and API_TOKEN in SSM; refresh_now() may ask again at once."""
    values = {"/app/key": secrets.token_urlsafe(32), "/app/token": secrets.token_urlsafe(32)}
    for name, value in values.items():
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    monkeypatch.setenv("SECRET_KEY", "ssm:/app/key")
    monkeypatch.setenv("MYAPP_API_TOKEN", "ssm:/app/token")
    monkeypatch.setenv("SECRETBOOT_REFRESH_MIN_INTERVAL", "0")
    return values


def _rotate(ssm: Any, name: str) -> str:
    value = secrets.token_urlsafe(32)
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    return value


def test_a_refresh_puts_the_new_key_into_app_config_and_sessions_follow(
    params: dict[str, str], ssm: Any
) -> None:
    app = create_app(SecretBoot())
    client = app.test_client()
    client.post("/login", data={"user": "ada"})
    old_cookie = client.get_cookie("session")
    assert old_cookie is not None
    token = app.config["MYAPP_API_TOKEN"]

    new_key = _rotate(ssm, "/app/key")
    assert secretboot.refresh_now() == frozenset({"SECRET_KEY"})

    assert app.config["SECRET_KEY"] == new_key
    assert app.config["MYAPP_API_TOKEN"] == token  # unchanged values are not rewritten
    assert client.get("/whoami").text == "anonymous"  # signed with the old key: no longer valid
    client.post("/login", data={"user": "grace"})
    assert client.get("/whoami").text == "grace"


def test_prefix_and_names_selections_follow_under_their_config_keys(
    params: dict[str, str], ssm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAIN", "plain value")
    by_prefix = create_app(SecretBoot(prefix="MYAPP_"), config={"SECRET_KEY": "local"})
    named = create_app(SecretBoot(names=["SECRET_KEY", "PLAIN"]))
    new_token, new_key = _rotate(ssm, "/app/token"), _rotate(ssm, "/app/key")

    assert secretboot.refresh_now() == frozenset({"SECRET_KEY", "MYAPP_API_TOKEN"})
    assert by_prefix.config["API_TOKEN"] == new_token
    assert by_prefix.config["SECRET_KEY"] == "local"  # not selected by the prefix: left alone
    assert named.config["SECRET_KEY"] == new_key
    assert named.config["PLAIN"] == "plain value"
    assert "MYAPP_API_TOKEN" not in named.config


def test_a_failed_refresh_leaves_app_config_as_it_was(params: dict[str, str], ssm: Any) -> None:
    app = create_app(SecretBoot())
    ssm.delete_parameter(Name="/app/key")
    with pytest.raises(secretboot.BootstrapError) as raised:
        secretboot.refresh_now(["SECRET_KEY"])
    assert "SECRET_KEY" in str(raised.value)
    assert app.config["SECRET_KEY"] == params["/app/key"]
    assert params["/app/key"] not in str(raised.value)


def test_the_hook_does_not_keep_an_app_alive_and_a_collected_app_is_forgotten(
    params: dict[str, str], ssm: Any
) -> None:
    app = create_app(SecretBoot())
    gone = weakref.ref(app)
    del app
    gc.collect()
    assert gone() is None
    _rotate(ssm, "/app/key")
    survivor = create_app(SecretBoot())
    new_key = _rotate(ssm, "/app/key")
    assert secretboot.refresh_now() == frozenset({"SECRET_KEY"})
    assert survivor.config["SECRET_KEY"] == new_key


def test_init_app_twice_follows_the_last_selection_only(params: dict[str, str], ssm: Any) -> None:
    app = Flask("twice")
    SecretBoot(app, prefix="MYAPP_")
    SecretBoot(app, names=["SECRET_KEY"])
    before = app.config["API_TOKEN"]
    new_key, _ = _rotate(ssm, "/app/key"), _rotate(ssm, "/app/token")
    secretboot.refresh_now()
    assert app.config["SECRET_KEY"] == new_key
    assert app.config["API_TOKEN"] == before  # the first selection's hook is gone
