"""SnapStart on container credentials only, as Lambda runs it, under the real awslambdaric.

A SnapStart function gets ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (the Runtime API's own credentials endpoint), never key
variables. The Runtime API emulator serves that endpoint with temporary credentials moto
really checks (``moto_credentials``), and moto's signature-checking mode is on while the
function runs, so a request signed with the wrong, stale or no credentials fails. The
function is the example app behind ``snapstart_probe``, whose JSON lines say what the
keyring holds, which boto modules are imported and how many credential caches secretboot
keeps, before the snapshot and after the restore.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import MetadataRetrievalError
from botocore.utils import ContainerMetadataFetcher
from cryptography.fernet import Fernet

from tests.awsproxy import AwsProxy, ProxyRequest, ProxyResponse
from tests.conftest import moto_api
from tests.credservers import moto_auth, moto_credentials, set_moto_auth
from tests.lambda_runtime import (
    CREDENTIALS_PATH,
    LAMBDA_EXAMPLE,
    RuntimeEmulator,
    RuntimeProcess,
    runtime_environment,
)
from tests.localaws import REGION, client
from tests.test_lambda import FUNCTION, INIT_CALLS, PARAM, PROBE_DIR, WAIT, Aws, Lab, assert_answer, probe

_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]+)/")
# What botocore and boto3 import for a client or a credentials chain. The bare ``botocore``
# package is imported by Powertools' logger (aws_lambda_powertools/shared/user_agent.py) in
# every function that uses it, so its presence says nothing about secretboot.
_POWERTOOLS_ONLY = ["botocore"]


class SigningProxy(AwsProxy):
    """``AwsProxy`` that also records the access key id each request was signed with."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.signed_with: list[str] = []

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        authorization = next((v for k, v in request.headers if k.lower() == "authorization"), "")
        found = _CREDENTIAL.search(authorization)
        with self._lock:
            self.signed_with.append(found.group(1) if found else "")
        return super().handle(request)

    def keys_used(self) -> list[str]:
        with self._lock:
            return list(self.signed_with)


@pytest.fixture
def aws(moto_endpoint: str, tmp_path: Path) -> Iterator[Aws]:
    """The example's secrets in moto, the function's environment without any credentials."""
    moto_api(moto_endpoint, "reset")
    kms, ssm = client(moto_endpoint, "kms"), client(moto_endpoint, "ssm")
    key_id = kms.create_key(Description="secretboot snapstart credentials")["KeyMetadata"]["KeyId"]
    api_token = os.urandom(24).hex()
    ssm.put_parameter(Name=PARAM, Value=api_token, Type="SecureString", KeyId=key_id)
    proxy = SigningProxy(moto_endpoint)
    proxy.start()
    aws = Aws(proxy, kms, key_id, Fernet.generate_key().decode(), api_token, {})
    aws.env = {
        "AWS_ENDPOINT_URL": proxy.url,
        "SECRET_KEY": aws.wrap(aws.secret_key.encode()),
        "API_TOKEN": f"ssm:{PARAM}",
        "POWERTOOLS_SERVICE_NAME": FUNCTION,
        "PYTHONPATH": f"{LAMBDA_EXAMPLE}{os.pathsep}{PROBE_DIR}",
        # Nothing else the default chain could find first (or reach: IMDS stays off).
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield aws
    finally:
        proxy.stop()
        set_moto_auth(moto_endpoint, False)  # whatever a test left on


@pytest.fixture
def lab() -> Iterator[Lab]:
    """tests/test_lambda.py's emulators and runtimes, all stopped by PID."""
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


HANDLER = "snapstart_probe.handler"


def snapshot(emulator: RuntimeEmulator, runtime: RuntimeProcess) -> dict[str, Any]:
    """Wait for the snapshot (restore/next asked, before-snapshot hooks run): the probe's line."""
    emulator.wait_for_restore_next(WAIT)
    runtime.wait_for_output('"probe": "before-snapshot"', WAIT)
    return probe(runtime.output, "before-snapshot")


def signed_with(aws: Aws) -> list[str]:
    """The access key ids of the function's AWS requests so far, in order."""
    assert isinstance(aws.proxy, SigningProxy)
    return aws.proxy.keys_used()


def assert_no_secret(aws: Aws, text: str, *keys: dict[str, str], token: str) -> None:
    aws.assert_no_plaintext(text)
    assert aws.env["SECRET_KEY"].removeprefix("kms:")[:24] not in text
    assert token not in text
    for served in keys:
        assert served["SecretAccessKey"] not in text
        assert served["Token"] not in text


# -- the emulator's credentials endpoint --------------------------------------------------------


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_emulator_serves_container_credentials_as_lambda_does(moto_endpoint: str) -> None:
    moto_api(moto_endpoint, "reset")
    keys = moto_credentials(moto_endpoint)
    with RuntimeEmulator(container_credentials=keys) as emulator:
        env = runtime_environment(emulator, "app.handler", snap_start=True, container_credentials=True)
        assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://{emulator.address}{CREDENTIALS_PATH}"
        assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == emulator.credentials_token
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
        assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in runtime_environment(emulator, "app.handler")

        # botocore's own container fetcher reads it, with the token.
        fetcher = ContainerMetadataFetcher(sleep=lambda _: None)
        uri, token = emulator.credentials_uri, emulator.credentials_token
        document = fetcher.retrieve_full_uri(uri, headers={"Authorization": token})
        assert {k: document[k] for k in ("AccessKeyId", "SecretAccessKey", "Token")} == {
            "AccessKeyId": keys["AccessKeyId"],
            "SecretAccessKey": keys["SecretAccessKey"],
            "Token": keys["Token"],
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["Expiration"])
        # Without the token, or with another one, it refuses.
        assert _status(uri, {}) == 401
        assert _status(uri, {"Authorization": token + "x"}) == 403
        with pytest.raises(MetadataRetrievalError, match="non 200 response 403"):
            fetcher.retrieve_full_uri(uri, headers={"Authorization": "Bearer other"})
        emulator.refuse_credentials(500)
        assert _status(uri, {"Authorization": token}) == 500
        emulator.refuse_credentials(None)
        assert _status(uri, {"Authorization": token}) == 200
        # Every request is counted in its phase: nothing has asked for restore/next yet.
        assert emulator.credential_requests() == {"init": 2}
        # 1 + 401 + 403 + botocore's 3 attempts + 500 + 1
        assert emulator.credential_requests(status=None) == {"init": 8}

    with RuntimeEmulator() as plain:  # no SnapStart credentials: no endpoint
        assert _status(plain.credentials_uri, {"Authorization": plain.credentials_token}) == 404


# -- SnapStart on container credentials --------------------------------------------------------


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_the_restore_resolves_again_through_container_credentials(
    aws: Aws, lab: Lab, moto_endpoint: str, transport: str
) -> None:
    keys = moto_credentials(moto_endpoint)
    env = dict(aws.env)
    if transport == "boto3":
        env["SECRETBOOT_TRANSPORT"] = "boto3"
    emulator = lab.emulator(hold_restore=True, container_credentials=keys)
    with moto_auth(moto_endpoint):  # only the served keys, correctly signed, get through
        runtime = lab.start(emulator, HANDLER, env, snap_start=True, container_credentials=True)
        before = snapshot(emulator, runtime)
        # INIT: one credentials request, two AWS calls signed with the served key.
        assert emulator.credential_requests(status=None) == {"init": 1}
        assert aws.proxy.counts() == INIT_CALLS
        assert (before["references"], before["values"]) == (2, 0)  # the snapshot holds no value
        assert before["credential_caches"] == 0  # nor the temporary credentials

        released = time.monotonic()
        emulator.release_restore()
        restored = emulator.wait_for_next(WAIT) - released
        runtime.wait_for_output('"probe": "after-restore"', WAIT)
        after = probe(runtime.output, "after-restore")
        assert after["values"] == 2 and after["id"] == before["id"]
        # The cache was dropped: the restore asked the endpoint again.
        assert emulator.credential_requests(status=None) == {"init": 1, "restore": 1}
        assert aws.proxy.counts() == {target: 2 * n for target, n in INIT_CALLS.items()}

        event = {"after": "restore", "transport": transport}
        assert_answer(aws, *emulator.invoke(event, WAIT), event)

    assert set(signed_with(aws)) == {keys["AccessKeyId"]}
    assert emulator.credential_requests(status=None) == {"init": 1, "restore": 1}  # none per invoke
    assert emulator.init_errors == emulator.restore_errors == []
    if transport == "auto":
        # The fast path on both sides of the snapshot: no botocore beyond Powertools' bare import.
        assert before["boto"] == after["boto"] == _POWERTOOLS_ONLY, (before, after)
        assert re.search(r"\tresolved 2 secrets .* via fast in", runtime.output), runtime.output
    else:  # the same test sees botocore's chain when boto3 serves
        assert "botocore.credentials" in after["boto"] and "boto3" in after["boto"]
    runtime.stop()
    print(f"\n{transport}: restore to first /invocation/next {restored * 1000:.0f} ms")
    assert_no_secret(aws, runtime.output, keys, token=emulator.credentials_token)


def test_credentials_rotated_during_the_snapshot_sign_the_restore(
    aws: Aws, lab: Lab, moto_endpoint: str
) -> None:
    old, new = moto_credentials(moto_endpoint), moto_credentials(moto_endpoint)
    emulator = lab.emulator(hold_restore=True, container_credentials=old)
    with moto_auth(moto_endpoint):
        runtime = lab.start(emulator, HANDLER, aws.env, snap_start=True, container_credentials=True)
        snapshot(emulator, runtime)
        assert set(signed_with(aws)) == {old["AccessKeyId"]}

    # While the snapshot sleeps, Lambda's credentials move on and the old role loses its
    # permissions: a restore signing with the old key would be refused.
    iam = client(moto_endpoint, "iam")
    iam.delete_role_policy(RoleName=old["RoleArn"].rsplit("/", 1)[1], PolicyName="secretboot")
    emulator.container_credentials = new
    aws.proxy.reset_counts()
    with moto_auth(moto_endpoint):
        assert _denied_with(moto_endpoint, old)  # the old key really is refused now
        emulator.release_restore()
        runtime.wait_ready(WAIT)
        event = {"rotated": True}
        assert_answer(aws, *emulator.invoke(event, WAIT), event)

    used = signed_with(aws)
    init_calls = sum(INIT_CALLS.values())
    assert used[:init_calls] == [old["AccessKeyId"]] * init_calls
    assert used[init_calls:] == [new["AccessKeyId"]] * init_calls
    assert emulator.credential_requests() == {"init": 1, "restore": 1}
    assert emulator.restore_errors == []
    runtime.stop()
    assert_no_secret(aws, runtime.output, old, new, token=emulator.credentials_token)


def _denied_with(endpoint: str, keys: dict[str, str]) -> bool:
    """Whether moto refuses an SSM call signed with ``keys`` (its auth mode must be on)."""
    import boto3
    from botocore.exceptions import ClientError

    ssm = boto3.client(
        "ssm",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=keys["AccessKeyId"],
        aws_secret_access_key=keys["SecretAccessKey"],
        aws_session_token=keys["Token"],
    )
    try:
        ssm.get_parameters(Names=[PARAM], WithDecryption=True)
    except ClientError as exc:
        return "AccessDenied" in str(exc) or exc.response["Error"]["Code"] in ("403", "AccessDeniedException")
    return False


@pytest.mark.parametrize("transport", ["auto", "boto3"])
def test_credentials_refused_after_the_restore_fail_it_closed(
    aws: Aws, lab: Lab, moto_endpoint: str, transport: str
) -> None:
    keys = moto_credentials(moto_endpoint)
    env = dict(aws.env)
    if transport == "boto3":
        env["SECRETBOOT_TRANSPORT"] = "boto3"
    emulator = lab.emulator(hold_restore=True, container_credentials=keys)
    with moto_auth(moto_endpoint):
        runtime = lab.start(emulator, HANDLER, env, snap_start=True, container_credentials=True)
        snapshot(emulator, runtime)
        emulator.refuse_credentials(403)
        released = time.monotonic()
        emulator.release_restore()
        assert runtime.wait_exit(WAIT) == 65
        failed_after = time.monotonic() - released

    assert failed_after < 10.0  # within Lambda's restore budget
    [error] = emulator.restore_errors
    assert error.error_type == "Runtime.AfterRestoreError"
    assert error.body["errorType"] == "BootstrapError"
    message = error.body["errorMessage"]
    # Both variables fail, each naming the credentials endpoint (not the role's permissions):
    # the fast transport with the status it answered, botocore's chain with the provider's
    # name, or the deadline while botocore retries.
    for name in ("SECRET_KEY", "API_TOKEN"):
        [line] = [line for line in message.splitlines() if line.lstrip().startswith(name)]
        if transport == "auto":
            assert ": CredentialRetrievalError: container credentials" in line, message
            assert "answered HTTP 403 (after 3 attempt(s))" in line, message
        else:
            retrieval = ": CredentialRetrievalError: container-role failed" in line
            assert retrieval or ": Timeout: " in line, message
    assert emulator.credential_requests() == {"init": 1}
    assert emulator.credential_requests(status=403).get("restore", 0) >= 1
    assert aws.proxy.counts() == INIT_CALLS  # nothing sent unsigned or with the snapshot's keys
    assert emulator.next_calls == 0
    assert '"probe": "after-restore"' not in runtime.output
    print(f"\n{transport}, refused credentials: restore failed after {failed_after * 1000:.0f} ms")
    for text in (json.dumps(error.body), runtime.output):
        assert_no_secret(aws, text, keys, token=emulator.credentials_token)
