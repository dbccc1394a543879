"""Reading the environment: which variables hold references, which look like misspelt ones,
and what a .env file says. Pure: no process state, no I/O beyond reading the file named.

``_check`` and the Django checks use this as ``bootstrap()`` does, so they report what a
start would see.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping

from secretboot import _settings as s
from secretboot._errors import ConfigurationError, Failure, ReferenceSyntaxError
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
    from dotenv.parser import Binding

NOT_ALLOWED = "NotAllowed"

# Never scanned unless listed in SECRETBOOT_KMS_VARS: the AWS SDK's and our own
# settings are configuration, not secrets to resolve.
_SKIPPED_PREFIXES = ("AWS_", "SECRETBOOT_")


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


NEAR_MISS = "NearMiss"


def near_misses(
    env: Mapping[str, str], kms_vars: frozenset[str], refs: Mapping[str, Reference]
) -> list[Failure]:
    """Plain values that look like a misspelt reference (``smm:/app/x``), one failure each.

    Without this, the application starts with the literal string as its secret. The
    detail quotes at most the prefix typed, never the rest of the value.
    """
    from secretboot._nearmiss import near_miss

    found = []
    for name, value in env.items():
        if name in refs or name in kms_vars or name.startswith(_SKIPPED_PREFIXES):
            continue
        reason = near_miss(value)
        if reason is not None:
            found.append(Failure(name, "plain", "-", NEAR_MISS, reason))
    return found


def _names(ref: Reference) -> tuple[str, ...]:
    """What an allowlist is checked against: the parameter's or the secret's name."""
    if isinstance(ref, SsmReference):
        return (ref.parameter_name,)
    if isinstance(ref, SecretsManagerReference):
        return ref.names()
    return ()


def _read_env_file(
    path: str | os.PathLike[str], expand_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    if not os.path.isfile(path):
        raise ConfigurationError(f"env file {os.fspath(path)!r} does not exist")
    import io

    from dotenv.main import with_warn_for_invalid_lines
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
    bindings = [b for b in with_warn_for_invalid_lines(parse_stream(io.StringIO(text))) if b.key is not None]
    twice = sorted(key for key, count in Counter(b.key for b in bindings if b.key).items() if count > 1)
    if twice:
        raise ConfigurationError(f"env file {os.fspath(path)!r} sets {', '.join(twice)} more than once")
    values = _expand(bindings, os.environ if expand_env is None else expand_env)
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


def _expand(bindings: Iterable[Binding], environ: Mapping[str, str]) -> dict[str, str | None]:
    """Values with ``${VAR}`` expanded, as python-dotenv's ``dotenv_values`` does, in one pass.

    ``dotenv_values`` copies ``os.environ`` and every value before a line for each line
    (quadratic: 20,000 lines took seconds). One mapping that grows line by line gives
    each line the same view: the environment, overridden by the file's earlier lines.
    """
    from dotenv.variables import parse_variables

    env: dict[str, str | None] = dict(environ)
    values: dict[str, str | None] = {}
    for binding in bindings:
        if binding.key is None:
            continue  # a comment, a blank line or a line that does not parse
        value = binding.value
        if value is not None:
            value = "".join(atom.resolve(env) for atom in parse_variables(value))
        env[binding.key] = values[binding.key] = value
    return values
