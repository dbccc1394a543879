"""What the CLI's commands do, as library functions: wrap and verify, store and read back,
seal and verify, choose and open the data key's source, move a Lambda function's variable.

Each result is checked before it is returned (a round trip through KMS, SSM or AES-GCM), so
nothing unverified is ever written. Nothing here prints: output is the CLI's business.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from secretboot import _envelope as envelope
from secretboot import _transport as t
from secretboot._envfile import EnvFile
from secretboot._errors import InputError, ReferenceSyntaxError, VerificationError
from secretboot._keysource import KmsKeySource, LocalKeySource
from secretboot._reference import (
    SEALED_MAX_BLOB,
    SEALED_OVERHEAD,
    KmsReference,
    SealedReference,
    SsmReference,
    is_reference,
    parse_reference,
)
from secretboot._settings import DATA_KEY, LOCAL_KEY_FILE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from secretboot._boto3 import Boto3Admin

KMS_PLAINTEXT_LIMIT = 4096  # bytes KMS Encrypt accepts
SEALED_MAX_PLAINTEXT = SEALED_MAX_BLOB - SEALED_OVERHEAD
# Lambda measures a function's variables as one compact JSON object and refuses more than
# 4 KB; its refusal quotes that whole object, every value included, so we measure first.
LAMBDA_ENVIRONMENT_LIMIT = 4096
# Lambda's answers when the function is not as it was read: a newer revision, an update under way.
_CHANGED_MEANWHILE = {
    "PreconditionFailedException": "changed after it was read (a deploy or another migrate?)",
    "ResourceConflictException": "is being updated (a deploy in progress?)",
}


def refuse_expansion(env_file: EnvFile, name: str, what: str, *, own: bool = True) -> None:
    """bootstrap() reads .env files with python-dotenv's ${VAR} expansion, before resolving:
    a protected value that uses it, or that others expand, would reach the app changed."""
    if own and env_file.expands(name):
        raise InputError(
            f"{name} in {env_file.path} uses ${{VAR}} expansion, which {what} would freeze as the "
            "literal text; write the value out in full first"
        )
    users = env_file.expanded_in(name)
    if users:
        raise InputError(
            f"{name} is expanded into {', '.join(users)} as ${{{name}}}, which {what} would turn "
            "into ciphertext there"
        )


def check_plaintext(name: str, plaintext: str, *, to_ssm: bool, ssm_option: str) -> None:
    size = len(plaintext.encode("utf-8"))
    if size == 0:
        raise InputError(f"{name} is empty; there is nothing to protect")
    if not to_ssm and size > KMS_PLAINTEXT_LIMIT:
        raise InputError(
            f"{name} is {size} bytes; KMS encrypts at most {KMS_PLAINTEXT_LIMIT}. Store it in SSM "
            f"instead ({ssm_option}) or seal it (secretboot seal: envelope encryption, up to 1 MiB)"
        )


def fresh_key() -> str:
    """A new 32-byte key as URL-safe base64: what ``--rotate`` puts in place of the old one."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def wrap(
    admin: Boto3Admin, name: str, plaintext: str, *, key_id: str, context: Mapping[str, str] | None
) -> str:
    """``kms:<base64>`` for ``plaintext``, decrypted again and compared (constant time) first."""
    data = plaintext.encode("utf-8")
    blob = admin.encrypt(data, key_id=key_id, context=context)
    roundtrip, _ = admin.decrypt(blob, context=context, key_id=key_id)
    if not hmac.compare_digest(roundtrip, data):
        raise VerificationError(f"{name}: decrypting the new ciphertext did not give it back")
    return str(KmsReference(blob))


def store_in_ssm(admin: Boto3Admin, param: str, plaintext: str, *, key_id: str, overwrite: bool) -> str:
    """Store ``plaintext`` as a SecureString, read it back and compare; returns ``ssm:PARAM``."""
    reference = SsmReference(param)  # the name must be one bootstrap() can read back
    admin.put_secure_string(param, plaintext, key_id=key_id, overwrite=overwrite)
    answer = admin.get_parameters([param])
    stored = next((p.value for p in answer.found), None)
    if stored is None or not hmac.compare_digest(stored.encode(), plaintext.encode()):
        raise VerificationError(f"{param}: reading the parameter back did not give it back")
    return str(reference)


def summary(value: str) -> str:
    """What a reference is, without its ciphertext."""
    ref = parse_reference(value)
    if isinstance(ref, KmsReference):
        return f"kms (KMS ciphertext, {len(ref.ciphertext)} bytes)"
    return value  # ssm:PARAM names the parameter: not a secret


def describe_context(context: Mapping[str, str] | None) -> str:
    if not context:
        return "no encryption context"
    return "encryption context " + ", ".join(f"{k}={v}" for k, v in context.items())


# -- sealed values ----------------------------------------------------------------------------


def data_key(env_file: EnvFile) -> envelope.WrappedKey | None:
    """The wrapped data key in ``env_file``, if it has one."""
    raw = env_file.get(DATA_KEY)
    if raw is None:
        return None
    try:
        return envelope.parse_data_key(raw)
    except ReferenceSyntaxError as exc:
        raise InputError(f"{DATA_KEY} in {env_file.path}: {exc.reason}") from None


def configured_key_file(env_file: EnvFile) -> str | None:
    """The key file the app is set up with: ``$SECRETBOOT_LOCAL_KEY_FILE``, here or in the file."""
    return os.environ.get(LOCAL_KEY_FILE) or env_file.get(LOCAL_KEY_FILE) or None


def key_source(
    admin: Callable[[], Boto3Admin],
    context: Mapping[str, str] | None,
    *,
    key_id: str | None,
    key_file: str | None,
    provider: str | None,
    old: bool = False,
) -> KmsKeySource | LocalKeySource:
    """The key source for ``provider`` (``None``: a key file if no ``key_id``).

    ``old``: the source of the current data key, which also opens the form from before the
    reserved context pair (reseal migrates it). ``admin`` is called only for a KMS source.
    """
    if provider == "local" or (provider is None and not key_id):
        if not key_file:
            raise InputError(
                f"the data key is wrapped by a key file: set {LOCAL_KEY_FILE} or --local-key-file"
            )
        return LocalKeySource(key_file)
    if old:
        return KmsKeySource(admin(), None, context, old_form=True)
    return KmsKeySource(admin(), key_id, context)


def unwrap(source: KmsKeySource | LocalKeySource, wrapped: envelope.WrappedKey, env_file: EnvFile) -> bytes:
    try:
        return source.unwrap(wrapped)
    except envelope.IntegrityError:
        raise InputError(f"{DATA_KEY} in {env_file.path} does not open with {source.describe()}") from None
    except t.TransportError as exc:
        if exc.reason != t.INVALID_CIPHERTEXT:
            raise
        raise t.TransportError(
            exc.reason,
            f"{DATA_KEY} in {env_file.path} did not decrypt: pass the --context or --lambda-function "
            "it was sealed with (a data key wrapped by an older secretboot, without the "
            f"{envelope.DATA_KEY_PURPOSE[0]} context pair, must first be migrated: secretboot reseal)",
        ) from None


def plain(env_file: EnvFile, name: str) -> bytes:
    """``name``'s value in ``env_file`` as bytes to seal, if it fits in a sealed value."""
    plaintext = (env_file.get(name) or "").encode("utf-8")
    if len(plaintext) > SEALED_MAX_PLAINTEXT:
        raise InputError(
            f"{name} is {len(plaintext)} bytes; a sealed value holds at most {SEALED_MAX_PLAINTEXT}"
        )
    return plaintext


def sealed_values(cipher: AESGCM, plaintexts: Mapping[str, bytes]) -> dict[str, str]:
    """Seal each value for its name, and open it again before anything is written."""
    sealed = {}
    for name, plaintext in plaintexts.items():
        ref = envelope.seal(cipher, name, plaintext)
        if not hmac.compare_digest(envelope.open_sealed(cipher, name, ref), plaintext):
            raise VerificationError(f"{name}: the sealed value did not open to itself")
        sealed[name] = str(ref)
    return sealed


def open_sealed(cipher: AESGCM, name: str, ref: SealedReference, env_file: EnvFile) -> bytes:
    try:
        return envelope.open_sealed(cipher, name, ref)
    except envelope.IntegrityError:
        raise InputError(
            f"{name} in {env_file.path} does not open with {DATA_KEY} (edited, copied from another "
            "variable, or sealed under another data key); nothing was changed"
        ) from None


# -- a Lambda function's environment ----------------------------------------------------------


@dataclass(frozen=True)
class FunctionMigration:
    """What ``migrate_function`` did: which variables now hold what (summaries, no values)."""

    function: str
    changed: dict[str, str]  # variable -> summary of its new value
    size: int  # bytes of the function's environment afterwards, as Lambda measures it
    already: str | None = None  # the reference kind NAME already held: nothing was changed


def environment_size(variables: Mapping[str, str]) -> int:
    """The size Lambda checks against its 4 KB: the variables as one compact JSON object.

    Non-ASCII text counts as its ``\\u`` escapes, the larger of the two ways Lambda may count it.
    """
    return len(json.dumps(dict(variables), separators=(",", ":")))


def migrate_function(
    admin: Boto3Admin,
    function: str,
    name: str,
    *,
    key_id: str,
    rotate: bool = False,
    to_ssm: str | None = None,
    overwrite: bool = False,
) -> FunctionMigration:
    """Wrap ``name`` in Lambda ``function``'s own environment, in place.

    Reads the function's configuration, wraps ``name`` under ``LambdaFunctionName=function``
    (the context bootstrap() tries there), or stores it in SSM with ``to_ssm``, and writes the
    environment back with the revision it read: a change made in between makes Lambda refuse
    the write (``PreconditionFailedException``) rather than lose that change. Every other
    variable is written back exactly as read. ``rotate``: ``name`` gets a fresh 32-byte key
    and the old value is kept, wrapped, as ``name_FALLBACK``.
    """
    variables, revision = admin.function_environment(function)
    plaintext = variables.get(name)
    where = f"{function}'s environment"
    if plaintext is None:
        raise InputError(f"{name} is not set in {where}")
    if is_reference(plaintext):
        ref = parse_reference(plaintext, variable=name)
        return FunctionMigration(function, {}, environment_size(variables), ref.kind if ref else "reference")
    fallback = f"{name}_FALLBACK"
    if rotate and to_ssm:
        raise InputError("--rotate wraps both keys with KMS; it cannot be combined with --to-ssm")
    if rotate and fallback in variables:
        raise InputError(f"{fallback} is already set in {where}; remove it first")
    check_plaintext(name, plaintext, to_ssm=bool(to_ssm), ssm_option="--to-ssm PARAM")
    context = {"LambdaFunctionName": function}
    updates: dict[str, str] = {}
    if to_ssm:
        updates[name] = store_in_ssm(admin, to_ssm, plaintext, key_id=key_id, overwrite=overwrite)
    elif rotate:
        updates[name] = wrap(admin, name, fresh_key(), key_id=key_id, context=context)
        updates[fallback] = wrap(admin, fallback, plaintext, key_id=key_id, context=context)
    else:
        updates[name] = wrap(admin, name, plaintext, key_id=key_id, context=context)
    new = {**variables, **updates}  # the same order, the other values untouched
    size = environment_size(new)
    if size > LAMBDA_ENVIRONMENT_LIMIT:
        raise InputError(
            f"{where} would be {size} bytes with {' and '.join(updates)} wrapped (KMS adds about 150 "
            f"bytes a value); Lambda allows {LAMBDA_ENVIRONMENT_LIMIT}. Nothing was changed. Store it "
            "in SSM instead (--to-ssm PARAM), or move other variables out of the function"
        )
    try:
        admin.update_function_environment(function, new, revision=revision)
        refused = None
    except t.TransportError as exc:
        if exc.reason not in _CHANGED_MEANWHILE:
            raise
        refused = exc.reason
    if refused is not None:  # raised outside the except block: its context held the request
        again = f"; {to_ssm} is stored already: run again with --overwrite" if to_ssm else ": run again"
        raise t.TransportError(
            refused, f"{function} {_CHANGED_MEANWHILE[refused]}; nothing was written to it{again}"
        )
    after, _ = admin.function_environment(function)
    if not all(hmac.compare_digest(after.get(k, "").encode(), v.encode()) for k, v in updates.items()):
        raise VerificationError(f"{where}: reading it back did not give the values just written")
    return FunctionMigration(function, {k: summary(v) for k, v in updates.items()}, size)
