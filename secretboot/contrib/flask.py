"""Flask: resolve secrets once when the app is created and load them into ``app.config``.

    from flask import Flask
    from secretboot.contrib.flask import SecretBoot

    boot = SecretBoot()                    # or SecretBoot(names=[...]) / SecretBoot(prefix="MYAPP_")

    def create_app() -> Flask:
        app = Flask(__name__)
        boot.init_app(app)                 # BootstrapError here if anything cannot be resolved
        return app

``init_app`` calls ``secretboot.bootstrap()`` (once per process: a second app reuses
the keyring), puts the selected values into ``app.config`` in one update, registers
the extension as ``app.extensions["secretboot"]`` and adds ``flask secretboot check``.
It also registers a ``secretboot.on_refresh`` hook that writes the values a refresh
changed into ``app.config`` (again in one update), for as long as the app exists.
Importing this module does nothing else: see docs/flask.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import click

import secretboot
from secretboot._bootstrap import contained
from secretboot._errors import (
    BootstrapError,
    ConfigurationError,
    Failure,
    ReferenceSyntaxError,
    SecretbootError,
)

if TYPE_CHECKING:
    from flask import Flask

    from secretboot._keyring import Keyring

__all__ = ["EXTENSION_NAME", "SecretBoot", "cli"]

EXTENSION_NAME = "secretboot"

# Flask reads these two as signing keys; every other setting of Flask's own is shown
# (in URLs, cookies, headers, warnings) or needs a type other than str.
_KEY_SETTING = "SECRET_KEY"
_FALLBACKS_SETTING = "SECRET_KEY_FALLBACKS"


class SecretBoot:
    """The Flask extension. Options are keyword-only; the object holds no secret.

    Without options, every variable that held a reference is loaded under its own
    name. ``names``: load exactly these variables, each resolved if it held a
    reference, else as it is (a ``.env`` with plaintext works in development); a
    name that is not set fails. ``prefix``: load the resolved variables whose name
    starts with it, under their name without it. ``names`` and ``prefix`` exclude
    each other.
    """

    __slots__ = ("_names", "_prefix")

    def __init__(
        self,
        app: Flask | None = None,
        *,
        names: Iterable[str] | None = None,
        prefix: str | None = None,
    ) -> None:
        if names is not None and prefix is not None:
            raise ValueError("names and prefix exclude each other")
        self._names = None if names is None else _check_names(names)
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError("prefix must be a string")
        if prefix == "":
            raise ValueError("prefix must not be empty")
        self._prefix = prefix
        if app is not None:
            self.init_app(app)

    @property
    def names(self) -> tuple[str, ...] | None:
        return self._names

    @property
    def prefix(self) -> str | None:
        return self._prefix

    def init_app(self, app: Flask) -> None:
        """Bootstrap (once per process) and load the values into ``app.config``.

        Raises ``BootstrapError`` (a reference cannot be resolved, a name in ``names``
        is not set, or ``SECRET_KEY`` would keep an unresolved reference) or
        ``ConfigurationError`` (a value would land in one of Flask's own settings
        other than ``SECRET_KEY``); either way ``app`` is left as it was.
        """
        # Error reporters capture frame locals: the error leaves from this frame, which
        # holds neither the keyring nor a value, once the frames doing the work are gone.
        loaded = contained(self._load, app)
        if isinstance(loaded, SecretbootError):
            raise loaded

    def _load(self, app: Flask) -> None:
        keyring = secretboot.bootstrap()
        # Every check works on names; values are read only once all have passed.
        keys = self._select(keyring)
        _refuse_flask_settings(app, keys)
        failures = _unresolved_secret_key(app, keys)
        if failures:
            raise BootstrapError(failures)
        app.config.update({key: _value(keyring, variable) for key, variable in keys.items()})
        app.extensions[EXTENSION_NAME] = self
        app.cli.add_command(cli)
        _follow_refreshes(app, keys)

    def _select(self, keyring: Keyring) -> dict[str, str]:
        """config key -> variable, all or nothing."""
        if self._prefix is not None:
            prefix = self._prefix
            selected = {}
            for name in sorted(keyring):
                if name.startswith(prefix):
                    key = name.removeprefix(prefix)
                    if not key:
                        raise ConfigurationError(f"{name}: removing the prefix {prefix!r} leaves no name")
                    selected[key] = name
            return selected
        if self._names is None:
            return {name: name for name in sorted(keyring)}
        failures: list[Failure] = []
        for name in self._names:
            try:
                missing = secretboot.getenv(name) is None
            except BootstrapError as exc:  # a reference set after bootstrap()
                failures.extend(exc.failures)
                continue
            if missing:
                detail = "declared in SecretBoot(names=...) but not set"
                failures.append(Failure(name, "reference", "-", "Missing", detail))
        if failures:
            raise BootstrapError(failures)
        return {name: name for name in self._names}

    def __repr__(self) -> str:
        if self._names is not None:
            return f"SecretBoot(names={list(self._names)!r})"
        if self._prefix is not None:
            return f"SecretBoot(prefix={self._prefix!r})"
        return "SecretBoot()"


def _follow_refreshes(app: Flask, keys: Mapping[str, str]) -> None:
    """After each refresh, the changed values into ``app.config``; the hook holds the app weakly.

    The hook is unregistered when the app is collected; ``init_app`` on the same app again
    replaces it (the last selection is followed).
    """
    keys = dict(keys)
    ref = weakref.ref(app)

    def on_refresh(keyring: Keyring, changed: frozenset[str]) -> None:
        target = ref()
        if target is None:
            return
        updates = {key: _value(keyring, variable) for key, variable in keys.items() if variable in changed}
        if updates:
            target.config.update(updates)  # one update: a request sees all new values or none

    previous = _hooks.pop(app, None)
    if previous is not None:
        previous()  # unregisters the hook of an earlier init_app
    _hooks[app] = weakref.finalize(app, secretboot.on_refresh(on_refresh))


# app -> the finalizer that unregisters its hook (when called, or when the app is collected).
_hooks: weakref.WeakKeyDictionary[Flask, weakref.finalize[Any, Any]] = weakref.WeakKeyDictionary()


def _check_names(names: Iterable[str]) -> tuple[str, ...]:
    if isinstance(names, (str, bytes)):
        raise TypeError("names must be a collection of variable names, not a single string")
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError("names must hold non-empty strings")
        if name not in checked:
            checked.append(name)
    return tuple(checked)


def _value(keyring: Keyring, variable: str) -> str:
    """A resolved value, or a plain one (names= may list plain variables)."""
    if variable in keyring:
        return keyring[variable]
    return secretboot.getenv(variable) or ""


def _refuse_flask_settings(app: Flask, keys: dict[str, str]) -> None:
    builtin = sorted(key for key in keys if key in app.default_config and key != _KEY_SETTING)
    if not builtin:
        return
    problems = []
    for key in builtin:
        variable = keys[key]
        if key == _FALLBACKS_SETTING:
            hint = f"it is a list: set app.config[{key!r}] = [secretboot.getenv(...)] yourself"
        else:
            hint = "Flask shows it or needs another type; rename the variable or set it yourself"
        problems.append(f"{variable} would become app.config[{key!r}], one of Flask's own settings ({hint})")
    raise ConfigurationError("secretboot will not load " + "; ".join(problems))


def _unresolved_secret_key(app: Flask, keys: dict[str, str]) -> list[Failure]:
    """The classic silent failure: ciphertext or a reference used as the signing key."""
    failures = []
    for where, value in _signing_keys(app, keys):
        if isinstance(value, str) and secretboot.is_reference(value):
            kind, target = _describe(value)
            detail = (
                f"app.config[{where!r}] still holds a reference, so Flask would sign with it; "
                "load the variable with SecretBoot (its own name, names= or prefix=) or set it "
                "from secretboot.getenv()"
            )
            failures.append(Failure(where, kind, target, "Unresolved", detail))
    return failures


def _signing_keys(app: Flask, keys: dict[str, str]) -> Iterator[tuple[str, object]]:
    """(where, value) of SECRET_KEY as it would be loaded, and of each of its fallbacks."""
    if _KEY_SETTING in keys:
        variable = keys[_KEY_SETTING]
        yield _KEY_SETTING, secretboot.getenv(variable)
    else:
        yield _KEY_SETTING, app.config.get(_KEY_SETTING)
    fallbacks = app.config.get(_FALLBACKS_SETTING)
    if isinstance(fallbacks, (list, tuple)):
        yield from ((f"{_FALLBACKS_SETTING}[{i}]", key) for i, key in enumerate(fallbacks))


def _describe(value: str) -> tuple[str, str]:
    try:
        ref = secretboot.parse_reference(value)
    except ReferenceSyntaxError as exc:
        return exc.kind, "-"
    return (ref.kind, ref.target) if ref is not None else ("reference", "-")


# -- flask secretboot check -------------------------------------------------------------------

# The codes and words of `secretboot check --help` (secretboot._cli.COMMAND_EXIT_CODES): this
# command runs it. Written out, not imported, so that loading the extension stays light.
_EXIT_CODES = """\b
exit codes:
    0  every reference resolves (with --offline: parses)
    1  a reference does not resolve
    2  usage or input error (bad option, unreadable --env-file)
  130  interrupted"""


@click.group(EXTENSION_NAME, help="secretboot: KMS- and SSM-backed secrets in the environment.")
def cli() -> None:
    """The ``flask secretboot`` group."""


@cli.command(
    "check",
    help="List every reference, its target and whether it resolves (never values).",
    epilog=_EXIT_CODES,
)
@click.option("--env-file", metavar="PATH", help="a .env file to read too (default: .env if present)")
@click.option("--no-env-file", is_flag=True, help="read the process environment only")
@click.option("--offline", is_flag=True, help="only parse; ask AWS nothing")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.pass_context
def _check(ctx: click.Context, env_file: str | None, no_env_file: bool, offline: bool, as_json: bool) -> None:
    """``secretboot check``, exactly: same report, same messages, same exit codes."""
    from secretboot._cli import main

    argv = ["check"]
    if env_file is not None:
        argv.append(f"--env-file={env_file}")
    if no_env_file:
        argv.append("--no-env-file")
    if offline:
        argv.append("--offline")
    if as_json:
        argv.append("--json")
    ctx.exit(main(argv))
