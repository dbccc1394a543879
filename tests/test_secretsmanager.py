"""Secrets Manager references: the grammar, resolution over both transports, batching, failures.

Integration tests run against moto's server once per transport (the ``aws_env`` fixture); an
``SmProxy`` in front of moto counts and records each Secrets Manager request, and can inject
the faults moto cannot produce (per-secret denials, a secret missing from a batch answer).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
import uuid
from base64 import b64encode
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import secretboot
from secretboot import (
    BootstrapError,
    ReferenceSyntaxError,
    SecretsManagerReference,
    is_reference,
    parse_reference,
)
from secretboot._cli import main as cli_main
from secretboot._resolve import resolve
from secretboot._settings import Settings
from tests.awsproxy import AwsProxy, ProxyRequest, ProxyResponse
from tests.conftest import moto_api
from tests.localaws import client
from tests.test_bootstrap import assert_no_leak, encrypt, failure_texts, put

ACCOUNT = "123456789012"
ARN_HEAD = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:"
VID = "0123abcd-4567-89ef-0123-456789abcdef"  # a version id: 36 characters, as Secrets Manager makes
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BATCH = "secretsmanager.BatchGetSecretValue"
GET = "secretsmanager.GetSecretValue"

# Distinctive secret material: any appearance in an error, a repr or a log line is a leak.
CANARY = "sm-canary-3b8e1f0d"
CANARY_USER = "sm-canary-user-c41a"
CANARY_OLD = "sm-canary-old-9d2e"
CANARY_TEXT = "sm-canary-text-7a51"
CANARY_BIN = "sm-canary-bin-e06f"
CANARY_GONE = "sm-canary-gone-52c8"
DB_DOC = {"username": CANARY_USER, "password": CANARY, "port": 5432}
DB_JSON = json.dumps(DB_DOC)


# =========================================================================== grammar (no AWS)

P = SecretsManagerReference  # the fields: (secret_id, json_key=, version_stage=, version_id=)

# (value, canonical string, expected reference)
VALID: list[tuple[str, str, SecretsManagerReference]] = [
    # short form: names
    ("secretsmanager:db", "secretsmanager:db", P("db")),
    ("secretsmanager:app/prod_1+=.@-db", "secretsmanager:app/prod_1+=.@-db", P("app/prod_1+=.@-db")),
    ("secretsmanager:" + "n" * 512, "secretsmanager:" + "n" * 512, P("n" * 512)),
    ("secretsmanager:x", "secretsmanager:x", P("x")),
    # short form: full and partial ARNs
    (
        f"secretsmanager:{ARN_HEAD}db-AbCdEf",
        f"secretsmanager:{ARN_HEAD}db-AbCdEf",
        P(f"{ARN_HEAD}db-AbCdEf"),
    ),
    (f"secretsmanager:{ARN_HEAD}app/db", f"secretsmanager:{ARN_HEAD}app/db", P(f"{ARN_HEAD}app/db")),
    (
        f"secretsmanager:arn:aws-cn:secretsmanager:cn-north-1:{ACCOUNT}:secret:db",
        f"secretsmanager:arn:aws-cn:secretsmanager:cn-north-1:{ACCOUNT}:secret:db",
        P(f"arn:aws-cn:secretsmanager:cn-north-1:{ACCOUNT}:secret:db"),
    ),
    # short form: JSON keys (everything after the first '#')
    ("secretsmanager:db#password", "secretsmanager:db#password", P("db", json_key="password")),
    ("secretsmanager:db#a#b", "secretsmanager:db#a#b", P("db", json_key="a#b")),
    ("secretsmanager:db#host:port", "secretsmanager:db#host:port", P("db", json_key="host:port")),
    ("secretsmanager:db#my key ", "secretsmanager:db#my key ", P("db", json_key="my key ")),
    ("secretsmanager:db#{x}", "secretsmanager:db#{x}", P("db", json_key="{x}")),
    ("secretsmanager:db##", "secretsmanager:db##", P("db", json_key="#")),
    ("secretsmanager:db#clé", "secretsmanager:db#clé", P("db", json_key="clé")),
    (
        f"secretsmanager:{ARN_HEAD}db-AbCdEf#password",
        f"secretsmanager:{ARN_HEAD}db-AbCdEf#password",
        P(f"{ARN_HEAD}db-AbCdEf", json_key="password"),
    ),
    # dynamic form, current version: canonical is the short form
    ("{{resolve:secretsmanager:db}}", "secretsmanager:db", P("db")),
    ("{{resolve:secretsmanager:db:SecretString}}", "secretsmanager:db", P("db")),
    ("{{resolve:secretsmanager:db:}}", "secretsmanager:db", P("db")),
    ("{{resolve:secretsmanager:db:::}}", "secretsmanager:db", P("db")),
    ("{{resolve:secretsmanager:db::::}}", "secretsmanager:db", P("db")),
    (
        "{{resolve:secretsmanager:db:SecretString:password}}",
        "secretsmanager:db#password",
        P("db", json_key="password"),
    ),
    ("{{resolve:secretsmanager:db::password}}", "secretsmanager:db#password", P("db", json_key="password")),
    (
        "{{resolve:secretsmanager:db:SecretString:password::}}",
        "secretsmanager:db#password",
        P("db", json_key="password"),
    ),
    ("{{resolve:secretsmanager:db::a#b}}", "secretsmanager:db#a#b", P("db", json_key="a#b")),
    ("{{resolve:secretsmanager:db::my key}}", "secretsmanager:db#my key", P("db", json_key="my key")),
    (
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db-AbCdEf}}}}",
        f"secretsmanager:{ARN_HEAD}db-AbCdEf",
        P(f"{ARN_HEAD}db-AbCdEf"),
    ),
    (
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db:SecretString:password}}}}",
        f"secretsmanager:{ARN_HEAD}db#password",
        P(f"{ARN_HEAD}db", json_key="password"),
    ),
    # dynamic form with a version: canonical is dynamic, trailing empty fields dropped
    (
        "{{resolve:secretsmanager:db:SecretString:password:AWSPREVIOUS}}",
        "{{resolve:secretsmanager:db:SecretString:password:AWSPREVIOUS}}",
        P("db", json_key="password", version_stage="AWSPREVIOUS"),
    ),
    (
        "{{resolve:secretsmanager:db::password:AWSPREVIOUS:}}",
        "{{resolve:secretsmanager:db:SecretString:password:AWSPREVIOUS}}",
        P("db", json_key="password", version_stage="AWSPREVIOUS"),
    ),
    (
        "{{resolve:secretsmanager:db:SecretString::AWSPREVIOUS}}",
        "{{resolve:secretsmanager:db:SecretString::AWSPREVIOUS}}",
        P("db", version_stage="AWSPREVIOUS"),
    ),
    (
        "{{resolve:secretsmanager:db:::AWSCURRENT}}",
        "{{resolve:secretsmanager:db:SecretString::AWSCURRENT}}",
        P("db", version_stage="AWSCURRENT"),
    ),
    (
        f"{{{{resolve:secretsmanager:db:SecretString:::{VID}}}}}",
        f"{{{{resolve:secretsmanager:db:SecretString:::{VID}}}}}",
        P("db", version_id=VID),
    ),
    (
        f"{{{{resolve:secretsmanager:db::password::{VID}}}}}",
        f"{{{{resolve:secretsmanager:db:SecretString:password::{VID}}}}}",
        P("db", json_key="password", version_id=VID),
    ),
    (
        f"{{{{resolve:secretsmanager:db:SecretString:password:AWSPREVIOUS:{VID}}}}}",
        f"{{{{resolve:secretsmanager:db:SecretString:password:AWSPREVIOUS:{VID}}}}}",
        P("db", json_key="password", version_stage="AWSPREVIOUS", version_id=VID),
    ),
    (
        "{{resolve:secretsmanager:db::a#b c:my.stage_1@x+=/-}}",
        "{{resolve:secretsmanager:db:SecretString:a#b c:my.stage_1@x+=/-}}",
        P("db", json_key="a#b c", version_stage="my.stage_1@x+=/-"),
    ),
    (
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db-AbCdEf:SecretString:password:AWSCURRENT:{VID}}}}}",
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db-AbCdEf:SecretString:password:AWSCURRENT:{VID}}}}}",
        P(f"{ARN_HEAD}db-AbCdEf", json_key="password", version_stage="AWSCURRENT", version_id=VID),
    ),
    (
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db:::AWSPREVIOUS}}}}",
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db:SecretString::AWSPREVIOUS}}}}",
        P(f"{ARN_HEAD}db", version_stage="AWSPREVIOUS"),
    ),
]


@pytest.mark.parametrize(("value", "canonical", "expected"), VALID, ids=[v[0][:60] for v in VALID])
def test_valid_forms_parse_to_their_fields_and_canonical_string(
    value: str, canonical: str, expected: SecretsManagerReference
) -> None:
    assert is_reference(value)
    ref = parse_reference(value, variable="V")
    assert isinstance(ref, SecretsManagerReference)
    assert ref == expected
    assert (ref.secret_id, ref.json_key, ref.version_stage, ref.version_id) == (
        expected.secret_id,
        expected.json_key,
        expected.version_stage,
        expected.version_id,
    )
    assert ref.kind == "secretsmanager"
    assert ref.current is (ref.version_stage is None and ref.version_id is None)
    assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref
    assert hash(parse_reference(str(ref))) == hash(ref)


def test_fields_of_a_full_dynamic_reference() -> None:
    ref = parse_reference(
        f"{{{{resolve:secretsmanager:{ARN_HEAD}db-AbCdEf:SecretString:pw:AWSPREVIOUS:{VID}}}}}"
    )
    assert isinstance(ref, SecretsManagerReference)
    assert ref.secret_id == f"{ARN_HEAD}db-AbCdEf"
    assert ref.json_key == "pw"
    assert ref.version_stage == "AWSPREVIOUS"
    assert ref.version_id == VID
    assert not ref.current
    assert ref.target == f"{ARN_HEAD}db-AbCdEf#pw (stage AWSPREVIOUS) (version {VID})"


def test_equality_and_hash_follow_the_fields_not_the_spelling() -> None:
    spellings = [
        "secretsmanager:db#password",
        "{{resolve:secretsmanager:db::password}}",
        "{{resolve:secretsmanager:db:SecretString:password}}",
        "{{resolve:secretsmanager:db:SecretString:password::}}",
    ]
    refs = {parse_reference(s) for s in spellings}
    assert refs == {P("db", json_key="password")}
    different = [
        P("db"),
        P("db", json_key="Password"),
        P("Db", json_key="password"),
        P("db", json_key="password", version_stage="AWSCURRENT"),
        P("db", json_key="password", version_id=VID),
        P(f"{ARN_HEAD}db", json_key="password"),
    ]
    assert len({P("db", json_key="password"), *different}) == len(different) + 1
    for other in different:
        assert other != P("db", json_key="password")
    # Not equal to other kinds of reference, nor to its own string.
    assert P("db") != secretboot.SsmReference("db")
    assert P("db") != "secretsmanager:db"


def test_references_are_immutable() -> None:
    ref = P("db", json_key="password", version_stage="AWSPREVIOUS")
    for name in ("secret_id", "json_key", "version_stage", "version_id", "other"):
        with pytest.raises(AttributeError):
            setattr(ref, name, "x")
        with pytest.raises(AttributeError):
            delattr(ref, name)
    assert (ref.secret_id, ref.json_key, ref.version_stage) == ("db", "password", "AWSPREVIOUS")


@pytest.mark.parametrize(
    "ref",
    [
        P("db"),
        P("db", json_key="a:b#c"),
        P(f"{ARN_HEAD}db-AbCdEf", json_key="pw", version_stage="AWSPREVIOUS", version_id=VID),
    ],
)
def test_pickle_round_trip(ref: SecretsManagerReference) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(ref, protocol=protocol))
        assert copy == ref
        assert str(copy) == str(ref)
        with pytest.raises(AttributeError):
            copy.json_key = "x"  # type: ignore[misc]


def test_repr_and_target_name_the_secret_not_a_value() -> None:
    assert repr(P("db")) == "SecretsManagerReference('db')"
    ref = P("app/db", json_key="password", version_stage="AWSPREVIOUS")
    assert repr(ref) == "SecretsManagerReference('app/db#password (stage AWSPREVIOUS)')"
    assert ref.target == "app/db#password (stage AWSPREVIOUS)"
    assert P("db", version_id=VID).target == f"db (version {VID})"


# (value, kind) -- each value holds "leakme" where it can, which no error may repeat.
INVALID: list[tuple[str, str]] = [
    ("secretsmanager:", "secretsmanager"),
    ("secretsmanager:#leakme", "secretsmanager"),
    ("secretsmanager:leakme#", "secretsmanager"),
    ("secretsmanager:leakme name", "secretsmanager"),
    ("secretsmanager:leakme*", "secretsmanager"),
    ("secretsmanager:leakme:x", "secretsmanager"),
    ("secretsmanager:leakme!", "secretsmanager"),
    ("secretsmanager:leakme" + "n" * 507, "secretsmanager"),  # 513 characters
    ("secretsmanager:leakme#" + "k" * 1025, "secretsmanager"),  # JSON key too long
    ("secretsmanager:arn:aws:secretsmanager:us-east-1:1234:secret:leakme", "secretsmanager"),
    (f"secretsmanager:arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/leakme", "secretsmanager"),
    (f"secretsmanager:arn:aws:secretsmanager:us-east-1:{ACCOUNT}:leakme", "secretsmanager"),
    (f"secretsmanager:arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:", "secretsmanager"),
    (f"secretsmanager:arn:aws:secretsmanager:US-EAST-1:{ACCOUNT}:secret:leakme", "secretsmanager"),
    (f"secretsmanager:arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:leakme name", "secretsmanager"),
    ("{{resolve:secretsmanager:}}", "dynamic"),
    ("{{resolve:secretsmanager::SecretString:leakme}}", "dynamic"),
    (f"{{{{resolve:secretsmanager:db:SecretString:leakme:AWSPREVIOUS:{VID}:extra}}}}", "dynamic"),
    (f"{{{{resolve:secretsmanager:db:SecretString:leakme:AWSPREVIOUS:{VID}:}}}}", "dynamic"),
    ("{{resolve:secretsmanager:leakme:SecretBinary}}", "dynamic"),
    ("{{resolve:secretsmanager:leakme:secretstring}}", "dynamic"),
    ("{{resolve:secretsmanager:db:SecretString:k::leakme-short}}", "dynamic"),
    ("{{resolve:secretsmanager:db:SecretString:k::leakme" + "0" * 60 + "}}", "dynamic"),  # 66 long
    ("{{resolve:secretsmanager:db:SecretString:k::leakme_" + "0" * 30 + "}}", "dynamic"),  # '_'
    ("{{resolve:secretsmanager:db:SecretString:k:leakme stage}}", "dynamic"),
    ("{{resolve:secretsmanager:db:SecretString:k:" + "leakme" * 43 + "}}", "dynamic"),  # 258-char stage
    ("{{resolve:secretsmanager:leakme name}}", "dynamic"),
    ("{{resolve:secretsmanager:arn:aws:secretsmanager:leakme}}", "dynamic"),
    (f"{{{{resolve:secretsmanager:arn:aws:secretsmanager:us-east-1:{ACCOUNT}:leakme:x}}}}", "dynamic"),
    (
        f"{{{{resolve:secretsmanager:{ARN_HEAD}leakme:SecretString:k:AWSPREVIOUS:{VID}:x}}}}",
        "dynamic",
    ),
    ("{{resolve:secretsmanager:leakme}}!", "dynamic"),
    ("x{{resolve:secretsmanager:leakme}}", "dynamic"),
    ("{{resolve:secretsmanager:db::{leakme}}}", "dynamic"),
]


@pytest.mark.parametrize(("value", "kind"), INVALID, ids=[v[0][:60] for v in INVALID])
def test_invalid_forms_raise_without_echoing_the_value(value: str, kind: str) -> None:
    assert is_reference(value)
    with pytest.raises(ReferenceSyntaxError) as info:
        parse_reference(value, variable="BAD_VAR")
    exc = info.value
    assert exc.kind == kind
    assert exc.variable == "BAD_VAR"
    assert str(exc).startswith("BAD_VAR: malformed reference: ")
    assert exc.reason
    shown = "\n".join([str(exc), repr(exc), exc.reason, str(exc.args)])
    assert "leakme" not in shown
    assert value not in shown
    assert exc.__cause__ is None and exc.__suppress_context__


@pytest.mark.parametrize(
    "fields",
    [
        {"json_key": "a:b", "version_stage": "AWSPREVIOUS"},
        {"json_key": "a:b", "version_id": VID},
        {"json_key": "{a", "version_stage": "AWSPREVIOUS"},
        {"json_key": "a}", "version_id": VID},
        {"json_key": ""},
        {"json_key": "k" * 1025},
        {"version_stage": ""},
        {"version_stage": "a:b"},
        {"version_id": "0" * 31},
        {"version_id": "0" * 65},
        {"version_id": "0" * 31 + "_"},
    ],
)
def test_constructor_rejects_what_the_canonical_form_cannot_carry(fields: dict[str, str]) -> None:
    with pytest.raises(ReferenceSyntaxError):
        P("db", **fields)  # type: ignore[arg-type]


def test_a_key_with_a_colon_is_fine_at_the_current_version() -> None:
    ref = P("db", json_key="a:b{c}")
    assert str(ref) == "secretsmanager:db#a:b{c}"
    assert parse_reference(str(ref)) == ref


def test_constructor_type_errors() -> None:
    with pytest.raises(TypeError):
        P(b"db")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        P("db", "password")  # type: ignore[misc]  # options are keyword-only


def test_full_arn_of_a_longest_name_parses() -> None:
    arn = ARN_HEAD + "n" * 512 + "-AbCdEf"
    ref = parse_reference("secretsmanager:" + arn)
    assert isinstance(ref, SecretsManagerReference)
    assert ref.secret_id == arn


# ---------------------------------------------------------------- property: canonical round trip

NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/_+=.@-"
NAMES = st.text(alphabet=NAME_CHARS, min_size=1, max_size=512)
ARNS = st.builds(
    lambda partition, region, account, name, suffix: (
        f"arn:{partition}:secretsmanager:{region}:{account}:secret:{name}{suffix}"
    ),
    st.sampled_from(["aws", "aws-cn", "aws-us-gov"]),
    st.sampled_from(["us-east-1", "eu-west-3", "cn-north-1", "us-gov-west-1"]),
    st.from_regex(r"[0-9]{12}", fullmatch=True),
    st.text(alphabet=NAME_CHARS, min_size=1, max_size=505),  # 505 + "-XXXXXX" fits in 512
    st.one_of(st.just(""), st.from_regex(r"-[A-Za-z0-9]{6}", fullmatch=True)),
)
STAGES = st.from_regex(r"[A-Za-z0-9_.@+=/\-]{1,40}", fullmatch=True).filter(lambda s: s != "AWSPENDING")
VERSION_IDS = st.from_regex(r"[A-Za-z0-9\-]{32,64}", fullmatch=True)
KEYS = st.text(min_size=1, max_size=60)


@st.composite
def sm_references(draw: st.DrawFn) -> SecretsManagerReference:
    secret_id = draw(st.one_of(NAMES, ARNS))
    stage = draw(st.one_of(st.none(), STAGES))
    version_id = draw(st.one_of(st.none(), VERSION_IDS))
    keys = KEYS if stage is None and version_id is None else KEYS.filter(lambda k: not set(k) & set(":{}"))
    json_key = draw(st.one_of(st.none(), keys))
    return P(secret_id, json_key=json_key, version_stage=stage, version_id=version_id)


@PROPERTY
@given(sm_references())
def test_canonical_round_trip(ref: SecretsManagerReference) -> None:
    text = str(ref)
    assert is_reference(text)
    again = parse_reference(text, variable="P")
    assert again == ref
    assert hash(again) == hash(ref)
    assert str(again) == text
    assert text.startswith("secretsmanager:") is ref.current
    assert pickle.loads(pickle.dumps(ref)) == ref


@PROPERTY
@given(sm_references().filter(lambda r: r.json_key is None or not set(r.json_key) & set(":{}")))
def test_every_field_spelled_out_in_the_dynamic_form_means_the_same(ref: SecretsManagerReference) -> None:
    fields = [ref.json_key or "", ref.version_stage or "", ref.version_id or ""]
    for literal in ("SecretString", ""):
        spelled = f"{{{{resolve:secretsmanager:{ref.secret_id}:{literal}:{':'.join(fields)}}}}}"
        assert parse_reference(spelled) == ref


# =========================================================================== AWS: fixtures


class SmProxy(AwsProxy):
    """An ``AwsProxy`` that records Secrets Manager request bodies and can inject faults.

    ``deny_batch``: answer every ``BatchGetSecretValue`` with AccessDeniedException.
    ``deny_get``: secret ids whose ``GetSecretValue`` is answered AccessDeniedException.
    ``drop``: secret names removed from batch answers without a word (neither found nor reported).
    ``deny_in_batch``: secret names moved from a batch answer's values to its Errors, as denied.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.deny_batch = False
        self.deny_get: set[str] = set()
        self.drop: set[str] = set()
        self.deny_in_batch: set[str] = set()
        self._bodies_lock = threading.Lock()
        self._bodies: list[tuple[str, dict[str, Any]]] = []

    def bodies(self, target: str) -> list[dict[str, Any]]:
        with self._bodies_lock:
            return [body for t, body in self._bodies if t == target]

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        target = request.target
        if not target.startswith("secretsmanager."):
            return self.forward(request)
        body = json.loads(request.body or b"{}")
        with self._bodies_lock:
            self._bodies.append((target, body))
        if target == BATCH and self.deny_batch:
            return _denied("BatchGetSecretValue")
        if target == GET and body.get("SecretId") in self.deny_get:
            return _denied("GetSecretValue")
        answer = self.forward(request)
        if target != BATCH or answer.status != 200 or not (self.drop or self.deny_in_batch):
            return answer
        data = json.loads(answer.body)
        values, errors = [], list(data.get("Errors", []))
        for secret in data.get("SecretValues", []):
            if secret["Name"] in self.drop:
                continue
            if secret["Name"] in self.deny_in_batch:
                errors.append(
                    {
                        "SecretId": secret["Name"],
                        "ErrorCode": "AccessDeniedException",
                        "Message": "User is not authorized to perform: secretsmanager:GetSecretValue",
                    }
                )
                continue
            values.append(secret)
        data.update(SecretValues=values, Errors=errors)
        headers = [(k, v) for k, v in answer.headers if k.lower() != "x-amz-crc32"]
        return ProxyResponse(answer.status, answer.reason, headers, json.dumps(data).encode())


def _denied(operation: str) -> ProxyResponse:
    message = (
        f"User: arn:aws:iam::{ACCOUNT}:user/app is not authorized to perform: "
        f"secretsmanager:{operation} because no identity-based policy allows the action"
    )
    body = json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("x-amzn-ErrorType", "AccessDeniedException"),
    ]
    return ProxyResponse(400, "Bad Request", headers, body)


@pytest.fixture
def sm(aws_env: dict[str, str]) -> Any:
    """A client straight to moto (not through the proxy) for set-up."""
    return client(aws_env["AWS_ENDPOINT_URL"], "secretsmanager")


@pytest.fixture
def proxy(aws_env: dict[str, str], moto_endpoint: str) -> Iterator[SmProxy]:
    with SmProxy(moto_endpoint) as running:
        yield running


def via(proxy: AwsProxy, aws_env: dict[str, str], **variables: str) -> dict[str, str]:
    """An environment whose AWS calls go through ``proxy``, plus ``variables``."""
    return {**aws_env, "AWS_ENDPOINT_URL": proxy.url, **variables}


def sm_counts(proxy: AwsProxy) -> dict[str, int]:
    return {k: v for k, v in proxy.counts().items() if k.startswith("secretsmanager.")}


def failures_of(exc: BootstrapError) -> dict[str, str]:
    return {f.variable: f.reason for f in exc.failures}


def all_texts(exc: BaseException) -> str:
    """``failure_texts`` plus every failure's details and every chained cause or context."""
    parts = [failure_texts(exc)]
    if isinstance(exc, BootstrapError):
        parts += [f"{f} {f.detail} {f.target}" for f in exc.failures]
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parts += [str(cause), repr(cause), repr(cause.args)]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    """Capture everything at DEBUG, botocore's request and response logging included."""
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "urllib3", "secretboot"):
        caplog.set_level(logging.DEBUG, logger=name)


def assert_logged_by_the_transport(caplog: pytest.LogCaptureFixture, aws_env: dict[str, str]) -> None:
    """The leak checks on caplog mean something only if botocore's DEBUG records reach it.

    secretboot drops every botocore DEBUG record during its own calls (test_resolvers shows a
    call that is not secretboot's logging the token), so a probe logged outside them must show.
    """
    if aws_env["SECRETBOOT_TRANSPORT"] == "boto3":
        probe = "probe outside secretboot's calls"
        for name in ("botocore.endpoint", "botocore.parsers", "botocore.auth"):
            logging.getLogger(name).debug(probe)
            assert any(r.name == name and r.getMessage() == probe for r in caplog.records)


def make_binary(sm: Any, name: str, data: bytes) -> None:
    sm.create_secret(Name=name, SecretBinary=data)


# =========================================================================== AWS: round trips


def test_whole_secret_and_json_keys_in_one_batch(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, caplog: pytest.LogCaptureFixture
) -> None:
    doc = {
        **DB_DOC,
        "ratio": 0.25,
        "enabled": True,
        "nothing": None,
        "options": {"ssl": True, "hosts": ["a", "b"], "nested": {"k": CANARY}},
        "list": [1, "two"],
        "": "empty-key",
    }
    sm.create_secret(Name="app/db", SecretString=json.dumps(doc))
    sm.create_secret(Name="plain", SecretString=CANARY_TEXT)
    env = via(
        proxy,
        aws_env,
        WHOLE="secretsmanager:plain",
        WHOLE_JSON="secretsmanager:app/db",
        USER="secretsmanager:app/db#username",
        PASSWORD="{{resolve:secretsmanager:app/db:SecretString:password}}",
        PORT="secretsmanager:app/db#port",
        RATIO="secretsmanager:app/db#ratio",
        ENABLED="secretsmanager:app/db#enabled",
        NOTHING="secretsmanager:app/db#nothing",
        OPTIONS="secretsmanager:app/db#options",
        LIST="secretsmanager:app/db#list",
        PLAIN="not a reference",
    )
    debug_logging(caplog)
    secrets = secretboot.bootstrap(environ=env)
    assert dict(secrets) == {
        "WHOLE": CANARY_TEXT,
        "WHOLE_JSON": json.dumps(doc),
        "USER": CANARY_USER,
        "PASSWORD": CANARY,
        "PORT": "5432",
        "RATIO": "0.25",
        "ENABLED": "true",
        "NOTHING": "null",
        "OPTIONS": secrets["OPTIONS"],
        "LIST": '[1, "two"]',
    }
    assert json.loads(secrets["OPTIONS"]) == doc["options"]
    assert secrets.references["PASSWORD"] == P("app/db", json_key="password")
    # Ten variables, two distinct secrets: one batch call naming each secret once.
    assert sm_counts(proxy) == {BATCH: 1}
    (batch,) = proxy.bodies(BATCH)
    assert sorted(batch["SecretIdList"]) == ["app/db", "plain"]
    # Values stay out of the keyring's repr and every log line, botocore's DEBUG included.
    assert_no_leak(repr(secrets) + str(secrets) + repr(secrets.references), CANARY, CANARY_USER, CANARY_TEXT)
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(caplog.text, CANARY, CANARY_USER, CANARY_TEXT, json.dumps(doc))


def test_json_keys_holding_hash_colon_and_space(aws_env: dict[str, str], sm: Any) -> None:
    sm.create_secret(
        Name="keys", SecretString=json.dumps({"a#b": "hash", "host:port": "colon", "my key": "sp"})
    )
    env = {
        **aws_env,
        "HASH": "secretsmanager:keys#a#b",
        "HASH_DYNAMIC": "{{resolve:secretsmanager:keys::a#b}}",
        "COLON": "secretsmanager:keys#host:port",
        "SPACE": "secretsmanager:keys#my key",
    }
    assert dict(secretboot.bootstrap(environ=env)) == {
        "HASH": "hash",
        "HASH_DYNAMIC": "hash",
        "COLON": "colon",
        "SPACE": "sp",
    }


def test_binary_secret_read_whole_as_utf8(aws_env: dict[str, str], sm: Any, proxy: SmProxy) -> None:
    text = f"{CANARY_BIN} ünïcode ✓ 密码"
    make_binary(sm, "bin/utf8", text.encode("utf-8"))
    env = via(
        proxy,
        aws_env,
        BIN="secretsmanager:bin/utf8",
        BIN_V="{{resolve:secretsmanager:bin/utf8:::AWSCURRENT}}",
    )
    assert dict(secretboot.bootstrap(environ=env)) == {"BIN": text, "BIN_V": text}
    assert sm_counts(proxy) == {BATCH: 1, GET: 1}


def test_binary_secret_that_is_not_utf8_fails_not_text(
    aws_env: dict[str, str], sm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"\xff\xfe" + CANARY_BIN.encode() + b"\x80"
    make_binary(sm, "bin/raw", data)
    sm.create_secret(Name="ok", SecretString="fine")
    env = {
        **aws_env,
        "RAW": "secretsmanager:bin/raw",
        "RAW_KEY": "secretsmanager:bin/raw#k",
        "OK": "secretsmanager:ok",
    }
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert failures_of(info.value) == {"RAW": "NotText", "RAW_KEY": "NotJson"}
    (raw, _) = info.value.failures
    assert (raw.kind, raw.target) == ("secretsmanager", "bin/raw")
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(all_texts(info.value) + caplog.text, CANARY_BIN, b64encode(data).decode())


def test_version_stage_and_version_id_read_the_old_value(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, caplog: pytest.LogCaptureFixture
) -> None:
    first = sm.create_secret(Name="rotating", SecretString=json.dumps({"password": CANARY_OLD}))
    sm.put_secret_value(SecretId="rotating", SecretString=json.dumps({"password": CANARY}))
    old_id = first["VersionId"]
    env = via(
        proxy,
        aws_env,
        CURRENT="secretsmanager:rotating#password",
        PREVIOUS="{{resolve:secretsmanager:rotating:SecretString:password:AWSPREVIOUS}}",
        PREVIOUS_WHOLE="{{resolve:secretsmanager:rotating:SecretString::AWSPREVIOUS}}",
        BY_ID=f"{{{{resolve:secretsmanager:rotating:SecretString:password::{old_id}}}}}",
    )
    debug_logging(caplog)
    secrets = secretboot.bootstrap(environ=env)
    assert dict(secrets) == {
        "CURRENT": CANARY,
        "PREVIOUS": CANARY_OLD,
        "PREVIOUS_WHOLE": json.dumps({"password": CANARY_OLD}),
        "BY_ID": CANARY_OLD,
    }
    # The two AWSPREVIOUS readers share one GetSecretValue; the version id has its own.
    assert sm_counts(proxy) == {BATCH: 1, GET: 2}
    gets = sorted(proxy.bodies(GET), key=lambda b: sorted(b))
    assert {json.dumps(b, sort_keys=True) for b in gets} == {
        json.dumps({"SecretId": "rotating", "VersionStage": "AWSPREVIOUS"}, sort_keys=True),
        json.dumps({"SecretId": "rotating", "VersionId": old_id}, sort_keys=True),
    }
    assert proxy.bodies(BATCH) == [{"SecretIdList": ["rotating"]}]
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(caplog.text, CANARY, CANARY_OLD)


def test_full_and_partial_arns(aws_env: dict[str, str], sm: Any, proxy: SmProxy) -> None:
    arn = sm.create_secret(Name="app/api", SecretString=DB_JSON)["ARN"]
    partial = arn[:-7]
    assert arn[-7] == "-" and partial.endswith(":secret:app/api")
    # A decoy whose name extends the partial ARN's: it must not answer for it.
    sm.create_secret(Name="app/api-decoy", SecretString=json.dumps({"password": "decoy"}))
    env = via(
        proxy,
        aws_env,
        FULL=f"secretsmanager:{arn}#password",
        PARTIAL=f"secretsmanager:{partial}#password",
        PARTIAL_DYNAMIC=f"{{{{resolve:secretsmanager:{partial}:SecretString:username}}}}",
        BY_NAME="secretsmanager:app/api#port",
        DECOY="secretsmanager:app/api-decoy#password",
        PINNED=f"{{{{resolve:secretsmanager:{arn}:SecretString:password:AWSCURRENT}}}}",
        PINNED_PARTIAL=f"{{{{resolve:secretsmanager:{partial}::username:AWSCURRENT}}}}",
    )
    assert dict(secretboot.bootstrap(environ=env)) == {
        "FULL": CANARY,
        "PARTIAL": CANARY,
        "PARTIAL_DYNAMIC": CANARY_USER,
        "BY_NAME": "5432",
        "DECOY": "decoy",
        "PINNED": CANARY,
        "PINNED_PARTIAL": CANARY_USER,
    }
    assert sm_counts(proxy) == {BATCH: 1, GET: 2}
    (batch,) = proxy.bodies(BATCH)
    assert sorted(batch["SecretIdList"]) == sorted([arn, partial, "app/api", "app/api-decoy"])


# =========================================================================== AWS: batch boundaries


@pytest.mark.parametrize(("distinct", "batches"), [(0, 0), (1, 1), (20, 1), (21, 2), (41, 3)])
def test_batch_boundaries(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, distinct: int, batches: int
) -> None:
    env = via(proxy, aws_env, PLAIN="https://example.com")
    expected = {}
    for i in range(distinct):
        name = f"batch/s{i:02d}"
        sm.create_secret(Name=name, SecretString=json.dumps({"k": f"value-{i}"}))
        # Two variables per secret: batching counts distinct secrets, not variables.
        env[f"WHOLE_{i}"] = f"secretsmanager:{name}"
        env[f"KEY_{i}"] = f"secretsmanager:{name}#k"
        expected[f"WHOLE_{i}"] = json.dumps({"k": f"value-{i}"})
        expected[f"KEY_{i}"] = f"value-{i}"
    secrets = secretboot.bootstrap(environ=env)
    assert dict(secrets) == expected
    assert sm_counts(proxy) == ({BATCH: batches} if batches else {})
    lists = [body["SecretIdList"] for body in proxy.bodies(BATCH)]
    assert all(1 <= len(ids) <= 20 for ids in lists)
    requested = [secret_id for ids in lists for secret_id in ids]
    assert sorted(requested) == sorted(f"batch/s{i:02d}" for i in range(distinct))  # each once


# =========================================================================== AWS: failures


def test_every_failing_variable_is_named_and_nothing_is_exported(
    aws_env: dict[str, str],
    sm: Any,
    kms: Any,
    ssm: Any,
    key_id: str,
    proxy: SmProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = sm.create_secret(Name="good", SecretString=DB_JSON)
    sm.create_secret(Name="text", SecretString=CANARY_TEXT)
    sm.create_secret(Name="array", SecretString=json.dumps([CANARY, "x"]))
    sm.create_secret(Name="json-string", SecretString=json.dumps(CANARY))
    make_binary(sm, "bin", json.dumps({"k": CANARY_BIN}).encode())
    sm.create_secret(Name="gone", SecretString=json.dumps({"k": CANARY_GONE}))
    sm.delete_secret(SecretId="gone", RecoveryWindowInDays=7)
    put(ssm, "/app/ok", "ssm-ok-value")
    wrong_id = str(uuid.uuid4())
    good_vars = {
        "GOOD_USER": "secretsmanager:good#username",
        "GOOD_WHOLE": "secretsmanager:good",
        "GOOD_BY_ID": f"{{{{resolve:secretsmanager:good::password::{good['VersionId']}}}}}",
        "KMS_OK": "kms:" + encrypt(kms, key_id, "kms-ok-value"),
        "SSM_OK": "ssm:/app/ok",
    }
    bad_vars = {
        "MISSING": "secretsmanager:does-not-exist",
        "MISSING_KEY": "secretsmanager:good#nope",
        "NOT_JSON": "secretsmanager:text#key",
        "JSON_ARRAY": "secretsmanager:array#0",
        "JSON_STRING": "secretsmanager:json-string#k",
        "BINARY_KEY": "secretsmanager:bin#k",
        "WRONG_ID": f"{{{{resolve:secretsmanager:good:SecretString:username::{wrong_id}}}}}",
        "WRONG_STAGE": "{{resolve:secretsmanager:good:SecretString:username:NOSUCHSTAGE}}",
        "DELETED": "secretsmanager:gone#k",
        "DELETED_PINNED": "{{resolve:secretsmanager:gone:::AWSCURRENT}}",
        "MALFORMED": "secretsmanager:bad name",
    }
    env = via(proxy, aws_env, **good_vars, **bad_vars)
    before = dict(os.environ)
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env, export=True)
    assert dict(os.environ) == before  # export=True wrote nothing
    error = info.value
    assert failures_of(error) == {
        "MISSING": "NotFound",
        "MISSING_KEY": "JsonKeyNotFound",
        "NOT_JSON": "NotJson",
        "JSON_ARRAY": "NotJson",
        "JSON_STRING": "NotJson",
        "BINARY_KEY": "NotJson",
        "WRONG_ID": "NotFound",
        "WRONG_STAGE": "NotFound",
        # moto answers InvalidRequestException for a secret pending deletion: it fails closed.
        "DELETED": "InvalidRequest",
        "DELETED_PINNED": "InvalidRequest",
        "MALFORMED": "Malformed",
    }
    assert error.variables == tuple(sorted(bad_vars))
    targets = {f.variable: (f.kind, f.target) for f in error.failures}
    assert targets["MISSING_KEY"] == ("secretsmanager", "good#nope")
    assert targets["WRONG_ID"] == ("secretsmanager", f"good#username (version {wrong_id})")
    assert targets["WRONG_STAGE"] == ("secretsmanager", "good#username (stage NOSUCHSTAGE)")
    assert targets["MALFORMED"] == ("secretsmanager", "-")
    for failure in error.failures:
        assert failure.variable in str(error)
        assert failure.detail
    # One batch for every current-version id; one GetSecretValue per pinned (id, version).
    assert sm_counts(proxy) == {BATCH: 1, GET: 4}
    (batch,) = proxy.bodies(BATCH)
    assert sorted(batch["SecretIdList"]) == sorted(
        ["good", "does-not-exist", "text", "array", "json-string", "bin", "gone"]
    )
    canaries = (
        CANARY,
        CANARY_USER,
        CANARY_TEXT,
        CANARY_BIN,
        CANARY_GONE,
        DB_JSON,
        "kms-ok-value",
        "ssm-ok-value",
    )
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(all_texts(error) + caplog.text, *canaries)

    # The variables that did not fail resolve, alone, exactly as they were.
    secretboot.reset()
    secrets = secretboot.bootstrap(environ=via(proxy, aws_env, **good_vars), export=True, refresh=True)
    assert dict(secrets) == {
        "GOOD_USER": CANARY_USER,
        "GOOD_WHOLE": DB_JSON,
        "GOOD_BY_ID": CANARY,
        "KMS_OK": "kms-ok-value",
        "SSM_OK": "ssm-ok-value",
    }
    assert os.environ["GOOD_USER"] == CANARY_USER  # this time export did write


def test_malformed_references_make_no_calls(aws_env: dict[str, str], proxy: SmProxy) -> None:
    env = via(
        proxy,
        aws_env,
        SHORT="secretsmanager:leakme name",
        DYNAMIC="{{resolve:secretsmanager:leakme:SecretBinary}}",
    )
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert {(f.variable, f.kind, f.reason) for f in info.value.failures} == {
        ("SHORT", "secretsmanager", "Malformed"),
        ("DYNAMIC", "dynamic", "Malformed"),
    }
    assert "leakme" not in all_texts(info.value)
    assert proxy.counts() == {}


def test_a_secret_neither_returned_nor_reported_fails_closed(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("kept", "dropped"):
        sm.create_secret(Name=name, SecretString=json.dumps({"k": f"{name}-{CANARY}"}))
    proxy.drop = {"dropped"}
    env = via(
        proxy,
        aws_env,
        KEPT="secretsmanager:kept#k",
        DROPPED="secretsmanager:dropped#k",
        DROPPED_WHOLE="secretsmanager:dropped",
    )
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert failures_of(info.value) == {"DROPPED": "ServiceError", "DROPPED_WHOLE": "ServiceError"}
    assert sm_counts(proxy) == {BATCH: 1}
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(all_texts(info.value) + caplog.text, CANARY)


def test_per_secret_access_denied_inside_a_batch_answer(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("open", "closed"):
        sm.create_secret(Name=name, SecretString=json.dumps({"k": f"{name}-{CANARY}"}))
    proxy.deny_in_batch = {"closed"}
    env = via(proxy, aws_env, OPEN="secretsmanager:open#k", CLOSED="secretsmanager:closed#k")
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert failures_of(info.value) == {"CLOSED": "AccessDenied"}
    assert sm_counts(proxy) == {BATCH: 1}
    assert_no_leak(all_texts(info.value) + caplog.text, CANARY)
    proxy.deny_in_batch = set()
    assert secretboot.bootstrap(environ={**env, "CLOSED": ""}, refresh=True)["OPEN"] == f"open-{CANARY}"


def test_batch_denied_falls_back_to_get_secret_value_naming_only_the_denied(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """moto cannot deny one secret (its IAM mode checks Secrets Manager actions against
    resource "*" only), so the proxy plays a role with GetSecretValue on some secrets only."""
    for name in ("a", "b", "denied"):
        sm.create_secret(Name=name, SecretString=json.dumps({"k": f"{name}-{CANARY}", "j": name}))
    proxy.deny_batch = True
    proxy.deny_get = {"denied"}
    env = via(
        proxy,
        aws_env,
        A="secretsmanager:a#k",
        A_J="secretsmanager:a#j",
        B="secretsmanager:b",
        DENIED="secretsmanager:denied#k",
        DENIED_TOO="secretsmanager:denied#j",
    )
    debug_logging(caplog)
    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ=env)
    assert failures_of(info.value) == {"DENIED": "AccessDenied", "DENIED_TOO": "AccessDenied"}
    # The batch, then one GetSecretValue per distinct secret (not per variable).
    assert sm_counts(proxy) == {BATCH: 1, GET: 3}
    assert sorted(b["SecretId"] for b in proxy.bodies(GET)) == ["a", "b", "denied"]
    assert_logged_by_the_transport(caplog, aws_env)
    assert_no_leak(all_texts(info.value) + caplog.text, CANARY)

    proxy.reset_counts()
    allowed = {k: v for k, v in env.items() if not k.startswith("DENIED")}
    secrets = secretboot.bootstrap(environ=allowed, refresh=True)
    assert dict(secrets) == {
        "A": f"a-{CANARY}",
        "A_J": "a",
        "B": json.dumps({"k": f"b-{CANARY}", "j": "b"}),
    }
    assert sm_counts(proxy) == {BATCH: 1, GET: 2}


class TestMotoIamMode:
    """Real SigV4 checks and IAM policies: moto's auth mode, through the counting proxy."""

    def _user(self, aws_env: dict[str, str], name: str, actions: Sequence[str]) -> dict[str, str]:
        iam = client(aws_env["AWS_ENDPOINT_URL"], "iam")
        iam.create_user(UserName=name)
        if actions:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
            }
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def _secrets(self, sm: Any) -> dict[str, str]:
        old = sm.create_secret(Name="iam/db", SecretString=DB_JSON)["VersionId"]
        sm.create_secret(Name="iam/text", SecretString=CANARY_TEXT)
        return {
            "USER": "secretsmanager:iam/db#username",
            "PASSWORD": "secretsmanager:iam/db#password",
            "TEXT": "secretsmanager:iam/text",
            "PINNED": f"{{{{resolve:secretsmanager:iam/db::password::{old}}}}}",
        }

    def test_get_secret_value_only_role_resolves_through_the_fallback(
        self,
        aws_env: dict[str, str],
        moto_endpoint: str,
        sm: Any,
        proxy: SmProxy,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        keys = self._user(aws_env, "get-only", ["secretsmanager:GetSecretValue"])
        refs = self._secrets(sm)
        env = via(proxy, aws_env, **keys, **refs)
        debug_logging(caplog)
        moto_api(moto_endpoint, "reset-auth", b"0")
        try:
            secrets = secretboot.bootstrap(environ=env)
        finally:
            moto_api(moto_endpoint, "reset-auth", b"inf")
        assert dict(secrets) == {
            "USER": CANARY_USER,
            "PASSWORD": CANARY,
            "TEXT": CANARY_TEXT,
            "PINNED": CANARY,
        }
        # The denied batch, then GetSecretValue for each of its two secrets, plus the pinned one.
        assert sm_counts(proxy) == {BATCH: 1, GET: 3}
        assert_no_leak(caplog.text, CANARY, CANARY_USER, CANARY_TEXT, keys["AWS_SECRET_ACCESS_KEY"])

    def test_batch_allowed_resolves_in_one_call(
        self, aws_env: dict[str, str], moto_endpoint: str, sm: Any, proxy: SmProxy
    ) -> None:
        keys = self._user(
            aws_env, "batch", ["secretsmanager:BatchGetSecretValue", "secretsmanager:GetSecretValue"]
        )
        refs = self._secrets(sm)
        env = via(proxy, aws_env, **keys, **refs)
        moto_api(moto_endpoint, "reset-auth", b"0")
        try:
            secrets = secretboot.bootstrap(environ=env)
        finally:
            moto_api(moto_endpoint, "reset-auth", b"inf")
        assert dict(secrets) == {
            "USER": CANARY_USER,
            "PASSWORD": CANARY,
            "TEXT": CANARY_TEXT,
            "PINNED": CANARY,
        }
        assert sm_counts(proxy) == {BATCH: 1, GET: 1}

    def test_no_secrets_manager_permission_fails_every_variable(
        self,
        aws_env: dict[str, str],
        moto_endpoint: str,
        sm: Any,
        ssm: Any,
        proxy: SmProxy,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        keys = self._user(aws_env, "ssm-only", ["ssm:GetParameters"])
        refs = self._secrets(sm)
        put(ssm, "/iam/ok", "ssm-ok-value")
        env = via(proxy, aws_env, **keys, **refs, SSM_OK="ssm:/iam/ok")
        before = dict(os.environ)
        debug_logging(caplog)
        moto_api(moto_endpoint, "reset-auth", b"0")
        try:
            with pytest.raises(BootstrapError) as info:
                secretboot.bootstrap(environ=env, export=True)
        finally:
            moto_api(moto_endpoint, "reset-auth", b"inf")
        assert failures_of(info.value) == dict.fromkeys(refs, "AccessDenied")
        assert dict(os.environ) == before
        assert sm_counts(proxy) == {BATCH: 1, GET: 3}
        assert_logged_by_the_transport(caplog, aws_env)
        assert_no_leak(
            all_texts(info.value) + caplog.text,
            CANARY,
            CANARY_USER,
            CANARY_TEXT,
            "ssm-ok-value",
            keys["AWS_SECRET_ACCESS_KEY"],
        )


def test_service_specific_endpoint_variable(aws_env: dict[str, str], sm: Any) -> None:
    sm.create_secret(Name="endpoint", SecretString="through the service endpoint")
    env = {
        **aws_env,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens here
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": aws_env["AWS_ENDPOINT_URL"],
        "S": "secretsmanager:endpoint",
    }
    assert secretboot.bootstrap(environ=env)["S"] == "through the service endpoint"


def test_huge_json_number_stays_json_text(aws_env: dict[str, str], sm: Any) -> None:
    sm.create_secret(Name="numbers", SecretString='{"big": 1e400}')
    value = secretboot.bootstrap(environ={**aws_env, "BIG": "secretsmanager:numbers#big"})["BIG"]

    def reject(constant: str) -> None:
        raise ValueError(constant)

    json.loads(value, parse_constant=reject)  # strict JSON: no Infinity or NaN


def test_json_too_long_or_too_deep_fails_only_its_own_variable(
    aws_env: dict[str, str], sm: Any, proxy: SmProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5,000-digit integer (past int()'s limit) or 30,000 levels of nesting (past the
    recursion limit) fail their own variable; the rest of the batch resolves."""
    digits = "7" * 5000
    sm.create_secret(Name="healthy", SecretString=DB_JSON)
    sm.create_secret(
        Name="long", SecretString=f'{{"list": [{digits}], "top": {digits}, "user": "{CANARY_USER}"}}'
    )
    sm.create_secret(Name="deep", SecretString='{"a": ' + "[" * 30000 + "]" * 30000 + "}")
    sm.create_secret(Name="deeper", SecretString='{"a": ' + "[" * 100000)  # never closed
    refs = {
        "PASSWORD": "secretsmanager:healthy#password",
        "LIST": "secretsmanager:long#list",
        "TOP": "secretsmanager:long#top",  # a number alone comes back as written
        "USER": "secretsmanager:long#user",
        "DEEP": "secretsmanager:deep#a",
        "DEEPER": "secretsmanager:deeper#a",
        "WHOLE": "secretsmanager:deep",  # read whole: no JSON is parsed
    }
    parsed = {name: parse_reference(value) for name, value in refs.items()}
    debug_logging(caplog)
    outcome = resolve(
        {name: ref for name, ref in parsed.items() if ref is not None},
        Settings(via(proxy, aws_env)),
    )
    assert sm_counts(proxy) == {BATCH: 1}
    assert {f.variable: (f.reason, f.detail) for f in outcome.failures} == {
        "LIST": ("InvalidJson", "the secret's JSON has a number too long to read"),
        "DEEP": ("InvalidJson", "the secret's JSON is nested too deeply to read"),
        "DEEPER": ("InvalidJson", "the secret's JSON is nested too deeply to read"),
    }
    assert outcome.values["PASSWORD"] == CANARY
    assert (outcome.values["TOP"], outcome.values["USER"]) == (digits, CANARY_USER)
    assert outcome.values["WHOLE"].startswith('{"a": [[[')
    texts = "\n".join(f"{f!r} {f.detail} {f.target}" for f in outcome.failures) + caplog.text
    assert_no_leak(texts, digits[:40], "[[[[", CANARY, CANARY_USER)


def test_json_values_come_back_as_written_or_as_strict_json(aws_env: dict[str, str], sm: Any) -> None:
    sm.create_secret(
        Name="shapes",
        SecretString='{"rate": 1.10, "big": 1e400, "nested": {"name": "caf\u00e9", "n": 2}, "nan": NaN}',
    )
    env = {
        **aws_env,
        "RATE": "secretsmanager:shapes#rate",
        "BIG": "secretsmanager:shapes#big",
        "NESTED": "secretsmanager:shapes#nested",
    }
    with pytest.raises(BootstrapError) as info:  # NaN is not JSON: the whole document is refused
        secretboot.bootstrap(environ=env)
    assert {f.reason for f in info.value.failures} == {"NotJson"}
    sm.put_secret_value(
        SecretId="shapes",
        SecretString='{"rate": 1.10, "big": 1e400, "nested": {"name": "caf\u00e9", "n": 2}}',
    )
    keyring = secretboot.bootstrap(environ=env)
    assert keyring["RATE"] == "1.10"
    assert keyring["BIG"] == "1e400"
    assert json.loads(keyring["NESTED"]) == {"name": "café", "n": 2}
    assert "café" in keyring["NESTED"]  # not re-escaped


# =========================================================================== CLI: check


def test_check_reports_kind_target_and_status(
    aws_env: dict[str, str], sm: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sm.create_secret(Name="app/db", SecretString=DB_JSON)
    sm.put_secret_value(SecretId="app/db", SecretString=json.dumps({**DB_DOC, "password": CANARY_OLD}))
    env_file = tmp_path / ".env"
    env_file.write_text(
        "\n".join(
            [
                "GOOD=secretsmanager:app/db#password",
                "PREV='{{resolve:secretsmanager:app/db:SecretString:password:AWSPREVIOUS}}'",
                "MISSING=secretsmanager:app/nope",
                "NO_KEY=secretsmanager:app/db#nope",
                "",
            ]
        )
    )
    assert cli_main(["check", "--env-file", str(env_file)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "TARGET", "STATUS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"GOOD", "PREV", "MISSING", "NO_KEY"}
    assert rows["GOOD"].split() == ["GOOD", "secretsmanager", "app/db#password", "resolved"]
    assert rows["PREV"].split() == [
        "PREV",
        "secretsmanager",
        "app/db#password",
        "(stage",
        "AWSPREVIOUS)",
        "resolved",
    ]
    assert rows["MISSING"].split()[:4] == ["MISSING", "secretsmanager", "app/nope", "NotFound:"]
    assert rows["NO_KEY"].split()[:4] == ["NO_KEY", "secretsmanager", "app/db#nope", "JsonKeyNotFound:"]
    assert_no_leak(out + err, CANARY, CANARY_OLD, CANARY_USER, DB_JSON)

    assert cli_main(["check", "--json", "--env-file", str(env_file)]) == 1
    out, err = capsys.readouterr()
    report = {row["name"]: row for row in json.loads(out)}
    assert {name: (r["kind"], r["target"], r["status"]) for name, r in report.items()} == {
        "GOOD": ("secretsmanager", "app/db#password", "resolved"),
        "PREV": ("secretsmanager", "app/db#password (stage AWSPREVIOUS)", "resolved"),
        "MISSING": ("secretsmanager", "app/nope", "NotFound"),
        "NO_KEY": ("secretsmanager", "app/db#nope", "JsonKeyNotFound"),
    }
    assert_no_leak(out + err, CANARY, CANARY_OLD, CANARY_USER, DB_JSON)

    env_file.write_text(
        "GOOD=secretsmanager:app/db#password\nDYN={{resolve:secretsmanager:app/db::username}}\n"
    )
    assert cli_main(["check", "--env-file", str(env_file)]) == 0
    out, _ = capsys.readouterr()
    assert [line.split() for line in out.splitlines()[1:]] == [
        ["DYN", "secretsmanager", "app/db#username", "resolved"],
        ["GOOD", "secretsmanager", "app/db#password", "resolved"],
    ]
    assert_no_leak(out, CANARY, CANARY_USER)
