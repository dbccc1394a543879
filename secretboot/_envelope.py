"""Envelope encryption: values sealed locally under one data key, the data key wrapped.

A sealed value is ``sealed:`` + base64 of::

    version (0x01) | nonce (12 bytes) | AES-256-GCM(data key, plaintext, aad)
    aad = version | b"secretboot/sealed/" | the variable's name (UTF-8)

so a value copied to another variable, edited, truncated or opened with another
data key fails one integrity check, with one opaque error. The 32-byte data key
is stored wrapped in ``SECRETBOOT_DATA_KEY``: ``kms:<KMS ciphertext>`` or
``local:<base64>``, the same layout as a sealed value under a local master key
read from ``SECRETBOOT_LOCAL_KEY_FILE`` (``secretboot keygen``).

A ``kms:`` data key is wrapped under the user's encryption context plus one
reserved pair (``DATA_KEY_PURPOSE``), with which no ordinary ``kms:`` value is
ever decrypted: its ciphertext copied into another variable does not decrypt
there, and a ``kms:`` value copied into ``SECRETBOOT_DATA_KEY`` does not
unwrap as a data key. User contexts may not use the ``secretboot:`` keys.

cryptography is imported only when something is sealed or opened.
"""

from __future__ import annotations

import os
import stat
from base64 import b64decode, b64encode
from collections.abc import Callable, Mapping

from secretboot._errors import ConfigurationError, ReferenceSyntaxError, SecretbootError
from secretboot._reference import (
    KMS_PREFIX,
    SEALED_NONCE_SIZE,
    SEALED_OVERHEAD,
    SEALED_VERSION,
    KmsReference,
    SealedReference,
    _base64,
    parse_kms,
)
from secretboot._settings import RESERVED_CONTEXT_PREFIX, reserved_context_keys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DATA_KEY_SIZE = 32  # AES-256
LOCAL_PREFIX = "local:"
_HEADER = bytes([SEALED_VERSION])
_SEALED_AAD = _HEADER + b"secretboot/sealed/"
_DATA_KEY_AAD = _HEADER + b"secretboot/data-key"
_LOCAL_WRAPPED_SIZE = SEALED_OVERHEAD + DATA_KEY_SIZE
_KEY_FILE_MAX = 1024  # a key file is one line of base64; refuse to read anything large
_KEY_FILE_PRIVATE = 0o077  # no permission bit for group or others, as ssh asks of a private key

# The encryption context pair that marks KMS ciphertext as a sealed values' data key. Encryption
# context keys starting with RESERVED_CONTEXT_PREFIX are secretboot's: refused in user contexts.
DATA_KEY_PURPOSE = (RESERVED_CONTEXT_PREFIX + "purpose", "sealed-data-key")


class IntegrityError(SecretbootError):
    """A sealed value or wrapped key did not open. Deliberately says nothing more."""


class WrappedKey:
    """The data key as ``SECRETBOOT_DATA_KEY`` holds it: KMS ciphertext or locally wrapped."""

    __slots__ = ("blob", "provider")

    def __init__(self, provider: str, blob: bytes) -> None:
        self.provider = provider  # "kms" or "local"
        self.blob = blob

    def __str__(self) -> str:
        if self.provider == "kms":
            return str(KmsReference(self.blob))
        return LOCAL_PREFIX + b64encode(self.blob).decode("ascii")

    def __repr__(self) -> str:
        return f"WrappedKey({self.provider}, {len(self.blob)} bytes)"


def parse_data_key(value: str) -> WrappedKey:
    """Parse ``SECRETBOOT_DATA_KEY``; ``ReferenceSyntaxError`` (never the value) if malformed."""
    if value.startswith(KMS_PREFIX):
        return WrappedKey("kms", parse_kms(value).ciphertext)
    if value.startswith(LOCAL_PREFIX):
        blob = _base64(value[len(LOCAL_PREFIX) :], "locally wrapped data key")
        if len(blob) != _LOCAL_WRAPPED_SIZE or blob[:1] != _HEADER:
            raise ReferenceSyntaxError("not a data key wrapped by secretboot keygen's format")
        return WrappedKey("local", blob)
    raise ReferenceSyntaxError("must start with kms: (wrapped by KMS) or local: (wrapped by a key file)")


def data_key_context(context: Mapping[str, str] | None) -> dict[str, str]:
    """The encryption context a ``kms:`` data key is wrapped under: ``context`` (the user's,
    or none) plus ``DATA_KEY_PURPOSE``. ``ValueError`` if ``context`` uses a reserved key."""
    if reserved_context_keys(context):
        raise ValueError(f"encryption context keys starting with {RESERVED_CONTEXT_PREFIX} are reserved")
    key, value = DATA_KEY_PURPOSE
    return {**(context or {}), key: value}


def load_aead() -> None:
    """Import the AEAD module (tens of milliseconds), say while a request is in flight."""
    try:
        import cryptography.exceptions  # noqa: F401 - the import is the point
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401
    except ImportError:
        pass  # aead() reports it where it is needed


def aead(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != DATA_KEY_SIZE:
        raise IntegrityError("key material of the wrong size")
    return AESGCM(key)


def seal(cipher: AESGCM, name: str, plaintext: bytes) -> SealedReference:
    """Seal ``plaintext`` for the variable ``name`` with a fresh random nonce."""
    return seal_with_nonce(cipher, name, plaintext, os.urandom(SEALED_NONCE_SIZE))


def seal_with_nonce(cipher: AESGCM, name: str, plaintext: bytes, nonce: bytes) -> SealedReference:
    """``seal`` with the nonce given: for tests only; a nonce must never repeat under a key."""
    if not plaintext:
        raise ValueError("nothing to seal: the value is empty")
    body = cipher.encrypt(nonce, plaintext, _SEALED_AAD + name.encode("utf-8"))
    return SealedReference(_HEADER + nonce + body)


def open_sealed(cipher: AESGCM, name: str, ref: SealedReference) -> bytes:
    """The plaintext of ``ref`` as sealed for ``name``; ``IntegrityError`` otherwise."""
    return _open(cipher, ref.blob, _SEALED_AAD + name.encode("utf-8"))


def wrap_local(master: bytes, data_key: bytes) -> WrappedKey:
    nonce = os.urandom(SEALED_NONCE_SIZE)
    return WrappedKey("local", _HEADER + nonce + aead(master).encrypt(nonce, data_key, _DATA_KEY_AAD))


def unwrap_local(master: bytes, wrapped: WrappedKey) -> bytes:
    data_key = _open(aead(master), wrapped.blob, _DATA_KEY_AAD)
    if len(data_key) != DATA_KEY_SIZE:
        raise IntegrityError("does not open")
    return data_key


def _open(cipher: AESGCM, blob: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    if len(blob) <= SEALED_OVERHEAD - 1 or blob[:1] != _HEADER:
        raise IntegrityError("does not open")
    nonce, body = blob[1 : 1 + SEALED_NONCE_SIZE], blob[1 + SEALED_NONCE_SIZE :]
    try:
        return cipher.decrypt(nonce, body, aad)
    except InvalidTag:
        raise IntegrityError("does not open") from None


# -- key files (the local key provider) --------------------------------------------------------


def read_key_file(path: str) -> bytes:
    """The 32-byte master key in ``path``; ``ConfigurationError`` naming the path, not the content.

    Like ssh with a private key, refuses a file that group or others may read or write.
    """
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(_KEY_FILE_MAX + 1) if _private(mode) else b""  # unread if not private
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigurationError(f"key file {path!r} cannot be read ({type(exc).__name__})") from None
    if not _private(mode):
        import shlex

        raise ConfigurationError(
            f"key file {path!r} is open to group or others (mode {stat.S_IMODE(mode):04o}); "
            f"a key must be private to its owner: chmod 600 {shlex.quote(path)}"
        )
    try:
        if len(data) > _KEY_FILE_MAX:
            raise ValueError
        key = b64decode(data.strip(), validate=True)
    except ValueError:
        raise ConfigurationError(f"key file {path!r} is not a secretboot key (one line of base64)") from None
    if len(key) != DATA_KEY_SIZE:
        raise ConfigurationError(f"key file {path!r} does not hold a {DATA_KEY_SIZE * 8}-bit key")
    return key


def _private(mode: int) -> bool:
    return os.name == "nt" or not mode & _KEY_FILE_PRIVATE  # Windows has no such mode bits


def write_key_file(path: str, *, force: bool = False, urandom: Callable[[int], bytes] = os.urandom) -> None:
    """Write a new random 256-bit key to ``path``, mode 0600, never over an existing file.

    Refuses a path inside a git work tree (where it may be committed) unless ``force``.
    """
    tree = git_work_tree(path)
    if tree is not None and not force:
        raise ConfigurationError(
            f"{path!r} is inside the git work tree at {tree!r}, where a key can end up committed; "
            "write it elsewhere (say ~/.config/secretboot/) or pass --force"
        )
    line = b64encode(urandom(DATA_KEY_SIZE)) + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        raise ConfigurationError(f"{path!r} already exists; a key is never overwritten") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigurationError(f"{path!r} cannot be created ({type(exc).__name__})") from None
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # whatever the umask
        if os.write(fd, line) != len(line):
            raise OSError("short write")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)  # no half-written key left behind
        raise ConfigurationError(f"{path!r} could not be written ({type(exc).__name__})") from None
    os.close(fd)


def git_work_tree(path: str) -> str | None:
    """The enclosing git work tree of ``path``, if any (a ``.git`` file or folder above it)."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.exists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
