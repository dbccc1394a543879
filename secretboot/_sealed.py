"""Sealed values: unwrap the data key once (one KMS call, or a key file), open each locally."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from secretboot import _envelope as e
from secretboot import _kms
from secretboot import _transport as t
from secretboot._errors import ConfigurationError, Failure, ReferenceSyntaxError
from secretboot._outcome import Outcome, Task, decode
from secretboot._reference import SealedReference
from secretboot._settings import DATA_KEY, LOCAL_KEY_FILE, KmsSettings, Settings

_INTEGRITY = "Integrity"
_INTEGRITY_DETAIL = (
    f"does not open with the data key in {DATA_KEY} "
    "(edited, truncated, copied from another variable, or sealed under another data key)"
)


# No fallback here: a data key wrapped without the reserved pair is migrated by the CLI.
_OLD_FORM_HINT = (
    f"; a data key wrapped by an older secretboot (without the {e.DATA_KEY_PURPOSE[0]} "
    "context pair) no longer opens: run `secretboot reseal` to migrate it"
)


class _DataKeyError(Exception):
    """The data key could not be had: every sealed value fails with this reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class SealedResolver:
    def __init__(self, transport: t.Transport, settings: Settings) -> None:
        self._transport = transport
        self._settings = settings

    def plan(self, refs: Mapping[str, SealedReference]) -> list[Task]:
        """One task: a single unwrap of the data key serves every sealed value."""
        return [Task(refs, lambda: self._open_all(refs))]

    def _open_all(self, refs: Mapping[str, SealedReference]) -> Outcome:
        outcome = Outcome()
        # Importing cryptography takes about as long as the KMS round trip: do it meanwhile.
        warm = threading.Thread(target=e.load_aead, name="secretboot-aead", daemon=True)
        warm.start()
        try:
            data_key = self._data_key(outcome)
        except _DataKeyError as exc:
            warm.join()
            outcome.failures.extend(
                Failure(v, ref.kind, ref.target, exc.reason, exc.detail) for v, ref in refs.items()
            )
            return outcome
        warm.join()
        try:
            cipher = e.aead(data_key)
        except e.IntegrityError:
            detail = f"the data key in {DATA_KEY} unwrapped to key material of the wrong size"
            outcome.failures.extend(
                Failure(v, ref.kind, ref.target, _INTEGRITY, detail) for v, ref in refs.items()
            )
            return outcome
        # The plaintext data key is now held only inside ``cipher``, dropped on return.
        for variable, ref in refs.items():
            try:
                plaintext = e.open_sealed(cipher, variable, ref)
            except e.IntegrityError:
                failure = Failure(variable, ref.kind, ref.target, _INTEGRITY, _INTEGRITY_DETAIL)
                outcome.failures.append(failure)
                continue
            decode(outcome, plaintext, [variable])
        return outcome

    def _data_key(self, outcome: Outcome) -> bytes:
        raw = self._settings.data_key
        if raw is None:
            raise _DataKeyError("Missing", f"{DATA_KEY} is not set; sealed values need their data key")
        try:
            wrapped = e.parse_data_key(raw)
        except ReferenceSyntaxError as exc:
            raise _DataKeyError("Malformed", f"{DATA_KEY} {exc.reason}") from None
        if wrapped.provider == "kms":
            # The data key's contexts are the ordinary ones plus the reserved pair, which no
            # ordinary kms: value is decrypted with: its ciphertext opens nowhere else.
            user = self._settings.kms
            kms = KmsSettings(tuple(e.data_key_context(c) for c in user.contexts), user.key_id)
            try:
                return _kms.decrypt(self._transport, kms, wrapped.blob, outcome)[0]
            except t.TransportError as exc:
                detail = _kms.failure_detail(exc, kms)
                if exc.reason == t.INVALID_CIPHERTEXT:
                    detail += _OLD_FORM_HINT
                raise _DataKeyError(exc.reason, f"the data key in {DATA_KEY}: {detail}") from None
        path = self._settings.local_key_file
        if path is None:
            raise _DataKeyError("Missing", f"{DATA_KEY} is local: but {LOCAL_KEY_FILE} is not set")
        try:
            return e.unwrap_local(e.read_key_file(path), wrapped)
        except ConfigurationError as exc:
            raise _DataKeyError("KeyFile", f"{LOCAL_KEY_FILE}: {exc}") from None
        except e.IntegrityError:
            detail = f"the data key in {DATA_KEY} does not open with the key in {LOCAL_KEY_FILE}"
            raise _DataKeyError(_INTEGRITY, detail) from None
