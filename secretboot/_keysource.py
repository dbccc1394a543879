"""Key sources for the data key, as the CLI uses them: make a new one, unwrap an old one.

One class per source with the same methods (sops's keysource idea). bootstrap()
does not use these: it unwraps through the transport (``_sealed``).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from secretboot import _envelope as e
from secretboot import _transport as t

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from secretboot._boto3 import Boto3Admin

    class KeySource(Protocol):
        def new(self) -> tuple[bytes, e.WrappedKey]:
            """A fresh data key: (plaintext, wrapped), checked to unwrap again."""
            ...

        def unwrap(self, wrapped: e.WrappedKey) -> bytes:
            """The plaintext data key; ``TransportError`` or ``IntegrityError`` if it will not."""
            ...

        def describe(self) -> str:
            """What wraps the key, for output: a key ARN or a file path."""
            ...


class KmsKeySource:
    """``GenerateDataKey`` and ``Decrypt`` under one KMS key and encryption context."""

    def __init__(self, admin: Boto3Admin, key_id: str | None, context: Mapping[str, str] | None) -> None:
        self._admin = admin
        self._key_id = key_id
        self._context = context
        self._key_arn = ""

    def new(self) -> tuple[bytes, e.WrappedKey]:
        if self._key_id is None:
            raise ValueError("a new KMS data key needs a key id")
        data_key, blob = self._admin.generate_data_key(key_id=self._key_id, context=self._context)
        wrapped = e.WrappedKey("kms", blob)
        # Verify before anything is written, as migrate does.
        if not hmac.compare_digest(self.unwrap(wrapped), data_key):
            raise t.TransportError("VerificationFailed", "the new data key did not decrypt back to itself")
        return data_key, wrapped

    def unwrap(self, wrapped: e.WrappedKey) -> bytes:
        data_key, self._key_arn = self._admin.decrypt(
            wrapped.blob, context=self._context, key_id=self._key_id
        )
        return data_key

    @property
    def key_arn(self) -> str:
        """The key that wrapped the last data key seen: to reseal under the same key."""
        return self._key_arn

    def describe(self) -> str:
        return f"KMS key {self._key_arn or self._key_id}"


class LocalKeySource:
    """A 256-bit master key in a file (``secretboot keygen``): no AWS at all."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._master = e.read_key_file(path)

    def new(self) -> tuple[bytes, e.WrappedKey]:
        data_key = os.urandom(e.DATA_KEY_SIZE)
        wrapped = e.wrap_local(self._master, data_key)
        if not hmac.compare_digest(self.unwrap(wrapped), data_key):
            raise e.IntegrityError("the new data key did not unwrap to itself")
        return data_key, wrapped

    def unwrap(self, wrapped: e.WrappedKey) -> bytes:
        return e.unwrap_local(self._master, wrapped)

    def describe(self) -> str:
        return f"key file {self.path}"
