"""Integration tests: bootstrap() against moto's server over real HTTP."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

import secretboot
from secretboot import BootstrapError, ConfigurationError
from tests.conftest import moto_api
from tests.localaws import client

# A distinctive plaintext: any appearance in a message is a leak.
CANARY = "canary-plaintext-7f3a9c"


def encrypt(kms: Any, key_id: str, plaintext: str, context: dict[str, str] | None = None) -> str:
    kwargs: dict[str, Any] = {"KeyId": key_id, "Plaintext": plaintext.encode()}
    if context:
        kwargs["EncryptionContext"] = context
    return base64.b64encode(kms.encrypt(**kwargs)["CiphertextBlob"]).decode()


def put(ssm: Any, name: str, value: str, *, versions: int = 1) -> None:
    for version in range(1, versions + 1):
        text = value if versions == 1 else f"{value}-v{version}"
        ssm.put_parameter(Name=name, Value=text, Type="SecureString", Overwrite=version > 1)


def assert_no_leak(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def failure_texts(exc: BaseException) -> str:
    """Everything a user could see of an error: str, repr, and each failure's repr."""
    parts = [str(exc), repr(exc)]
    if isinstance(exc, BootstrapError):
        parts += [repr(f) for f in exc.failures]
    return "\n".join(parts)


def test_readme_environment_resolves(aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str) -> None:
    put(ssm, "/myapp/prod/api-token", "token-value")
    put(ssm, "/myapp/prod/signing-key", "signing", versions=3)
    env = {
        **aws_env,
        "DB_PASSWORD": "kms:" + encrypt(kms, key_id, "db-password"),
        "API_TOKEN": "{{resolve:ssm-secure:/myapp/prod/api-token}}",
        "SIGNING_KEY": "ssm:/myapp/prod/signing-key:3",
        "OLD_SIGNING_KEY": "ssm:/myapp/prod/signing-key:1",
        "API_URL": "https://example.com",
    }
    secrets = secretboot.bootstrap(environ=env)
    assert dict(secrets) == {
        "DB_PASSWORD": "db-password",
        "API_TOKEN": "token-value",
        "SIGNING_KEY": "signing-v3",
        "OLD_SIGNING_KEY": "signing-v1",
    }
    assert secretboot.getenv("API_URL") == "https://example.com"
    assert secretboot.getenv("DB_PASSWORD") == "db-password"
    assert secretboot.getenv("NOT_SET", "fallback") == "fallback"
    assert "db-password" not in repr(secrets) and "token-value" not in str(secrets)
    assert secrets.references["SIGNING_KEY"] == secretboot.SsmReference("/myapp/prod/signing-key", "3")


def test_plain_ssm_forms(aws_env: dict[str, str], ssm: Any) -> None:
    put(ssm, "bare-name", "bare")
    put(ssm, "/app/labelled", "labelled", versions=2)
    ssm.label_parameter_version(Name="/app/labelled", ParameterVersion=1, Labels=["stable"])
    ssm.put_parameter(Name="/app/plain-string", Value="not secret", Type="String")
    env = {
        **aws_env,
        "BARE": "ssm:bare-name",
        "LABELLED": "ssm:/app/labelled:stable",
        "LATEST": "ssm:/app/labelled",
        "PLAIN": "{{resolve:ssm:/app/plain-string}}",
    }
    secrets = secretboot.bootstrap(environ=env)
    assert dict(secrets) == {
        "BARE": "bare",
        "LABELLED": "labelled-v1",
        "LATEST": "labelled-v2",
        "PLAIN": "not secret",
    }


def test_bare_console_ciphertext_and_kms_vars(
    aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # moto's blobs lack the AWS header, so the bare form needs SECRETBOOT_KMS_VARS
    # here; detection of genuine AQICAH blobs is covered by the parser tests.
    env = {
        **aws_env,
        "LEGACY_KEY": encrypt(kms, key_id, "legacy"),
        "PREFIXED": "kms:" + encrypt(kms, key_id, "prefixed"),
        "SECRETBOOT_KMS_VARS": "LEGACY_KEY, PREFIXED",
    }
    assert dict(secretboot.bootstrap(environ=env)) == {"LEGACY_KEY": "legacy", "PREFIXED": "prefixed"}


def test_kms_vars_names_a_missing_variable(aws_env: dict[str, str]) -> None:
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ={**aws_env, "SECRETBOOT_KMS_VARS": "NOT_THERE"})
    assert info.value.failures[0].variable == "NOT_THERE"
    assert info.value.failures[0].reason == "Missing"


@pytest.mark.parametrize("count", [0, 1, 10, 11, 21])
def test_ssm_batch_boundaries(
    aws_env: dict[str, str], ssm: Any, count: int, caplog: pytest.LogCaptureFixture
) -> None:
    env = dict(aws_env)
    for i in range(count):
        put(ssm, f"/batch/p{i}", f"value-{i}")
        env[f"P{i}"] = f"ssm:/batch/p{i}"
    caplog.set_level(logging.INFO, logger="secretboot")
    secrets = secretboot.bootstrap(environ=env)
    assert dict(secrets) == {f"P{i}": f"value-{i}" for i in range(count)}
    calls = -(-count // 10)  # ceil: one GetParameters per 10 names
    assert f"with {calls} API call{'' if calls == 1 else 's'}" in caplog.text


def test_same_parameter_with_two_selectors_in_one_batch(aws_env: dict[str, str], ssm: Any) -> None:
    put(ssm, "/app/key", "key", versions=2)
    env = {**aws_env, "NEW": "ssm:/app/key:2", "OLD": "ssm:/app/key:1", "LATEST": "ssm:/app/key"}
    assert dict(secretboot.bootstrap(environ=env)) == {"NEW": "key-v2", "OLD": "key-v1", "LATEST": "key-v2"}


def test_shared_reference_is_fetched_once(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(ssm, "/app/shared", "shared")
    blob = "kms:" + encrypt(kms, key_id, "same")
    env = {**aws_env, "A": "ssm:/app/shared", "B": "ssm:/app/shared", "C": blob, "D": blob}
    caplog.set_level(logging.INFO, logger="secretboot")
    assert dict(secretboot.bootstrap(environ=env)) == {"A": "shared", "B": "shared", "C": "same", "D": "same"}
    assert "with 2 API calls (kms=1, ssm=1)" in caplog.text


def test_many_kms_values_in_parallel(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    env = {**aws_env, **{f"K{i}": "kms:" + encrypt(kms, key_id, f"k{i}") for i in range(25)}}
    assert dict(secretboot.bootstrap(environ=env)) == {f"K{i}": f"k{i}" for i in range(25)}


class TestEncryptionContext:
    def test_lambda_context_is_used(self, aws_env: dict[str, str], kms: Any, key_id: str) -> None:
        blob = encrypt(kms, key_id, CANARY, {"LambdaFunctionName": "my-fn"})
        env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "my-fn", "S": "kms:" + blob}
        assert secretboot.bootstrap(environ=env)["S"] == CANARY

    def test_lambda_falls_back_to_no_context(
        self, aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "my-fn", "S": "kms:" + encrypt(kms, key_id, CANARY)}
        caplog.set_level(logging.INFO, logger="secretboot")
        assert secretboot.bootstrap(environ=env)["S"] == CANARY
        assert "with 2 API calls (kms=2)" in caplog.text

    def test_explicit_context(self, aws_env: dict[str, str], kms: Any, key_id: str) -> None:
        context = {"app": "billing", "stage": "prod"}
        env = {
            **aws_env,
            "SECRETBOOT_KMS_CONTEXT": json.dumps(context),
            "S": "kms:" + encrypt(kms, key_id, CANARY, context),
        }
        assert secretboot.bootstrap(environ=env)["S"] == CANARY

    def test_wrong_context_fails_without_leaking(
        self, aws_env: dict[str, str], kms: Any, key_id: str
    ) -> None:
        blob = encrypt(kms, key_id, CANARY, {"LambdaFunctionName": "other-fn"})
        env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "my-fn", "S": "kms:" + blob}
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
        (failure,) = info.value.failures
        assert (failure.variable, failure.kind, failure.reason) == ("S", "kms", "InvalidCiphertext")
        assert "LambdaFunctionName" in failure.detail  # says which context keys it tried
        assert_no_leak(failure_texts(info.value), CANARY, blob, blob[:40])

    def test_explicit_context_does_not_fall_back(
        self, aws_env: dict[str, str], kms: Any, key_id: str
    ) -> None:
        env = {
            **aws_env,
            "SECRETBOOT_KMS_CONTEXT": '{"app": "billing"}',
            "S": "kms:" + encrypt(kms, key_id, CANARY),
        }
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
        assert info.value.failures[0].reason == "InvalidCiphertext"

    def test_bad_context_setting_is_a_configuration_error(self, aws_env: dict[str, str]) -> None:
        with pytest.raises(ConfigurationError, match="SECRETBOOT_KMS_CONTEXT"):
            secretboot.bootstrap(environ={**aws_env, "SECRETBOOT_KMS_CONTEXT": "{not json", "S": "ssm:/x"})


class TestKeyPinning:
    def test_pinned_key_decrypts(self, aws_env: dict[str, str], kms: Any, key_id: str) -> None:
        env = {**aws_env, "SECRETBOOT_KMS_KEY_ID": key_id, "S": "kms:" + encrypt(kms, key_id, CANARY)}
        assert secretboot.bootstrap(environ=env)["S"] == CANARY

    def test_other_key_is_refused(self, aws_env: dict[str, str], kms: Any, key_id: str) -> None:
        other = kms.create_key()["KeyMetadata"]["KeyId"]
        blob = encrypt(kms, other, CANARY)
        env = {**aws_env, "SECRETBOOT_KMS_KEY_ID": key_id, "S": "kms:" + blob}
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
        # moto answers AccessDenied where real KMS says IncorrectKeyException.
        assert info.value.failures[0].reason in {"AccessDenied", "IncorrectKey"}
        assert_no_leak(failure_texts(info.value), CANARY, blob)


class TestFailures:
    def test_every_failure_is_listed_and_nothing_applied(
        self, aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        put(ssm, "/app/good", CANARY)
        good_blob = encrypt(kms, key_id, CANARY)
        env = {
            **aws_env,
            "GOOD_SSM": "ssm:/app/good",
            "GOOD_KMS": "kms:" + good_blob,
            "MISSING": "ssm:/app/missing",
            "BAD_VERSION": "ssm:/app/good:7",
            "MALFORMED": "kms:%%%not-base64",
            "BAD_BLOB": "kms:" + base64.b64encode(b"garbage-ciphertext-bytes").decode(),
            "UNSUPPORTED": "{{resolve:ssm-foo:prod/db}}",
        }
        os.environ["GOOD_SSM"] = "ssm:/app/good"
        caplog.set_level(logging.DEBUG)
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env, export=True)
        reasons = {f.variable: f.reason for f in info.value.failures}
        assert reasons == {
            "MISSING": "ParameterNotFound",
            "BAD_VERSION": "ParameterNotFound",
            "MALFORMED": "Malformed",
            "BAD_BLOB": "InvalidCiphertext",
            "UNSUPPORTED": "Malformed",
        }
        targets = {f.variable: f.target for f in info.value.failures}
        assert targets["MISSING"] == "/app/missing"
        assert "ssm-foo" in str(info.value)
        # Fail closed: nothing exported, nothing cached.
        assert os.environ["GOOD_SSM"] == "ssm:/app/good"
        assert "GOOD_KMS" not in os.environ
        assert_no_leak(failure_texts(info.value) + caplog.text, CANARY, good_blob, "not-base64")
        assert_no_leak(failure_texts(info.value) + caplog.text, env["BAD_BLOB"][4:])

    def test_access_denied_through_moto_auth(
        self, aws_env: dict[str, str], moto_endpoint: str, kms: Any, ssm: Any, key_id: str
    ) -> None:
        iam = _client(aws_env, "iam")
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["ssm:GetParameters"], "Resource": "*"}],
        }
        iam.put_user_policy(UserName="reader", PolicyName="ssm-only", PolicyDocument=json.dumps(policy))
        access = iam.create_access_key(UserName="reader")["AccessKey"]
        put(ssm, "/app/readable", "readable")
        blob = encrypt(kms, key_id, CANARY)
        env = {
            **aws_env,
            "AWS_ACCESS_KEY_ID": access["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": access["SecretAccessKey"],
            "OK": "ssm:/app/readable",
            "DENIED": "kms:" + blob,
        }
        moto_api(moto_endpoint, "reset-auth", b"0")
        try:
            with pytest.raises(BootstrapError) as info:
                secretboot.bootstrap(environ=env)
            # moto verifies each request's signature in this mode: the allowed
            # call resolving proves the transport signs correctly.
            allowed = secretboot.bootstrap(environ={**env, "DENIED": ""}, refresh=True)
        finally:
            moto_api(moto_endpoint, "reset-auth", b"inf")
        (failure,) = info.value.failures
        assert (failure.variable, failure.reason) == ("DENIED", "AccessDenied")
        assert_no_leak(failure_texts(info.value), CANARY, blob, access["SecretAccessKey"])
        assert dict(allowed) == {"OK": "readable"}

    def test_forged_signature_is_refused_in_moto_auth_mode(
        self, aws_env: dict[str, str], moto_endpoint: str, ssm: Any
    ) -> None:
        iam = _client(aws_env, "iam")
        iam.create_user(UserName="reader")
        access = iam.create_access_key(UserName="reader")["AccessKey"]
        put(ssm, "/app/readable", "readable")
        env = {
            **aws_env,
            "AWS_ACCESS_KEY_ID": access["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": "not-the-" + access["SecretAccessKey"][8:],
            "OK": "ssm:/app/readable",
        }
        moto_api(moto_endpoint, "reset-auth", b"0")
        try:
            with pytest.raises(BootstrapError) as info:
                secretboot.bootstrap(environ=env)
        finally:
            moto_api(moto_endpoint, "reset-auth", b"inf")
        # moto's XML 403 carries no JSON error code; both transports report the status.
        assert info.value.failures[0].reason == "AccessDenied"
        assert_no_leak(failure_texts(info.value), access["SecretAccessKey"], env["AWS_SECRET_ACCESS_KEY"])

    def test_unreachable_endpoint(self, aws_env: dict[str, str]) -> None:
        env = {**aws_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "S": "ssm:/app/x"}
        env["SECRETBOOT_TIMEOUT"] = "1"
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ=env)
        [failure] = info.value.failures
        # Both transports: retried until the deadline; the detail says what the last attempt met.
        assert failure.reason == "Timeout" and "the last one met ConnectionError" in failure.detail


class TestOncePerProcess:
    def test_later_calls_return_the_same_keyring(self, aws_env: dict[str, str], ssm: Any) -> None:
        put(ssm, "/app/v", "one")
        env = {**aws_env, "V": "ssm:/app/v"}
        first = secretboot.bootstrap(environ=env)
        ssm.put_parameter(Name="/app/v", Value="two", Type="SecureString", Overwrite=True)
        assert secretboot.bootstrap() is first
        assert secretboot.bootstrap(environ=env)["V"] == "one"
        refreshed = secretboot.bootstrap(environ=env, refresh=True)
        assert refreshed["V"] == "two" and refreshed is first  # updated in place
        assert secretboot.getenv("V") == "two"

    def test_concurrent_first_calls_resolve_once(
        self, aws_env: dict[str, str], ssm: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        put(ssm, "/app/v", "one")
        os.environ["V"] = "ssm:/app/v"
        caplog.set_level(logging.INFO, logger="secretboot")
        with ThreadPoolExecutor(8) as pool:
            keyrings = list(pool.map(lambda _: secretboot.bootstrap(), range(8)))
        assert all(k is keyrings[0] for k in keyrings)
        assert caplog.text.count("resolved 1 secret ") == 1

    def test_getenv_bootstraps_on_first_use(self, aws_env: dict[str, str], ssm: Any) -> None:
        put(ssm, "/app/v", "lazy")
        os.environ["V"] = "ssm:/app/v"
        assert secretboot.getenv("V") == "lazy"

    def test_reference_set_after_bootstrap_is_refused(self, aws_env: dict[str, str]) -> None:
        secretboot.bootstrap()
        os.environ["LATE"] = "ssm:/app/late"
        with pytest.raises(BootstrapError) as info:
            secretboot.getenv("LATE")
        assert info.value.failures[0].reason == "NotResolved"


class TestExport:
    def test_export_writes_and_reset_restores(self, aws_env: dict[str, str], ssm: Any) -> None:
        put(ssm, "/app/v", CANARY)
        os.environ["V"] = "ssm:/app/v"
        secretboot.bootstrap()
        assert os.environ["V"] == "ssm:/app/v"  # off by default
        secretboot.bootstrap(refresh=True, export=True)
        assert os.environ["V"] == CANARY
        # A refresh reads the original reference again, not the plaintext.
        ssm.put_parameter(Name="/app/v", Value="rotated", Type="SecureString", Overwrite=True)
        assert secretboot.bootstrap(refresh=True, export=True)["V"] == "rotated"
        assert os.environ["V"] == "rotated"
        secretboot.reset()
        assert os.environ["V"] == "ssm:/app/v"

    def test_export_from_environment_variable(self, aws_env: dict[str, str], ssm: Any) -> None:
        put(ssm, "/app/v", CANARY)
        os.environ.update({"V": "ssm:/app/v", "SECRETBOOT_EXPORT": "true"})
        secretboot.bootstrap()
        assert os.environ["V"] == CANARY

    def test_bad_export_flag(self, aws_env: dict[str, str]) -> None:
        with pytest.raises(ConfigurationError, match="SECRETBOOT_EXPORT"):
            secretboot.bootstrap(environ={**aws_env, "SECRETBOOT_EXPORT": "maybe"})

    @pytest.mark.parametrize(
        ("line", "shown"),
        [
            (f"'PASSWORD={CANARY}'=1", "PASSWORD..."),  # the name holds what looks like a value
            ("'A=B'=ssm:/app/v", "A..."),
            (f"'={CANARY}'=1", "(empty name)..."),
        ],
    )
    def test_a_name_no_environment_can_hold_fails_closed(
        self, aws_env: dict[str, str], ssm: Any, tmp_path: Any, line: str, shown: str
    ) -> None:
        put(ssm, "/app/v", CANARY)
        os.environ["V"] = "ssm:/app/v"
        dotenv = tmp_path / ".env"
        dotenv.write_text(f"AAA_FIRST=written-first\n{line}\nZZZ_LAST=x\n")
        before = dict(os.environ)
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(env_file=dotenv, export=True)
        assert dict(os.environ) == before  # nothing written, not even the names before it
        assert [(f.variable, f.reason) for f in info.value.failures] == [(shown, "NotExportable")]
        assert "'='" in str(info.value)
        assert_no_leak(failure_texts(info.value), CANARY)
        # Without export the file is usable as it is.
        assert secretboot.bootstrap(env_file=dotenv)["V"] == CANARY

    def test_a_name_from_the_environ_argument_is_checked_too(self, aws_env: dict[str, str], ssm: Any) -> None:
        put(ssm, "/app/v", CANARY)
        before = dict(os.environ)
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(environ={**aws_env, "OK": "ssm:/app/v", "X=Y": "ssm:/app/v"}, export=True)
        assert [(f.variable, f.kind, f.reason) for f in info.value.failures] == [
            ("X...", "ssm", "NotExportable")
        ]
        assert dict(os.environ) == before

    def test_a_write_the_os_refuses_undoes_every_write(
        self, aws_env: dict[str, str], ssm: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        put(ssm, "/app/v", "first")
        names = [f"V{i}" for i in range(5)]
        os.environ.update(dict.fromkeys(names, "ssm:/app/v"))
        keyring = secretboot.bootstrap(export=True)
        exported = dict(os.environ)
        assert [exported[name] for name in names] == ["first"] * 5
        ssm.put_parameter(Name="/app/v", Value="second", Type="SecureString", Overwrite=True)
        real_putenv = os.putenv

        def putenv(name: str | bytes, value: str | bytes) -> None:
            if name in ("V3", b"V3"):  # after V0, V1 and V2 were written
                raise OSError(12, "Cannot allocate memory")
            real_putenv(name, value)

        monkeypatch.setattr(os, "putenv", putenv)
        with pytest.raises(BootstrapError) as info:
            secretboot.bootstrap(refresh=True, export=True)
        assert [(f.variable, f.reason) for f in info.value.failures] == [("V3", "NotExportable")]
        assert info.value.__context__ is None and info.value.__cause__ is None
        # Nothing applied: the environment and the keyring are those of the last boot.
        assert dict(os.environ) == exported
        assert dict(keyring) == dict.fromkeys(names, "first")
        monkeypatch.setattr(os, "putenv", real_putenv)
        secretboot.reset()
        assert [os.environ[name] for name in names] == ["ssm:/app/v"] * 5

    def test_refresh_drops_what_it_no_longer_exports(
        self, aws_env: dict[str, str], ssm: Any, tmp_path: Any
    ) -> None:
        put(ssm, "/app/v", CANARY)
        first, second = tmp_path / "first.env", tmp_path / "second.env"
        first.write_text("V=ssm:/app/v\nONLY_FIRST=1\nBOTH=1\n")
        second.write_text("BOTH=2\n")
        secretboot.bootstrap(env_file=first, export=True)
        assert (os.environ["V"], os.environ["ONLY_FIRST"], os.environ["BOTH"]) == (CANARY, "1", "1")
        secretboot.bootstrap(refresh=True, env_file=second, export=True)
        assert "V" not in os.environ and "ONLY_FIRST" not in os.environ
        assert os.environ["BOTH"] == "2"
        secretboot.reset()
        assert "BOTH" not in os.environ

    @pytest.mark.parametrize("aws_env", ["fast"], indirect=True)  # about os.environ, not the transport
    def test_a_refresh_never_shows_a_reference_to_another_thread(
        self, aws_env: dict[str, str], ssm: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import sys
        import threading

        put(ssm, "/app/v", CANARY)
        names = [f"SECRET_{i}" for i in range(100)]
        os.environ.update(dict.fromkeys(names, "ssm:/app/v"))
        secretboot.bootstrap(export=True)
        # Every value written into the environment (os.environ's writes go through putenv):
        # the deterministic half of the test; the reader thread below is the observable one.
        written: set[str | bytes] = set()
        real_putenv = os.putenv

        def putenv(name: str | bytes, value: str | bytes) -> None:
            written.add(value)
            real_putenv(name, value)

        monkeypatch.setattr(os, "putenv", putenv)
        seen: set[str] = set()
        reads = 0
        done = threading.Event()

        def reader() -> None:
            nonlocal reads
            while not done.is_set():
                for name in names:
                    seen.add(os.environ.get(name, "<unset>"))
                reads += 1

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for _ in range(8):
                secretboot.bootstrap(refresh=True, export=True)
        finally:
            done.set()
            thread.join()
            sys.setswitchinterval(interval)
        assert reads > 8
        assert seen == {CANARY}, "another thread saw a reference in the environment"
        assert {os.fsdecode(value) for value in written} == {CANARY}, "a reference was written back"


class TestEnvFile:
    def test_env_file_values_and_precedence(self, aws_env: dict[str, str], ssm: Any, tmp_path: Any) -> None:
        put(ssm, "/app/from-file", "file-secret")
        dotenv = tmp_path / ".env"
        dotenv.write_text(
            "# local settings\nFROM_FILE=ssm:/app/from-file\nPLAIN=file-plain\nBOTH=from-file\n"
        )
        os.environ["BOTH"] = "from-environment"
        secrets = secretboot.bootstrap(env_file=dotenv)
        assert dict(secrets) == {"FROM_FILE": "file-secret"}
        assert secretboot.getenv("PLAIN") == "file-plain"
        assert secretboot.getenv("BOTH") == "from-environment"
        assert "PLAIN" not in os.environ

    def test_env_file_from_setting_with_export(
        self, aws_env: dict[str, str], ssm: Any, tmp_path: Any
    ) -> None:
        put(ssm, "/app/from-file", "file-secret")
        dotenv = tmp_path / "app.env"
        dotenv.write_text("FROM_FILE=ssm:/app/from-file\nPLAIN=file-plain\n")
        os.environ["SECRETBOOT_ENV_FILE"] = str(dotenv)
        secretboot.bootstrap(export=True)
        assert (os.environ["FROM_FILE"], os.environ["PLAIN"]) == ("file-secret", "file-plain")
        secretboot.reset()
        assert "FROM_FILE" not in os.environ and "PLAIN" not in os.environ

    def test_aws_settings_can_come_from_the_file(
        self, aws_env: dict[str, str], ssm: Any, tmp_path: Any
    ) -> None:
        put(ssm, "/app/v", "via-file-endpoint")
        endpoint = os.environ.pop("AWS_ENDPOINT_URL")
        dotenv = tmp_path / ".env"
        dotenv.write_text(f"AWS_ENDPOINT_URL={endpoint}\nV=ssm:/app/v\n")
        assert secretboot.bootstrap(env_file=dotenv)["V"] == "via-file-endpoint"

    def test_missing_env_file(self, aws_env: dict[str, str], tmp_path: Any) -> None:
        with pytest.raises(ConfigurationError, match="does not exist"):
            secretboot.bootstrap(env_file=tmp_path / "nope.env")

    def test_values_are_python_dotenvs(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from dotenv import dotenv_values

        from secretboot._environment import _read_env_file

        monkeypatch.setenv("FROM_ENVIRONMENT", "env-value")
        monkeypatch.setenv("OVERRIDDEN", "by-environment")
        dotenv = tmp_path / ".env"
        dotenv.write_text(
            "# comment\n"
            "A=plain\n"
            "B=${A}-expanded\n"
            "C='single ${A}'\n"
            'D="double ${A} \\n newline"\n'
            "E=${LATER}-before-later\n"
            "LATER=later\n"
            "F=${MISSING:-default}\n"
            "G=${FROM_ENVIRONMENT}\n"
            "OVERRIDDEN=by-file\n"
            "H=${OVERRIDDEN}\n"
            "export I=exported # trailing comment\n"
            "NO_VALUE\n"
            "EMPTY=\n"
            "this line does not parse ===\n"
            "J=$A-not-braced\n"
        )
        expected = {k: v for k, v in dotenv_values(dotenv).items() if v is not None}
        assert _read_env_file(dotenv) == expected
        assert expected["B"] == "plain-expanded" and expected["H"] == "by-file"

    def test_reading_a_large_file_is_linear(self, tmp_path: Any) -> None:
        """A large .env reads in time proportional to its lines (it was quadratic: 20,000 took 27 s).

        Not a timed test: the ratio between two sizes, each the faster of two runs in this
        thread's CPU time, which neither the machine's load nor its speed moves much. Doubling
        the lines costs about 2x when linear, and tends to 4x when quadratic; 3 separates them.
        """
        import time

        from secretboot._environment import _read_env_file

        def cost(lines: int) -> float:
            dotenv = tmp_path / f"{lines}.env"
            dotenv.write_text(
                "".join(
                    f"NAME_{i}=value-${{NAME_{i - 1}}}\n" if i % 10 == 1 else f"NAME_{i}='value {i}'\n"
                    for i in range(lines)
                )
            )
            runs = []
            for _ in range(2):
                started = time.thread_time()
                assert len(_read_env_file(dotenv)) == lines
                runs.append(time.thread_time() - started)
            return min(runs)

        small, large = cost(10_000), cost(20_000)
        assert large / small < 3, f"{small:.2f} s for 10,000 lines, {large:.2f} s for 20,000"


def test_info_line_has_counts_and_no_values(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(ssm, "/app/a", CANARY)
    blob = encrypt(kms, key_id, CANARY)
    env = {**aws_env, "A": "ssm:/app/a", "B": "kms:" + blob}
    caplog.set_level(logging.DEBUG)
    secretboot.bootstrap(environ=env)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "secretboot"]
    transport = aws_env["SECRETBOOT_TRANSPORT"]
    assert line.startswith(
        f"resolved 2 secrets (kms=1, ssm=1) with 2 API calls (kms=1, ssm=1) and 0 retries via {transport} in "
    )
    assert_no_leak(caplog.text, CANARY, blob)


def test_no_references_makes_no_calls(aws_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="secretboot")
    assert len(secretboot.bootstrap(environ={"PLAIN": "https://example.com"})) == 0
    assert "with 0 API calls" in caplog.text


def _client(aws_env: dict[str, str], service: str) -> Any:
    return client(aws_env["AWS_ENDPOINT_URL"], service)


def test_an_env_file_starting_with_a_byte_order_mark(tmp_path: Path) -> None:
    # Editors on Windows write one; the first name must not become "\ufeffFIRST".
    path = tmp_path / ".env"
    path.write_bytes(b"\xef\xbb\xbfFIRST=one\nSECOND=two\n")
    secretboot.bootstrap(environ={}, env_file=path)
    assert (secretboot.getenv("FIRST"), secretboot.getenv("SECOND")) == ("one", "two")
