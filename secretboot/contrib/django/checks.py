"""The system check: no setting may still hold what secretboot was meant to resolve.

Settings that read ``os.environ`` directly (or forget ``bootstrap()``) get the
reference itself: the ciphertext becomes the signing key, or is sent as the
database password, and nothing fails until a user notices. Messages name the
setting and the variable, never the value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured

from secretboot import _settings as s
from secretboot._environment import scan
from secretboot._errors import SecretbootError
from secretboot._lifecycle import read_environment
from secretboot._reference import DYNAMIC_MARK, SSM_PREFIX, is_reference

ERROR_ID = "secretboot.E001"
REFRESH_ERROR_ID = "secretboot.E002"
WARNING_ID = "secretboot.W001"

# Settings that hold secrets, searched through (a database's PASSWORD and OPTIONS, a
# cache's LOCATION and OPTIONS): an unresolved value in one is an error; in any
# other setting, a warning.
SECRET_SETTINGS = frozenset(
    {"SECRET_KEY", "SECRET_KEY_FALLBACKS", "DATABASES", "CACHES", "EMAIL_HOST_PASSWORD"}
)
_MAX_DEPTH = 8


def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Report every setting whose value (or nested value) is an unresolved reference."""
    from_env = _environment_references()
    messages: list[CheckMessage] = []
    for name in sorted(n for n in dir(settings) if n.isupper()):
        try:
            value = getattr(settings, name)
        except ImproperlyConfigured:
            continue  # an empty SECRET_KEY: Django's own check reports it
        for path, text in _strings(name, value, 0):
            kind = _kind(text, from_env)
            if kind is None:
                continue
            variables = from_env.get(text, ())
            source = f" (the raw value of {_names(variables)})" if variables else ""
            message = f"{path} holds {kind} that was never resolved{source}."
            read = f'secretboot.getenv("{variables[0] if len(variables) == 1 else "NAME"}")'
            if name in SECRET_SETTINGS:
                hint = f"In settings.py call secretboot.bootstrap() and read the secret with {read}."
                messages.append(Error(message, hint=hint, id=ERROR_ID))
            else:
                hint = (
                    f"Read it with {read} after secretboot.bootstrap(), or, if the setting is "
                    f"meant to hold a reference, add {WARNING_ID!r} to SILENCED_SYSTEM_CHECKS."
                )
                messages.append(CheckWarning(message, hint=hint, id=WARNING_ID))
    return messages


def check_refresh(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """``SECRETBOOT_REFRESH`` must describe the settings as they are: each follows its variable."""
    from secretboot.contrib.django._refresh import SETTING, read_setting

    follow = read_setting(getattr(settings, SETTING, None))
    pairs: list[tuple[str, object, object]] = []
    if follow.secret_key is not None:
        pairs.append(("SECRET_KEY", settings.SECRET_KEY, _current(follow.secret_key)))
    if follow.fallbacks is not None:
        from secretboot.contrib.django import fallbacks

        expected = fallbacks(*follow.fallbacks)
        pairs.append(("SECRET_KEY_FALLBACKS", list(getattr(settings, "SECRET_KEY_FALLBACKS", [])), expected))
    for alias, variable in sorted((follow.databases or {}).items()):
        configured = settings.DATABASES.get(alias)
        if not isinstance(configured, Mapping):
            message = f"{SETTING}['DATABASES'] names the database {alias!r}, which DATABASES does not define."
            return [*_mismatch_messages(pairs), Error(message, id=REFRESH_ERROR_ID)]
        pairs.append((f"DATABASES[{alias!r}]['PASSWORD']", configured.get("PASSWORD"), _current(variable)))
    return _mismatch_messages(pairs)


def _current(variable: str) -> str | None:
    from secretboot import getenv

    return getenv(variable)


def _mismatch_messages(pairs: Sequence[tuple[str, object, object]]) -> list[CheckMessage]:
    """Compared whole, in constant time; messages name the setting, never a value."""
    import hmac

    messages: list[CheckMessage] = []
    for where, actual, expected in pairs:
        if not hmac.compare_digest(repr(actual).encode(), repr(expected).encode()):
            messages.append(
                Error(
                    f"{where} does not hold the value of the variable SECRETBOOT_REFRESH names for it, "
                    "so a refresh would replace it with something else.",
                    hint="Read it with secretboot.getenv() from the variable SECRETBOOT_REFRESH names.",
                    id=REFRESH_ERROR_ID,
                )
            )
    return messages


def _strings(path: str, value: object, depth: int) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` with where it is, through mappings, lists and tuples."""
    if isinstance(value, str):
        yield path, value
    elif depth >= _MAX_DEPTH:
        return
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(f"{path}[{key!r}]", item, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(f"{path}[{index}]", item, depth + 1)


def _kind(value: str, from_env: Mapping[str, object]) -> str | None:
    if value.startswith(SSM_PREFIX) or DYNAMIC_MARK + "ssm" in value:
        return "an SSM reference"
    if DYNAMIC_MARK in value:
        return "a {{resolve:...}} reference"
    if is_reference(value) or value in from_env:
        # kms:<base64>, bare AWS KMS ciphertext, or a SECRETBOOT_KMS_VARS value of any shape
        return "KMS ciphertext"
    return None


def _names(variables: Sequence[str]) -> str:
    if len(variables) == 1:
        return f"the environment variable {variables[0]}"
    return "the environment variables " + ", ".join(variables)


def _environment_references() -> dict[str, tuple[str, ...]]:
    """Each raw value ``bootstrap()`` would resolve (as before any export) -> the variables holding it."""
    try:
        _, _, env = read_environment(None, None)
    except SecretbootError:
        return {}  # an unreadable SECRETBOOT_ENV_FILE: bootstrap() reports it
    refs, failures = scan(env, s.kms_vars(env))
    found: dict[str, tuple[str, ...]] = {}
    for name in sorted({*refs, *(f.variable for f in failures)}):
        value = env.get(name)
        if value:
            found[value] = (*found.get(value, ()), name)
    return found
