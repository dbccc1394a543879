"""Resolver logic over an in-memory transport that answers the way AWS does.

moto cannot answer GetParameters by ARN and never returns ``Selector``; these
cases are checked here against answers shaped like real AWS ones.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence

import pytest

from secretboot import KmsReference, SsmReference, parse_reference
from secretboot import _transport as t
from secretboot._resolve import resolve
from secretboot._settings import Settings
from tests.conftest import moto_api
from tests.localaws import REGION, client

ARN_PREFIX = "arn:aws:ssm:us-east-1:123456789012:parameter"


class AwsLikeTransport:
    """Parameters by name, with versions; KMS blobs bound to one context."""

    name = "aws-like"
    retries = 0
    waited = 0.0

    def __init__(self) -> None:
        self.parameters: dict[str, list[str]] = {}
        self.blobs: dict[bytes, tuple[dict[str, str] | None, bytes]] = {}
        self.batches: list[list[str]] = []

    def decrypt(
        self, ciphertext: bytes, *, context: Mapping[str, str] | None, key_id: str | None
    ) -> tuple[bytes, str]:
        if ciphertext not in self.blobs or self.blobs[ciphertext][0] != (dict(context) if context else None):
            raise t.TransportError(t.INVALID_CIPHERTEXT)
        return self.blobs[ciphertext][1], "arn:aws:kms:us-east-1:123456789012:key/test"

    def get_parameters(self, names: Sequence[str]) -> t.Parameters:
        assert len(names) <= 10
        self.batches.append(list(names))
        found, invalid = [], []
        for request in names:
            name = request
            if name.startswith(ARN_PREFIX + "/"):
                name = name[len(ARN_PREFIX) + 1 :]
            name, _, selector = name.partition(":")
            if "/" in name and not name.startswith("/"):
                name = "/" + name
            versions = self.parameters.get(name)
            index = int(selector) - 1 if selector else -1
            if versions is None or not -len(versions) <= index < len(versions):
                invalid.append(request)
                continue
            # Real AWS names the parameter, not the request, and gives the ARN.
            arn = ARN_PREFIX + (name if name.startswith("/") else "/" + name)
            found.append(t.Parameter(name, arn, versions[index]))
        return t.Parameters(found, invalid)


@pytest.fixture
def transport() -> AwsLikeTransport:
    return AwsLikeTransport()


def _resolve(
    refs: Mapping[str, str], transport: AwsLikeTransport, **env: str
) -> tuple[dict[str, str], dict[str, str]]:
    parsed = {}
    for name, value in refs.items():
        ref = parse_reference(value, variable=name)
        assert ref is not None
        parsed[name] = ref
    outcome = resolve(parsed, Settings(env), transport)
    return outcome.values, {f.variable: f.reason for f in outcome.failures}


def test_arn_references_map_back_to_their_variables(transport: AwsLikeTransport) -> None:
    transport.parameters = {"/app/a": ["a1", "a2"], "bare": ["b1"]}
    values, failures = _resolve(
        {
            "BY_ARN": f"ssm:{ARN_PREFIX}/app/a",
            "BY_ARN_V1": f"ssm:{ARN_PREFIX}/app/a:1",
            "BY_NAME": "ssm:/app/a",
            "BARE_ARN": f"ssm:{ARN_PREFIX}/bare",
        },
        transport,
    )
    assert failures == {}
    assert values == {"BY_ARN": "a2", "BY_ARN_V1": "a1", "BY_NAME": "a2", "BARE_ARN": "b1"}
    # Three requests name /app/a: no batch may hold two of them.
    for batch in transport.batches:
        names = [
            SsmReference(*n.rsplit(":", 1)) if n.count(":") in (1, 6) else SsmReference(n) for n in batch
        ]
        assert len({n.parameter_name for n in names}) == len(names)


def test_invalid_and_missing_answers_fail_by_name(transport: AwsLikeTransport) -> None:
    transport.parameters = {"/app/a": ["a1"]}
    values, failures = _resolve(
        {"OK": "ssm:/app/a", "NO": "ssm:/app/none", "BAD_V": "ssm:/app/a:5"}, transport
    )
    assert values == {"OK": "a1"}
    assert failures == {"NO": "ParameterNotFound", "BAD_V": "ParameterNotFound"}


def test_an_answer_that_drops_a_parameter_is_a_failure(transport: AwsLikeTransport) -> None:
    class Forgetful(AwsLikeTransport):
        def get_parameters(self, names: Sequence[str]) -> t.Parameters:
            answer = super().get_parameters(names)
            return t.Parameters(answer.found[1:], answer.invalid)

    forgetful = Forgetful()
    forgetful.parameters = {"/a": ["1"], "/b": ["2"]}
    values, failures = _resolve({"A": "ssm:/a", "B": "ssm:/b"}, forgetful)
    assert len(values) == 1 and list(failures.values()) == ["ServiceError"]


@pytest.mark.parametrize(
    ("bound_to", "env", "expected"),
    [
        ({"LambdaFunctionName": "fn"}, {"AWS_LAMBDA_FUNCTION_NAME": "fn"}, "ok"),
        (None, {"AWS_LAMBDA_FUNCTION_NAME": "fn"}, "ok"),
        (None, {}, "ok"),
        ({"LambdaFunctionName": "fn"}, {}, "InvalidCiphertext"),
        ({"a": "b"}, {"SECRETBOOT_KMS_CONTEXT": '{"a": "b"}'}, "ok"),
        (None, {"SECRETBOOT_KMS_CONTEXT": '{"a": "b"}'}, "InvalidCiphertext"),
    ],
)
def test_encryption_context_modes(
    transport: AwsLikeTransport, bound_to: dict[str, str] | None, env: dict[str, str], expected: str
) -> None:
    blob = b"\x01\x02\x02\x00\x78" + bytes(80)
    transport.blobs[blob] = (bound_to, b"plain")
    values, failures = _resolve({"S": str(KmsReference(blob))}, transport, **env)
    assert (values, failures) == (({"S": "plain"}, {}) if expected == "ok" else ({}, {"S": expected}))


def test_non_utf8_plaintext_is_a_named_failure(transport: AwsLikeTransport) -> None:
    blob = b"\x01\x02\x02\x00\x78" + bytes(80)
    transport.blobs[blob] = (None, b"\xff\xfe binary")
    values, failures = _resolve({"BIN": str(KmsReference(blob))}, transport)
    assert (values, failures) == ({}, {"BIN": "NotText"})


def test_access_denied_batch_is_narrowed_to_the_denied_names(transport: AwsLikeTransport) -> None:
    class DeniesOne(AwsLikeTransport):
        def get_parameters(self, names: Sequence[str]) -> t.Parameters:
            if "/other-team/secret" in names:
                self.batches.append(list(names))
                raise t.TransportError(t.ACCESS_DENIED, "not authorized")
            return super().get_parameters(names)

    denying = DeniesOne()
    denying.parameters = {"/app/a": ["a"], "/app/b": ["b"]}
    values, failures = _resolve(
        {"A": "ssm:/app/a", "B": "ssm:/app/b", "STOLEN": "ssm:/other-team/secret"}, denying
    )
    assert values == {"A": "a", "B": "b"}
    assert failures == {"STOLEN": "AccessDenied"}


# Credentials and data that no log record may carry.
TOKEN = "session-token-canary-9f1e07"
SECRET_KEY = "secret-access-key-canary-4b2d"
KMS_PLAIN = "kms-plaintext-canary-61ac"
SSM_PLAIN = "ssm-plaintext-canary-0d3f"
SM_PLAIN = "sm-plaintext-canary-a87e"


def test_boto3_debug_logging_carries_no_credentials_or_data(
    moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore.auth logs the canonical request (X-Amz-Security-Token included) at DEBUG,
    botocore.endpoint the request body, botocore.parsers the answer: none of it for our calls."""
    moto_api(moto_endpoint, "reset")
    kms = client(moto_endpoint, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=KMS_PLAIN.encode())["CiphertextBlob"]
    client(moto_endpoint, "ssm").put_parameter(Name="/app/p", Value=SSM_PLAIN, Type="SecureString")
    client(moto_endpoint, "secretsmanager").create_secret(Name="app/s", SecretString=SM_PLAIN)
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "AKIDLOGTEST",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": TOKEN,
        "SECRETBOOT_TRANSPORT": "boto3",
    }
    ciphertext = base64.b64encode(blob).decode()
    refs = {"K": f"kms:{ciphertext}", "P": "ssm:/app/p", "S": "secretsmanager:app/s"}
    parsed = {name: parse_reference(value) for name, value in refs.items()}
    canaries = (TOKEN, SECRET_KEY, ciphertext, ciphertext[20:60], KMS_PLAIN, SSM_PLAIN, SM_PLAIN)

    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "urllib3", "secretboot"):
        caplog.set_level(logging.DEBUG, logger=name)
    outcome = resolve({n: r for n, r in parsed.items() if r is not None}, Settings(env))
    assert outcome.failures == []
    assert outcome.values == {"K": KMS_PLAIN, "P": SSM_PLAIN, "S": SM_PLAIN}
    assert outcome.transport == "boto3"
    formatter = logging.Formatter("%(name)s %(message)s")
    texts = "\n".join(formatter.format(r) + repr(r.args) for r in caplog.records)
    for canary in canaries:
        assert canary not in texts

    # Not vacuous: the same logging shows the token for a boto3 call that is not ours.
    caplog.clear()
    import boto3

    theirs = boto3.session.Session(
        aws_access_key_id="AKIDLOGTEST",
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=TOKEN,
        region_name=REGION,
    ).client("ssm", endpoint_url=moto_endpoint)
    theirs.get_parameters(Names=["/app/p"], WithDecryption=True)
    texts = "\n".join(formatter.format(r) for r in caplog.records)
    assert TOKEN in texts and SSM_PLAIN in texts
