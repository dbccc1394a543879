"""A resolved value is never resolved again, here or in a child.

Whoever can write one harmless parameter must not be able to plant a reference in it
(``kms:<someone else's ciphertext>``, ``ssm:/their/secret``, ``{{resolve:...}}``, the bare
``AQICAH`` form) and have it resolved with this process's credentials: after
``export=True`` or under ``secretboot exec`` the child would see the plaintext in its
environment and take it for a reference. Real moto over HTTP, both transports.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

import secretboot
from secretboot import BootstrapError
from tests.localaws import client
from tests.test_bootstrap import encrypt, failure_texts, put

# The other secret: whoever planted the reference must never see it.
OTHER = "other-team-secret-5e91c2"
# A bare blob with genuine AWS KMS ciphertext's header: detected as a reference by its form.
LEGACY = base64.b64encode(b"\x01\x02\x02\x00\x78" + bytes(120)).decode()
DETAIL = "the resolved value is itself a reference; secretboot never resolves a value twice"


def reasons(exc: BootstrapError) -> dict[str, str]:
    return {f.variable: f.reason for f in exc.failures}


def assert_refused(env: dict[str, str], variable: str, caplog: pytest.LogCaptureFixture) -> BootstrapError:
    """``variable`` fails as ResolvedToReference, alone, nothing exported, ``OTHER`` nowhere."""
    caplog.set_level(logging.DEBUG)
    before = dict(os.environ)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env, export=True)
    assert reasons(info.value) == {variable: "ResolvedToReference"}
    (failure,) = info.value.failures
    assert failure.detail == DETAIL
    assert dict(os.environ) == before
    seen = "\n".join([failure_texts(info.value), failure.detail, failure.target, caplog.text])
    assert OTHER not in seen
    assert OTHER.encode().hex() not in seen
    return info.value


@pytest.fixture
def sm(aws_env: dict[str, str]) -> Any:
    return client(aws_env["AWS_ENDPOINT_URL"], "secretsmanager")


@pytest.fixture
def other_ciphertext(kms: Any, key_id: str) -> str:
    """Base64 KMS ciphertext of the other secret, under a key these credentials can use."""
    return encrypt(kms, key_id, OTHER)


@pytest.mark.parametrize("form", ["kms", "ssm", "dynamic", "secretsmanager", "legacy"])
def test_ssm_parameter_holding_a_reference(
    aws_env: dict[str, str],
    ssm: Any,
    sm: Any,
    other_ciphertext: str,
    form: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    put(ssm, "/other/secret", OTHER)
    sm.create_secret(Name="other/secret", SecretString=OTHER)
    planted = {
        "kms": f"kms:{other_ciphertext}",
        "ssm": "ssm:/other/secret",
        "dynamic": "{{resolve:ssm-secure:/other/secret}}",
        "secretsmanager": "secretsmanager:other/secret",
        "legacy": LEGACY,
    }[form]
    ssm.put_parameter(Name="/app/harmless", Value=planted, Type="String")
    put(ssm, "/app/fine", "fine")
    env = {**aws_env, "HARMLESS": "ssm:/app/harmless", "FINE": "ssm:/app/fine"}
    assert_refused(env, "HARMLESS", caplog)


def test_secrets_manager_value_or_json_key_holding_a_reference(
    aws_env: dict[str, str], ssm: Any, sm: Any, other_ciphertext: str, caplog: pytest.LogCaptureFixture
) -> None:
    put(ssm, "/other/secret", OTHER)
    sm.create_secret(
        Name="app/doc", SecretString=f'{{"user": "app", "token": "kms:{other_ciphertext}", "n": 1}}'
    )
    sm.create_secret(Name="app/whole", SecretString="ssm:/other/secret")
    env = {**aws_env, "USER": "secretsmanager:app/doc#user", "TOKEN": "secretsmanager:app/doc#token"}
    assert_refused(env, "TOKEN", caplog)
    secretboot.reset()
    assert_refused({**aws_env, "WHOLE": "secretsmanager:app/whole"}, "WHOLE", caplog)


def test_kms_plaintext_that_is_a_reference(
    aws_env: dict[str, str], kms: Any, key_id: str, other_ciphertext: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {**aws_env, "WRAPPED": "kms:" + encrypt(kms, key_id, f"kms:{other_ciphertext}")}
    error = assert_refused(env, "WRAPPED", caplog)
    assert error.failures[0].kind == "kms"


def test_binary_plaintext_whose_base64_is_the_legacy_form(
    aws_env: dict[str, str], kms: Any, key_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes are exported as base64: raw KMS ciphertext there would read as the bare form."""
    blob = kms.encrypt(KeyId=key_id, Plaintext=base64.b64decode(LEGACY))["CiphertextBlob"]
    env = {
        **aws_env,
        "SECRETBOOT_BINARY_VARS": "RAW",
        "RAW": "kms:" + base64.b64encode(blob).decode(),
    }
    assert_refused(env, "RAW", caplog)


@pytest.mark.parametrize(
    "value",
    [
        "password kms:AAAA",  # "kms:" later in the string
        "see ssm:/other/secret",
        " kms:leading-space",
        "secretsmanager",  # a prefix's word without its colon
        "AQICAHnot-base64",
        base64.b64encode(b"\x01\x02\x02\x00\x78" + bytes(8)).decode(),  # too short for the bare form
    ],
)
def test_plain_values_that_merely_mention_a_prefix_still_resolve(
    aws_env: dict[str, str], ssm: Any, kms: Any, key_id: str, value: str
) -> None:
    put(ssm, "/app/v", value)
    env = {**aws_env, "S": "ssm:/app/v", "K": "kms:" + encrypt(kms, key_id, value)}
    keyring = secretboot.bootstrap(environ=env, export=True)
    assert (keyring["S"], keyring["K"]) == (value, value)
    assert os.environ["S"] == value


def test_exec_never_hands_a_child_a_reference_to_resolve(
    aws_env: dict[str, str], ssm: Any, other_ciphertext: str
) -> None:
    """Before the fix the inner ``secretboot exec`` resolved the planted reference and showed it."""
    ssm.put_parameter(Name="/app/harmless", Value=f"kms:{other_ciphertext}", Type="String")
    child = [sys.executable, "-c", "import os; print(os.environ['HARMLESS'])"]
    command = [sys.executable, "-m", "secretboot", "exec", "--"]
    done = subprocess.run(
        [*command, *command, *child],
        env={**os.environ, **aws_env, "HARMLESS": "ssm:/app/harmless"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert OTHER not in done.stdout + done.stderr
    assert done.returncode != 0
    assert "HARMLESS" in done.stderr and "ResolvedToReference" in done.stderr


@pytest.mark.parametrize("plaintext", ["other", "abcd1234"])
def test_a_child_never_reads_exported_kms_vars_as_ciphertext(
    aws_env: dict[str, str], kms: Any, key_id: str, other_ciphertext: str, plaintext: str
) -> None:
    """SECRETBOOT_KMS_VARS reaches the child too: it must not list the names now holding plaintext.

    With "other", X's plaintext is the bare base64 of another secret's ciphertext, which a
    child reading X as ciphertext would decrypt and show; "abcd1234" would make it fail.
    """
    value = other_ciphertext if plaintext == "other" else plaintext
    child = [
        sys.executable,
        "-c",
        "import os; print(os.environ['X'], os.environ['SECRETBOOT_KMS_VARS'] or '-')",
    ]
    command = [sys.executable, "-m", "secretboot", "exec", "--"]
    done = subprocess.run(
        [*command, *command, *child],
        env={**os.environ, **aws_env, "X": encrypt(kms, key_id, value), "SECRETBOOT_KMS_VARS": "X"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert OTHER not in done.stdout + done.stderr
    assert (done.returncode, done.stdout) == (0, f"{value} -\n"), done.stderr
