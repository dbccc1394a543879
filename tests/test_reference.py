"""Detection and parsing of references: table-driven cases and property tests.

Everything here is pure: no AWS, no environment, no I/O.
"""

from __future__ import annotations

import os
import pickle
import string
from base64 import b64decode, b64encode, urlsafe_b64encode
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from secretboot import KmsReference, ReferenceSyntaxError, SsmReference, is_reference, parse_reference
from secretboot._reference import looks_like_kms_ciphertext

KMS_HEADER = b"\x01\x02\x02\x00\x78"
ARN = "arn:aws:ssm:us-east-1:123456789012:parameter"
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")


def kms_blob(total: int) -> bytes:
    """A blob of ``total`` bytes that starts like genuine KMS symmetric ciphertext."""
    return KMS_HEADER + os.urandom(total - len(KMS_HEADER))


# --------------------------------------------------------------------------- valid KMS

SMALL_BLOB = b"\x00\xffsome ciphertext\x10"
KMS_LIKE_200 = kms_blob(200)
KMS_LIKE_64 = kms_blob(64)
KMS_LIKE_6144 = kms_blob(6144)


@pytest.mark.parametrize(
    ("value", "ciphertext"),
    [
        pytest.param("kms:" + b64(SMALL_BLOB), SMALL_BLOB, id="kms-prefix-any-bytes"),
        pytest.param("kms:" + b64(b"x"), b"x", id="kms-prefix-one-byte"),
        pytest.param("kms:" + b64(KMS_LIKE_200), KMS_LIKE_200, id="kms-prefix-kms-like"),
        pytest.param("kms:" + b64(KMS_LIKE_6144), KMS_LIKE_6144, id="kms-prefix-max-size"),
        pytest.param(b64(KMS_LIKE_64), KMS_LIKE_64, id="bare-min-size-64"),
        pytest.param(b64(KMS_LIKE_200), KMS_LIKE_200, id="bare-200"),
        pytest.param(b64(KMS_LIKE_6144), KMS_LIKE_6144, id="bare-max-size-6144"),
    ],
)
def test_valid_kms(value: str, ciphertext: bytes) -> None:
    assert is_reference(value)
    ref = parse_reference(value, variable="MY_VAR")
    assert isinstance(ref, KmsReference)
    assert ref.kind == "kms"
    assert ref.ciphertext == ciphertext
    assert ref == KmsReference(ciphertext)
    assert ref.target == f"<ciphertext, {len(ciphertext)} bytes>"
    assert str(ref) == "kms:" + b64(ciphertext)


@pytest.mark.parametrize("size", [64, 65, 150, 1000, 6143, 6144])
def test_bare_kms_ciphertext_detected_in_size_range(size: int) -> None:
    value = b64(kms_blob(size))
    assert value.startswith("AQICAH")
    assert looks_like_kms_ciphertext(value)
    assert is_reference(value)
    assert parse_reference(value) == KmsReference(b64decode(value))


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(kms_blob(63), id="too-short-63"),
        pytest.param(kms_blob(6), id="header-plus-one"),
        pytest.param(kms_blob(6145), id="too-long-6145"),
        pytest.param(b"\x01\x02\x02\x00\x79" + os.urandom(200), id="same-b64-head-wrong-header-byte"),
        pytest.param(b"\x01\x02\x02\x00\x70" + os.urandom(200), id="same-b64-head-0x70"),
        pytest.param(b"\x01\x02\x02\x01\x78" + os.urandom(200), id="wrong-fourth-byte"),
        pytest.param(os.urandom(3) + KMS_LIKE_200, id="header-not-at-start"),
    ],
)
def test_bare_base64_that_is_not_kms_ciphertext_is_plain(blob: bytes) -> None:
    value = b64(blob)
    assert not looks_like_kms_ciphertext(value)
    assert not is_reference(value)
    assert parse_reference(value) is None


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda v: v.rstrip("="), id="padding-stripped"),
        pytest.param(lambda v: v + "\n", id="trailing-newline"),
        pytest.param(lambda v: v[:76] + "\n" + v[76:], id="wrapped-line"),
        pytest.param(lambda v: v.replace("+", "-").replace("/", "_"), id="urlsafe-alphabet"),
        pytest.param(lambda v: " " + v, id="leading-space"),
    ],
)
def test_bare_kms_detection_requires_exact_standard_base64(transform: Callable[[str], str]) -> None:
    # Pick a blob whose base64 has padding and both '+' and '/' so every transform changes it.
    blob = KMS_HEADER + bytes(range(256))[:195]
    value = b64(blob)
    assert value.endswith("=") and "+" in value and "/" in value
    changed = transform(value)
    assert changed != value
    assert not looks_like_kms_ciphertext(changed)
    assert parse_reference(changed) is None


# --------------------------------------------------------------------------- valid SSM


@pytest.mark.parametrize(
    ("value", "name", "selector", "request_name", "parameter_name"),
    [
        pytest.param("ssm:/path/name", "/path/name", None, "/path/name", "/path/name", id="path"),
        pytest.param("ssm:name", "name", None, "name", "name", id="bare-name"),
        pytest.param("ssm:/name", "/name", None, "/name", "/name", id="rooted-single"),
        pytest.param("ssm:/p/n:3", "/p/n", "3", "/p/n:3", "/p/n", id="version"),
        pytest.param(
            "ssm:/p/n:1234567890", "/p/n", "1234567890", "/p/n:1234567890", "/p/n", id="big-version"
        ),
        pytest.param("ssm:/p/n:prod", "/p/n", "prod", "/p/n:prod", "/p/n", id="label"),
        pytest.param("ssm:n:Blue-2.x_y", "n", "Blue-2.x_y", "n:Blue-2.x_y", "n", id="label-punctuation"),
        pytest.param(f"ssm:{ARN}/p/n", f"{ARN}/p/n", None, f"{ARN}/p/n", "/p/n", id="arn"),
        pytest.param(f"ssm:{ARN}/p/n:3", f"{ARN}/p/n", "3", f"{ARN}/p/n:3", "/p/n", id="arn-version"),
        pytest.param(f"ssm:{ARN}/p/n:prod", f"{ARN}/p/n", "prod", f"{ARN}/p/n:prod", "/p/n", id="arn-label"),
        pytest.param(f"ssm:{ARN}/flat", f"{ARN}/flat", None, f"{ARN}/flat", "flat", id="arn-unrooted"),
        pytest.param(
            "ssm:arn:aws-cn:ssm:cn-north-1:123456789012:parameter/x/y",
            "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/x/y",
            None,
            "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/x/y",
            "/x/y",
            id="arn-other-partition",
        ),
        pytest.param("{{resolve:ssm-secure:/p/n}}", "/p/n", None, "/p/n", "/p/n", id="dynamic-secure"),
        pytest.param("{{resolve:ssm-secure:/p/n:4}}", "/p/n", "4", "/p/n:4", "/p/n", id="dynamic-secure-ver"),
        pytest.param("{{resolve:ssm:name:2}}", "name", "2", "name:2", "name", id="dynamic-plain-ver"),
        pytest.param(
            f"{{{{resolve:ssm-secure:{ARN}/p/n:7}}}}",
            f"{ARN}/p/n",
            "7",
            f"{ARN}/p/n:7",
            "/p/n",
            id="dynamic-arn",
        ),
    ],
)
def test_valid_ssm(
    value: str, name: str, selector: str | None, request_name: str, parameter_name: str
) -> None:
    assert is_reference(value)
    ref = parse_reference(value, variable="MY_VAR")
    assert isinstance(ref, SsmReference)
    assert ref.kind == "ssm"
    assert ref.name == name
    assert ref.selector == selector
    assert ref.request_name == request_name
    assert ref.parameter_name == parameter_name
    assert ref.target == request_name
    assert ref == SsmReference(name, selector)
    assert str(ref) == "ssm:" + request_name


@pytest.mark.parametrize("path", ["x/", "x/y/"])
def test_arn_and_name_forms_accept_the_same_paths(path: str) -> None:
    with pytest.raises(ReferenceSyntaxError):
        SsmReference("/" + path)
    try:
        ref = SsmReference(f"{ARN}/{path}")
    except ReferenceSyntaxError:
        return
    raise AssertionError(f"ARN accepted for a path rejected as a name; parameter_name={ref.parameter_name!r}")


def test_non_canonical_base64_is_normalised() -> None:
    # Non-zero unused bits in the last character decode to the same byte.
    ref = parse_reference("kms:QR==")
    assert ref == KmsReference(b"A")
    assert str(ref) == "kms:QQ=="
    assert parse_reference(str(ref)) == ref


def test_dynamic_and_prefix_forms_give_the_same_reference() -> None:
    assert parse_reference("{{resolve:ssm-secure:/p/n:4}}") == parse_reference("ssm:/p/n:4")
    assert parse_reference("{{resolve:ssm:/p/n}}") == parse_reference("ssm:/p/n")


# --------------------------------------------------------------------------- plain values

PLAIN_VALUES = [
    pytest.param("", id="empty"),
    pytest.param("https://example.com/path?q=1#frag", id="https-url"),
    pytest.param("http://localhost:8080", id="http-url"),
    pytest.param("postgres://u:p@h/db", id="postgres-url"),
    pytest.param("redis://:secret@cache:6379/0", id="redis-url"),
    pytest.param("s3://bucket/key.txt", id="s3-url"),
    pytest.param("0123456789abcdef" * 4, id="hex-key"),
    pytest.param("DEADBEEF" * 8, id="hex-upper"),
    pytest.param(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV",
        id="jwt",
    ),
    pytest.param("correct horse battery staple", id="words"),
    pytest.param("hunter2", id="word"),
    pytest.param("KMS:AQICAHxxxx", id="uppercase-kms-prefix"),
    pytest.param("SSM:/a/b", id="uppercase-ssm-prefix"),
    pytest.param(" kms:abcd", id="kms-prefix-not-at-start"),
    pytest.param("x ssm:/a/b", id="ssm-prefix-not-at-start"),
    pytest.param("{{resolv:ssm:/a}}", id="misspelt-dynamic"),
    pytest.param("{resolve:ssm:/a}", id="single-brace-dynamic"),
    pytest.param("aGVsbG8gd29ybGQ=", id="plain-base64"),
    pytest.param("AQICAH", id="kms-b64-head-only"),
    pytest.param("AQICAHgA", id="kms-b64-head-short"),
    pytest.param("AQICAHnotreally", id="kms-b64-head-not-base64"),
    pytest.param("true", id="boolean"),
    pytest.param("42", id="number"),
    pytest.param("arn:aws:ssm:us-east-1:123456789012:parameter/p/n", id="arn-without-ssm-prefix"),
]


@pytest.mark.parametrize("value", PLAIN_VALUES)
def test_plain_values_are_not_references(value: str) -> None:
    assert is_reference(value) is False
    assert parse_reference(value) is None
    assert parse_reference(value, variable="MY_VAR") is None


@pytest.mark.parametrize("value", [None, b"kms:AAAA", 42])
def test_parse_reference_rejects_non_str(value: object) -> None:
    with pytest.raises(TypeError):
        parse_reference(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- malformed

TOO_BIG = "kms:" + b64(kms_blob(6145))

MALFORMED = [
    # value, kind, a distinctive part of the value that must not leak into the error
    pytest.param("kms:", "kms", None, id="kms-empty"),
    pytest.param("kms:not base64!", "kms", "not base64!", id="kms-not-base64"),
    pytest.param("kms:abc", "kms", "abc", id="kms-bad-padding"),
    pytest.param("kms:Zq9SeCrEtx==x", "kms", "Zq9SeCrEtx", id="kms-padding-in-middle"),
    pytest.param("kms:Zq9S-cr_tQ==", "kms", "Zq9S-cr_tQ", id="kms-urlsafe-alphabet"),
    pytest.param("kms:Zq9SeCrE\n", "kms", "Zq9SeCrE", id="kms-trailing-newline"),
    pytest.param(TOO_BIG, "kms", TOO_BIG[4:60], id="kms-blob-over-6144"),
    pytest.param("ssm:", "ssm", None, id="ssm-empty-name"),
    pytest.param("ssm:/a/b:", "ssm", "/a/b:", id="ssm-empty-selector"),
    pytest.param("ssm:/a/b:0", "ssm", "/a/b:0", id="ssm-version-zero"),
    pytest.param("ssm:/a/b:03", "ssm", ":03", id="ssm-version-leading-zero"),
    pytest.param("ssm:/a/b:awslabel", "ssm", "awslabel", id="ssm-label-aws"),
    pytest.param("ssm:/a/b:SSMlabel", "ssm", "SSMlabel", id="ssm-label-ssm-any-case"),
    pytest.param("ssm:/a/b:1:2", "ssm", "/a/b:1:2", id="ssm-two-selectors"),
    pytest.param("ssm:/a/b:-x", "ssm", "/a/b:-x", id="ssm-label-bad-start"),
    pytest.param("ssm:a/b", "ssm", "a/b", id="ssm-hierarchy-without-slash"),
    pytest.param("ssm:/a b", "ssm", "/a b", id="ssm-space"),
    pytest.param("ssm:/zq9secret//b", "ssm", "zq9secret", id="ssm-empty-segment"),
    pytest.param("ssm:/zq9secret/", "ssm", "zq9secret", id="ssm-trailing-slash"),
    pytest.param("ssm:/" + "z" * 2048, "ssm", "z" * 40, id="ssm-name-too-long"),
    pytest.param("ssm:arn:aws:ssm:us-east-1:123:parameter/x", "ssm", "us-east-1:123:", id="ssm-arn-account"),
    pytest.param("ssm:arn:aws:ssm:us-east-1:123456789012:zq9/x", "ssm", "zq9", id="ssm-arn-no-parameter"),
    pytest.param(f"ssm:{ARN}//zq9secret", "ssm", "zq9secret", id="ssm-arn-double-slash"),
    pytest.param(f"ssm:{ARN}/zq9secret:", "ssm", "zq9secret", id="ssm-arn-empty-selector"),
    pytest.param(
        "ssm:arn:aws:kms:us-east-1:123456789012:parameter/zq9", "ssm", "zq9", id="ssm-arn-kms-service"
    ),
    pytest.param("{{resolve:s3:x}}", "dynamic", "s3:x", id="dynamic-s3"),
    pytest.param("{{resolve:ssm-foo:Zq9DbSecret}}", "dynamic", "Zq9DbSecret", id="dynamic-unsupported"),
    pytest.param("{{resolve:ssm-secure:/a:label}}", "dynamic", "/a:label", id="dynamic-label"),
    pytest.param("{{resolve:ssm-secure:/a:0}}", "dynamic", "/a:0", id="dynamic-version-zero"),
    pytest.param("{{resolve:ssm-secure:/zq9secret:}}", "dynamic", "zq9secret", id="dynamic-empty-version"),
    pytest.param("{{resolve:ssm-secure:}}", "dynamic", None, id="dynamic-empty-name"),
    pytest.param("{{resolve:ssm-secure:a/zq9}}", "dynamic", "a/zq9", id="dynamic-hierarchy-no-slash"),
    pytest.param("prefix-{{resolve:ssm:/a}}", "dynamic", "prefix-", id="dynamic-embedded"),
    pytest.param("{{resolve:ssm:/zq9secret}}-suffix", "dynamic", "zq9secret", id="dynamic-suffix"),
    pytest.param("{{resolve:ssm:/zq9secret", "dynamic", "zq9secret", id="dynamic-unclosed"),
    pytest.param("{{resolve:ssm:/zq9}}{{resolve:ssm:/b}}", "dynamic", "zq9", id="dynamic-twice"),
]


@pytest.mark.parametrize(("value", "kind", "marker"), MALFORMED)
def test_malformed_names_variable_and_kind_but_not_value(value: str, kind: str, marker: str | None) -> None:
    assert is_reference(value), "detection must flag what parsing rejects"
    with pytest.raises(ReferenceSyntaxError) as info:
        parse_reference(value, variable="MY_VAR")
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.variable == "MY_VAR"
    assert exc.kind == kind
    assert exc.reason
    message = str(exc)
    assert message.startswith("MY_VAR: malformed reference: ")
    assert exc.reason in message
    shown = [message, repr(exc), repr(exc.args), repr(vars(exc))]
    # The chain (cause and context) must not carry the value either.
    link: BaseException | None = exc
    while link is not None:
        shown += [str(link), repr(link)]
        link = link.__cause__ or link.__context__
    for text in shown:
        assert value not in text
        if marker is not None:
            assert marker not in text


@pytest.mark.parametrize(("value", "kind", "marker"), MALFORMED)
def test_malformed_without_variable(value: str, kind: str, marker: str | None) -> None:
    with pytest.raises(ReferenceSyntaxError) as info:
        parse_reference(value)
    assert info.value.variable is None
    assert info.value.kind == kind
    assert str(info.value).startswith("malformed reference: ")


def test_unsupported_dynamic_kind_is_named() -> None:
    with pytest.raises(ReferenceSyntaxError, match="'ssm-foo'") as info:
        parse_reference("{{resolve:ssm-foo:x}}", variable="MY_VAR")
    assert info.value.kind == "dynamic"


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        pytest.param("kms:", "empty", id="kms-empty"),
        pytest.param("kms:abc", "base64", id="kms-base64"),
        pytest.param(TOO_BIG, "6144", id="kms-size"),
        pytest.param("ssm:", "empty", id="ssm-empty"),
        pytest.param("ssm:/a/b:", "empty", id="selector-empty"),
        pytest.param("ssm:/a/b:awsx", "'aws'", id="reserved-label"),
        pytest.param("ssm:a/b", "must begin with '/'", id="hierarchy"),
        pytest.param("ssm:arn:aws:ssm:us-east-1:123:parameter/x", "ARN", id="arn"),
        pytest.param("{{resolve:ssm-secure:/a:label}}", "must be a number", id="dynamic-version"),
        pytest.param("prefix-{{resolve:ssm:/a}}", "whole value", id="embedded"),
    ],
)
def test_malformed_reason_explains(value: str, reason_part: str) -> None:
    with pytest.raises(ReferenceSyntaxError) as info:
        parse_reference(value, variable="V")
    assert reason_part in info.value.reason


# --------------------------------------------------------------------------- reference objects

VALID_VALUES = [
    "kms:" + b64(SMALL_BLOB),
    b64(KMS_LIKE_200),
    "ssm:/path/name",
    "ssm:name",
    "ssm:/p/n:3",
    "ssm:/p/n:prod",
    f"ssm:{ARN}/p/n",
    f"ssm:{ARN}/p/n:3",
    "{{resolve:ssm-secure:/p/n}}",
    "{{resolve:ssm-secure:/p/n:4}}",
    "{{resolve:ssm:name:2}}",
]


@pytest.mark.parametrize("value", VALID_VALUES)
def test_round_trip_through_canonical_form(value: str) -> None:
    ref = parse_reference(value)
    assert ref is not None
    again = parse_reference(str(ref))
    assert again == ref
    assert hash(again) == hash(ref)
    assert str(again) == str(ref)
    assert pickle.loads(pickle.dumps(ref)) == ref


@pytest.mark.parametrize("value", VALID_VALUES)
def test_references_are_immutable(value: str) -> None:
    ref = parse_reference(value)
    assert ref is not None
    before = (str(ref), hash(ref))
    for attribute in ("ciphertext", "name", "selector", "kind", "other"):
        with pytest.raises(AttributeError):
            setattr(ref, attribute, "x")
    assert (str(ref), hash(ref)) == before


@pytest.mark.parametrize("value", ["ssm:/p/n:3", "kms:" + b64(SMALL_BLOB)], ids=["ssm", "kms"])
def test_reference_attributes_cannot_be_deleted(value: str) -> None:
    ref = parse_reference(value)
    assert ref is not None
    attribute = "ciphertext" if isinstance(ref, KmsReference) else "selector"
    try:
        delattr(ref, attribute)
    except AttributeError:
        return
    raise AssertionError(f"del ref.{attribute} succeeded on an immutable reference")


def test_equality_and_hash() -> None:
    assert SsmReference("/a", "3") == SsmReference("/a", "3")
    assert hash(SsmReference("/a", "3")) == hash(SsmReference("/a", "3"))
    assert SsmReference("/a", "3") != SsmReference("/a", "4")
    assert SsmReference("/a", "3") != SsmReference("/a")
    assert SsmReference("/a") != SsmReference("/b")
    assert KmsReference(b"abc") == KmsReference(b"abc")
    assert KmsReference(b"abc") != KmsReference(b"abd")
    assert len({SsmReference("/a"), SsmReference("/a"), KmsReference(b"a"), KmsReference(b"a")}) == 2


def test_equality_across_kinds_is_false() -> None:
    kms = KmsReference(b"name")
    ssm = SsmReference("name")
    assert kms != ssm
    assert ssm != kms
    assert (kms == ssm) is False
    assert kms != b"name"
    assert ssm != "name"
    assert ssm != "ssm:name"
    assert kms != "kms:" + b64(b"name")


def test_reference_constructors_validate() -> None:
    with pytest.raises(TypeError):
        KmsReference("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ReferenceSyntaxError):
        KmsReference(b"")
    with pytest.raises(ReferenceSyntaxError):
        KmsReference(b"x" * 6145)
    assert KmsReference(b"x" * 6144).ciphertext == b"x" * 6144
    with pytest.raises(TypeError):
        SsmReference(None)  # type: ignore[arg-type]
    with pytest.raises(ReferenceSyntaxError):
        SsmReference("/a", "")
    with pytest.raises(ReferenceSyntaxError):
        SsmReference("/a", "aws-x")


@pytest.mark.parametrize("size", [12, 64, 300, 6144])
def test_kms_repr_shows_size_not_ciphertext(size: int) -> None:
    ciphertext = os.urandom(size)
    ref = KmsReference(ciphertext)
    assert repr(ref) == f"KmsReference(<ciphertext, {size} bytes>)"
    assert b64(ciphertext) not in repr(ref)
    assert b64(ciphertext) not in ref.target


@PROPERTY
@given(st.binary(min_size=12, max_size=6144))
def test_kms_repr_never_contains_ciphertext(ciphertext: bytes) -> None:
    # 12 bytes give 16 base64 characters: longer than any base64-alphabet run in the repr.
    ref = KmsReference(ciphertext)
    encoded = b64(ciphertext)
    assert encoded not in repr(ref)
    assert encoded[:16] not in repr(ref)
    assert encoded in str(ref)


# --------------------------------------------------------------------------- round-trip properties

SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1, max_size=12)
PLAIN_NAME = st.one_of(
    SEGMENT,
    SEGMENT.map(lambda s: "/" + s),
    st.lists(SEGMENT, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
)
ARN_NAME = st.builds(
    lambda partition, region, account, parts: (
        f"arn:{partition}:ssm:{region}:{account}:parameter/" + "/".join(parts)
    ),
    st.sampled_from(["aws", "aws-cn", "aws-us-gov"]),
    st.sampled_from(["us-east-1", "eu-west-3", "cn-north-1", "us-gov-west-1", "ap-southeast-2"]),
    st.integers(min_value=0, max_value=10**12 - 1).map(lambda n: f"{n:012d}"),
    st.lists(SEGMENT, min_size=1, max_size=5),
)
VERSION = st.integers(min_value=1, max_value=10**19 - 1).map(str)
LABEL = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}", fullmatch=True).filter(
    lambda s: not s.lower().startswith(("aws", "ssm"))
)
SELECTOR = st.one_of(st.none(), VERSION, LABEL)


@PROPERTY
@given(st.one_of(PLAIN_NAME, ARN_NAME), SELECTOR)
def test_ssm_round_trip_property(name: str, selector: str | None) -> None:
    ref = SsmReference(name, selector)
    text = str(ref)
    assert is_reference(text)
    again = parse_reference(text, variable="V")
    assert again == ref
    assert hash(again) == hash(ref)
    assert isinstance(again, SsmReference)
    assert (again.name, again.selector) == (name, selector)
    assert ref.request_name == (name if selector is None else f"{name}:{selector}")


@PROPERTY
@given(st.one_of(PLAIN_NAME, ARN_NAME), st.one_of(st.none(), VERSION), st.sampled_from(["ssm", "ssm-secure"]))
def test_dynamic_reference_property(name: str, version: str | None, kind: str) -> None:
    suffix = "" if version is None else f":{version}"
    value = f"{{{{resolve:{kind}:{name}{suffix}}}}}"
    ref = parse_reference(value)
    assert ref == SsmReference(name, version)
    assert parse_reference(str(ref)) == ref


@PROPERTY
@given(ARN_NAME)
def test_arn_parameter_name_property(arn: str) -> None:
    ref = SsmReference(arn)
    path = arn.split(":parameter/", 1)[1]
    assert ref.parameter_name == ("/" + path if "/" in path else path)


@PROPERTY
@given(st.binary(min_size=1, max_size=6144))
def test_kms_round_trip_property(ciphertext: bytes) -> None:
    ref = KmsReference(ciphertext)
    again = parse_reference(str(ref))
    assert again == ref
    assert hash(again) == hash(ref)
    assert isinstance(again, KmsReference)
    assert again.ciphertext == ciphertext


@PROPERTY
@given(st.binary(min_size=59, max_size=6139))
def test_bare_kms_property(tail: bytes) -> None:
    blob = KMS_HEADER + tail
    value = b64(blob)
    assert is_reference(value)
    ref = parse_reference(value)
    assert ref == KmsReference(blob)
    assert parse_reference(str(ref)) == ref


# --------------------------------------------------------------------------- detection never misfires

URL = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}{path}",
    st.sampled_from(
        ["http", "https", "postgres", "postgresql", "mysql", "redis", "amqp", "s3", "ftp", "file"]
    ),
    st.one_of(st.just(""), st.from_regex(r"[a-z0-9]{1,8}(:[A-Za-z0-9!$%]{0,12})?@", fullmatch=True)),
    st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,20}\.){0,3}[a-z]{2,6}", fullmatch=True),
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    st.from_regex(r"(/[A-Za-z0-9_.~%\-]{0,12}){0,4}(\?[a-z]{1,5}=[A-Za-z0-9{}:]{0,10})?", fullmatch=True),
)
HEX = st.binary(max_size=128).map(bytes.hex)
JWT_SEGMENT = st.binary(min_size=1, max_size=96).map(lambda b: urlsafe_b64encode(b).decode().rstrip("="))
JWT = st.lists(JWT_SEGMENT, min_size=3, max_size=3).map(".".join)
NOT_KMS_B64 = st.one_of(
    st.binary(max_size=7000).filter(lambda b: not b.startswith(KMS_HEADER)),
    # Near misses: the same "AQICAH" base64 head, a different fifth byte.
    st.builds(
        lambda fifth, tail: b"\x01\x02\x02\x00" + bytes([fifth]) + tail,
        st.sampled_from([0x70, 0x71, 0x77, 0x79, 0x7F]),
        st.binary(min_size=59, max_size=300),
    ),
    # The right header but too short or too long to be a blob.
    st.binary(max_size=58).map(lambda t: KMS_HEADER + t),
    st.binary(min_size=6140, max_size=6200).map(lambda t: KMS_HEADER + t),
).map(b64)
ARBITRARY_PLAIN = st.text().filter(
    lambda v: (
        not v.startswith(("kms:", "ssm:", "sealed:", "secretsmanager:", "AQICAH")) and "{{resolve:" not in v
    )
)


def assert_plain(value: str) -> None:
    assert is_reference(value) is False
    assert parse_reference(value) is None
    assert parse_reference(value, variable="X") is None


@PROPERTY
@given(URL)
def test_urls_are_plain(value: str) -> None:
    assert_plain(value)


@PROPERTY
@given(HEX)
def test_hex_is_plain(value: str) -> None:
    assert_plain(value)
    assert_plain(value.upper())


@PROPERTY
@given(JWT)
def test_jwt_is_plain(value: str) -> None:
    assert_plain(value)


@PROPERTY
@given(NOT_KMS_B64)
def test_base64_without_kms_header_is_plain(value: str) -> None:
    assert_plain(value)


@PROPERTY
@given(ARBITRARY_PLAIN)
def test_arbitrary_text_is_plain(value: str) -> None:
    assert_plain(value)


# Text that often does look like a reference, to exercise every parser branch.
REFERENCE_ISH = st.builds(
    lambda head, body, tail: head + body + tail,
    st.sampled_from(
        [
            "",
            "kms:",
            "ssm:",
            "ssm:/",
            "ssm:arn:",
            f"ssm:{ARN}/",
            "{{resolve:",
            "{{resolve:ssm:",
            "{{resolve:ssm-secure:/",
            "{{resolve:secretsmanager:",
            "{{resolve:secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:",
            "sealed:",
            "sealed:AQ",
            "secretsmanager:",
            "secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:",
            "x{{resolve:",
            "AQICAH",
        ]
    ),
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet=string.ascii_letters + string.digits + ":/=+{}.-_", max_size=40),
    ),
    st.sampled_from(["", "}}", ":", ":3", ":0", ":prod", "=", "==", "#key", ":SecretString:k:AWSCURRENT}}"]),
)


@PROPERTY
@given(st.one_of(st.text(), REFERENCE_ISH))
def test_detection_and_parsing_agree(value: str) -> None:
    detected = is_reference(value)
    try:
        parsed = parse_reference(value)
    except ReferenceSyntaxError:
        assert detected, "a value parsing rejects must be detected as a reference"
        return
    assert (parsed is not None) == detected
    if parsed is not None:
        assert parse_reference(str(parsed)) == parsed


@PROPERTY
@given(st.one_of(st.text(), REFERENCE_ISH, st.binary().map(b64)))
def test_parse_reference_raises_only_reference_syntax_error(value: str) -> None:
    try:
        parse_reference(value, variable="FUZZ")
    except ReferenceSyntaxError as exc:
        assert exc.variable == "FUZZ"
        assert exc.kind in ("kms", "ssm", "sealed", "secretsmanager", "dynamic")
        assert str(exc).startswith("FUZZ: malformed reference: ")


@PROPERTY
@given(st.text(min_size=1))
def test_is_reference_is_a_prefix_or_marker_test(value: str) -> None:
    assume(not value.startswith("AQICAH"))
    expected = value.startswith(("kms:", "ssm:")) or "{{resolve:" in value
    assert is_reference(value) is expected
