"""``bootstrap()``: the one entry point that reads the environment and resolves it."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping

from secretboot import _settings as s
from secretboot._errors import BootstrapError, ConfigurationError, Failure, ReferenceSyntaxError
from secretboot._keyring import Keyring
from secretboot._reference import (
    Reference,
    SecretsManagerReference,
    SsmReference,
    is_reference,
    parse_kms,
    parse_reference,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    import logging

LOGGER_NAME = "secretboot"
NOT_ALLOWED = "NotAllowed"

# Never scanned unless listed in SECRETBOOT_KMS_VARS: the AWS SDK's and our own
# settings are configuration, not secrets to resolve.
_SKIPPED_PREFIXES = ("AWS_", "SECRETBOOT_")


class _State:
    """What the process has booted. Guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.keyring: Keyring | None = None
        self.environ: Mapping[str, str] = os.environ
        self.file_values: dict[str, str] = {}
        self.kms_vars: frozenset[str] = frozenset()
        # Variables written into os.environ by export: name -> (before, written).
        self.exported: dict[str, tuple[str | None, str]] = {}
        # The last successful boot's options, to boot again after a SnapStart restore.
        self.options: tuple[Mapping[str, str] | None, str | os.PathLike[str] | None, bool | None] = (
            None,
            None,
            None,
        )


_state = _State()


def bootstrap(
    *,
    refresh: bool = False,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    export: bool | None = None,
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
    ``os.environ`` (``SECRETBOOT_EXPORT``; off by default). ``reset()`` undoes it.
    """
    with _state.lock:
        if _state.keyring is not None and not refresh:
            return _state.keyring
        return _boot(environ, env_file, export)


def getenv(name: str, default: str | None = None) -> str | None:
    """The resolved value of ``name`` if it was a reference, else its plain value.

    Bootstraps first if nothing has been booted yet. A variable that holds a
    reference the keyring does not have (set after bootstrap) raises
    ``BootstrapError`` rather than handing out ciphertext or a reference.
    """
    with _state.lock:
        keyring = _state.keyring if _state.keyring is not None else bootstrap()
        if name in keyring:
            return keyring[name]
        value = _state.environ.get(name)
        if value is None:
            value = _state.file_values.get(name)
        kms_vars = _state.kms_vars
    if value is None:
        return default
    if name in kms_vars or (not name.startswith(_SKIPPED_PREFIXES) and is_reference(value)):
        detail = "set after bootstrap(); call bootstrap(refresh=True)"
        raise BootstrapError([Failure(name, "reference", "-", "NotResolved", detail)])
    return value


def reset() -> None:
    """Forget the keyring and undo anything ``export`` wrote into ``os.environ``."""
    with _state.lock:
        _restore_environ()
        _state.keyring = None
        _state.environ = os.environ
        _state.file_values = {}
        _state.kms_vars = frozenset()


def _boot(
    environ: Mapping[str, str] | None,
    env_file: str | os.PathLike[str] | None,
    export: bool | None,
) -> Keyring:
    started = time.perf_counter()
    base, file_values, merged = read_environment(environ, env_file)
    # Every setting is read, and may fail, before any request is made.
    kms_vars = s.kms_vars(merged)
    do_export = s.flag(merged, s.EXPORT, export)
    settings = s.Settings(merged)
    snapstart = None
    if merged.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        from secretboot import _snapstart

        snapstart = _snapstart.policy(merged)

    refs, failures = scan(merged, kms_vars)
    from secretboot._resolve import resolve

    outcome = resolve(refs, settings)
    failures.extend(outcome.failures)
    if do_export:
        failures.extend(_unexportable({**file_values, **outcome.values}, refs))
    elapsed_ms = (time.perf_counter() - started) * 1000
    calls = sum(outcome.calls.values())
    if failures:
        error = BootstrapError(failures)
        _logger().warning(
            "could not resolve %s after %d API calls and %d retries in %.0f ms",
            ", ".join(error.variables),
            calls,
            outcome.retries,
            elapsed_ms,
        )
        raise error from None

    keyring = _state.keyring
    if keyring is None:
        keyring = Keyring(outcome.values, refs, outcome.binary)
    else:
        keyring._replace(outcome.values, refs, outcome.binary)
    if do_export:
        _export(keyring, file_values)
    _state.keyring = keyring
    _state.options = (environ, env_file, export)
    if snapstart is not None:
        _snapstart.register(snapstart)
    _state.environ = base
    _state.file_values = file_values
    _state.kms_vars = kms_vars
    if "logging" not in sys.modules:
        # logging was never imported, so no handler exists to show the line:
        # skip the import on the cold-start path.
        return keyring
    kinds = Counter(ref.kind for ref in refs.values())
    _logger().info(
        "resolved %d secrets (%s) with %d API calls (%s) and %d retries%s in %.0f ms",
        len(keyring),
        _counts(kinds),
        calls,
        _counts(outcome.calls),
        outcome.retries,
        f" via {outcome.transport}" if outcome.transport else "",
        elapsed_ms,
    )
    return keyring


def read_environment(
    environ: Mapping[str, str] | None, env_file: str | os.PathLike[str] | None
) -> tuple[Mapping[str, str], dict[str, str], dict[str, str]]:
    """(the environment read, the env file's values, both merged with the environment winning)."""
    base = os.environ if environ is None else environ
    view = _unexported_view(base)
    path = env_file if env_file is not None else view.get(s.ENV_FILE) or None
    file_values = _read_env_file(path) if path is not None else {}
    return base, file_values, {**file_values, **view}


def scan(env: Mapping[str, str], kms_vars: frozenset[str]) -> tuple[dict[str, Reference], list[Failure]]:
    """Parse every reference in ``env``; malformed or disallowed ones become failures."""
    refs: dict[str, Reference] = {}
    failures = [
        Failure(name, "kms", "-", "Missing", f"listed in {s.KMS_VARS} but not set")
        for name in sorted(kms_vars - env.keys())
    ]
    for name, value in env.items():
        try:
            if name in kms_vars:
                refs[name] = parse_kms(value, variable=name)
            elif not name.startswith(_SKIPPED_PREFIXES) and is_reference(value):
                ref = parse_reference(value, variable=name)
                if ref is not None:
                    refs[name] = ref
        except ReferenceSyntaxError as exc:
            failures.append(Failure(name, exc.kind, "-", "Malformed", exc.reason))
    allowlists = {
        "ssm": (s.SSM_PATHS, s.allowlist(env, s.SSM_PATHS)),
        "secretsmanager": (s.SECRETS_MANAGER_PATHS, s.allowlist(env, s.SECRETS_MANAGER_PATHS)),
    }
    for name, ref in list(refs.items()):
        setting, entries = allowlists.get(ref.kind, ("", None))
        if entries is not None and not any(s.allowed(n, entries) for n in _names(ref)):
            del refs[name]
            failures.append(Failure(name, ref.kind, ref.target, NOT_ALLOWED, f"outside {setting}"))
    return refs, failures


def _names(ref: Reference) -> tuple[str, ...]:
    """What an allowlist is checked against: the parameter's or the secret's name."""
    if isinstance(ref, SsmReference):
        return (ref.parameter_name,)
    if isinstance(ref, SecretsManagerReference):
        return ref.names()
    return ()


def _read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    if not os.path.isfile(path):
        raise ConfigurationError(f"env file {os.fspath(path)!r} does not exist")
    import io

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    text, reason = None, ""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = type(exc).__name__
    # Raised outside the except block: a UnicodeDecodeError holds the file's bytes,
    # and even "from None" would keep it as the new error's __context__.
    if text is None:
        raise ConfigurationError(f"env file {os.fspath(path)!r} cannot be read ({reason})")
    # python-dotenv lets the last of two lines setting a name win, silently: for a
    # secret that is one edit away from shipping the wrong value. Refuse it.
    bindings = list(parse_stream(io.StringIO(text)))
    keys = [b.key for b in bindings if b.key]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ConfigurationError(f"env file {os.fspath(path)!r} sets {', '.join(twice)} more than once")
    values = dotenv_values(stream=io.StringIO(text))
    # A reference built with ${VAR} expansion would carry another variable's value into
    # its name, which errors, logs and AWS requests show: refuse it.
    raw = {b.key: b.value or "" for b in bindings if b.key is not None}
    built = sorted(
        k for k, v in raw.items() if "$" in v and values.get(k) != v and is_reference(values.get(k) or "")
    )
    if built:
        raise ConfigurationError(
            f"env file {os.fspath(path)!r}: {', '.join(built)} would become a reference through "
            "${VAR} expansion; write references out in full"
        )
    return {k: v for k, v in values.items() if v is not None}


def _unexported_view(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` as it was before our own export, so a refresh sees references again."""
    view = dict(base)
    if base is os.environ:
        for name, (before, written) in _state.exported.items():
            if view.get(name) != written:
                continue  # changed since we wrote it: theirs now
            if before is None:
                del view[name]
            else:
                view[name] = before
    return view


def _unexportable(values: Mapping[str, str], refs: Mapping[str, Reference]) -> list[Failure]:
    """Values no environment variable can hold (a NUL), checked before anything is written."""
    return [
        Failure(
            name,
            refs[name].kind if name in refs else "plain",
            refs[name].target if name in refs else "-",
            "NotExportable",
            "holds a NUL character, which an environment variable cannot",
        )
        for name, value in values.items()
        if "\x00" in value
    ]


def _export(keyring: Keyring, file_values: Mapping[str, str]) -> None:
    _restore_environ()
    updates = {k: v for k, v in file_values.items() if k not in os.environ}
    updates.update(keyring)
    for name, value in updates.items():
        _state.exported[name] = (os.environ.get(name), value)
        os.environ[name] = value


def _restore_environ() -> None:
    for name, (before, written) in _state.exported.items():
        if os.environ.get(name) != written:
            continue
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before
    _state.exported.clear()


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def _logger() -> logging.Logger:
    import logging

    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        # A library's logger: silent unless the application configures logging
        # (else Python's last-resort handler prints warnings to stderr).
        logger.addHandler(logging.NullHandler())
    return logger
