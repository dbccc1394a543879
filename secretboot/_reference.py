"""The reference grammar: detection (cheap) and parsing (pure, no I/O).

See docs/reference-syntax.md. ``is_reference`` is a quick test meant for every
environment variable; ``parse_reference`` turns a value into an immutable typed
reference whose ``str()`` is its canonical form, so that
``parse_reference(str(ref)) == ref``.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode, b64encode
from collections.abc import Callable

from secretboot._errors import ReferenceSyntaxError

KMS_PREFIX = "kms:"
SSM_PREFIX = "ssm:"
SEALED_PREFIX = "sealed:"
SECRETS_MANAGER_PREFIX = "secretsmanager:"
DYNAMIC_MARK = "{{resolve:"
_PREFIXES = (KMS_PREFIX, SSM_PREFIX, SEALED_PREFIX, SECRETS_MANAGER_PREFIX)

# Genuine AWS KMS symmetric ciphertext starts with these bytes, so its base64
# starts with "AQICAH". The format is undocumented: a heuristic, kept narrow.
_KMS_HEADER = b"\x01\x02\x02\x00\x78"
_KMS_B64_HEAD = "AQICAH"
# KMS limits: a ciphertext blob is at most 6144 bytes. Real symmetric blobs are
# never shorter than about 150 bytes; 64 keeps short look-alikes out.
_KMS_MAX_BLOB = 6144
_KMS_MIN_BARE_BLOB = 64

# Patterns are strings compiled on first use (re caches them), so importing
# costs nothing for the ones a process never needs.
_B64_STD = r"[A-Za-z0-9+/]+={0,2}"
_SSM_NAME = r"/?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*"
_SSM_SELECTOR = r"[1-9][0-9]{0,18}|[A-Za-z][A-Za-z0-9_.\-]{0,99}"
_SSM_ARN = (
    r"arn:(?P<partition>aws[a-z\-]*):ssm:(?P<region>[a-z0-9\-]+):(?P<account>[0-9]{12}):"
    r"parameter/(?P<path>[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*)"
)
_DYNAMIC = r"\{\{resolve:(?P<kind>[a-z\-]+):(?P<body>[^{}]*)\}\}"
# The API's Names field takes up to 2048 characters (an ARN included); SSM
# itself enforces its tighter rules (1011-character names, 15 levels).
_SSM_MAX_NAME = 2048

# A sealed blob: format version, 96-bit nonce, AES-256-GCM ciphertext and 16-byte tag.
SEALED_VERSION = 1
SEALED_NONCE_SIZE = 12
SEALED_TAG_SIZE = 16
SEALED_OVERHEAD = 1 + SEALED_NONCE_SIZE + SEALED_TAG_SIZE
# Sealed values live in files as much as in Lambda's 4 KB: room for a
# certificate bundle, not for a database dump.
SEALED_MAX_BLOB = 1 << 20

# Secrets Manager: names of 1-512 characters from this set; ARNs of the
# "secret" resource type, ending in the name, "-" and six random characters;
# version stages of up to 256 characters; version ids of 32-64 characters
# (UUIDs when Secrets Manager makes them).
_SM_NAME = r"[A-Za-z0-9/_+=.@\-]{1,512}"
_SM_ARN = r"arn:aws[a-z\-]*:secretsmanager:[a-z0-9\-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@\-]{1,519}"
_SM_STAGE = r"[A-Za-z0-9_.@+=/\-]{1,256}"
_SM_VERSION_ID = r"[A-Za-z0-9\-]{32,64}"
_SM_MAX_JSON_KEY = 1024
# Rotation: a new version is staged AWSPENDING while the rotation sets it up and tests it,
# then AWSCURRENT moves to it (and AWSPREVIOUS to the old one). Until then the pending value
# may not work anywhere yet, and after a failed rotation it may never work: no reference may
# name it, so no code path can ask for it.
PENDING_STAGE = "AWSPENDING"


class KmsReference:
    """KMS ciphertext to be decrypted with ``Decrypt``.

    ``repr`` shows only the blob's size; ``str`` is the canonical form
    ``kms:<base64>``, which contains the ciphertext.
    """

    __slots__ = ("ciphertext",)
    kind = "kms"
    ciphertext: bytes

    def __init__(self, ciphertext: bytes) -> None:
        if not isinstance(ciphertext, bytes):
            raise TypeError("ciphertext must be bytes")
        if not 0 < len(ciphertext) <= _KMS_MAX_BLOB:
            raise ReferenceSyntaxError(f"KMS ciphertext must be 1 to {_KMS_MAX_BLOB} bytes")
        object.__setattr__(self, "ciphertext", ciphertext)

    @property
    def target(self) -> str:
        """A description safe to log: the blob's size, not its content."""
        return f"<ciphertext, {len(self.ciphertext)} bytes>"

    def __str__(self) -> str:
        return KMS_PREFIX + b64encode(self.ciphertext).decode("ascii")

    def __repr__(self) -> str:
        return f"KmsReference({self.target})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KmsReference):
            return NotImplemented
        return self.ciphertext == other.ciphertext

    def __hash__(self) -> int:
        return hash((self.kind, self.ciphertext))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("references are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("references are immutable")

    def __reduce__(self) -> tuple[type[KmsReference], tuple[bytes]]:
        return (KmsReference, (self.ciphertext,))


class SsmReference:
    """An SSM parameter, read with ``GetParameters`` and ``WithDecryption``.

    ``name`` is a parameter name (``/path/name`` or ``name``) or an ARN;
    ``selector`` is a version (``"3"``), a label (``"prod"``) or ``None``.
    """

    __slots__ = ("name", "selector")
    kind = "ssm"
    name: str
    selector: str | None

    def __init__(self, name: str, selector: str | None = None) -> None:
        _check_ssm_name(name)
        if selector is not None and not re.fullmatch(_SSM_SELECTOR, selector):
            raise ReferenceSyntaxError(
                "SSM selector must be a version number (1 or more) or a label starting with a letter"
            )
        if selector is not None and selector.lower().startswith(("aws", "ssm")):
            raise ReferenceSyntaxError("SSM labels cannot begin with 'aws' or 'ssm'")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "selector", selector)

    @property
    def request_name(self) -> str:
        """The name as ``GetParameters`` takes it, selector included."""
        return self.name if self.selector is None else f"{self.name}:{self.selector}"

    @property
    def parameter_name(self) -> str:
        """The parameter's own name, derived from the ARN if needed."""
        match = re.fullmatch(_SSM_ARN, self.name)
        if match is None:
            return self.name
        path = match["path"]
        return "/" + path if "/" in path else path

    @property
    def target(self) -> str:
        return self.request_name

    def __str__(self) -> str:
        return SSM_PREFIX + self.request_name

    def __repr__(self) -> str:
        return f"SsmReference({self.request_name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SsmReference):
            return NotImplemented
        return (self.name, self.selector) == (other.name, other.selector)

    def __hash__(self) -> int:
        return hash((self.kind, self.name, self.selector))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("references are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("references are immutable")

    def __reduce__(self) -> tuple[type[SsmReference], tuple[str, str | None]]:
        return (SsmReference, (self.name, self.selector))


class SealedReference:
    """A value sealed locally (AES-256-GCM) under the data key in ``SECRETBOOT_DATA_KEY``.

    Opening it needs that data key, unwrapped once per boot for every sealed
    value, and the variable's name, which is bound to the blob.
    """

    __slots__ = ("blob",)
    kind = "sealed"
    blob: bytes

    def __init__(self, blob: bytes) -> None:
        if not isinstance(blob, bytes):
            raise TypeError("blob must be bytes")
        if len(blob) <= SEALED_OVERHEAD or len(blob) > SEALED_MAX_BLOB:
            raise ReferenceSyntaxError(
                f"a sealed value must be {SEALED_OVERHEAD + 1} to {SEALED_MAX_BLOB} bytes once decoded"
            )
        if blob[0] != SEALED_VERSION:
            raise ReferenceSyntaxError(f"unknown sealed format version {blob[0]}")
        object.__setattr__(self, "blob", blob)

    @property
    def target(self) -> str:
        return f"<sealed, {len(self.blob)} bytes>"

    def __str__(self) -> str:
        return SEALED_PREFIX + b64encode(self.blob).decode("ascii")

    def __repr__(self) -> str:
        return f"SealedReference({self.target})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SealedReference):
            return NotImplemented
        return self.blob == other.blob

    def __hash__(self) -> int:
        return hash((self.kind, self.blob))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("references are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("references are immutable")

    def __reduce__(self) -> tuple[type[SealedReference], tuple[bytes]]:
        return (SealedReference, (self.blob,))


class SecretsManagerReference:
    """A Secrets Manager secret, or one key of its JSON, at a version stage or id.

    ``secret_id`` is a name or ARN. With neither ``version_stage`` nor
    ``version_id`` the current version (``AWSCURRENT``) is read. ``AWSPENDING``
    is refused: it marks a rotation in progress (``PENDING_STAGE``).
    """

    __slots__ = ("json_key", "secret_id", "version_id", "version_stage")
    kind = "secretsmanager"
    secret_id: str
    json_key: str | None
    version_stage: str | None
    version_id: str | None

    def __init__(
        self,
        secret_id: str,
        *,
        json_key: str | None = None,
        version_stage: str | None = None,
        version_id: str | None = None,
    ) -> None:
        if not isinstance(secret_id, str):
            raise TypeError("secret_id must be a str")
        pattern = _SM_ARN if secret_id.startswith("arn:") else _SM_NAME
        if not re.fullmatch(pattern, secret_id):
            raise ReferenceSyntaxError(
                "not a valid secret ARN"
                if secret_id.startswith("arn:")
                else "secret name must be 1 to 512 of letters, digits and /_+=.@-"
            )
        if json_key is not None and not 0 < len(json_key) <= _SM_MAX_JSON_KEY:
            raise ReferenceSyntaxError(f"JSON key must be 1 to {_SM_MAX_JSON_KEY} characters")
        if version_stage is not None and not re.fullmatch(_SM_STAGE, version_stage):
            raise ReferenceSyntaxError("version stage must be 1 to 256 of letters, digits and _.@+=/-")
        if version_stage == PENDING_STAGE:
            raise ReferenceSyntaxError(
                "version stage AWSPENDING is a rotation in progress and is never served; "
                "read AWSCURRENT (the default) or AWSPREVIOUS"
            )
        if version_id is not None and not re.fullmatch(_SM_VERSION_ID, version_id):
            raise ReferenceSyntaxError("version id must be 32 to 64 of letters, digits and '-'")
        if (version_stage or version_id) and json_key is not None and re.search(r"[:{}]", json_key):
            # The canonical form with a version is the dynamic one, where these cannot appear.
            raise ReferenceSyntaxError("a JSON key read at a version cannot hold ':', '{' or '}'")
        object.__setattr__(self, "secret_id", secret_id)
        object.__setattr__(self, "json_key", json_key)
        object.__setattr__(self, "version_stage", version_stage)
        object.__setattr__(self, "version_id", version_id)

    def names(self) -> tuple[str, ...]:
        """The secret's name as written, and without an ARN's parts (and its random suffix)."""
        if not self.secret_id.startswith("arn:"):
            return (self.secret_id,)
        name = self.secret_id.split(":secret:", 1)[1]
        # A full ARN ends in "-" and six random characters; a partial one does not.
        return (name, name[:-7]) if len(name) > 7 and name[-7] == "-" else (name,)

    @property
    def current(self) -> bool:
        """True when this reads the current version (what ``BatchGetSecretValue`` returns)."""
        return self.version_stage is None and self.version_id is None

    @property
    def target(self) -> str:
        """The secret, key and version: names, not data."""
        # A JSON key is free text: escape what could break a line or move the cursor.
        key = self.json_key
        if key is not None and not key.isprintable():
            key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)
        text = self.secret_id + (f"#{key}" if key is not None else "")
        if self.version_stage is not None:
            text += f" (stage {self.version_stage})"
        if self.version_id is not None:
            text += f" (version {self.version_id})"
        return text

    def __str__(self) -> str:
        if self.current:
            key = f"#{self.json_key}" if self.json_key is not None else ""
            return f"{SECRETS_MANAGER_PREFIX}{self.secret_id}{key}"
        fields = ":".join([self.json_key or "", self.version_stage or "", self.version_id or ""])
        return f"{{{{resolve:secretsmanager:{self.secret_id}:SecretString:{fields.rstrip(':')}}}}}"

    def __repr__(self) -> str:
        return f"SecretsManagerReference({self.target!r})"

    def _key(self) -> tuple[str, str | None, str | None, str | None]:
        return (self.secret_id, self.json_key, self.version_stage, self.version_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretsManagerReference):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.kind, *self._key()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("references are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("references are immutable")

    def __reduce__(self) -> tuple[object, ...]:
        return (_secrets_manager, self._key())


def _secrets_manager(
    secret_id: str, json_key: str | None, version_stage: str | None, version_id: str | None
) -> SecretsManagerReference:
    return SecretsManagerReference(
        secret_id, json_key=json_key, version_stage=version_stage, version_id=version_id
    )


Reference = KmsReference | SsmReference | SealedReference | SecretsManagerReference


def _check_ssm_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError("SSM name must be a str")
    if not name:
        raise ReferenceSyntaxError("SSM parameter name is empty")
    if len(name) > _SSM_MAX_NAME:
        raise ReferenceSyntaxError(f"SSM parameter name is longer than {_SSM_MAX_NAME} characters")
    if name.startswith("arn:"):
        if not re.fullmatch(_SSM_ARN, name):
            raise ReferenceSyntaxError("not a valid SSM parameter ARN")
        return
    if not re.fullmatch(_SSM_NAME, name):
        raise ReferenceSyntaxError(
            "SSM parameter name may hold only letters, digits, '_', '.', '-' and '/' separators"
        )
    if "/" in name and not name.startswith("/"):
        raise ReferenceSyntaxError("hierarchical SSM parameter names must begin with '/'")


def looks_like_kms_ciphertext(value: str) -> bool:
    """True for bare base64 of genuine AWS KMS symmetric ciphertext.

    This is what the Lambda console's encryption helpers store. Only values
    starting ``AQICAH`` are decoded at all, so ordinary values cost a prefix test.
    """
    if not value.startswith(_KMS_B64_HEAD) or len(value) % 4 or not re.fullmatch(_B64_STD, value):
        return False
    try:
        blob = b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return blob.startswith(_KMS_HEADER) and _KMS_MIN_BARE_BLOB <= len(blob) <= _KMS_MAX_BLOB


def is_reference(value: str) -> bool:
    """Cheap test: could this value be a reference? Parsing may still reject it."""
    return value.startswith(_PREFIXES) or DYNAMIC_MARK in value or looks_like_kms_ciphertext(value)


def parse_reference(value: str, *, variable: str | None = None) -> Reference | None:
    """Parse ``value``; ``None`` when it is a plain value, not a reference.

    Raises ``ReferenceSyntaxError`` naming ``variable`` (never the value) when
    the value is meant as a reference but is malformed.
    """
    if not isinstance(value, str):
        raise TypeError("value must be a str")
    if value.startswith(KMS_PREFIX):
        return _parsed("kms", _parse_kms_base64, value[len(KMS_PREFIX) :], variable)
    if value.startswith(SSM_PREFIX):
        return _parsed("ssm", _parse_ssm, value[len(SSM_PREFIX) :], variable)
    if value.startswith(SEALED_PREFIX):
        return _parsed("sealed", _parse_sealed, value[len(SEALED_PREFIX) :], variable)
    if value.startswith(SECRETS_MANAGER_PREFIX):
        body = value[len(SECRETS_MANAGER_PREFIX) :]
        return _parsed("secretsmanager", _parse_secrets_manager, body, variable)
    if DYNAMIC_MARK in value:
        return _parsed("dynamic", _parse_dynamic, value, variable)
    if looks_like_kms_ciphertext(value):
        return KmsReference(b64decode(value))
    return None


def parse_kms(value: str, *, variable: str | None = None) -> KmsReference:
    """Parse a value that must be KMS ciphertext (``kms:`` prefix optional)."""
    body = value[len(KMS_PREFIX) :] if value.startswith(KMS_PREFIX) else value
    try:
        return _parse_kms_base64(body)
    except ReferenceSyntaxError as exc:
        raise ReferenceSyntaxError(exc.reason, variable=variable, kind="kms") from None


def parse_sealed(value: str, *, variable: str | None = None) -> SealedReference:
    """Parse a value that must be a sealed value (``sealed:`` prefix required)."""
    if not value.startswith(SEALED_PREFIX):
        raise ReferenceSyntaxError("a sealed value starts with sealed:", variable=variable, kind="sealed")
    ref = _parsed("sealed", _parse_sealed, value[len(SEALED_PREFIX) :], variable)
    assert isinstance(ref, SealedReference)
    return ref


def _parsed(kind: str, parser: Callable[[str], Reference], body: str, variable: str | None) -> Reference:
    """Run ``parser``, naming the variable and kind in any syntax error."""
    try:
        return parser(body)
    except ReferenceSyntaxError as exc:
        raise ReferenceSyntaxError(exc.reason, variable=variable, kind=kind) from None


def _parse_kms_base64(body: str) -> KmsReference:
    return KmsReference(_base64(body, "KMS ciphertext"))


def _base64(body: str, what: str) -> bytes:
    """Strict standard base64 with padding; no whitespace."""
    if not body:
        raise ReferenceSyntaxError(f"{what} is empty")
    if len(body) % 4 or not re.fullmatch(_B64_STD, body):
        raise ReferenceSyntaxError(f"{what} is not valid standard base64")
    try:
        return b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ReferenceSyntaxError(f"{what} is not valid standard base64") from None


def _parse_sealed(body: str) -> SealedReference:
    if len(body) > (SEALED_MAX_BLOB + 2) // 3 * 4:
        raise ReferenceSyntaxError(f"a sealed value must be at most {SEALED_MAX_BLOB} bytes once decoded")
    return SealedReference(_base64(body, "sealed value"))


def _parse_secrets_manager(body: str) -> SecretsManagerReference:
    # Secret names and ARNs never hold '#': everything after it is the JSON key.
    secret_id, sep, json_key = body.partition("#")
    if sep and not json_key:
        raise ReferenceSyntaxError("JSON key after '#' is empty")
    if not secret_id:
        raise ReferenceSyntaxError("secret id is empty")
    return SecretsManagerReference(secret_id, json_key=json_key if sep else None)


def _parse_dynamic_secrets_manager(body: str) -> SecretsManagerReference:
    """CloudFormation's ``secret-id:SecretString:json-key:version-stage:version-id``."""
    fields = body.split(":")
    # An ARN's own colons: arn:partition:secretsmanager:region:account:secret:name.
    head = 7 if body.startswith("arn:") else 1
    if len(fields) < head:
        raise ReferenceSyntaxError("not a valid secret ARN")
    secret_id, rest = ":".join(fields[:head]), fields[head:]
    if len(rest) > 4:
        raise ReferenceSyntaxError(
            "too many fields: the form is secret-id:SecretString:json-key:version-stage:version-id"
        )
    rest += [""] * (4 - len(rest))
    if rest[0] not in ("", "SecretString"):
        raise ReferenceSyntaxError("the field after the secret id must be SecretString")
    json_key, stage, version_id = (field or None for field in rest[1:])
    if not secret_id:
        raise ReferenceSyntaxError("secret id is empty")
    return SecretsManagerReference(secret_id, json_key=json_key, version_stage=stage, version_id=version_id)


def _parse_ssm(body: str) -> SsmReference:
    name, selector = _split_selector(body)
    return SsmReference(name, selector)


def _split_selector(body: str) -> tuple[str, str | None]:
    # An ARN has colons of its own; the selector is whatever follows the
    # parameter path, which never contains a colon.
    head = ""
    if body.startswith("arn:"):
        cut = body.find(":parameter/")
        if cut < 0:
            raise ReferenceSyntaxError("not a valid SSM parameter ARN")
        head, body = body[: cut + len(":parameter")], body[cut + len(":parameter") :]
    name, sep, selector = body.partition(":")
    if sep and not selector:
        raise ReferenceSyntaxError("SSM selector after ':' is empty")
    return head + name, (selector if sep else None)


def _parse_dynamic(value: str) -> SsmReference | SecretsManagerReference:
    match = re.fullmatch(_DYNAMIC, value)
    if match is None:
        raise ReferenceSyntaxError(
            "a {{resolve:...}} dynamic reference must be the whole value, as "
            "{{resolve:ssm-secure:NAME[:VERSION]}}, {{resolve:ssm:NAME[:VERSION]}} or "
            "{{resolve:secretsmanager:ID[:SecretString[:JSON_KEY[:STAGE[:VERSION_ID]]]]}}"
        )
    kind = match["kind"]
    if kind == "secretsmanager":
        return _parse_dynamic_secrets_manager(match["body"])
    if kind not in ("ssm", "ssm-secure"):
        # Kinds are short words (ssm-secure); anything long is not one, and is not echoed.
        shown = repr(kind) if len(kind) <= 20 else f"of {len(kind)} characters"
        raise ReferenceSyntaxError(
            f"dynamic reference kind {shown} is not supported; use ssm, ssm-secure or secretsmanager"
        )
    name, version = _split_selector(match["body"])
    # CloudFormation's own syntax allows only a version number here.
    if version is not None and not version.isdecimal():
        raise ReferenceSyntaxError("dynamic reference version must be a number")
    return SsmReference(name, version)
