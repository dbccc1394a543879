"""Sealed values (envelope encryption): the format, bootstrap() over real HTTP, failures, key files.

A sealed value is ``sealed:`` + base64 of ``0x01 | nonce | AES-256-GCM(data key, plaintext, aad)``
with the variable's name in the AAD; the data key is in ``SECRETBOOT_DATA_KEY``, wrapped by KMS
(``kms:``) or by a local key file (``local:``). Integration tests use ``aws_env`` and so run on
both transports; the local-provider tests need no AWS at all.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import secretboot
from secretboot import BootstrapError, ConfigurationError, SealedReference, parse_reference
from secretboot import _envelope as e
from secretboot._settings import DATA_KEY, LOCAL_KEY_FILE
from tests.awsproxy import AwsProxy

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Distinctive plaintexts: any appearance in a message or a log line is a leak.
PLAIN = {
    "DB_PASSWORD": "canary-sealed-db-Qx71 #=ünï",
    "API_TOKEN": "canary-sealed-api-Lm42",
    "SIGNING_KEY": "canary-sealed-sig-Vt09 ✓ 鍵",
}
# Larger than anything KMS Encrypt takes (4096 bytes): a PEM-like bundle and a JSON document.
PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    + "\n".join(base64.b64encode(bytes((i * 7 + j) % 256 for j in range(48))).decode() for i in range(200))
    + "\n-----END CERTIFICATE-----\n"
)
DOCUMENT = json.dumps({"canary": "canary-sealed-json-Hk55", "pad": "x" * 3000, "ünï": "ñ✓"})
SEALED_AAD = b"\x01secretboot/sealed/"
DATA_KEY_AAD = b"\x01secretboot/data-key"


# -- helpers ----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def windows(text: str, size: int, stride: int) -> list[str]:
    return [text[i : i + size] for i in range(0, max(len(text) - size, 0) + 1, stride)]


def byte_needles(data: bytes) -> list[str]:
    """``data`` as it could show up in text, whole or in part: hex, base64 (every alignment, std
    and urlsafe) and repr, as runs of 16 characters or more."""
    needles = [repr(data)[2:-1][:32], *windows(data.hex(), 24, 8)]
    for offset in range(3):
        encoded = b64(b"\0" * offset + data)
        core = encoded[4 if offset else 0 : -4]  # the characters only ``data`` determines
        for window in windows(core, 16, 4):
            needles += [window, window.replace("+", "-").replace("/", "_")]
    return needles


def text_needles(secret: str) -> list[str]:
    return [secret, *byte_needles(secret.encode())]


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception chained to it (causes and contexts)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


def visible(exc: BaseException) -> str:
    """Everything a user could see of an error: each chained exception's str, repr and args,
    and each failure's str and repr."""
    parts = []
    for item in chain(exc):
        parts += [str(item), repr(item), repr(item.args)]
        for failure in getattr(item, "failures", ()):
            parts += [str(failure), repr(failure), failure.detail, failure.target]
    return "\n".join(parts)


def assert_hidden(text: str, *, strings: Iterable[str] = (), blobs: Iterable[bytes] = ()) -> None:
    for secret in strings:
        for needle in text_needles(secret):
            assert needle not in text, f"leaks {needle!r}"
    for blob in blobs:
        for needle in byte_needles(blob):
            assert needle not in text, f"leaks {needle!r}"


def assert_value_hidden(text: str, *values: str) -> None:
    """No 16-character run of a ``sealed:``/``kms:``/``local:`` value's base64 appears in ``text``."""
    for value in values:
        for window in windows(value.split(":", 1)[1], 16, 4):
            assert window not in text, f"leaks part of a value: {window!r}"


def reasons(exc: BootstrapError) -> dict[str, str]:
    return {f.variable: f.reason for f in exc.failures}


def flip(value: str, index: int) -> str:
    """A ``sealed:`` value with one bit of byte ``index`` of its blob flipped."""
    blob = bytearray(base64.b64decode(value.removeprefix("sealed:")))
    blob[index] ^= 0x01
    return "sealed:" + b64(bytes(blob))


def reblob(value: str, change: Any) -> str:
    blob = base64.b64decode(value.removeprefix("sealed:"))
    return "sealed:" + b64(change(blob))


@dataclass
class Local:
    """A master key file, a data key wrapped by it, and a way to seal values under that data key."""

    master: bytes
    key_file: Path
    data_key: bytes
    wrapped: str

    def seal(self, name: str, plaintext: str, *, data_key: bytes | None = None) -> str:
        return str(e.seal(e.aead(data_key or self.data_key), name, plaintext.encode()))

    def env(self, values: Mapping[str, str]) -> dict[str, str]:
        return {
            DATA_KEY: self.wrapped,
            LOCAL_KEY_FILE: str(self.key_file),
            **{name: self.seal(name, value) for name, value in values.items()},
        }

    @property
    def blobs(self) -> list[bytes]:
        return [self.master, self.data_key]


def make_local(folder: Path, name: str = "master.key") -> Local:
    master, data_key = os.urandom(32), os.urandom(32)
    path = folder / name
    assert e.git_work_tree(str(path)) is None, "the test folder must not be inside a git work tree"
    e.write_key_file(str(path), urandom=lambda n: master)
    return Local(master, path, data_key, str(e.wrap_local(master, data_key)))


@pytest.fixture
def local(tmp_path: Path) -> Local:
    return make_local(tmp_path)


def kms_data_key(kms: Any, key_id: str, context: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """(plaintext data key, ``kms:<base64>``) from GenerateDataKey, as ``secretboot seal`` makes
    it: under the user's ``context`` plus the reserved pair."""
    context = e.data_key_context(context)
    answer = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=context)
    return answer["Plaintext"], "kms:" + b64(answer["CiphertextBlob"])


def old_form_data_key(kms: Any, key_id: str, context: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """A data key as secretboot wrapped it before the reserved pair: under ``context`` alone."""
    extra = {"EncryptionContext": dict(context)} if context else {}
    answer = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", **extra)
    return answer["Plaintext"], "kms:" + b64(answer["CiphertextBlob"])


def sealed(data_key: bytes, values: Mapping[str, str]) -> dict[str, str]:
    cipher = e.aead(data_key)
    return {name: str(e.seal(cipher, name, value.encode())) for name, value in values.items()}


def kms_value(kms: Any, key_id: str, plaintext: str, context: Mapping[str, str] | None = None) -> str:
    extra = {"EncryptionContext": dict(context)} if context else {}
    return "kms:" + b64(kms.encrypt(KeyId=key_id, Plaintext=plaintext.encode(), **extra)["CiphertextBlob"])


def info_line(caplog: pytest.LogCaptureFixture) -> str:
    (line,) = [r.getMessage() for r in caplog.records if r.name == "secretboot" and r.levelno == logging.INFO]
    return line


# -- the format, independently of the implementation ------------------------------------------


def test_sealed_format_is_the_documented_one() -> None:
    key, nonce = bytes(range(32)), bytes(range(100, 112))
    ref = e.seal_with_nonce(e.aead(key), "DB_PASSWORD", PLAIN["DB_PASSWORD"].encode(), nonce)
    blob = ref.blob
    assert blob[:1] == b"\x01" and blob[1:13] == nonce
    assert len(blob) == 1 + 12 + len(PLAIN["DB_PASSWORD"].encode()) + 16
    opened = AESGCM(key).decrypt(nonce, blob[13:], SEALED_AAD + b"DB_PASSWORD")
    assert opened.decode() == PLAIN["DB_PASSWORD"]
    assert str(ref) == "sealed:" + b64(blob)
    assert parse_reference(str(ref), variable="DB_PASSWORD") == ref
    assert PLAIN["DB_PASSWORD"] not in repr(ref) and b64(blob) not in repr(ref)


def test_local_wrapped_data_key_format_is_the_documented_one() -> None:
    master, data_key = os.urandom(32), os.urandom(32)
    wrapped = e.wrap_local(master, data_key)
    text = str(wrapped)
    assert text.startswith("local:")
    blob = base64.b64decode(text[6:], validate=True)
    assert blob[:1] == b"\x01" and len(blob) == 1 + 12 + 32 + 16
    assert AESGCM(master).decrypt(blob[1:13], blob[13:], DATA_KEY_AAD) == data_key
    assert e.unwrap_local(master, e.parse_data_key(text)) == data_key
    assert_hidden(repr(wrapped), blobs=[master, data_key, blob])


def test_seal_uses_a_fresh_nonce_each_time() -> None:
    cipher = e.aead(os.urandom(32))
    blobs = {e.seal(cipher, "A", b"same").blob for _ in range(50)}
    assert len(blobs) == 50
    assert len({blob[1:13] for blob in blobs}) == 50


def test_seal_refuses_an_empty_value() -> None:
    with pytest.raises(ValueError, match="empty"):
        e.seal(e.aead(os.urandom(32)), "A", b"")


@PROPERTY
@given(plaintext=st.binary(min_size=1, max_size=1024), name=st.text(max_size=40), other=st.text(max_size=40))
def test_property_round_trip_and_name_binding(plaintext: bytes, name: str, other: str) -> None:
    cipher = e.aead(bytes(range(32)))
    ref = e.seal(cipher, name, plaintext)
    assert e.open_sealed(cipher, name, ref) == plaintext
    parsed = parse_reference(str(ref))
    assert isinstance(parsed, SealedReference) and parsed == ref
    assert e.open_sealed(cipher, name, parsed) == plaintext
    if other != name:
        with pytest.raises(e.IntegrityError):
            e.open_sealed(cipher, other, ref)
    with pytest.raises(e.IntegrityError):
        e.open_sealed(e.aead(bytes(range(1, 33))), name, ref)


@PROPERTY
@given(plaintext=st.binary(min_size=1, max_size=64), data=st.data())
def test_property_any_flipped_bit_fails_integrity(plaintext: bytes, data: st.DataObject) -> None:
    cipher = e.aead(bytes(range(32)))
    blob = bytearray(e.seal(cipher, "A", plaintext).blob)
    index = data.draw(st.integers(1, len(blob) - 1))  # byte 0 is the version: a syntax matter
    blob[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(e.IntegrityError) as info:
        e.open_sealed(cipher, "A", SealedReference(bytes(blob)))
    assert str(info.value) == "does not open"


# -- bootstrap() with KMS ---------------------------------------------------------------------


def test_round_trip_with_kms(
    aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    data_key, wrapped = kms_data_key(kms, key_id)
    values = {**PLAIN, "TLS_BUNDLE": PEM, "SETTINGS_JSON": DOCUMENT}
    assert len(PEM.encode()) > 10_000 and len(DOCUMENT.encode()) > 3000
    env = {**aws_env, DATA_KEY: wrapped, **sealed(data_key, values), "PLAIN_URL": "https://example.com"}
    caplog.set_level(logging.DEBUG)
    keyring = secretboot.bootstrap(environ=env)
    assert dict(keyring) == values
    assert all(isinstance(keyring.references[name], SealedReference) for name in values)
    assert secretboot.getenv("PLAIN_URL") == "https://example.com"
    # The data key and the values never reach a log line, the keyring's repr or its references'.
    shown = caplog.text + repr(keyring) + str(keyring) + repr(dict(keyring.references))
    assert_hidden(shown, strings=[*PLAIN.values(), "canary-sealed-json-Hk55", PEM[40:100]], blobs=[data_key])
    assert_value_hidden(shown, wrapped, *(env[name] for name in values))


@pytest.mark.parametrize("count", [1, 20, 60])
def test_one_decrypt_per_boot_whatever_the_count(
    aws_env: dict[str, str], kms: Any, key_id: str, count: int, caplog: pytest.LogCaptureFixture
) -> None:
    data_key, wrapped = kms_data_key(kms, key_id)
    values = {f"SECRET_{i}": f"value-{i}-ü" for i in range(count)}
    caplog.set_level(logging.INFO, logger="secretboot")
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = {**aws_env, "AWS_ENDPOINT_URL": proxy.url, DATA_KEY: wrapped, **sealed(data_key, values)}
        assert dict(secretboot.bootstrap(environ=env)) == values
        assert proxy.counts() == {"TrentService.Decrypt": 1}
    transport = aws_env["SECRETBOOT_TRANSPORT"]
    assert info_line(caplog).startswith(
        f"resolved {count} secret{'' if count == 1 else 's'} (sealed={count}) with 1 API call (kms=1) "
        f"and 0 retries via {transport} in "
    )


def test_sealed_values_add_one_decrypt_to_kms_values(
    aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    data_key, wrapped = kms_data_key(kms, key_id)
    kms_values = {f"KMS_{i}": f"kms-plain-{i}" for i in range(5)}
    sealed_values = {f"SEALED_{i}": f"sealed-plain-{i}" for i in range(30)}
    caplog.set_level(logging.INFO, logger="secretboot")
    with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env = {
            **aws_env,
            "AWS_ENDPOINT_URL": proxy.url,
            DATA_KEY: wrapped,
            **{name: kms_value(kms, key_id, value) for name, value in kms_values.items()},
            **sealed(data_key, sealed_values),
        }
        assert dict(secretboot.bootstrap(environ=env)) == {**kms_values, **sealed_values}
        assert proxy.counts() == {"TrentService.Decrypt": 5 + 1}
    assert "resolved 35 secrets (kms=5, sealed=30) with 6 API calls (kms=6)" in info_line(caplog)


class TestEncryptionContext:
    def test_lambda_function_context(self, aws_env: dict[str, str], kms: Any, key_id: str) -> None:
        data_key, wrapped = kms_data_key(kms, key_id, {"LambdaFunctionName": "fn"})
        env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "fn", DATA_KEY: wrapped, **sealed(data_key, PLAIN)}
        with AwsProxy(aws_env["AWS_ENDPOINT_URL"]) as proxy:
            assert dict(secretboot.bootstrap(environ={**env, "AWS_ENDPOINT_URL": proxy.url})) == PLAIN
            assert proxy.counts() == {"TrentService.Decrypt": 1}

    def test_lambda_falls_back_to_no_context(
        self, aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        data_key, wrapped = kms_data_key(kms, key_id)
        env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "fn", DATA_KEY: wrapped, **sealed(data_key, PLAIN)}
        caplog.set_level(logging.INFO, logger="secretboot")
        assert dict(secretboot.bootstrap(environ=env)) == PLAIN
        assert "with 2 API calls (kms=2)" in info_line(caplog)

    def test_explicit_context(self, aws_env: dict[str, str], kms: Any, key_id: str) -> None:
        context = {"app": "billing", "stage": "prod"}
        data_key, wrapped = kms_data_key(kms, key_id, context)
        env = {
            **aws_env,
            "SECRETBOOT_KMS_CONTEXT": json.dumps(context),
            DATA_KEY: wrapped,
            **sealed(data_key, PLAIN),
        }
        assert dict(secretboot.bootstrap(environ=env)) == PLAIN

    @pytest.mark.parametrize(
        "setting",
        [
            {"AWS_LAMBDA_FUNCTION_NAME": "other-fn"},
            {"SECRETBOOT_KMS_CONTEXT": '{"app": "billing", "stage": "dev"}'},
            {},
        ],
        ids=["other-function", "other-explicit-context", "no-context"],
    )
    def test_wrong_context_fails_every_sealed_value(
        self,
        aws_env: dict[str, str],
        kms: Any,
        key_id: str,
        setting: dict[str, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        data_key, wrapped = kms_data_key(kms, key_id, {"app": "billing", "stage": "prod"})
        values = sealed(data_key, PLAIN)
        env = {**aws_env, **setting, DATA_KEY: wrapped, **values, "PLAIN": "x"}
        caplog.set_level(logging.DEBUG)
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
        assert reasons(info.value) == dict.fromkeys(PLAIN, "InvalidCiphertext")
        assert {f.kind for f in info.value.failures} == {"sealed"}
        assert all(DATA_KEY in f.detail for f in info.value.failures)
        shown = visible(info.value) + caplog.text
        assert_hidden(shown, strings=list(PLAIN.values()), blobs=[data_key])
        assert_value_hidden(shown, wrapped, *values.values())
        assert "billing" not in visible(info.value)  # the context's keys are named, not its values


# -- tampering, swapping, truncation (local provider, no AWS) ---------------------------------

# name -> (how to change the environment, the variables that must then fail)
TAMPER_CASES = {
    "nonce-first-byte": (lambda env, local: {**env, "A": flip(env["A"], 1)}, {"A"}),
    "nonce-last-byte": (lambda env, local: {**env, "A": flip(env["A"], 12)}, {"A"}),
    "body-first-byte": (lambda env, local: {**env, "B": flip(env["B"], 13)}, {"B"}),
    "tag-first-byte": (lambda env, local: {**env, "A": flip(env["A"], -16)}, {"A"}),
    "tag-last-byte": (lambda env, local: {**env, "C": flip(env["C"], -1)}, {"C"}),
    "truncated-by-one": (lambda env, local: {**env, "A": reblob(env["A"], lambda b: b[:-1])}, {"A"}),
    "truncated-to-minimum": (lambda env, local: {**env, "A": reblob(env["A"], lambda b: b[:30])}, {"A"}),
    "extended": (lambda env, local: {**env, "A": reblob(env["A"], lambda b: b + b"\0")}, {"A"}),
    "swapped": (lambda env, local: {**env, "A": env["B"], "B": env["A"]}, {"A", "B"}),
    "copied-to-new-name": (lambda env, local: {**env, "D": env["A"]}, {"D"}),
    "other-data-key": (
        lambda env, local: {**env, "B": local.seal("B", PLAIN["API_TOKEN"], data_key=os.urandom(32))},
        {"B"},
    ),
}


def tamper_env(local: Local, case: str) -> tuple[dict[str, str], set[str]]:
    base = local.env({"A": PLAIN["DB_PASSWORD"], "B": PLAIN["API_TOKEN"], "C": PLAIN["SIGNING_KEY"]})
    change, failing = TAMPER_CASES[case]
    return change(base, local), failing


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_tampered_value_fails_integrity(local: Local, case: str, caplog: pytest.LogCaptureFixture) -> None:
    env, failing = tamper_env(local, case)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert reasons(info.value) == dict.fromkeys(failing, "Integrity")
    assert {f.kind for f in info.value.failures} == {"sealed"}
    assert all(f.variable in str(info.value) for f in info.value.failures)
    shown = visible(info.value) + caplog.text
    assert_hidden(shown, strings=list(PLAIN.values()), blobs=local.blobs)
    assert_value_hidden(shown, local.wrapped, *(value for name, value in env.items() if name in "ABCD"))


def test_integrity_failures_are_indistinguishable(local: Local) -> None:
    """No oracle: whatever was done to a value, the failure reads the same."""
    details = set()
    for case in TAMPER_CASES:
        env, _ = tamper_env(local, case)
        secretboot.reset()
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
        details |= {(f.reason, f.detail) for f in info.value.failures}
    assert len(details) == 1, details
    ((reason, detail),) = details
    assert reason == "Integrity" and DATA_KEY in detail


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda b: b"\x02" + b[1:], "version"),
        (lambda b: b"\x00" + b[1:], "version"),
        (lambda b: b[:29], "bytes once decoded"),
    ],
    ids=["version-2", "version-0", "too-short"],
)
def test_unknown_version_or_short_blob_is_malformed(local: Local, change: Any, why: str) -> None:
    env = local.env({"A": PLAIN["DB_PASSWORD"], "B": PLAIN["API_TOKEN"]})
    env["A"] = reblob(env["A"], change)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    (failure,) = info.value.failures
    assert (failure.variable, failure.kind, failure.reason) == ("A", "sealed", "Malformed")
    assert why in failure.detail
    assert_hidden(visible(info.value), strings=list(PLAIN.values()), blobs=local.blobs)
    assert_value_hidden(visible(info.value), env["A"], env["B"])


@pytest.mark.parametrize(
    ("mutate", "detail"),
    [
        ("wrong-master", "does not open with the key in " + LOCAL_KEY_FILE),
        ("tampered-wrapped-key", "does not open with the key in " + LOCAL_KEY_FILE),
    ],
)
def test_data_key_that_does_not_open_fails_every_sealed_value(
    tmp_path: Path, local: Local, mutate: str, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = local.env({"A": PLAIN["DB_PASSWORD"], "B": PLAIN["API_TOKEN"]})
    other = make_local(tmp_path, "other.key")
    if mutate == "wrong-master":
        env[LOCAL_KEY_FILE] = str(other.key_file)
    else:
        blob = bytearray(base64.b64decode(local.wrapped[6:]))
        blob[-5] ^= 0x80
        env[DATA_KEY] = "local:" + b64(bytes(blob))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert reasons(info.value) == {"A": "Integrity", "B": "Integrity"}
    assert all(detail in f.detail for f in info.value.failures)
    shown = visible(info.value) + caplog.text
    assert_hidden(shown, strings=list(PLAIN.values()), blobs=[*local.blobs, *other.blobs])
    assert_value_hidden(shown, env[DATA_KEY], env["A"], env["B"])


def test_fail_closed_nothing_is_exported(local: Local, caplog: pytest.LogCaptureFixture) -> None:
    env = local.env({"A": PLAIN["DB_PASSWORD"], "B": PLAIN["API_TOKEN"], "C": PLAIN["SIGNING_KEY"]})
    env["B"] = flip(env["B"], 20)
    env["C"] = env["A"]
    os.environ.update({"A": env["A"], "PLAIN_X": "x"})
    before = dict(os.environ)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env, export=True)
    assert info.value.variables == ("B", "C")
    assert dict(os.environ) == before
    assert_hidden(visible(info.value) + caplog.text, strings=list(PLAIN.values()), blobs=local.blobs)
    assert_value_hidden(visible(info.value) + caplog.text, env["A"], env["B"], local.wrapped)
    # Nothing was cached either: a good environment boots afterwards.
    good = local.env({"A": PLAIN["DB_PASSWORD"]})
    assert dict(secretboot.bootstrap(environ=good, export=True)) == {"A": PLAIN["DB_PASSWORD"]}
    assert os.environ["A"] == PLAIN["DB_PASSWORD"]


def test_local_provider_success_makes_no_api_calls(local: Local, caplog: pytest.LogCaptureFixture) -> None:
    values = {**PLAIN, "TLS_BUNDLE": PEM}
    env = local.env(values)
    caplog.set_level(logging.DEBUG)
    keyring = secretboot.bootstrap(environ=env)
    assert dict(keyring) == values
    line = info_line(caplog)
    assert line.startswith("resolved 4 secrets (sealed=4) with 0 API calls (none) and 0 retries in ")
    assert " via " not in line
    shown = caplog.text + repr(keyring) + repr(dict(keyring.references))
    assert_hidden(shown, strings=list(PLAIN.values()), blobs=local.blobs)
    assert_value_hidden(shown, env[DATA_KEY], *(env[name] for name in values))


# -- data key problems (every sealed value fails; other references are unaffected) -------------


@dataclass
class World:
    """What the data-key tests share: a KMS key, a local key, and a plain kms: value next to them."""

    aws_env: dict[str, str]
    kms: Any
    key_id: str
    local: Local
    kms_data_key: bytes
    kms_wrapped: str
    folder: Path

    def env(self, provider: str, **changes: str | None) -> dict[str, str]:
        if provider == "kms":
            base = {DATA_KEY: self.kms_wrapped, **sealed(self.kms_data_key, self.values)}
        else:
            base = self.local.env(self.values)
        env = {**self.aws_env, **base, "PLAIN_KMS": kms_value(self.kms, self.key_id, "plain-kms-canary-Rr3")}
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    @property
    def values(self) -> dict[str, str]:
        return {"A": PLAIN["DB_PASSWORD"], "B": PLAIN["API_TOKEN"]}

    @property
    def blobs(self) -> list[bytes]:
        return [*self.local.blobs, self.kms_data_key]


@pytest.fixture
def world(aws_env: dict[str, str], kms: Any, key_id: str, local: Local, tmp_path: Path) -> World:
    data_key, wrapped = kms_data_key(kms, key_id)
    return World(aws_env, kms, key_id, local, data_key, wrapped, tmp_path)


def key_file(world: World, name: str, content: bytes, mode: int = 0o600) -> str:
    path = world.folder / name
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


DATA_KEY_CASES: dict[str, tuple[str, Any, str, str]] = {
    # name: (provider, changes(world) -> dict, reason, words in the detail)
    "missing": ("kms", lambda w: {DATA_KEY: None}, "Missing", f"{DATA_KEY} is not set"),
    "empty": ("kms", lambda w: {DATA_KEY: ""}, "Missing", f"{DATA_KEY} is not set"),
    "no-prefix": ("kms", lambda w: {DATA_KEY: w.kms_wrapped[4:]}, "Malformed", "must start with kms:"),
    "kms-not-base64": ("kms", lambda w: {DATA_KEY: "kms:%%%not-base64"}, "Malformed", "base64"),
    "local-not-base64": ("local", lambda w: {DATA_KEY: "local:%%%"}, "Malformed", "base64"),
    "local-wrong-size": ("local", lambda w: {DATA_KEY: w.local.wrapped[:-8]}, "Malformed", DATA_KEY),
    "local-wrong-version": (
        "local",
        lambda w: {DATA_KEY: "local:" + b64(b"\x02" + base64.b64decode(w.local.wrapped[6:])[1:])},
        "Malformed",
        DATA_KEY,
    ),
    "local-without-key-file": ("local", lambda w: {LOCAL_KEY_FILE: None}, "Missing", LOCAL_KEY_FILE),
    "key-file-missing": (
        "local",
        lambda w: {LOCAL_KEY_FILE: str(w.folder / "nope.key")},
        "KeyFile",
        "cannot be read",
    ),
    "key-file-is-a-folder": ("local", lambda w: {LOCAL_KEY_FILE: str(w.folder)}, "KeyFile", "cannot be read"),
    "key-file-wrong-size": (
        "local",
        lambda w: {LOCAL_KEY_FILE: key_file(w, "short.key", b64(w.local.master[:16]).encode() + b"\n")},
        "KeyFile",
        "256-bit",
    ),
    "key-file-garbage": (
        "local",
        lambda w: {LOCAL_KEY_FILE: key_file(w, "garbage.key", b"canary-keyfile-Gb77 not base64!\n")},
        "KeyFile",
        "one line of base64",
    ),
    "key-file-too-large": (
        "local",
        lambda w: {LOCAL_KEY_FILE: key_file(w, "large.key", (b64(w.local.master) + "\n").encode() * 40)},
        "KeyFile",
        "one line of base64",
    ),
    "key-file-readable-by-others": (
        "local",
        lambda w: {LOCAL_KEY_FILE: key_file(w, "open.key", (b64(w.local.master) + "\n").encode(), 0o644)},
        "KeyFile",
        "(mode 0644); a key must be private to its owner: chmod 600 ",
    ),
    "key-file-writable-by-group": (
        "local",
        lambda w: {LOCAL_KEY_FILE: key_file(w, "group.key", (b64(w.local.master) + "\n").encode(), 0o620)},
        "KeyFile",
        "(mode 0620)",
    ),
    "kms-garbage-ciphertext": (
        "kms",
        lambda w: {DATA_KEY: "kms:" + b64(b"garbage-ciphertext-bytes")},
        "InvalidCiphertext",
        "damaged ciphertext",
    ),
    "kms-wraps-16-bytes": (
        "kms",
        lambda w: {DATA_KEY: kms_value(w.kms, w.key_id, "sixteen-bytes-ab", e.data_key_context(None))},
        "Integrity",
        "wrong size",
    ),
    "kms-value-as-data-key": (
        "kms",
        lambda w: {DATA_KEY: kms_value(w.kms, w.key_id, "thirty-two-bytes-of-plain-text!!")},
        "InvalidCiphertext",
        "run `secretboot reseal`",
    ),
}


@pytest.mark.parametrize("case", list(DATA_KEY_CASES))
def test_data_key_problem_fails_every_sealed_value(
    world: World, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider, changes, reason, words = DATA_KEY_CASES[case]
    env = world.env(provider, **changes(world))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert reasons(info.value) == {"A": reason, "B": reason}  # PLAIN_KMS resolved fine
    assert {f.kind for f in info.value.failures} == {"sealed"}
    assert all(words in f.detail for f in info.value.failures), [f.detail for f in info.value.failures]
    shown = visible(info.value) + caplog.text
    assert_hidden(
        shown, strings=[*PLAIN.values(), "plain-kms-canary-Rr3", "canary-keyfile-Gb77"], blobs=world.blobs
    )
    wrapped = [v for v in (env.get(DATA_KEY), world.kms_wrapped, world.local.wrapped) if v and ":" in v]
    assert_value_hidden(shown, env["A"], env["B"], env["PLAIN_KMS"], *wrapped)


def test_kms_access_denied_for_the_data_key(world: World, kms: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Pin another key: the data key (under key_id) is refused; the kms: value under the pinned key is fine.
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    env = world.env(
        "kms", SECRETBOOT_KMS_KEY_ID=other, PLAIN_KMS=kms_value(kms, other, "plain-kms-canary-Rr3")
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    # moto answers AccessDenied where real KMS says IncorrectKeyException.
    (reason,) = set(reasons(info.value).values())
    assert set(reasons(info.value)) == {"A", "B"}
    assert reason in {"AccessDenied", "IncorrectKey"}
    assert all(DATA_KEY in f.detail for f in info.value.failures)
    shown = visible(info.value) + caplog.text
    assert_hidden(shown, strings=[*PLAIN.values(), "plain-kms-canary-Rr3"], blobs=world.blobs)
    assert_value_hidden(shown, env["A"], env["B"], env["PLAIN_KMS"], world.kms_wrapped)
    # Without the pin, everything opens.
    secretboot.reset()
    env.pop("SECRETBOOT_KMS_KEY_ID")
    assert dict(secretboot.bootstrap(environ=env)) == {**world.values, "PLAIN_KMS": "plain-kms-canary-Rr3"}


def test_failures_of_both_kinds_are_listed_together(world: World) -> None:
    env = world.env("local", **{LOCAL_KEY_FILE: None}, BROKEN_KMS="kms:" + b64(b"garbage-ciphertext-bytes"))
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert reasons(info.value) == {"A": "Missing", "B": "Missing", "BROKEN_KMS": "InvalidCiphertext"}


# -- the local provider needs no AWS at all ---------------------------------------------------

NO_AWS_PROGRAM = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
import secretboot
keyring = secretboot.bootstrap()
heavy = sorted(m for m in ("boto3", "botocore", "urllib3") if m in sys.modules)
print(json.dumps({"values": dict(keyring), "heavy": heavy}))
"""


def test_local_provider_needs_no_aws_and_imports_no_sdk(local: Local) -> None:
    values = {**PLAIN, "TLS_BUNDLE": PEM}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SECRETBOOT_")) and not k.lower().endswith("_proxy")
    }
    env.update(local.env(values))
    assert not any(k.startswith("AWS_") for k in env)
    done = subprocess.run(
        [sys.executable, "-c", NO_AWS_PROGRAM], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"values": values, "heavy": []}
    assert "with 0 API calls (none) and 0 retries in " in done.stderr
    assert " via " not in done.stderr


def test_local_provider_ignores_a_forced_transport(local: Local) -> None:
    env = {**local.env(PLAIN), "SECRETBOOT_TRANSPORT": "fast"}
    assert dict(secretboot.bootstrap(environ=env)) == PLAIN


# -- key files --------------------------------------------------------------------------------


def test_write_key_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    old = os.umask(0)
    try:
        e.write_key_file(str(path))
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o600
    content = path.read_bytes()
    assert content.endswith(b"\n") and content.count(b"\n") == 1
    assert len(base64.b64decode(content.strip(), validate=True)) == 32


def test_key_file_round_trip(tmp_path: Path) -> None:
    master = os.urandom(32)
    path = tmp_path / "master.key"
    e.write_key_file(str(path), urandom=lambda n: master)
    assert path.read_bytes() == b64(master).encode() + b"\n"
    assert e.read_key_file(str(path)) == master
    crlf = tmp_path / "crlf.key"
    crlf.write_bytes(b64(master).encode() + b"\r\n")
    crlf.chmod(0o600)
    assert e.read_key_file(str(crlf)) == master


def test_write_key_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    e.write_key_file(str(path))
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="already exists") as info:
        e.write_key_file(str(path))
    assert path.read_bytes() == before
    assert before.strip().decode() not in str(info.value)
    with pytest.raises(ConfigurationError, match="already exists"):
        e.write_key_file(str(path), force=True)  # force is about git, never about overwriting
    assert path.read_bytes() == before


def test_write_key_file_refuses_a_git_work_tree_unless_forced(tmp_path: Path) -> None:
    assert e.git_work_tree(str(tmp_path / "x")) is None
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "config").mkdir()
    path = tmp_path / "repo" / "config" / "master.key"
    assert e.git_work_tree(str(path)) == str(tmp_path / "repo")
    with pytest.raises(ConfigurationError, match="git work tree"):
        e.write_key_file(str(path))
    assert not path.exists()
    e.write_key_file(str(path), force=True)
    assert len(e.read_key_file(str(path))) == 32
    # A .git file (worktrees, submodules) counts too.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".git").write_text("gitdir: ../repo/.git\n")
    with pytest.raises(ConfigurationError, match="git work tree"):
        e.write_key_file(str(tmp_path / "sub" / "k"))


def test_write_key_file_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "target.key"
    target.parent.mkdir()
    link = tmp_path / "master.key"
    link.symlink_to(target)  # dangling
    with pytest.raises(ConfigurationError):
        e.write_key_file(str(link))
    assert not target.exists()
    assert link.is_symlink()
    # Nor over a symlink to an existing file.
    target.write_bytes(b"keep me\n")
    with pytest.raises(ConfigurationError):
        e.write_key_file(str(link))
    assert target.read_bytes() == b"keep me\n"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "256-bit"),
        (b"canary-keyfile-Gb77\n", "one line of base64"),
        (base64.b64encode(b"k" * 31) + b"\n", "256-bit"),
        (b"A" * 2000, "one line of base64"),
    ],
    ids=["empty", "garbage", "31-bytes", "too-large"],
)
def test_read_key_file_names_the_path_not_the_content(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigurationError) as info:
        e.read_key_file(str(path))
    assert str(path) in str(info.value) and words in str(info.value)
    assert "canary" not in visible(info.value)
    if content:
        assert content.strip()[:20].decode() not in visible(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o610, 0o601, 0o666, 0o777])
def test_read_key_file_refuses_a_key_open_to_group_or_others(tmp_path: Path, mode: int) -> None:
    """As ssh refuses an unprotected private key: any bit for group or others, checked before
    reading; the path and mode are named, and the fix, never the content."""
    master = os.urandom(32)
    path = tmp_path / "master key's.key"  # a path that must be quoted for the shell
    path.write_bytes(b64(master).encode() + b"\n")
    path.chmod(mode)
    with pytest.raises(ConfigurationError) as info:
        e.read_key_file(str(path))
    message = str(info.value)
    assert repr(str(path)) in message and f"(mode {mode:04o})" in message
    assert f"chmod 600 '{tmp_path}/master key'\"'\"'s.key'" in message
    assert_hidden(visible(info.value), blobs=[master])
    path.chmod(0o600)
    assert e.read_key_file(str(path)) == master
    path.chmod(0o400)  # read-only for the owner is fine too
    assert e.read_key_file(str(path)) == master


def test_read_key_file_follows_a_symlink_and_checks_the_target(tmp_path: Path) -> None:
    master = os.urandom(32)
    target = tmp_path / "target.key"
    target.write_bytes(b64(master).encode() + b"\n")
    target.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(target)  # a link's own mode (0777) says nothing
    assert e.read_key_file(str(link)) == master
    target.chmod(0o644)
    with pytest.raises(ConfigurationError, match="mode 0644"):
        e.read_key_file(str(link))


# -- the data key's reserved encryption context -----------------------------------------------


class ContextRecorder(AwsProxy):
    """Records the encryption context of every KMS ``Decrypt`` that passes (``None``: none sent)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.decrypts: list[tuple[str, dict[str, str] | None]] = []

    def handle(self, request: Any) -> Any:
        if request.target == "TrentService.Decrypt":
            body = json.loads(request.body)
            self.decrypts.append((body["CiphertextBlob"], body.get("EncryptionContext")))
        return super().handle(request)


PURPOSE_KEY, PURPOSE_VALUE = e.DATA_KEY_PURPOSE

# name -> (the user's context as seal was given it, the settings that make bootstrap use it)
USER_CONTEXTS: dict[str, tuple[dict[str, str] | None, dict[str, str]]] = {
    "no-context": (None, {}),
    "lambda": ({"LambdaFunctionName": "fn"}, {"AWS_LAMBDA_FUNCTION_NAME": "fn"}),
    "explicit": ({"app": "billing"}, {"SECRETBOOT_KMS_CONTEXT": '{"app": "billing"}'}),
}


def test_data_key_context_adds_the_reserved_pair_to_any_user_context() -> None:
    assert PURPOSE_KEY.startswith(e.RESERVED_CONTEXT_PREFIX)
    assert e.data_key_context(None) == {PURPOSE_KEY: PURPOSE_VALUE}
    assert e.data_key_context({}) == {PURPOSE_KEY: PURPOSE_VALUE}
    user = {"LambdaFunctionName": "fn"}
    assert e.data_key_context(user) == {"LambdaFunctionName": "fn", PURPOSE_KEY: PURPOSE_VALUE}
    assert user == {"LambdaFunctionName": "fn"}  # the caller's mapping is not changed
    for reserved in ({PURPOSE_KEY: "x"}, {"a": "b", "secretboot:other": ""}):
        with pytest.raises(ValueError, match="reserved"):
            e.data_key_context(reserved)


@pytest.mark.parametrize("case", list(USER_CONTEXTS))
def test_data_key_copied_into_another_variable_does_not_decrypt(
    aws_env: dict[str, str], kms: Any, key_id: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: the data key's ciphertext copied into a variable read as a binary kms: value
    would hand out the data key, which opens every sealed value offline. It fails closed."""
    user, setting = USER_CONTEXTS[case]
    data_key, wrapped = kms_data_key(kms, key_id, user)
    values = sealed(data_key, PLAIN)
    env = {**aws_env, **setting, DATA_KEY: wrapped, **values, "SECRETBOOT_BINARY_VARS": "GREETING"}
    caplog.set_level(logging.DEBUG)
    # The data key opens the sealed values...
    assert dict(secretboot.bootstrap(environ=env)) == PLAIN
    secretboot.reset()
    # ...but its ciphertext as an ordinary kms: value decrypts under no context tried.
    with ContextRecorder(aws_env["AWS_ENDPOINT_URL"]) as proxy, pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ={**env, "AWS_ENDPOINT_URL": proxy.url, "GREETING": wrapped})
    assert reasons(info.value) == {"GREETING": "InvalidCiphertext"}
    assert "GREETING" in str(info.value)
    assert secretboot.getenv("GREETING") is None and "GREETING" not in os.environ
    # One Decrypt for the data key, with the reserved pair; the copy's with the ordinary
    # contexts only (in Lambda the function's, then none).
    ordinary = [user, None] if case == "lambda" else [user]
    expected = [e.data_key_context(user), *ordinary]
    assert sorted(map(json.dumps, (c for _, c in proxy.decrypts))) == sorted(map(json.dumps, expected))
    shown = visible(info.value) + caplog.text
    assert_hidden(shown, strings=list(PLAIN.values()), blobs=[data_key])
    assert_value_hidden(shown, wrapped, *values.values())


@pytest.mark.parametrize("case", list(USER_CONTEXTS))
def test_ordinary_kms_values_are_never_decrypted_with_the_reserved_pair(
    aws_env: dict[str, str], kms: Any, key_id: str, case: str
) -> None:
    user, setting = USER_CONTEXTS[case]
    data_key, wrapped = kms_data_key(kms, key_id, user)
    plain = kms_value(kms, key_id, "plain-kms-canary-Rr3", user)
    env = {**aws_env, **setting, DATA_KEY: wrapped, **sealed(data_key, PLAIN), "PLAIN_KMS": plain}
    with ContextRecorder(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.url
        assert dict(secretboot.bootstrap(environ=env)) == {**PLAIN, "PLAIN_KMS": "plain-kms-canary-Rr3"}
    contexts = {
        ("data key" if "kms:" + blob == wrapped else "value"): context for blob, context in proxy.decrypts
    }
    assert contexts == {"data key": e.data_key_context(user), "value": user}


def test_kms_value_copied_into_the_data_key_does_not_open_sealed_values(
    aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The other way: whoever knows a kms: value's plaintext (or chose it) cannot make it the
    data key: it does not unwrap under the reserved pair, so their sealed values do not open."""
    known = os.urandom(32)
    value = "kms:" + b64(kms.encrypt(KeyId=key_id, Plaintext=known)["CiphertextBlob"])
    forged = sealed(known, {"A": "forged-by-whoever-knows-the-key"})
    env = {**aws_env, DATA_KEY: value, **forged, "K": value, "SECRETBOOT_BINARY_VARS": "K"}
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert reasons(info.value) == {"A": "InvalidCiphertext"}  # K itself, an ordinary value, is fine
    (failure,) = info.value.failures
    assert DATA_KEY in failure.detail and "secretboot reseal" in failure.detail
    shown = visible(info.value) + caplog.text
    assert_hidden(shown, strings=["forged-by-whoever-knows-the-key"], blobs=[known])


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({PURPOSE_KEY: PURPOSE_VALUE}),
        json.dumps({"app": "billing", PURPOSE_KEY: "anything"}),
        json.dumps({"secretboot:other": "x"}),
    ],
    ids=["the-pair", "the-key", "the-prefix"],
)
def test_reserved_key_in_the_user_context_is_refused(aws_env: dict[str, str], raw: str) -> None:
    env = {**aws_env, "SECRETBOOT_KMS_CONTEXT": raw, "A": "kms:" + b64(b"x" * 40)}
    with pytest.raises(ConfigurationError) as info:
        secretboot.bootstrap(environ=env)
    from secretboot._settings import RESERVED_CONTEXT_MESSAGE

    assert str(info.value) == RESERVED_CONTEXT_MESSAGE  # fixed wording: nothing of the text echoed
    assert "SECRETBOOT_KMS_CONTEXT" in str(info.value) and "secretboot:" in str(info.value)


@pytest.mark.parametrize("case", list(USER_CONTEXTS))
def test_old_form_data_key_fails_with_a_pointer_to_reseal(
    aws_env: dict[str, str], kms: Any, key_id: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No compatibility path: a data key wrapped without the reserved pair is not tried without it."""
    user, setting = USER_CONTEXTS[case]
    data_key, wrapped = old_form_data_key(kms, key_id, user)
    values = sealed(data_key, PLAIN)
    env = {**aws_env, **setting, DATA_KEY: wrapped, **values}
    caplog.set_level(logging.DEBUG)
    with ContextRecorder(aws_env["AWS_ENDPOINT_URL"]) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.url
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
    assert reasons(info.value) == dict.fromkeys(PLAIN, "InvalidCiphertext")
    assert all("run `secretboot reseal`" in f.detail for f in info.value.failures)
    assert all(context and context[PURPOSE_KEY] == PURPOSE_VALUE for _, context in proxy.decrypts)
    shown = visible(info.value) + caplog.text
    assert_hidden(shown, strings=list(PLAIN.values()), blobs=[data_key])
    assert_value_hidden(shown, wrapped, *values.values())


@pytest.mark.parametrize("case", list(USER_CONTEXTS))
def test_reseal_migrates_an_old_form_data_key_then_bootstrap_opens_it(
    aws_env: dict[str, str],
    kms: Any,
    key_id: str,
    case: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from secretboot import _cli

    user, setting = USER_CONTEXTS[case]
    old_key, wrapped = old_form_data_key(kms, key_id, user)
    env_file = tmp_path / "app.env"
    lines = [f"{DATA_KEY}={wrapped}", *(f"{k}={v}" for k, v in sealed(old_key, PLAIN).items())]
    env_file.write_text("\n".join(lines) + "\n")
    env = {**aws_env, **setting}
    with pytest.raises(BootstrapError, match="secretboot reseal"):
        secretboot.bootstrap(environ=env, env_file=env_file)
    options = [f"--context={k}={v}" for k, v in (user or {}).items()]
    assert _cli.main(["reseal", "--env-file", str(env_file), *options]) == _cli.OK
    out, err = capsys.readouterr()
    assert "was in the old form" in out and err == ""
    secretboot.reset()
    assert dict(secretboot.bootstrap(environ=env, env_file=env_file)) == PLAIN
    (line,) = [x for x in env_file.read_text().splitlines() if x.startswith(DATA_KEY + "=")]
    new = e.parse_data_key(line.split("=", 1)[1])
    answer = kms.decrypt(CiphertextBlob=new.blob, EncryptionContext=e.data_key_context(user))
    assert len(answer["Plaintext"]) == 32 and answer["Plaintext"] != old_key
    assert_hidden(out, strings=list(PLAIN.values()), blobs=[old_key, answer["Plaintext"]])
