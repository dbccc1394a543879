"""Secrets Manager source: ``BatchGetSecretValue`` (at most 20 ids a call) for current
versions, ``GetSecretValue`` for a version stage or id; JSON keys picked out locally.

Current versions are those labelled ``AWSCURRENT``, so a rotation is seen by the first
resolution after its last step; ``AWSPENDING`` is never asked for (see docs/reference-syntax.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial

from secretboot import _transport as t
from secretboot._errors import Failure
from secretboot._outcome import Outcome, Task, decode
from secretboot._reference import SecretsManagerReference
from secretboot._settings import SECRETS_MANAGER_PATHS, allowed

BATCH_SIZE = 20  # the API's limit on SecretIdList
# Rotation moves AWSPREVIOUS to the version AWSCURRENT leaves. Current versions are read
# without a stage (AWSCURRENT); AWSPENDING cannot be asked for (the reference refuses it).
PREVIOUS_STAGE = "AWSPREVIOUS"

_DETAILS = {
    t.NOT_FOUND: "no such secret, version or stage (or not visible to these credentials)",
    t.ACCESS_DENIED: "not allowed to call secretsmanager:GetSecretValue on this secret",
}

# The variables reading one secret: variable -> its reference (which may name a JSON key).
_Readers = Mapping[str, SecretsManagerReference]


class SecretsManagerResolver:
    def __init__(self, transport: t.Transport, allowlist: tuple[str, ...] | None = None) -> None:
        self._transport = transport
        # SECRETBOOT_SECRETS_MANAGER_PATHS, checked again against the name AWS returns: an
        # ARN's last six characters may be the random suffix or part of the name, and
        # only the answer tells which.
        self._allowlist = allowlist

    def plan(self, refs: _Readers) -> list[Task]:
        """Current versions in batches of distinct ids; each pinned version on its own."""
        current: dict[str, dict[str, SecretsManagerReference]] = {}
        pinned: dict[tuple[str, str | None, str | None], dict[str, SecretsManagerReference]] = {}
        for variable, ref in refs.items():
            if ref.current:
                current.setdefault(ref.secret_id, {})[variable] = ref
            else:
                key = (ref.secret_id, ref.version_stage, ref.version_id)
                pinned.setdefault(key, {})[variable] = ref
        ids = list(current)
        tasks = []
        for start in range(0, len(ids), BATCH_SIZE):
            chunk = {i: current[i] for i in ids[start : start + BATCH_SIZE]}
            readers = {v: ref for group in chunk.values() for v, ref in group.items()}
            tasks.append(Task(readers, partial(self._batch, chunk)))
        tasks += [Task(readers, partial(self._single, readers)) for readers in pinned.values()]
        return tasks

    def _batch(self, chunk: Mapping[str, _Readers]) -> Outcome:
        outcome = Outcome()
        outcome.calls["secretsmanager"] += 1
        try:
            answer = self._transport.get_secret_values(list(chunk))
        except t.TransportError as exc:
            if exc.reason == t.ACCESS_DENIED:
                # Many roles grant only GetSecretValue: read each secret alone,
                # which also names exactly the denied ones.
                for readers in chunk.values():
                    outcome.merge(self._single(readers))
                return outcome
            for readers in chunk.values():
                _fail(outcome, readers, exc.reason, _DETAILS.get(exc.reason, exc.detail))
            return outcome
        errors = {error.secret_id: error for error in answer.errors}
        for secret_id, readers in chunk.items():
            secret = next((s for s in answer.found if _answers(s, secret_id)), None)
            if secret is not None:
                self._extract(outcome, secret, readers)
            elif secret_id in errors:
                error = errors[secret_id]
                _fail(outcome, readers, error.reason, _DETAILS.get(error.reason, error.detail))
            else:
                # Neither returned nor reported: fail rather than drop the variable.
                _fail(outcome, readers, t.SERVICE_ERROR, "the answer did not include this secret")
        return outcome

    def _single(self, readers: _Readers) -> Outcome:
        outcome = Outcome()
        outcome.calls["secretsmanager"] += 1
        ref = next(iter(readers.values()))
        try:
            secret = self._transport.get_secret_value(
                ref.secret_id, version_stage=ref.version_stage, version_id=ref.version_id
            )
        except t.TransportError as exc:
            detail = _DETAILS.get(exc.reason, exc.detail)
            if exc.reason == t.NOT_FOUND and ref.version_stage == PREVIOUS_STAGE:
                detail += "; a secret has an AWSPREVIOUS version only once it has been rotated"
            _fail(outcome, readers, exc.reason, detail)
            return outcome
        self._extract(outcome, secret, readers)
        return outcome

    def _extract(self, outcome: Outcome, secret: t.Secret, readers: _Readers) -> None:
        if self._allowlist is not None and not allowed(secret.name, self._allowlist):
            _fail(outcome, readers, "NotAllowed", f"the secret's name is outside {SECRETS_MANAGER_PATHS}")
            return
        _read_values(outcome, secret, readers)


def _answers(secret: t.Secret, secret_id: str) -> bool:
    """Is ``secret`` the answer for ``secret_id``: its name, its ARN, or its ARN less the suffix?"""
    if secret_id in (secret.name, secret.arn):
        return True
    # A partial ARN leaves out the "-" and six random characters Secrets Manager appends.
    return secret_id.startswith("arn:") and secret.arn[:-7] == secret_id and secret.arn[-7:-6] == "-"


def _read_values(outcome: Outcome, secret: t.Secret, readers: _Readers) -> None:
    """Each reader's value: the whole secret, or its JSON key."""
    for variable, ref in readers.items():
        if ref.json_key is None:
            if secret.string is not None:
                outcome.values[variable] = secret.string
            else:
                decode(outcome, secret.binary or b"", [variable])
            continue
        if secret.string is None:
            _fail(outcome, {variable: ref}, "NotJson", "the secret is binary; drop '#KEY' to read it whole")
            continue
        # Each failure below is this variable's alone: other variables reading the secret,
        # and the other secrets of the batch, still resolve. No detail quotes the value,
        # and nothing is raised (an exception's arguments could hold the data).
        document, problem = _document(secret.string)
        if document is None:
            _fail(outcome, {variable: ref}, *problem)
            continue
        if ref.json_key not in document:
            _fail(outcome, {variable: ref}, "JsonKeyNotFound", f"the secret has no JSON key {ref.json_key!r}")
            continue
        value = document[ref.json_key]
        if isinstance(value, str):  # a string, or a number as written
            outcome.values[variable] = str(value)
            continue
        text, problem = _as_json_text(secret.string, ref.json_key)
        if text is None:
            _fail(outcome, {variable: ref}, *problem)
        else:
            outcome.values[variable] = text


INVALID_JSON = "InvalidJson"
_NOT_AN_OBJECT = ("NotJson", "the secret is not a JSON object; drop the JSON key")
_TOO_DEEP = (INVALID_JSON, "the secret's JSON is nested too deeply to read")
_TOO_LONG = (INVALID_JSON, "the secret's JSON has a number too long to read")
_OUT_OF_RANGE = ("NotJson", "the value holds a number out of range")


def _document(text: str) -> tuple[dict[str, object] | None, tuple[str, str]]:
    """The JSON object in ``text``, numbers kept as written; or (None, (reason, detail))."""
    try:
        # NaN and Infinity are not JSON.
        document = json.loads(text, parse_float=_Number, parse_int=_Number, parse_constant=_nan)
    except RecursionError:  # caught here, so the error never leaves with the text in its frames
        return None, _TOO_DEEP
    except ValueError:
        return None, _NOT_AN_OBJECT
    return (document, ("", "")) if isinstance(document, dict) else (None, _NOT_AN_OBJECT)


def _as_json_text(text: str, key: str) -> tuple[str | None, tuple[str, str]]:
    """True, false, null, an object or a list under ``key``: as strict JSON text, numbers as numbers.

    Returns (text, ("", "")) or (None, (reason, detail)).
    """
    try:
        plain = json.loads(text)[key]
    except RecursionError:
        return None, _TOO_DEEP
    except ValueError:  # int() refuses more digits than sys.get_int_max_str_digits() (4300)
        return None, _TOO_LONG
    try:
        return json.dumps(plain, ensure_ascii=False, allow_nan=False), ("", "")
    except RecursionError:
        return None, _TOO_DEEP
    except ValueError:  # a number too large for a float (1e400) inside an object or list
        return None, _OUT_OF_RANGE


class _Number(str):
    """A JSON number, as the text it was written as."""


def _nan(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _fail(outcome: Outcome, readers: _Readers, reason: str, detail: str) -> None:
    outcome.failures.extend(Failure(v, ref.kind, ref.target, reason, detail) for v, ref in readers.items())
