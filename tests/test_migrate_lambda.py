"""``secretboot migrate NAME --lambda-function FN --apply``: a Lambda function's own environment,
wrapped in place, against the local endpoint's Lambda API.

Every run goes through ``LambdaRevisions`` (tests/lambdaapi.py), which gives moto's Lambda the
``RevisionId`` checks real Lambda makes, so the concurrent-change path is Lambda's own 412.
What the function holds afterwards is read from moto directly; the plaintext is looked for in
every output and in every file the command could have written.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import secretboot
from secretboot import _workflows as w
from tests.awsproxy import ProxyRequest, ProxyResponse
from tests.conftest import moto_api
from tests.lambdaapi import LambdaRevisions, create_function, function_variables, set_function_variables
from tests.test_cli import CANARY, Aws, Cli, Key, assert_no_leak, assert_usage_error

FUNCTION = "orders-api"
# The rest of a realistic environment: each must come back byte for byte.
OTHERS = {
    "DEBUG": "0",
    "API_URL": "https://example.com/v1/?a=1&b=2",
    "DATABASE_URL": "postgres://app@db.internal:5432/app",
    "GREETING": "grüß dich, “quoted” ✓",
    "EMPTY": "",
    "SPACES": "  padded  ",
    "DB_PASSWORD": "ssm:/orders/db-password",
}


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[LambdaRevisions]:
    moto_api(moto_endpoint, "reset")
    with LambdaRevisions(moto_endpoint) as running:
        yield running


@pytest.fixture
def aws(proxy: LambdaRevisions, moto_endpoint: str) -> Aws:
    return Aws(moto_endpoint)


@pytest.fixture
def key(aws: Aws) -> Key:
    return aws.create_key()


@pytest.fixture
def cli(proxy: LambdaRevisions, tmp_path: Path) -> Cli:
    return Cli(tmp_path, proxy.url)  # the CLI reaches AWS only through the proxy


def _function(endpoint: str, **variables: str) -> dict[str, str]:
    env = {"SECRET_KEY": CANARY, **OTHERS, **variables}
    create_function(endpoint, FUNCTION, env)
    return env


def _apply(cli: Cli, key: Key, *extra: str, name: str = "SECRET_KEY") -> object:
    return cli.run("migrate", name, "--key-id", key.id, "--lambda-function", FUNCTION, "--apply", *extra)


def test_apply_wraps_the_variable_in_the_function_and_keeps_everything_else(
    cli: Cli, aws: Aws, key: Key, proxy: LambdaRevisions, moto_endpoint: str
) -> None:
    before = _function(moto_endpoint)
    revision = proxy.revision(FUNCTION)
    run = _apply(cli, key)
    assert run.returncode == 0, str(run)
    after = function_variables(moto_endpoint, FUNCTION)
    assert list(after) == list(before)  # same names, same order
    assert {k: v for k, v in after.items() if k != "SECRET_KEY"} == OTHERS
    plaintext, key_arn = aws.decrypt(after["SECRET_KEY"], {"LambdaFunctionName": FUNCTION})
    assert (plaintext, key_arn) == (CANARY, key.arn)
    with pytest.raises(Exception, match="InvalidCiphertext"):
        aws.decrypt(after["SECRET_KEY"])  # bound to the function's context
    # One write, guarded by the revision read.
    assert proxy.updates() == [(FUNCTION, revision)]
    size = w.environment_size(after)
    assert f"SECRET_KEY in {FUNCTION}'s environment: now kms (KMS ciphertext, " in run.stdout
    assert f"{FUNCTION}'s environment: {size} of 4096 bytes" in run.stdout
    assert "take the plaintext SECRET_KEY out of whatever deploys" in run.stdout
    assert_no_leak(run, cli.folder, CANARY)
    assert list(cli.folder.iterdir()) == []  # no .env written, nor anything else


def test_the_function_opens_it_at_start_up(cli: Cli, aws: Aws, key: Key, moto_endpoint: str) -> None:
    _function(moto_endpoint)
    aws.ssm.put_parameter(Name="/orders/db-password", Value="db-secret", Type="SecureString")
    assert _apply(cli, key).returncode == 0
    # What the function's bootstrap() sees: its variables, its name, the runtime's region.
    environ = {**function_variables(moto_endpoint, FUNCTION), **cli.environ(None)}
    environ["AWS_LAMBDA_FUNCTION_NAME"] = FUNCTION
    keyring = secretboot.bootstrap(environ=environ, env_file=None)
    assert keyring["SECRET_KEY"] == CANARY
    assert keyring["DB_PASSWORD"] == "db-secret"


def test_rotate_puts_a_fresh_key_in_place_and_keeps_the_old_one_wrapped(
    cli: Cli, aws: Aws, key: Key, moto_endpoint: str
) -> None:
    _function(moto_endpoint)
    run = _apply(cli, key, "--rotate")
    assert run.returncode == 0, str(run)
    after = function_variables(moto_endpoint, FUNCTION)
    context = {"LambdaFunctionName": FUNCTION}
    fresh, _ = aws.decrypt(after["SECRET_KEY"], context)
    old, _ = aws.decrypt(after["SECRET_KEY_FALLBACK"], context)
    assert old == CANARY
    assert fresh != CANARY and len(base64.urlsafe_b64decode(fresh)) == 32
    assert list(after)[-1] == "SECRET_KEY_FALLBACK"
    assert "SECRET_KEY_FALLBACK" in run.stdout and "SECRET_KEY_FALLBACKS" in run.stdout
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, fresh)


def test_rotate_refuses_when_the_fallback_is_taken(
    cli: Cli, key: Key, moto_endpoint: str, proxy: LambdaRevisions
) -> None:
    before = _function(moto_endpoint, SECRET_KEY_FALLBACK="older")
    run = _apply(cli, key, "--rotate")
    assert_usage_error(run)
    assert "SECRET_KEY_FALLBACK is already set in orders-api's environment" in run.stderr
    assert function_variables(moto_endpoint, FUNCTION) == before
    assert proxy.updates() == []
    assert_no_leak(run, cli.folder, CANARY)


def test_to_ssm_stores_the_value_and_points_the_variable_at_it(
    cli: Cli, aws: Aws, key: Key, moto_endpoint: str
) -> None:
    _function(moto_endpoint)
    run = _apply(cli, key, "--to-ssm", "/orders/secret-key")
    assert run.returncode == 0, str(run)
    assert function_variables(moto_endpoint, FUNCTION)["SECRET_KEY"] == "ssm:/orders/secret-key"
    assert aws.parameter("/orders/secret-key")["Value"] == CANARY
    assert_no_leak(run, cli.folder, CANARY)


def test_a_reference_already_there_is_left_alone(
    cli: Cli, key: Key, moto_endpoint: str, proxy: LambdaRevisions
) -> None:
    before = _function(moto_endpoint, SECRET_KEY="ssm:/orders/secret-key")
    run = _apply(cli, key)
    assert run.returncode == 0, str(run)
    assert "already a ssm reference; nothing changed" in run.stdout
    assert proxy.updates() == []
    assert function_variables(moto_endpoint, FUNCTION) == before


def test_the_4kb_budget_is_checked_before_anything_is_written(
    cli: Cli, key: Key, moto_endpoint: str, proxy: LambdaRevisions
) -> None:
    # Fits as plaintext (moto does not check; Lambda would), not once wrapped (~150 bytes more).
    filler = "x" * (4096 - w.environment_size({"SECRET_KEY": CANARY, **OTHERS, "FILLER": ""}) - 50)
    before = _function(moto_endpoint, FILLER=filler)
    assert w.environment_size(before) <= w.LAMBDA_ENVIRONMENT_LIMIT
    run = _apply(cli, key)
    assert_usage_error(run)
    assert "orders-api's environment would be" in run.stderr
    assert "Lambda allows 4096. Nothing was changed" in run.stderr
    assert "--to-ssm PARAM" in run.stderr
    assert proxy.updates() == []
    assert function_variables(moto_endpoint, FUNCTION) == before
    assert_no_leak(run, cli.folder, CANARY)


def test_a_change_made_meanwhile_wins_and_nothing_is_overwritten(
    cli: Cli, key: Key, moto_endpoint: str, proxy: LambdaRevisions
) -> None:
    _function(moto_endpoint)
    theirs = {"SECRET_KEY": CANARY, **OTHERS, "DEBUG": "1", "NEW_FLAG": "on"}
    proxy.before_next_update(lambda: set_function_variables(moto_endpoint, FUNCTION, theirs))
    run = _apply(cli, key)
    assert run.returncode == 1, str(run)
    assert "orders-api changed after it was read" in run.stderr
    assert "nothing was written to it: run again" in run.stderr
    assert "PreconditionFailed" in run.stderr
    assert function_variables(moto_endpoint, FUNCTION) == theirs  # the other writer's change stands
    [(_, sent)] = proxy.updates()
    assert sent is not None
    assert_no_leak(run, cli.folder, CANARY)
    # Run again: it reads the new revision and keeps the other writer's variables.
    again = _apply(cli, key)
    assert again.returncode == 0, str(again)
    after = function_variables(moto_endpoint, FUNCTION)
    assert after["NEW_FLAG"] == "on" and after["DEBUG"] == "1"
    assert after["SECRET_KEY"].startswith("kms:")


class _Refusing(LambdaRevisions):
    """Lambda refusing the new environment with a message quoting it, as its 4 KB error does."""

    def forward(self, request: ProxyRequest) -> ProxyResponse:
        if request.method == "PUT" and request.path.endswith("/configuration"):
            quoted = json.dumps({"SECRET_KEY": CANARY}, separators=(",", ":"))
            message = f"exceeded the 4KB limit. String measured: {quoted}"
            body = json.dumps({"Type": "User", "message": message}).encode()
            headers = [
                ("Content-Type", "application/json"),
                ("x-amzn-ErrorType", "InvalidParameterValueException"),
            ]
            return ProxyResponse(400, "Bad Request", headers, body)
        return super().forward(request)


def test_lambdas_own_refusal_is_reported_without_its_message(
    tmp_path: Path, key: Key, moto_endpoint: str
) -> None:
    before = _function(moto_endpoint)
    with _Refusing(moto_endpoint) as refusing:
        cli = Cli(tmp_path, refusing.url)
        run = _apply(cli, key)
    assert run.returncode == 1, str(run)
    assert "InvalidParameterValueException" in run.stderr
    assert "Lambda refused the new environment of orders-api" in run.stderr
    assert "String measured" not in run.stderr
    assert function_variables(moto_endpoint, FUNCTION) == before
    assert_no_leak(run, cli.folder, CANARY)


class _Updating(LambdaRevisions):
    """Lambda while a deploy is still updating the function: 409 ResourceConflictException."""

    def forward(self, request: ProxyRequest) -> ProxyResponse:
        if request.method == "PUT" and request.path.endswith("/configuration"):
            body = b'{"Type":"User","message":"The operation cannot be performed at this time."}'
            headers = [
                ("Content-Type", "application/json"),
                ("x-amzn-ErrorType", "ResourceConflictException"),
            ]
            return ProxyResponse(409, "Conflict", headers, body)
        return super().forward(request)


def test_an_update_in_progress_says_to_run_again(tmp_path: Path, key: Key, moto_endpoint: str) -> None:
    before = _function(moto_endpoint)
    with _Updating(moto_endpoint) as updating:
        run = _apply(Cli(tmp_path, updating.url), key, "--to-ssm", "/orders/secret-key")
    assert run.returncode == 1, str(run)
    assert "orders-api is being updated (a deploy in progress?); nothing was written to it" in run.stderr
    assert "/orders/secret-key is stored already: run again with --overwrite" in run.stderr
    assert function_variables(moto_endpoint, FUNCTION) == before
    assert_no_leak(run, tmp_path, CANARY)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--env-file", ".env"), "--apply reads and writes orders-api's environment: drop --env-file"),
        (("--from-env",), "drop --from-env"),
        (("--context", "a=b"), "drop --context"),
    ],
)
def test_apply_refuses_options_that_name_another_source(
    cli: Cli, key: Key, moto_endpoint: str, proxy: LambdaRevisions, extra: tuple[str, ...], message: str
) -> None:
    before = _function(moto_endpoint)
    run = _apply(cli, key, *extra)
    assert_usage_error(run)
    assert message in run.stderr
    assert function_variables(moto_endpoint, FUNCTION) == before


def test_apply_needs_a_function(cli: Cli, key: Key) -> None:
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--apply")
    assert_usage_error(run)
    assert "pass --lambda-function FN" in run.stderr


def test_a_variable_the_function_does_not_have(cli: Cli, key: Key, moto_endpoint: str) -> None:
    _function(moto_endpoint)
    run = _apply(cli, key, name="NOT_THERE")
    assert_usage_error(run)
    assert "NOT_THERE is not set in orders-api's environment" in run.stderr


def test_a_function_that_does_not_exist(cli: Cli, key: Key) -> None:
    run = _apply(cli, key)
    assert run.returncode == 1, str(run)
    assert (
        f"NotFound: Function not found: arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"
        in run.stderr
    )
    assert "Traceback" not in run.stderr


def test_without_apply_and_without_a_env_file_the_error_points_at_apply(cli: Cli, key: Key) -> None:
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--lambda-function", FUNCTION)
    assert_usage_error(run)
    assert f"or --apply to migrate {FUNCTION}'s own environment" in run.stderr


def test_environment_size_is_lambdas_measure() -> None:
    assert w.environment_size({}) == 2
    assert w.environment_size({"A": "B"}) == len('{"A":"B"}')
    assert w.environment_size({"A": 'say "hi"'}) == len('{"A":"say \\"hi\\""}')
    assert w.environment_size({"A": "é"}) == len('{"A":"\\u00e9"}')  # never under-counted
