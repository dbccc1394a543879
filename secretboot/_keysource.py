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
from secretboot._errors import VerificationError

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
    """``GenerateDataKey`` and ``Decrypt`` under one KMS key and encryption context.

    The data key's context is the user's ``context`` plus the reserved pair
    (``envelope.data_key_context``), which no ordinary ``kms:`` value is decrypted with.
    ``old_form``: ``unwrap`` also accepts a data key wrapped under ``context`` alone, as
    secretboot wrapped them before the reserved pair; only ``reseal`` (which migrates them)
    asks for it, and ``was_old_form`` then says whether the last unwrap needed it.
    """

    def __init__(
        self,
        admin: Boto3Admin,
        key_id: str | None,
        context: Mapping[str, str] | None,
        *,
        old_form: bool = False,
    ) -> None:
        self._admin = admin
        self._key_id = key_id
        self._context = context
        self._wrapping = e.data_key_context(context)
        self._old_form = old_form
        self._key_arn = ""
        self.was_old_form = False

    def new(self) -> tuple[bytes, e.WrappedKey]:
        if self._key_id is None:
            raise ValueError("a new KMS data key needs a key id")
        data_key, blob = self._admin.generate_data_key(key_id=self._key_id, context=self._wrapping)
        wrapped = e.WrappedKey("kms", blob)
        # Verify before anything is written, as migrate does.
        if not hmac.compare_digest(self.unwrap(wrapped), data_key):
            raise VerificationError("the new data key did not decrypt back to itself")
        return data_key, wrapped

    def unwrap(self, wrapped: e.WrappedKey) -> bytes:
        self.was_old_form = False
        try:
            return self._decrypt(wrapped, self._wrapping)
        except t.TransportError as exc:
            if not self._old_form or exc.reason != t.INVALID_CIPHERTEXT:
                raise
        data_key = self._decrypt(wrapped, self._context)  # outside the except: no chained error
        self.was_old_form = True
        return data_key

    def _decrypt(self, wrapped: e.WrappedKey, context: Mapping[str, str] | None) -> bytes:
        data_key, self._key_arn = self._admin.decrypt(wrapped.blob, context=context, key_id=self._key_id)
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
