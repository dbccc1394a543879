"""KMS source: one ``Decrypt`` per distinct ciphertext."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from secretboot import _transport as t
from secretboot._errors import Failure
from secretboot._outcome import Outcome, Task, decode
from secretboot._reference import KmsReference
from secretboot._settings import KMS_CONTEXT, RESERVED_CONTEXT_PREFIX, KmsSettings

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
            for v in variables:
                fix = how_to_fix(v, self._settings.contexts) if exc.reason == t.INVALID_CIPHERTEXT else ""
                outcome.failures.append(Failure(v, ref.kind, ref.target, exc.reason, detail + fix))
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
    """What a failed ``Decrypt`` means, naming the contexts tried (see ``describe_context``)."""
    detail = _DETAILS.get(exc.reason, exc.detail)
    if exc.reason == t.INVALID_CIPHERTEXT:
        detail += f" (tried {' then '.join(describe_context(c) for c in settings.contexts)})"
    return detail


# The one context key whose value is shown: a Lambda function's name is no secret, and it is
# the value most often wrong (a function renamed, a value copied from another function).
LAMBDA_CONTEXT_KEY = "LambdaFunctionName"


def describe_context(context: Mapping[str, str] | None) -> str:
    """``context`` as JSON-like text for an error message.

    Values are shown for ``LambdaFunctionName`` and for secretboot's own reserved keys (fixed
    words); any other value came from ``SECRETBOOT_KMS_CONTEXT`` or an option and may be
    something its owner would not print, so only its key is named.
    """
    if not context:
        return "no context"
    pairs = []
    for key in sorted(context):
        shown = key == LAMBDA_CONTEXT_KEY or key.startswith(RESERVED_CONTEXT_PREFIX)
        pairs.append(f"{_quoted(key)}: {_quoted(context[key]) if shown else '(value not shown)'}")
    return "{" + ", ".join(pairs) + "}"


def how_to_fix(variable: str, contexts: Sequence[Mapping[str, str] | None]) -> str:
    """What to do about ``variable``'s ciphertext not decrypting under ``contexts``."""
    tried = next((c for c in contexts if c), None)  # the context secretboot uses, if any
    if tried is None:
        options = ""
        other = (
            f"set {KMS_CONTEXT} to it as JSON (the Lambda console's helpers use "
            f'{{"{LAMBDA_CONTEXT_KEY}": "<function name>"}})'
        )
    else:
        if set(tried) == {LAMBDA_CONTEXT_KEY}:
            options = f" --lambda-function {tried[LAMBDA_CONTEXT_KEY]}"
        else:
            options = "".join(
                f" --context {k}={tried[k] if k == LAMBDA_CONTEXT_KEY else 'VALUE'}" for k in sorted(tried)
            )
        other = f"set {KMS_CONTEXT} to that context as JSON"
    return (
        f". To fix: if {variable} was encrypted under another context, {other}; or encrypt it again "
        f"under the one secretboot uses here: secretboot migrate {variable} --key-id KEY{options} "
        f"(from the plaintext), or secretboot rotate {variable} --key-id KEY{options} "
        "--source-context K=V (from the old context)"
    )


def _quoted(text: str) -> str:
    import json  # already imported by whichever transport made the call

    return json.dumps(text, ensure_ascii=False)
