"""Configuration: explicit argument > SECRETBOOT_* variable > default, read at call time."""

from __future__ import annotations

import os
from collections.abc import Mapping

from secretboot._errors import ConfigurationError

KMS_VARS = "SECRETBOOT_KMS_VARS"
KMS_CONTEXT = "SECRETBOOT_KMS_CONTEXT"
KMS_KEY_ID = "SECRETBOOT_KMS_KEY_ID"
ENV_FILE = "SECRETBOOT_ENV_FILE"
EXPORT = "SECRETBOOT_EXPORT"
TRANSPORT = "SECRETBOOT_TRANSPORT"
DATA_KEY = "SECRETBOOT_DATA_KEY"
LOCAL_KEY_FILE = "SECRETBOOT_LOCAL_KEY_FILE"
TIMEOUT = "SECRETBOOT_TIMEOUT"
RETRY_MODE = "SECRETBOOT_RETRY_MODE"
STRICT = "SECRETBOOT_STRICT"  # a value that looks like a misspelt reference fails start-up
BINARY_VARS = "SECRETBOOT_BINARY_VARS"
# Allowlists: what a reference may name, so that whoever can set one variable
# cannot point it at another application's secret.
SSM_PATHS = "SECRETBOOT_SSM_PATHS"
SECRETS_MANAGER_PATHS = "SECRETBOOT_SECRETS_MANAGER_PATHS"
# Every request, retry and backoff of one bootstrap() fits in this many seconds:
# half of Lambda's 10-second init phase, leaving the rest to the application.
DEFAULT_TIMEOUT = 5.0
_MAX_TIMEOUT = 900.0
TRANSPORTS = ("auto", "fast", "boto3")
# "adaptive" adds the process's client-side rate limiter per service (botocore's mode of
# that name); off by default, measured in docs/reliability.md.
RETRY_MODES = ("standard", "adaptive")
LAMBDA_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
# The refresh lifecycle (off by default: a cold start resolves once and starts no thread).
MAX_AGE = "SECRETBOOT_MAX_AGE"  # seconds after a successful resolution before refreshing
MAX_STALE = "SECRETBOOT_MAX_STALE"  # seconds past MAX_AGE that failed refreshes may serve values
REFRESH_MIN_INTERVAL = "SECRETBOOT_REFRESH_MIN_INTERVAL"  # refresh_now() per name, at most this often
MIN_MAX_AGE = 1.0
_MAX_SECONDS = 30 * 24 * 3600.0  # 30 days
DEFAULT_REFRESH_MIN_INTERVAL = 10.0

# Encryption context keys that only secretboot may use (the sealed values' data key is
# wrapped under one): refused in every user context. Here, not in _envelope, so that
# reading settings does not import the envelope code at start-up.
RESERVED_CONTEXT_PREFIX = "secretboot:"
RESERVED_CONTEXT_MESSAGE = (
    f"{KMS_CONTEXT} uses a key starting with {RESERVED_CONTEXT_PREFIX}: encryption context keys "
    f"starting with {RESERVED_CONTEXT_PREFIX} are secretboot's own"
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class KmsSettings:
    """How every ``Decrypt`` is called.

    ``contexts`` are the encryption contexts to try, in order: ``None`` means
    no context. In Lambda the console helpers' context comes first, with no
    context as the fallback for values encrypted by the CLI or before ~2021.
    """

    __slots__ = ("contexts", "key_id")

    def __init__(self, contexts: tuple[Mapping[str, str] | None, ...], key_id: str | None) -> None:
        self.contexts = contexts
        self.key_id = key_id


class Settings:
    """Everything the resolvers need, read once from the environment being booted."""

    __slots__ = (
        "aws",
        "binary_vars",
        "data_key",
        "kms",
        "local_key_file",
        "max_stale",
        "refresh_min_interval",
        "retry_mode",
        "secrets_manager_paths",
        "strict",
        "timeout",
        "transport",
    )

    def __init__(self, env: Mapping[str, str]) -> None:
        self.kms = kms_settings(env)
        # Sealed values: the wrapped data key, and the key file that unwraps a local: one.
        self.data_key = env.get(DATA_KEY) or None
        self.local_key_file = env.get(LOCAL_KEY_FILE) or None
        # The AWS SDK's own variables (region, endpoint, credentials, boto2's BOTO_CONFIG, proxies)
        # as they are in this environment, which may be a mapping or include a
        # .env file.
        self.aws = {
            k: v for k, v in env.items() if k.startswith(("AWS_", "BOTO_")) or k.lower().endswith("_proxy")
        }
        # boto3 reads what it is not given (proxies, the credential chain's variables) from the
        # process environment whatever is booted: both transports see the same, so they pick
        # the same identity.
        for name, value in os.environ.items():
            if name.startswith(("AWS_", "BOTO_")) or name.lower().endswith("_proxy"):
                self.aws.setdefault(name, value)
        self.timeout = _timeout(env)
        # Variables whose plaintext is bytes, not text: base64 in the keyring, raw via as_bytes().
        self.binary_vars = names(env, BINARY_VARS)
        self.secrets_manager_paths = allowlist(env, SECRETS_MANAGER_PATHS)
        self.transport = env.get(TRANSPORT, "").strip().lower() or "auto"
        if self.transport not in TRANSPORTS:
            raise ConfigurationError(f"{TRANSPORT} must be one of {', '.join(TRANSPORTS)}")
        self.strict = flag(env, STRICT, None)
        self.retry_mode = env.get(RETRY_MODE, "").strip().lower() or "standard"
        if self.retry_mode not in RETRY_MODES:
            raise ConfigurationError(f"{RETRY_MODE} must be one of {', '.join(RETRY_MODES)}")
        self.max_stale = seconds(env, MAX_STALE, None, low=0.0)
        interval = seconds(env, REFRESH_MIN_INTERVAL, DEFAULT_REFRESH_MIN_INTERVAL, low=0.0)
        self.refresh_min_interval = DEFAULT_REFRESH_MIN_INTERVAL if interval is None else interval


def max_age(env: Mapping[str, str], explicit: float | None) -> float | None:
    """``bootstrap(max_age=)`` > ``SECRETBOOT_MAX_AGE`` > off (``None``)."""
    if explicit is None:
        return seconds(env, MAX_AGE, None, low=MIN_MAX_AGE)
    if isinstance(explicit, bool) or not isinstance(explicit, (int, float)):
        raise ConfigurationError("max_age must be a number of seconds or None")
    if not MIN_MAX_AGE <= explicit <= _MAX_SECONDS:  # also refuses nan and inf
        raise ConfigurationError(f"max_age must be between {MIN_MAX_AGE:g} and {_MAX_SECONDS:g} seconds")
    return float(explicit)


def seconds(env: Mapping[str, str], name: str, default: float | None, *, low: float) -> float | None:
    """A duration setting: unset or empty gives ``default``; else ``low`` <= value <= 30 days."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not low <= value <= _MAX_SECONDS:  # also refuses nan and inf
        raise ConfigurationError(f"{name} must be a number of seconds from {low:g} to {_MAX_SECONDS:g}")
    return value


def _timeout(env: Mapping[str, str]) -> float:
    raw = env.get(TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= _MAX_TIMEOUT:  # also refuses nan and inf
        raise ConfigurationError(
            f"{TIMEOUT} must be a number of seconds above 0 and at most {_MAX_TIMEOUT:g}"
        )
    return seconds


def kms_settings(env: Mapping[str, str]) -> KmsSettings:
    raw = env.get(KMS_CONTEXT)
    key_id = env.get(KMS_KEY_ID) or None
    if raw is not None and raw.strip():
        return KmsSettings((_parse_context(raw),), key_id)
    function = env.get(LAMBDA_FUNCTION_NAME)
    if function:
        return KmsSettings(({"LambdaFunctionName": function}, None), key_id)
    return KmsSettings((None,), key_id)


def _parse_context(raw: str) -> dict[str, str]:
    import json

    try:
        context = json.loads(raw)
    except (ValueError, RecursionError):
        raise ConfigurationError(f"{KMS_CONTEXT} is not valid JSON") from None
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise ConfigurationError(f"{KMS_CONTEXT} must be a JSON object of strings to strings")
    if reserved_context_keys(context):
        # The keys are secretboot's own (the data key's marker): never the user's. Fixed
        # wording: nothing of the raw text is echoed.
        raise ConfigurationError(RESERVED_CONTEXT_MESSAGE)
    return context


def allowlist(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """The comma-separated entries of ``name``; ``None`` when it is unset (anything goes)."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return tuple(entry.strip() for entry in raw.split(",") if entry.strip())


def allowed(name: str, entries: tuple[str, ...]) -> bool:
    """Is ``name`` one of ``entries`` or below one? ``/app/prod`` covers ``/app/prod/db``, not
    ``/app/production``; an entry ending in ``/`` covers only what is below it."""
    for entry in entries:
        if entry.endswith("/"):
            if name.startswith(entry):
                return True
        elif name == entry or name.startswith(entry + "/"):
            return True
    return False


def kms_vars(env: Mapping[str, str]) -> frozenset[str]:
    return names(env, KMS_VARS)


def names(env: Mapping[str, str], setting: str) -> frozenset[str]:
    """The comma-separated variable names in ``setting``."""
    return frozenset(name.strip() for name in env.get(setting, "").split(",") if name.strip())


def flag(env: Mapping[str, str], name: str, explicit: bool | None) -> bool:
    if explicit is not None:
        return explicit
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be one of 1/0, true/false, yes/no, on/off")


def reserved_context_keys(context: Mapping[str, str] | None) -> list[str]:
    """The keys of ``context`` that only secretboot may use (sorted; empty if none)."""
    return sorted(key for key in context or () if key.startswith(RESERVED_CONTEXT_PREFIX))
