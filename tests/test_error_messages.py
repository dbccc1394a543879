"""Errors that say what to do (issue 14, item 5): which context, which sources, which host, which codes.

Each message names what was tried and how to fix it, and never a value: no plaintext, no
ciphertext, no credential, no value of a user's encryption context, no URL path or user:password.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

import secretboot
from secretboot import BootstrapError, ConfigurationError, _cli, _kms, _retry
from secretboot import _transport as t
from secretboot.contrib import flask as flask_contrib

CANARY = "canary-plaintext-9e41d"
HUSH = "hush-context-value-51c7"  # a value of a user's SECRETBOOT_KMS_CONTEXT: never shown


def _encrypt(kms: Any, key_id: str, context: dict[str, str] | None = None) -> str:
    kwargs: dict[str, Any] = {"KeyId": key_id, "Plaintext": CANARY.encode()}
    if context:
        kwargs["EncryptionContext"] = context
    return base64.b64encode(kms.encrypt(**kwargs)["CiphertextBlob"]).decode()


def _failure(env: dict[str, str]) -> tuple[secretboot.Failure, str]:
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    [failure] = info.value.failures
    seen = "\n".join([str(info.value), repr(info.value), *map(repr, info.value.failures)])
    return failure, seen


# -- KMS: which context was tried, and how to fix it ------------------------------------------


def test_lambda_context_error_names_the_function_and_the_fix(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    blob = _encrypt(kms, key_id, {"LambdaFunctionName": "other-fn"})
    env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "my-fn", "SECRET_KEY": f"kms:{blob}"}
    failure, seen = _failure(env)
    assert failure.reason == "InvalidCiphertext"
    assert '(tried {"LambdaFunctionName": "my-fn"} then no context)' in failure.detail
    assert "set SECRETBOOT_KMS_CONTEXT to that context as JSON" in failure.detail
    assert "secretboot migrate SECRET_KEY --key-id KEY --lambda-function my-fn" in failure.detail
    assert "secretboot rotate SECRET_KEY --key-id KEY --lambda-function my-fn --source-context K=V" in (
        failure.detail
    )
    assert CANARY not in seen and blob not in seen and blob[:40] not in seen


def test_user_context_error_names_its_keys_never_its_values(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    blob = _encrypt(kms, key_id, {"team": "other"})
    context = json.dumps({"team": HUSH, "app": HUSH + "-2"})
    env = {**aws_env, "SECRETBOOT_KMS_CONTEXT": context, "SECRET_KEY": f"kms:{blob}"}
    failure, seen = _failure(env)
    assert failure.reason == "InvalidCiphertext"
    assert '(tried {"app": (value not shown), "team": (value not shown)})' in failure.detail
    assert "secretboot migrate SECRET_KEY --key-id KEY --context app=VALUE --context team=VALUE" in (
        failure.detail
    )
    assert HUSH not in seen and CANARY not in seen and blob[:40] not in seen


def test_no_context_error_says_what_the_lambda_console_uses(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    blob = _encrypt(kms, key_id, {"LambdaFunctionName": "my-fn"})
    failure, seen = _failure({**aws_env, "SECRET_KEY": f"kms:{blob}"})
    assert "(tried no context)" in failure.detail
    assert (
        'set SECRETBOOT_KMS_CONTEXT to it as JSON (the Lambda console\'s helpers use {"LambdaFunctionName"'
        in (failure.detail)
    )
    assert "secretboot migrate SECRET_KEY --key-id KEY (from the plaintext)" in failure.detail
    assert CANARY not in seen


def test_the_fix_names_each_variable_sharing_one_ciphertext(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    blob = _encrypt(kms, key_id, {"LambdaFunctionName": "other-fn"})
    env = {**aws_env, "AWS_LAMBDA_FUNCTION_NAME": "fn", "A": f"kms:{blob}", "B": f"kms:{blob}"}
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    for failure in info.value.failures:
        assert f"secretboot migrate {failure.variable} --key-id KEY --lambda-function fn" in failure.detail


def test_describe_context_shows_lambda_and_reserved_values_only() -> None:
    context = {"LambdaFunctionName": "fn", "secretboot:purpose": "sealed-data-key", "tenant": HUSH}
    described = _kms.describe_context(context)
    assert described == (
        '{"LambdaFunctionName": "fn", "secretboot:purpose": "sealed-data-key", "tenant": (value not shown)}'
    )
    assert _kms.describe_context(None) == _kms.describe_context({}) == "no context"


# -- no credentials: where they were looked for, what to set -----------------------------------


def test_no_credentials_says_where_it_looked(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    # boto3's chain reads these from the process: no shared files, no instance metadata.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["S"] = "ssm:/app/x"
    if aws_env["SECRETBOOT_TRANSPORT"] == "fast":
        with pytest.raises(ConfigurationError) as info:
            secretboot.bootstrap(environ=env)
        message = str(info.value)
        for source in (
            "none in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "in profile 'default' (AWS_PROFILE) in the shared credentials and config files",
            "nor container credentials (AWS_CONTAINER_CREDENTIALS_*)",
            "AWS_EC2_METADATA_DISABLED rules out instance metadata",
        ):
            assert source in message, source
    else:
        failure, _ = _failure(env)
        assert failure.reason == "NoCredentials"
        for source in (
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "profile 'default' (AWS_PROFILE) in ~/.aws/credentials and ~/.aws/config",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "container and instance metadata",
            "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        ):
            assert source in failure.detail, source


def test_fast_transport_refusal_names_the_one_variable_missing() -> None:
    from secretboot._fast import unsupported

    why = unsupported({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_REGION": "us-east-1"})
    assert why == "the environment holds only part of a key pair: AWS_SECRET_ACCESS_KEY is not set"
    creds = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "HOME": "/nonexistent"}
    assert unsupported(creds) == (
        "no region is set (AWS_REGION, AWS_DEFAULT_REGION or the profile's region): set AWS_REGION"
    )
    proxied = unsupported({**creds, "AWS_REGION": "us-east-1", "https_proxy": "http://u:p4ss@proxy:3128"})
    assert proxied == "https_proxy is set (the fast transport does not use proxies)"


# -- connection errors name the endpoint's host:port, nothing more ------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _transport(env: dict[str, str]) -> t.Transport:
    transport: Any
    if env["SECRETBOOT_TRANSPORT"] == "fast":
        from secretboot._fast import FastTransport

        transport = FastTransport(env)
    else:
        from secretboot._boto3 import Boto3Transport

        transport = Boto3Transport(env, max_pool_connections=1)
    transport._policy = _retry.RetryPolicy(None, max_attempts=1)  # one attempt, no pause
    return transport  # type: ignore[no-any-return]


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}", "http://someone:pa55word@127.0.0.1:{port}"])
def test_connection_error_names_host_and_port(aws_env: dict[str, str], url: str) -> None:
    port = _closed_port()
    env = {**aws_env, "AWS_ENDPOINT_URL": url.format(port=port)}
    with pytest.raises(t.TransportError) as info:
        _transport(env).get_parameters(["/app/x"])
    assert info.value.reason == t.CONNECTION_ERROR
    assert f" at 127.0.0.1:{port}" in info.value.detail
    assert re.fullmatch(rf"\w+ at 127\.0\.0\.1:{port}", info.value.detail), info.value.detail
    assert "someone" not in str(info.value) and "pa55word" not in str(info.value)


def test_boto3_endpoint_detail_keeps_only_host_and_port() -> None:
    from botocore import exceptions as be

    from secretboot._boto3 import _translated

    url = "https://user:pw@kms.eu-west-1.amazonaws.com/some/path?token=abc"
    error = _translated(be.EndpointConnectionError(endpoint_url=url))
    assert error is not None and error.detail == "EndpointConnectionError at kms.eu-west-1.amazonaws.com:443"
    error = _translated(be.ReadTimeoutError(endpoint_url="http://[::1]:8080/"))
    assert error is not None and error.detail == "ReadTimeoutError at [::1]:8080"
    error = _translated(be.HTTPClientError(error=OSError("boom")))
    assert error is not None and error.detail == "HTTPClientError"


# -- each command's --help lists the exit codes it can return ---------------------------------


def _codes(table: str) -> dict[int, str]:
    return {int(code): text.strip() for code, text in re.findall(r"^\s+(\d+)\s+(.*)$", table, re.M)}


@pytest.mark.parametrize("command", sorted(_cli.COMMAND_EXIT_CODES))
def test_each_command_lists_only_its_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    listed = _codes(out.split("exit codes:", 1)[1])
    expected = {
        "exec": {1, 2, 126, 127, 130},
        "keygen": {0, 2, 130},
    }.get(command, {0, 1, 2, 130})
    assert set(listed) == expected
    if command != "exec":
        assert "exec:" not in out and "126" not in out and "127" not in out


def test_the_top_level_help_keeps_the_whole_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--help"]) == 0
    assert set(_codes(capsys.readouterr().out.split("exit codes:", 1)[1])) == {0, 1, 2, 126, 127, 130}


def test_flask_check_lists_the_same_codes_and_words_as_secretboot_check() -> None:
    assert _codes(flask_contrib._EXIT_CODES) == _codes(_cli.COMMAND_EXIT_CODES["check"])


def test_out_of_time_after_connection_errors_names_the_host() -> None:
    from secretboot import _retry
    from secretboot import _transport as t

    last = t.TransportError(t.CONNECTION_ERROR, "ConnectionRefusedError at 127.0.0.1:9")
    error = _retry.out_of_time("GetParameters", 7, last)
    assert error.detail == (
        "SECRETBOOT_TIMEOUT ran out for GetParameters after 7 attempt(s); "
        "the last one met ConnectionError (ConnectionRefusedError at 127.0.0.1:9)"
    )
