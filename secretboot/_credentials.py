"""AWS credentials for the fast transport, chosen exactly as botocore's default chain would.

boto3 costs about 200 ms of cold start, so the fast transport finds credentials itself:
the same sources, in the same order, with the same variables, files, hosts, timeouts and
refresh windows as botocore 1.44 (``credentials.py``, ``utils.py``, ``configloader.py``).
Where botocore would do something we do not (SSO, ``credential_process``, assume-role
chains, ...), ``plan()`` says why in a sentence and the caller falls back to boto3, which
then picks the same identity it always did. Deciding never needs the network where
botocore's does not.

Nothing read from a key, a token file or an answer reaches a message or a ``repr``.
Cheap to import: configparser, http.client, ssl, xml and datetime load only when a
source needs them. The network sources live in ``_credsources``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping

from secretboot import _transport as t

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from typing import Protocol

    class Source(Protocol):
        """One provider, built by ``plan()``: immutable configuration, no I/O until ``fetch``."""

        name: str  # one of the source constants below
        key: tuple[str, ...]  # its configuration, for ``cache_for``; never shown

        def fetch(self, deadline: t.Deadline | None) -> Credentials:
            """Fresh credentials, or ``TransportError`` naming the source and host, never a value."""
            ...


# botocore's Credentials.method for each provider (its exact strings: they show up in
# boto3's own debugging, and tests compare the two).
ENVIRONMENT = "env"
SHARED_CREDENTIALS_FILE = "shared-credentials-file"
CONFIG_FILE = "config-file"
WEB_IDENTITY = "assume-role-with-web-identity"
CONTAINER = "container-role"
INSTANCE_METADATA = "iam-role"

# botocore's RefreshableCredentials windows (_DEFAULT_ADVISORY/MANDATORY_REFRESH_TIMEOUT).
ADVISORY_REFRESH = 15 * 60
MANDATORY_REFRESH = 10 * 60


class Credentials:
    """One set of keys: static (``expires`` None) or temporary (epoch seconds).

    Immutable, and its ``repr`` says where the keys came from and how long they last, never
    a key, not even the access key id (it names the account's user or role session).
    A slots class rather than a dataclass: ``dataclasses`` costs 12 ms to import.
    """

    __slots__ = ("access_key", "expires", "secret_key", "source", "token")
    access_key: str
    secret_key: str
    token: str | None
    expires: float | None
    source: str

    def __init__(
        self, access_key: str, secret_key: str, token: str | None, expires: float | None, source: str
    ) -> None:
        for name, value in zip(self.__slots__, (access_key, expires, secret_key, source, token), strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Credentials are immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        if self.expires is None:
            return f"Credentials(source={self.source}, temporary={self.token is not None})"
        left = int(self.expires - time.time())
        return f"Credentials(source={self.source}, temporary=True, expires in {left} s)"


class _Static:
    """Keys read from the environment or a shared file while planning: no I/O to fetch them."""

    __slots__ = ("_credentials", "key", "name")

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self.name = credentials.source
        self.key: tuple[str, ...] = (
            self.name,
            str(id(self)),
        )  # nothing to share: a fresh plan reads them again

    def fetch(self, deadline: t.Deadline | None) -> Credentials:
        return self._credentials

    def __repr__(self) -> str:
        return f"<credentials source {self.name}>"


class _Unsupported(Exception):
    """Why the fast path cannot follow botocore here (a sentence free of values)."""


# ----------------------------------------------------------------------------- shared files


def _home(env: Mapping[str, str], home: str | None) -> str:
    return home or env.get("HOME") or os.path.expanduser("~")


def _path(value: str, home: str, variable: str) -> str:
    """``value`` as botocore expands it (``expandvars`` then ``expanduser``), with our HOME.

    ``$VAR`` and ``~user`` would need the real process environment: left to boto3.
    """
    if "$" in value or (value.startswith("~") and not (value == "~" or value.startswith("~/"))):
        raise _Unsupported(f"{variable} uses $variables or ~user, which only boto3 expands")
    return home + value[1:] if value.startswith("~") else value


def _read_ini(path: str, label: str) -> dict[str, dict[str, str]] | None:
    """The file's sections as configparser.RawConfigParser reads them (as botocore does),
    ``None`` if it is not a file. A file botocore would refuse (ConfigParseError) is refused.
    """
    if not path or not os.path.isfile(path):
        return None
    import configparser  # about 3 ms: only when a shared file exists

    parser = configparser.RawConfigParser()
    try:
        parser.read([path])
    except (configparser.Error, UnicodeDecodeError, OSError):
        raise _Unsupported(f"the {label} cannot be parsed (boto3 would refuse it too)") from None
    sections: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        sections[section] = {}
        for option in parser.options(section):
            value = parser.get(section, option)
            # botocore parses a value starting with a line break as a nested block; a line
            # without "=" in one makes the whole file a ConfigParseError.
            if value.startswith("\n") and any("=" not in x for x in value.splitlines() if x.strip()):
                raise _Unsupported(f"the {label} has a nested block botocore cannot parse")
            sections[section][option] = value
    return sections


def _config_profiles(raw: Mapping[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """botocore's build_profile_map: ``[profile name]`` and ``[default]``, later sections winning."""
    import shlex

    profiles: dict[str, dict[str, str]] = {}
    for section, values in raw.items():
        if section.startswith("profile"):
            try:
                parts = shlex.split(section)
            except ValueError:
                continue
            if len(parts) == 2:
                profiles[parts[1]] = values
        elif section == "default":
            profiles[section] = values
    return profiles


class _Files:
    """The profile botocore's session would use, from both shared files."""

    def __init__(self, env: Mapping[str, str], home: str | None) -> None:
        self._env = env
        home = _home(env, home)
        config_path = _path(env.get("AWS_CONFIG_FILE", "~/.aws/config"), home, "AWS_CONFIG_FILE")
        credentials_path = _path(
            env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), home, "AWS_SHARED_CREDENTIALS_FILE"
        )
        self.config = _config_profiles(_read_ini(config_path, "config file (AWS_CONFIG_FILE)") or {})
        self.credentials = _read_ini(credentials_path, "credentials file (AWS_SHARED_CREDENTIALS_FILE)") or {}
        # session.full_config: the config file's profiles, updated with the credentials file's.
        self.merged = {name: dict(values) for name, values in self.config.items()}
        for name, values in self.credentials.items():
            self.merged.setdefault(name, {}).update(values)
        # botocore reads AWS_DEFAULT_PROFILE before AWS_PROFILE (configprovider.py).
        chosen = next((env[v] for v in ("AWS_DEFAULT_PROFILE", "AWS_PROFILE") if v in env), None)
        if chosen is not None and chosen not in self.merged:
            raise _Unsupported("the profile named by AWS_PROFILE/AWS_DEFAULT_PROFILE does not exist")
        self.name = chosen or "default"
        self.profile = self.merged.get(self.name, {})

    def setting(self, variable: str, key: str) -> str | None:
        """botocore's config chain: the variable if present (even empty), else the profile's key."""
        return self._env[variable] if variable in self._env else self.profile.get(key)


def _keys(values: Mapping[str, str], tokens: tuple[str, ...], source: str, where: str) -> Credentials:
    """A key pair and the first token name present (botocore's order); partial: boto3 decides."""
    access, secret = values.get(tokens[0], ""), values.get(tokens[1], "")
    if not access or not secret:
        missing = tokens[1] if access else tokens[0]
        raise _Unsupported(f"{where} holds only part of a key pair: {missing} is not set")
    token = next((values[name] for name in tokens[2:] if name in values), None)
    return Credentials(access, secret, token or None, None, source)


def region(env: Mapping[str, str], *, home: str | None = None) -> str | None:
    """AWS_REGION, else AWS_DEFAULT_REGION, else the profile's ``region``.

    botocore itself reads only AWS_DEFAULT_REGION and the profile; secretboot gives boto3
    AWS_REGION first (Lambda sets it), so this follows secretboot's boto3 transport. The
    profile is the merged one (a ``region`` in the credentials file counts, as in botocore).
    """
    found = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if found:
        return found
    try:
        return _Files(env, home).profile.get("region") or None
    except _Unsupported:
        return None


def profile_endpoints(env: Mapping[str, str], *, home: str | None = None) -> bool:
    """Whether the profile sets service endpoints (``endpoint_url`` or a ``services`` section),
    which boto3 would apply to KMS, SSM and Secrets Manager and the fast path does not read."""
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return False
    try:
        profile = _Files(env, home).profile
    except _Unsupported:
        return False  # plan() says why
    return "endpoint_url" in profile or "services" in profile


# ----------------------------------------------------------------------------- the plan

_FALLBACK_KEYS = (
    ("credential_process", "its credential_process"),
    ("login_session", "its login_session"),
)


def plan(env: Mapping[str, str], *, home: str | None = None) -> Source | str:
    """The source botocore's default chain (``boto3.Session()``) would use, or why not.

    The order is botocore's create_credential_resolver: environment, assume-role profile,
    web identity, SSO, credentials file, login, credential_process, config file, the old
    EC2 and boto2 files, container, instance metadata. Sentences name variables, profiles
    and files, never a value from them.
    """
    try:
        return _plan(env, home)
    except _Unsupported as why:
        return str(why)


def _plan(env: Mapping[str, str], home: str | None) -> Source:
    from secretboot import _credsources as cs

    if env.get("AWS_ACCESS_KEY_ID"):  # botocore skips the environment without one, secret or not
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
        present = {name: env[name] for name in names if env.get(name)}  # botocore skips empty ones
        found = _keys(present, names, ENVIRONMENT, "the environment")
        expiry = env.get("AWS_CREDENTIAL_EXPIRATION")
        if expiry:
            expires = cs.epoch(expiry)
            if expires is None:
                raise _Unsupported("AWS_CREDENTIAL_EXPIRATION is not an ISO 8601 time")
            found = Credentials(found.access_key, found.secret_key, found.token, expires, ENVIRONMENT)
        return _Static(found)

    files = _Files(env, home)
    profile, label = files.profile, f"profile {files.name!r}"
    if "role_arn" in profile and "web_identity_token_file" not in profile:
        raise _Unsupported(f"{label} assumes a role (role_arn): boto3 handles role chains")
    token_file = files.setting("AWS_WEB_IDENTITY_TOKEN_FILE", "web_identity_token_file")
    if token_file:
        role_arn = files.setting("AWS_ROLE_ARN", "role_arn")
        if not role_arn:
            raise _Unsupported("a web identity token file is set without a role ARN (AWS_ROLE_ARN)")
        session_name = files.setting("AWS_ROLE_SESSION_NAME", "role_session_name")
        return cs.WebIdentity(
            token_file=_path(token_file, _home(env, home), "AWS_WEB_IDENTITY_TOKEN_FILE"),
            role_arn=role_arn,
            session_name=session_name or None,
            endpoint=cs.sts_endpoint(env, region(env, home=home), files.setting, files.profile),
            ca_bundle=files.setting("AWS_CA_BUNDLE", "ca_bundle") or None,
        )
    if "sso_account_id" in profile or "sso_role_name" in profile:  # what botocore's SSO provider needs
        raise _Unsupported(f"{label} uses IAM Identity Center (sso_*): boto3 handles SSO")
    if "aws_access_key_id" in files.credentials.get(files.name, {}):
        names = ("aws_access_key_id", "aws_secret_access_key", "aws_security_token", "aws_session_token")
        where = f"{label} in the credentials file"
        return _Static(_keys(files.credentials[files.name], names, SHARED_CREDENTIALS_FILE, where))
    for key, what in _FALLBACK_KEYS:
        if key in profile:
            raise _Unsupported(f"{label} uses {what}: boto3 handles it")
    if "aws_access_key_id" in files.config.get(files.name, {}):
        names = ("aws_access_key_id", "aws_secret_access_key", "aws_security_token", "aws_session_token")
        return _Static(_keys(files.config[files.name], names, CONFIG_FILE, f"{label} in the config file"))
    if "AWS_CREDENTIAL_FILE" in env:
        raise _Unsupported("AWS_CREDENTIAL_FILE is set (the old EC2 tools' file): boto3 reads it")
    _refuse_boto2_files(env, _home(env, home))
    if "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" in env or "AWS_CONTAINER_CREDENTIALS_FULL_URI" in env:
        return cs.container(env)
    if env.get("AWS_EC2_METADATA_DISABLED", "false").lower() == "true":
        raise _Unsupported(
            "no AWS credentials found: none in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, in "
            f"{label} (AWS_PROFILE) in the shared credentials and config files, nor container "
            "credentials (AWS_CONTAINER_CREDENTIALS_*); AWS_EC2_METADATA_DISABLED rules out instance metadata"
        )
    return cs.instance_metadata(env, files.setting)


def _refuse_boto2_files(env: Mapping[str, str], home: str) -> None:
    """botocore's BotoProvider reads boto2's ``[Credentials]`` before container and IMDS."""
    paths = [env["BOTO_CONFIG"]] if "BOTO_CONFIG" in env else ["/etc/boto.cfg", f"{home}/.boto"]
    for path in paths:
        try:
            sections = _read_ini(path, "boto config file")
        except _Unsupported:
            sections = {"Credentials": {"aws_access_key_id": ""}}
        if sections and "aws_access_key_id" in sections.get("Credentials", {}):
            raise _Unsupported("a boto2 config file (BOTO_CONFIG, ~/.boto, /etc/boto.cfg) holds keys")


# ----------------------------------------------------------------------------- refresh


class CredentialCache:
    """One source's credentials, refetched before they expire with botocore's windows.

    Advisory (``ADVISORY_REFRESH`` s before expiry): refetch, but keep the current ones if
    that fails, and let other threads use them meanwhile. Mandatory (``MANDATORY_REFRESH``
    s before): every thread waits for the one fetch, and a failure is raised. Static
    credentials are fetched once. ``clock`` (epoch seconds) is injected for tests.
    """

    def __init__(self, source: Source, *, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Credentials | None = None
        # Fetches finished, and the last one's failure: threads that waited for a fetch share
        # its failure instead of asking a failing endpoint again, one after the other.
        self._fetches = 0
        self._failure: t.TransportError | None = None

    def _due(self, current: Credentials | None, window: float) -> bool:
        return current is None or (current.expires is not None and current.expires - self._clock() < window)

    def get(self, deadline: t.Deadline | None = None) -> Credentials:
        current = self._current
        if not self._due(current, ADVISORY_REFRESH):
            assert current is not None
            return current
        seen = self._fetches
        if not self._lock.acquire(blocking=False):
            current = self._current  # another thread is fetching
            if not self._due(current, MANDATORY_REFRESH):
                assert current is not None
                return current
            wait = -1.0 if deadline is None else deadline.remaining()
            if not self._lock.acquire(timeout=wait):
                raise t.TransportError(t.TIMEOUT, f"{self._source.name}: out of time waiting for credentials")
        try:
            return self._refresh(deadline, seen)
        finally:
            self._lock.release()

    def _refresh(self, deadline: t.Deadline | None, seen: int) -> Credentials:
        current = self._current
        if not self._due(current, ADVISORY_REFRESH):  # fetched while this thread waited
            assert current is not None
            return current
        mandatory = self._due(current, MANDATORY_REFRESH)
        failure = self._failure
        if self._fetches != seen and failure is not None and mandatory:
            # A fetch failed while this thread waited for it: its answer is this thread's too.
            raise t.TransportError(failure.reason, failure.detail)
        try:
            fresh = self._source.fetch(deadline)
        except t.TransportError as exc:
            self._failure = exc
            if mandatory:
                raise
            assert current is not None
            return current  # advisory: the current ones last 10 more minutes at least
        finally:
            self._fetches += 1  # counted when done: a thread that came during it shares it
        self._failure = None
        if fresh.expires is not None and fresh.expires <= self._clock():
            # botocore: "Credentials were refreshed, but the refreshed credentials are still expired."
            raise t.TransportError(t.INVALID_CREDENTIALS, f"{self._source.name}: the credentials had expired")
        self._current = fresh
        return fresh


_caches: dict[tuple[str, ...], CredentialCache] = {}
_caches_lock = threading.Lock()


def cache_for(source: Source) -> CredentialCache:
    """The process's cache for ``source``'s configuration: a second bootstrap() reuses it."""
    with _caches_lock:
        cache = _caches.get(source.key)
        if cache is None:
            cache = _caches[source.key] = CredentialCache(source)
        return cache


def forget() -> None:
    """Drop the process's caches (a fork's child, a SnapStart restore, between tests)."""
    global _caches_lock
    _caches_lock = threading.Lock()  # a fork may have copied it held
    _caches.clear()


if hasattr(os, "register_at_fork"):
    # Temporary credentials cached in a parent would otherwise be shared by its workers
    # with the parent's lock state; each child fetches its own.
    os.register_at_fork(after_in_child=forget)
