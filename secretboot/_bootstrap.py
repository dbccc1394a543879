"""The public entry points: ``bootstrap()``, ``getenv()``, ``prefetch()``, ``refresh_now()``,
``on_refresh()``: a thin facade over ``_lifecycle``.

Each raises the errors of the work it asks for from its own frame, which holds no plaintext,
reference or keyring (``contained``): error reporters send the locals of every frame.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from secretboot import _lifecycle
from secretboot._errors import SecretbootError
from secretboot._keyring import Keyring

# Kept importable from here: the CLI's check, the integrations and the tests use them.
from secretboot._lifecycle import (
    LOGGER_NAME,
    _Prefetch,
    _prefetch_before_snapshot,
    _restore_environ,
    _state,
    contained,
    read_environment,
    reset,
)


def bootstrap(
    *,
    refresh: bool = False,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    export: bool | None = None,
    max_age: float | None = None,
) -> Keyring:
    """Resolve every reference in the environment, once per process.

    Later calls return the same ``Keyring`` (their options are ignored) until
    ``refresh=True`` resolves again, updating that same keyring in place. On
    any failure raises ``BootstrapError`` listing every failing variable, and
    changes nothing.

    ``environ``: a mapping to read instead of ``os.environ``.
    ``env_file``: a ``.env`` file to read too (``SECRETBOOT_ENV_FILE``); the
    environment wins over the file.
    ``export``: write resolved plaintext (and the file's values) into
    ``os.environ`` (``SECRETBOOT_EXPORT``; off by default), all or nothing.
    ``reset()`` undoes it.
    ``max_age``: seconds (``SECRETBOOT_MAX_AGE``; off by default). Past it, a background
    thread resolves everything again in one batch and swaps it into the same keyring;
    readers never wait and never see half of a refresh. A failed refresh keeps the last
    good values (``SECRETBOOT_MAX_STALE`` bounds for how long). See ``on_refresh``.
    """
    booted = contained(_lifecycle.boot, _lifecycle.Options(environ, env_file, export, max_age), refresh)
    del environ  # the caller's mapping holds references: not in the frame that raises
    if isinstance(booted, SecretbootError):
        raise booted
    return booted


def prefetch(
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    export: bool | None = None,
) -> None:
    """Start ``bootstrap()``'s resolution in a background thread and return at once.

    The next ``bootstrap()`` (or ``getenv()``) joins it: it waits for the thread and
    returns, or raises, exactly what ``bootstrap()`` alone would have, and only then
    applies anything (the keyring, ``export``, SnapStart hooks) on the caller's thread.
    ``bootstrap()`` must be given the same options (``environ`` the same object), else
    ``ConfigurationError``. A failure is logged at ERROR (names and reasons) when it
    happens, and raised at the join. Does nothing if already booted or prefetching.
    """
    _lifecycle.prefetch(_lifecycle.Options(environ, env_file, export))


def getenv(name: str, default: str | None = None) -> str | None:
    """The resolved value of ``name`` if it was a reference, else its plain value.

    Bootstraps first if nothing has been booted yet. A variable that holds a
    reference the keyring does not have (set after bootstrap) raises
    ``BootstrapError`` rather than handing out ciphertext or a reference; a value
    past its stale bound raises ``StaleError``.
    """
    found = contained(_lifecycle.lookup, name)
    if isinstance(found, SecretbootError):
        raise found
    return default if found is None else found


def refresh_now(names: Iterable[str] | None = None) -> frozenset[str]:
    """Resolve ``names`` (default: every reference) again now, in one batch; return the
    names whose values changed.

    For "authentication failed: fetch the new password and retry once". Paced per name:
    a name resolved less than ``SECRETBOOT_REFRESH_MIN_INTERVAL`` seconds ago (10 by
    default; by any resolution, failed or not) is skipped, so a flood of failed logins
    cannot become a flood of AWS calls. Names that hold no reference are ignored. On any
    failure nothing changes and ``BootstrapError`` is raised. Calls the ``on_refresh``
    callbacks when it resolved something. Before ``bootstrap()``: ``SecretbootError``.
    """
    changed = contained(_lifecycle.refresh_now, names)
    if isinstance(changed, SecretbootError):
        raise changed
    return changed


def on_refresh(callback: Callable[[Keyring, frozenset[str]], object]) -> Callable[[], None]:
    """Call ``callback(keyring, changed)`` after every successful refresh; returns the
    function that unregisters it.

    Refreshes are: by age (``max_age``), ``refresh_now()``, ``bootstrap(refresh=True)`` and
    a SnapStart restore (which reports every name: the values were dropped before the
    snapshot). ``changed`` holds the names whose values changed, and may be empty. Called
    on the thread that refreshed, with no lock held; an exception in a callback is logged
    (its type only) and stops neither the refresh nor the other callbacks.
    """
    return _lifecycle.on_refresh(callback)


__all__ = [
    "LOGGER_NAME",
    "_Prefetch",
    "_prefetch_before_snapshot",
    "_restore_environ",
    "_state",
    "bootstrap",
    "contained",
    "getenv",
    "on_refresh",
    "prefetch",
    "read_environment",
    "refresh_now",
    "reset",
]
