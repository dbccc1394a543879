"""KMS source: one ``Decrypt`` per distinct ciphertext."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from secretboot import _transport as t
from secretboot._errors import Failure
from secretboot._outcome import Outcome, Task, decode
from secretboot._reference import KmsReference
from secretboot._settings import KmsSettings

_DETAILS = {
    t.INVALID_CIPHERTEXT: "wrong encryption context, wrong key, or damaged ciphertext",
    t.ACCESS_DENIED: "not allowed to use the key for kms:Decrypt",
    t.INCORRECT_KEY: "the ciphertext was not encrypted under SECRETBOOT_KMS_KEY_ID",
    t.KEY_UNAVAILABLE: "the key is disabled, pending deletion, or unavailable",
}


class KmsResolver:
    def __init__(self, transport: t.Transport, settings: KmsSettings) -> None:
        self._transport = transport
        self._settings = settings

    def plan(self, refs: Mapping[str, KmsReference]) -> list[Task]:
        """One task per distinct ciphertext; variables sharing one share its call."""
        by_blob: dict[KmsReference, list[str]] = {}
        for variable, ref in refs.items():
            by_blob.setdefault(ref, []).append(variable)
        return [
            Task(dict.fromkeys(names, ref), partial(self._decrypt, ref, names))
            for ref, names in by_blob.items()
        ]

    def _decrypt(self, ref: KmsReference, variables: Sequence[str]) -> Outcome:
        outcome = Outcome()
        try:
            plaintext, key_arn = decrypt(self._transport, self._settings, ref.ciphertext, outcome)
        except t.TransportError as exc:
            detail = failure_detail(exc, self._settings)
            outcome.failures.extend(Failure(v, ref.kind, ref.target, exc.reason, detail) for v in variables)
            return outcome
        decode(outcome, plaintext, variables)
        for variable in variables:
            outcome.key_ids[variable] = key_arn
        return outcome


def decrypt(
    transport: t.Transport, settings: KmsSettings, ciphertext: bytes, outcome: Outcome
) -> tuple[bytes, str]:
    """``Decrypt`` with each configured context in turn; counts calls in ``outcome``.

    Returns (plaintext, key ARN); raises the last ``TransportError``.
    """
    contexts = settings.contexts
    for attempt, context in enumerate(contexts, 1):
        outcome.calls["kms"] += 1
        try:
            return transport.decrypt(ciphertext, context=context, key_id=settings.key_id)
        except t.TransportError as exc:
            # Only a context mismatch is worth another try without it.
            if exc.reason != t.INVALID_CIPHERTEXT or attempt == len(contexts):
                raise
    raise AssertionError("unreachable")


def failure_detail(exc: t.TransportError, settings: KmsSettings) -> str:
    """What a failed ``Decrypt`` means, naming the contexts tried by their keys only."""
    detail = _DETAILS.get(exc.reason, exc.detail)
    if exc.reason == t.INVALID_CIPHERTEXT:
        detail += f" (tried {_describe(settings.contexts)})"
    return detail


def _describe(contexts: Sequence[Mapping[str, str] | None]) -> str:
    parts = [
        "encryption context with keys " + ", ".join(sorted(c)) if c else "no encryption context"
        for c in contexts
    ]
    return " then ".join(parts)
