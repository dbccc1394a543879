"""Keep Django's settings current when secretboot refreshes: ``SECRETBOOT_REFRESH``.

Django copies secrets into settings once (``SECRET_KEY = secretboot.getenv("SECRET_KEY")``).
The setting ``SECRETBOOT_REFRESH`` says which settings follow which variables::

    SECRETBOOT_REFRESH = {
        "SECRET_KEY": "SECRET_KEY",                       # setting <- variable
        "SECRET_KEY_FALLBACKS": ["SECRET_KEY_FALLBACK"],  # a list, as fallbacks() builds it
        "DATABASES": {"default": "DB_PASSWORD"},          # alias -> the variable of its PASSWORD
    }

The app registers one ``secretboot.on_refresh`` hook (``install()``); after each refresh
that changed one of these variables, the hook writes the new values into
``django.conf.settings`` (and the database's settings dict, which every thread's
connection shares) and moves the alias's *password generation* on, so connections opened
with the old password are closed before their next query (see
``secretboot.contrib.django.postgresql``). Nothing here logs a value: lines name variables
and settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import secretboot

if TYPE_CHECKING:
    from secretboot._keyring import Keyring

__all__ = ["SETTING", "Follow", "generation", "install", "password_variable", "read_setting"]

SETTING = "SECRETBOOT_REFRESH"

logger = logging.getLogger("secretboot.contrib.django")

_lock = threading.Lock()
_unregister: Callable[[], None] | None = None
# alias -> how many times its password changed in this process; a connection remembers the
# generation it connected under, and one from an older generation is closed before its next query.
_generations: dict[str, int] = {}


@dataclass(frozen=True)
class Follow:
    """``SECRETBOOT_REFRESH``, checked: which settings follow which variables."""

    secret_key: str | None = None
    fallbacks: tuple[str, ...] | None = None
    databases: Mapping[str, str] | None = None

    def variables(self) -> frozenset[str]:
        names = set(self.fallbacks or ())
        names.update((self.databases or {}).values())
        if self.secret_key is not None:
            names.add(self.secret_key)
        return frozenset(names)


def read_setting(value: object) -> Follow:
    """``SECRETBOOT_REFRESH``'s value checked, or ``ImproperlyConfigured`` saying what is wrong."""
    from django.core.exceptions import ImproperlyConfigured

    if value is None:
        return Follow()
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict: {{setting: variable(s)}}")
    unknown = sorted(str(key) for key in value if key not in _KNOWN)
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING} knows SECRET_KEY, SECRET_KEY_FALLBACKS and DATABASES, not {', '.join(unknown)}"
        )
    key = value.get("SECRET_KEY")
    if key is not None and not _is_name(key):
        raise ImproperlyConfigured(f"{SETTING}['SECRET_KEY'] must be a variable name")
    fallbacks = value.get("SECRET_KEY_FALLBACKS")
    if fallbacks is not None and not (isinstance(fallbacks, list | tuple) and all(map(_is_name, fallbacks))):
        raise ImproperlyConfigured(f"{SETTING}['SECRET_KEY_FALLBACKS'] must be a list of variable names")
    databases = value.get("DATABASES")
    if databases is not None and not (
        isinstance(databases, Mapping) and all(_is_name(a) and _is_name(v) for a, v in databases.items())
    ):
        raise ImproperlyConfigured(f"{SETTING}['DATABASES'] must map database aliases to variable names")
    return Follow(
        key, None if fallbacks is None else tuple(fallbacks), None if databases is None else dict(databases)
    )


_KNOWN = ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "DATABASES")


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _follow() -> Follow:
    from django.conf import settings

    return read_setting(getattr(settings, SETTING, None))


def password_variable(alias: str) -> str | None:
    """The variable that holds ``alias``'s password, if ``SECRETBOOT_REFRESH`` names one."""
    return (_follow().databases or {}).get(alias)


def generation(alias: str) -> int:
    return _generations.get(alias, 0)


def install() -> None:
    """Register the hook (once per process; the app's ``ready()`` and the backends call it)."""
    global _unregister
    with _lock:
        if _unregister is None:
            _follow()  # a bad SECRETBOOT_REFRESH fails start-up, not the first refresh
            _unregister = secretboot.on_refresh(_on_refresh)


def uninstall() -> None:
    """Unregister the hook (tests)."""
    global _unregister
    with _lock:
        if _unregister is not None:
            _unregister()
            _unregister = None


def _on_refresh(keyring: Keyring, changed: frozenset[str]) -> None:
    follow = _follow()
    if not changed & follow.variables():
        return
    from django.conf import settings

    updated: list[str] = []
    if follow.secret_key in changed:
        settings.SECRET_KEY = _value(follow.secret_key)
        updated.append("SECRET_KEY")
    if follow.fallbacks and changed.intersection(follow.fallbacks):
        from secretboot.contrib.django import fallbacks

        settings.SECRET_KEY_FALLBACKS = fallbacks(*follow.fallbacks)
        updated.append("SECRET_KEY_FALLBACKS")
    for alias, variable in sorted((follow.databases or {}).items()):
        if variable in changed:
            _set_password(alias, _value(variable))
            updated.append(f"DATABASES[{alias!r}]['PASSWORD']")
    logger.info("secretboot refreshed %s: updated %s", ", ".join(sorted(changed)), ", ".join(updated))


def _value(variable: str) -> str:
    value = secretboot.getenv(variable)
    if value is None:  # the keyring holds every variable it resolved; this one was unset since
        raise RuntimeError(f"{variable} is no longer set")
    return value


def _set_password(alias: str, password: str) -> None:
    """The new password into the settings dicts every thread's connection reads, then a new generation."""
    from django.conf import settings
    from django.db import connections

    dicts: list[dict[str, Any]] = []
    configured = settings.DATABASES.get(alias)
    if isinstance(configured, dict):
        dicts.append(configured)
    handler = connections.settings.get(alias)  # the dicts connections were built from
    if isinstance(handler, dict) and all(handler is not d for d in dicts):
        dicts.append(handler)
    for settings_dict in dicts:
        settings_dict["PASSWORD"] = password
    # After the password: a connection that read the generation first can only be too cautious.
    with _lock:
        _generations[alias] = _generations.get(alias, 0) + 1
