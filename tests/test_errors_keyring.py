"""Pure unit tests: errors, the keyring, settings parsing and the transport's scrubbing."""

from __future__ import annotations

import copy
import json
import pickle
from base64 import b64encode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from secretboot import (
    BootstrapError,
    ConfigurationError,
    Failure,
    Keyring,
    KmsReference,
    ReferenceSyntaxError,
    SecretbootError,
    SsmReference,
    _settings,
    _transport,
)
from secretboot._transport import TransportError, reason_for_code, scrub

PROPERTY = settings(max_examples=200, deadline=None)
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
LONG_PARAMETER_ARN = "arn:aws:ssm:us-east-1:123456789012:parameter/myapp/production/database/password"

# --------------------------------------------------------------------------- errors


def test_error_hierarchy() -> None:
    assert issubclass(ConfigurationError, SecretbootError)
    assert issubclass(BootstrapError, SecretbootError)
    assert issubclass(ReferenceSyntaxError, SecretbootError)
    assert issubclass(ReferenceSyntaxError, ValueError)
    assert issubclass(SecretbootError, Exception)


def test_reference_syntax_error_fields() -> None:
    exc = ReferenceSyntaxError("bad thing", variable="DB_URL", kind="ssm")
    assert (exc.reason, exc.variable, exc.kind) == ("bad thing", "DB_URL", "ssm")
    assert str(exc) == "DB_URL: malformed reference: bad thing"
    bare = ReferenceSyntaxError("bad thing")
    assert (bare.variable, bare.kind) == (None, "reference")
    assert str(bare) == "malformed reference: bad thing"


CIPHERTEXT = bytes(range(7, 207))
KMS_REF = KmsReference(CIPHERTEXT)
SSM_REF = SsmReference("/app/db/password", "3")


def make_failures() -> list[Failure]:
    return [
        Failure("ZETA", "ssm", SSM_REF.target, "ParameterNotFound"),
        Failure("ALPHA", "kms", KMS_REF.target, "InvalidCiphertext", "the ciphertext was rejected"),
        Failure("MIDDLE", "ssm", "/other", "AccessDenied", "not authorized"),
    ]


def test_bootstrap_error_lists_every_failure_sorted() -> None:
    failures = make_failures()
    exc = BootstrapError(failures)
    assert exc.variables == ("ALPHA", "MIDDLE", "ZETA")
    assert [f.variable for f in exc.failures] == ["ALPHA", "MIDDLE", "ZETA"]
    assert isinstance(exc.failures, tuple)
    assert set(exc.failures) == set(failures)
    message = str(exc)
    assert message.splitlines()[0] == "secretboot could not resolve 3 variables:"
    lines = message.splitlines()[1:]
    assert lines == [f"  {f}" for f in sorted(failures, key=lambda f: f.variable)]
    assert message.index("ALPHA") < message.index("MIDDLE") < message.index("ZETA")
    for reason in ("ParameterNotFound", "InvalidCiphertext", "AccessDenied"):
        assert reason in message
    assert "/app/db/password:3" in message
    assert "<ciphertext, 200 bytes>" in message


def test_bootstrap_error_does_not_mutate_input_and_takes_iterables() -> None:
    failures = make_failures()
    before = list(failures)
    exc = BootstrapError(iter(failures))
    assert failures == before
    assert exc.variables == ("ALPHA", "MIDDLE", "ZETA")


def test_bootstrap_error_singular() -> None:
    exc = BootstrapError([Failure("ONLY", "ssm", "/x", "ParameterNotFound")])
    assert str(exc).splitlines() == [
        "secretboot could not resolve 1 variable:",
        "  ONLY (ssm /x): ParameterNotFound",
    ]
    assert exc.variables == ("ONLY",)


def test_bootstrap_error_message_has_no_values() -> None:
    secret_b64 = b64encode(CIPHERTEXT).decode()
    exc = BootstrapError(make_failures())
    for text in (str(exc), repr(exc), *map(repr, exc.failures), *map(str, exc.failures)):
        assert secret_b64 not in text
        assert secret_b64[:24] not in text
        assert str(KMS_REF) not in text


@given(st.lists(st.text(min_size=1, max_size=10), max_size=20))
@PROPERTY
def test_bootstrap_error_sorting_property(names: list[str]) -> None:
    exc = BootstrapError(Failure(n, "ssm", "/t", "NotFound") for n in names)
    assert exc.variables == tuple(sorted(names))
    assert len(exc.failures) == len(names)


def test_failure_str_and_repr() -> None:
    failure = Failure("DB", "ssm", "/p/n", "AccessDenied", "not authorized")
    assert str(failure) == "DB (ssm /p/n): AccessDenied: not authorized"
    assert str(Failure("DB", "ssm", "/p/n", "AccessDenied")) == "DB (ssm /p/n): AccessDenied"
    assert repr(failure) == "Failure(variable='DB', kind='ssm', target='/p/n', reason='AccessDenied')"
    assert failure.detail == "not authorized"
    assert Failure("DB", "ssm", "/p/n", "AccessDenied").detail == ""


def test_failure_equality_and_hash() -> None:
    a = Failure("DB", "ssm", "/p/n", "AccessDenied", "x")
    assert a == Failure("DB", "ssm", "/p/n", "AccessDenied", "x")
    assert hash(a) == hash(Failure("DB", "ssm", "/p/n", "AccessDenied", "x"))
    for other in (
        Failure("DB2", "ssm", "/p/n", "AccessDenied", "x"),
        Failure("DB", "kms", "/p/n", "AccessDenied", "x"),
        Failure("DB", "ssm", "/p/m", "AccessDenied", "x"),
        Failure("DB", "ssm", "/p/n", "NotFound", "x"),
        Failure("DB", "ssm", "/p/n", "AccessDenied", "y"),
    ):
        assert a != other
    assert a != ("DB", "ssm", "/p/n", "AccessDenied", "x")
    assert a != "DB (ssm /p/n): AccessDenied: x"
    assert len({a, Failure("DB", "ssm", "/p/n", "AccessDenied", "x")}) == 1


def test_failure_has_slots_only() -> None:
    failure = Failure("DB", "ssm", "/p/n", "AccessDenied")
    with pytest.raises(AttributeError):
        failure.value = "secret"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- keyring

SECRET_A = "s3cr3t-alpha-Zq9"
SECRET_B = "hunter2-bravo-Zq9"


def make_keyring() -> Keyring:
    return Keyring(
        {"DB_PASSWORD": SECRET_A, "API_KEY": SECRET_B},
        {"DB_PASSWORD": SSM_REF, "API_KEY": KMS_REF},
    )


def test_keyring_is_a_mapping() -> None:
    keyring = make_keyring()
    assert keyring["DB_PASSWORD"] == SECRET_A
    assert keyring["API_KEY"] == SECRET_B
    assert len(keyring) == 2
    assert set(keyring) == {"DB_PASSWORD", "API_KEY"}
    assert "DB_PASSWORD" in keyring
    assert "NOPE" not in keyring
    assert 42 not in keyring
    assert keyring.get("NOPE") is None
    assert keyring.get("API_KEY") == SECRET_B
    assert dict(keyring) == {"DB_PASSWORD": SECRET_A, "API_KEY": SECRET_B}
    assert keyring == {"DB_PASSWORD": SECRET_A, "API_KEY": SECRET_B}
    with pytest.raises(KeyError):
        keyring["NOPE"]


def test_keyring_is_read_only() -> None:
    keyring = make_keyring()
    assert not hasattr(keyring, "__setitem__")
    assert not hasattr(keyring, "__delitem__")
    assert not hasattr(keyring, "update")
    assert not hasattr(keyring, "pop")
    with pytest.raises(TypeError):
        keyring["DB_PASSWORD"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError):
        del keyring["DB_PASSWORD"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        keyring.extra = 1  # type: ignore[attr-defined]
    assert keyring["DB_PASSWORD"] == SECRET_A


def test_keyring_copies_its_inputs() -> None:
    values = {"A": "one"}
    references = {"A": SsmReference("/a")}
    keyring = Keyring(values, references)
    values["A"] = "two"
    values["B"] = "three"
    references["B"] = SsmReference("/b")
    assert dict(keyring) == {"A": "one"}
    assert dict(keyring.references) == {"A": SsmReference("/a")}


def test_keyring_requires_matching_names() -> None:
    with pytest.raises(ValueError):
        Keyring({"A": "1"}, {"B": SsmReference("/b")})
    with pytest.raises(ValueError):
        Keyring({"A": "1", "B": "2"}, {"A": SsmReference("/a")})
    assert len(Keyring({}, {})) == 0


def test_keyring_repr_and_str_show_names_only() -> None:
    keyring = make_keyring()
    for text in (repr(keyring), str(keyring), f"{keyring}", f"{keyring!r}"):
        assert "API_KEY" in text
        assert "DB_PASSWORD" in text
        assert SECRET_A not in text
        assert SECRET_B not in text
        assert "Zq9" not in text
    assert repr(keyring) == "<Keyring ['API_KEY', 'DB_PASSWORD']>"
    assert str(keyring) == repr(keyring)


def test_keyring_views_show_names_only() -> None:
    keyring = make_keyring()
    views = {"keys": keyring.keys(), "items": keyring.items(), "values": keyring.values()}
    for kind, view in views.items():
        for text in (repr(view), str(view), f"{view}", view.__sentry_repr__()):  # type: ignore[attr-defined]
            assert "API_KEY" in text and "DB_PASSWORD" in text, text
            assert SECRET_A not in text and SECRET_B not in text and "Zq9" not in text, text
        assert repr(view) == f"<{kind.title()} of Keyring ['API_KEY', 'DB_PASSWORD']>"
        with pytest.raises(TypeError, match="cannot be pickled or copied"):
            pickle.dumps(view)
        with pytest.raises(TypeError, match="cannot be pickled or copied"):
            copy.copy(view)
    assert keyring.__sentry_repr__() == repr(keyring)  # type: ignore[attr-defined]


def test_keyring_views_behave_as_a_dicts() -> None:
    keyring = make_keyring()
    plain = {"DB_PASSWORD": SECRET_A, "API_KEY": SECRET_B}
    assert keyring.keys() == plain.keys() and keyring.items() == plain.items()
    assert list(keyring.keys()) == list(plain) and list(keyring.values()) == list(plain.values())
    assert list(keyring.items()) == list(plain.items()) and dict(keyring.items()) == plain
    assert len(keyring.keys()) == len(keyring.items()) == len(keyring.values()) == 2
    keys = keyring.keys()
    assert "API_KEY" in keys and "NOPE" not in keys
    assert ("API_KEY", SECRET_B) in keyring.items() and ("API_KEY", SECRET_A) not in keyring.items()
    assert ("NOPE", SECRET_A) not in keyring.items()
    assert SECRET_A in keyring.values() and "nope" not in keyring.values()
    assert keyring.keys() & {"API_KEY", "OTHER"} == {"API_KEY"}
    assert keyring.keys() | {"OTHER"} == {"API_KEY", "DB_PASSWORD", "OTHER"}


def test_keyring_views_iterate_one_generation() -> None:
    keyring = make_keyring()
    items, values = iter(keyring.items()), iter(keyring.values())
    first_item, first_value = next(items), next(values)
    keyring._replace({"DB_PASSWORD": "new-a", "API_KEY": "new-b"}, keyring.references)
    assert [first_item, *items] == [("DB_PASSWORD", SECRET_A), ("API_KEY", SECRET_B)]
    assert [first_value, *values] == [SECRET_A, SECRET_B]
    assert dict(keyring.items()) == {"DB_PASSWORD": "new-a", "API_KEY": "new-b"}


def test_keyring_errors_leave_from_frames_without_the_keyring() -> None:
    keyring = make_keyring()
    attempts = [
        lambda: keyring["NOPE"],
        lambda: keyring.as_bytes("NOPE"),
        lambda: keyring.fernet("NOPE"),
        lambda: keyring.fernet("DB_PASSWORD"),
        lambda: keyring.fernet("DB_PASSWORD", fallbacks="API_KEY"),
        lambda: pickle.dumps(keyring),
    ]
    for attempt in attempts:
        with pytest.raises((KeyError, ValueError, TypeError)) as info:
            attempt()
        tb = info.value.__traceback__.tb_next  # the lambda's frame holds the keyring: the caller's
        assert tb is not None
        tb = tb.tb_next
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.endswith("_keyring.py"):
                held = tb.tb_frame.f_locals.values()
                assert not any(value is keyring for value in held), tb.tb_frame.f_code.co_name
                assert not any(isinstance(value, str) and "Zq9" in value for value in held)
            tb = tb.tb_next
        assert info.value.__context__ is None


@pytest.mark.parametrize(
    "duplicate",
    [
        pytest.param(pickle.dumps, id="pickle-default"),
        pytest.param(lambda k: pickle.dumps(k, protocol=0), id="pickle-0"),
        pytest.param(lambda k: pickle.dumps(k, protocol=pickle.HIGHEST_PROTOCOL), id="pickle-highest"),
        pytest.param(copy.copy, id="copy"),
        pytest.param(copy.deepcopy, id="deepcopy"),
    ],
)
def test_keyring_cannot_be_pickled_or_copied(duplicate: object) -> None:
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        duplicate(make_keyring())  # type: ignore[operator]


def test_keyring_references_are_read_only() -> None:
    keyring = make_keyring()
    refs = keyring.references
    assert dict(refs) == {"DB_PASSWORD": SSM_REF, "API_KEY": KMS_REF}
    with pytest.raises(TypeError):
        refs["DB_PASSWORD"] = SsmReference("/evil")  # type: ignore[index]
    with pytest.raises(TypeError):
        del refs["DB_PASSWORD"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        keyring.references = {}  # type: ignore[misc]
    assert keyring.references["DB_PASSWORD"] == SSM_REF
    # Reference reprs are safe to log: no plaintext, no ciphertext.
    shown = repr(dict(keyring.references))
    assert b64encode(CIPHERTEXT).decode() not in shown
    assert SECRET_A not in shown


# --------------------------------------------------------------------------- settings: KMS


def test_kms_settings_default_outside_lambda() -> None:
    result = _settings.kms_settings({})
    assert result.contexts == (None,)
    assert result.key_id is None


def test_kms_settings_lambda_default_contexts() -> None:
    result = _settings.kms_settings({"AWS_LAMBDA_FUNCTION_NAME": "my-function"})
    assert result.contexts == ({"LambdaFunctionName": "my-function"}, None)
    assert result.key_id is None


def test_kms_settings_empty_lambda_name_is_outside_lambda() -> None:
    assert _settings.kms_settings({"AWS_LAMBDA_FUNCTION_NAME": ""}).contexts == (None,)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param('{"app": "web"}', {"app": "web"}, id="one-pair"),
        pytest.param('{"a": "1", "b": "2"}', {"a": "1", "b": "2"}, id="two-pairs"),
        pytest.param('  {"a": "1"}\n', {"a": "1"}, id="surrounding-space"),
        pytest.param('{"é": "ü"}', {"é": "ü"}, id="unicode"),
        pytest.param("{}", {}, id="empty-object"),
    ],
)
def test_kms_settings_explicit_context(raw: str, expected: dict[str, str]) -> None:
    result = _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": raw})
    assert result.contexts == (expected,)
    # An explicit context replaces the Lambda default, with no context-less fallback.
    in_lambda = _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": raw, "AWS_LAMBDA_FUNCTION_NAME": "fn"})
    assert in_lambda.contexts == (expected,)


@pytest.mark.parametrize("raw", ["", "   ", "\n\t"])
def test_kms_settings_blank_context_is_unset(raw: str) -> None:
    assert _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": raw}).contexts == (None,)
    in_lambda = _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": raw, "AWS_LAMBDA_FUNCTION_NAME": "fn"})
    assert in_lambda.contexts == ({"LambdaFunctionName": "fn"}, None)


@pytest.mark.parametrize(
    ("raw", "marker", "reason"),
    [
        pytest.param("{not json Zq9ctx", "Zq9ctx", "not valid JSON", id="invalid-json"),
        pytest.param('{"a": "Zq9ctx"', "Zq9ctx", "not valid JSON", id="truncated-json"),
        pytest.param("app=Zq9ctx", "Zq9ctx", "not valid JSON", id="key-value-text"),
        pytest.param('["Zq9ctx"]', "Zq9ctx", "JSON object of strings", id="array"),
        pytest.param('"Zq9ctx"', "Zq9ctx", "JSON object of strings", id="string"),
        pytest.param("12345", "12345", "JSON object of strings", id="number"),
        pytest.param("null", "null", "JSON object of strings", id="null"),
        pytest.param('{"Zq9key": 1}', "Zq9key", "JSON object of strings", id="number-value"),
        pytest.param('{"Zq9key": null}', "Zq9key", "JSON object of strings", id="null-value"),
        pytest.param('{"Zq9key": true}', "Zq9key", "JSON object of strings", id="bool-value"),
        pytest.param('{"Zq9key": {"x": "y"}}', "Zq9key", "JSON object of strings", id="nested-value"),
        pytest.param('{"Zq9key": ["y"]}', "Zq9key", "JSON object of strings", id="list-value"),
        pytest.param('{"a": "b", "Zq9key": 2}', "Zq9key", "JSON object of strings", id="one-bad-value"),
    ],
)
def test_kms_settings_bad_context(raw: str, marker: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": raw})
    exc = info.value
    message = str(exc)
    assert "SECRETBOOT_KMS_CONTEXT" in message
    assert reason in message
    assert raw.strip() not in message
    assert marker not in message
    assert marker not in repr(exc)
    # Tracebacks must not show a chained exception holding the raw text.
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def test_kms_settings_deeply_nested_context_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": "[" * 100_000})


@PROPERTY
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5))
@example({"secretboot:purpose": "sealed-data-key"})
def test_kms_settings_context_property(context: dict[str, str]) -> None:
    setting = {"SECRETBOOT_KMS_CONTEXT": json.dumps(context)}
    if any(key.startswith("secretboot:") for key in context):
        # Reserved for the sealed values' data key: never a user's context.
        with pytest.raises(ConfigurationError, match="are secretboot's own"):
            _settings.kms_settings(setting)
        return
    result = _settings.kms_settings(setting)
    assert result.contexts == (context,)


@PROPERTY
@given(st.text(max_size=60))
def test_kms_settings_context_only_raises_configuration_error(raw: str) -> None:
    try:
        result = _settings.kms_settings({"SECRETBOOT_KMS_CONTEXT": raw})
    except ConfigurationError as exc:
        message = str(exc)
        assert message in (
            "SECRETBOOT_KMS_CONTEXT is not valid JSON",
            "SECRETBOOT_KMS_CONTEXT must be a JSON object of strings to strings",
            _settings.RESERVED_CONTEXT_MESSAGE,
        )  # fixed wording: the raw text is never echoed
    else:
        assert len(result.contexts) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"SECRETBOOT_KMS_KEY_ID": ""}, None, id="empty"),
        pytest.param({"SECRETBOOT_KMS_KEY_ID": "alias/app"}, "alias/app", id="alias"),
        pytest.param(
            {"SECRETBOOT_KMS_KEY_ID": KEY_ARN},
            KEY_ARN,
            id="arn",
        ),
        pytest.param(
            {
                "SECRETBOOT_KMS_KEY_ID": "k1",
                "SECRETBOOT_KMS_CONTEXT": '{"a": "b"}',
                "AWS_LAMBDA_FUNCTION_NAME": "f",
            },
            "k1",
            id="with-context",
        ),
        pytest.param({"SECRETBOOT_KMS_KEY_ID": "k2", "AWS_LAMBDA_FUNCTION_NAME": "f"}, "k2", id="in-lambda"),
    ],
)
def test_kms_settings_key_id(env: dict[str, str], expected: str | None) -> None:
    assert _settings.kms_settings(env).key_id == expected


def test_settings_names_are_public_constants() -> None:
    assert _settings.KMS_VARS == "SECRETBOOT_KMS_VARS"
    assert _settings.KMS_CONTEXT == "SECRETBOOT_KMS_CONTEXT"
    assert _settings.KMS_KEY_ID == "SECRETBOOT_KMS_KEY_ID"
    assert _settings.LAMBDA_FUNCTION_NAME == "AWS_LAMBDA_FUNCTION_NAME"


# --------------------------------------------------------------------------- settings: kms_vars and flag


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, frozenset(), id="unset"),
        pytest.param("", frozenset(), id="empty"),
        pytest.param(" , ,, ", frozenset(), id="only-separators"),
        pytest.param("A", frozenset({"A"}), id="one"),
        pytest.param("A,B", frozenset({"A", "B"}), id="two"),
        pytest.param(" A , B ", frozenset({"A", "B"}), id="spaces"),
        pytest.param("A,,B,", frozenset({"A", "B"}), id="empty-items"),
        pytest.param("A,A, A", frozenset({"A"}), id="duplicates"),
        pytest.param("\tA\n,B", frozenset({"A", "B"}), id="whitespace"),
    ],
)
def test_kms_vars(raw: str | None, expected: frozenset[str]) -> None:
    env = {} if raw is None else {"SECRETBOOT_KMS_VARS": raw}
    result = _settings.kms_vars(env)
    assert isinstance(result, frozenset)
    assert result == expected


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "YES", "on", " On ", "true\n"])
def test_flag_true(raw: str) -> None:
    assert _settings.flag({"SECRETBOOT_EXPORT": raw}, "SECRETBOOT_EXPORT", None) is True


@pytest.mark.parametrize("raw", ["", " ", "0", "false", "FALSE", "no", "No", "off", " off "])
def test_flag_false(raw: str) -> None:
    assert _settings.flag({"SECRETBOOT_EXPORT": raw}, "SECRETBOOT_EXPORT", None) is False


def test_flag_unset_is_false() -> None:
    assert _settings.flag({}, "SECRETBOOT_EXPORT", None) is False


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("raw", [None, "1", "0", "not-a-flag"])
def test_flag_explicit_argument_wins(explicit: bool, raw: str | None) -> None:
    env = {} if raw is None else {"SECRETBOOT_EXPORT": raw}
    assert _settings.flag(env, "SECRETBOOT_EXPORT", explicit) is explicit


@pytest.mark.parametrize("raw", ["maybe-Zq9", "2", "y", "n", "truee", "enabled-Zq9"])
def test_flag_invalid(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _settings.flag({"SECRETBOOT_EXPORT": raw}, "SECRETBOOT_EXPORT", None)
    message = str(info.value)
    assert "SECRETBOOT_EXPORT" in message
    assert "Zq9" not in message
    if len(raw) > 2:
        assert raw not in message


def test_flag_reads_the_named_variable() -> None:
    env = {"SECRETBOOT_EXPORT": "1", "OTHER": "0"}
    assert _settings.flag(env, "OTHER", None) is False
    assert _settings.flag(env, "SECRETBOOT_EXPORT", None) is True


# --------------------------------------------------------------------------- transport: scrub

LONG_B64 = b64encode(bytes(range(3, 203))).decode()


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(f"Invalid ciphertext {LONG_B64} rejected", id="base64"),
        pytest.param(f"{LONG_B64}", id="only-base64"),
        pytest.param(f"value={LONG_B64}.", id="after-equals"),
        pytest.param("x " + "A" * 40 + " y", id="exactly-40"),
        pytest.param("token " + "ab-_" * 20, id="urlsafe"),
        pytest.param("hex " + "0123456789abcdef" * 4, id="hex"),
    ],
)
def test_scrub_removes_long_data_runs(message: str) -> None:
    cleaned = scrub(message)
    assert "[redacted]" in cleaned
    for run in message.split():
        if len(run) >= 40:
            assert run not in cleaned
            assert run[:40] not in cleaned
    assert LONG_B64[:40] not in cleaned


def test_scrub_keeps_words_and_surroundings() -> None:
    cleaned = scrub(f"Invalid ciphertext {LONG_B64} rejected")
    assert cleaned == "Invalid ciphertext [redacted] rejected"


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("Parameter not found", id="words"),
        pytest.param("User: arn:aws:iam::123456789012:user/alice is not authorized", id="iam-arn"),
        pytest.param("arn:aws:ssm:us-east-1:123456789012:parameter/app/db", id="short-ssm-arn"),
        pytest.param("Key arn:aws:kms:us-east-1:123456789012:alias/my-key is disabled", id="alias-arn"),
        pytest.param("key 1234abcd-12ab-34cd-56ef-1234567890ab", id="key-uuid"),
        pytest.param("x " + "A" * 39 + " y", id="just-under-40"),
        pytest.param("1 validation error detected: Value at 'name' failed", id="validation"),
    ],
)
def test_scrub_keeps_arns_and_short_words(message: str) -> None:
    assert scrub(message) == message


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            f"User is not authorized to use {KEY_ARN}",
            id="kms-key-arn",
        ),
        pytest.param(
            f"Parameter {LONG_PARAMETER_ARN} missing",
            id="long-ssm-arn",
        ),
    ],
)
def test_scrub_keeps_long_arns(message: str) -> None:
    assert scrub(message) == message


def test_scrub_normalises_whitespace_and_bounds_size() -> None:
    assert scrub("  a\n\tb   c  ") == "a b c"
    long_message = "word " * 500
    cleaned = scrub(long_message)
    assert len(cleaned) == 300
    assert cleaned == " ".join(long_message.split())[:300]
    assert scrub("") == ""


@PROPERTY
@given(st.binary(min_size=30, max_size=600), st.text(alphabet="abc xyz.,:", max_size=40))
def test_scrub_property_never_leaks_blobs(blob: bytes, prefix: str) -> None:
    encoded = b64encode(blob).decode()
    cleaned = scrub(f"{prefix} {encoded} end")
    assert encoded not in cleaned
    assert encoded[:40] not in cleaned
    assert len(cleaned) <= 300


def test_transport_error_scrubs_detail() -> None:
    exc = TransportError(_transport.INVALID_CIPHERTEXT, f"bad blob {LONG_B64}")
    assert exc.reason == "InvalidCiphertext"
    assert exc.detail == "bad blob [redacted]"
    assert str(exc) == "InvalidCiphertext: bad blob [redacted]"
    assert LONG_B64[:40] not in repr(exc)
    assert str(TransportError(_transport.TIMEOUT)) == "Timeout"


# --------------------------------------------------------------------------- transport: reason_for_code


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        pytest.param("403", "AccessDenied", id="http-403"),
        pytest.param("AccessDeniedException", "AccessDenied", id="access-denied-exception"),
        pytest.param("AccessDenied", "AccessDenied", id="access-denied"),
        pytest.param("500", "ServiceError", id="http-500"),
        pytest.param("502", "ServiceError", id="http-502"),
        pytest.param("503", "ServiceError", id="http-503"),
        pytest.param("599", "ServiceError", id="http-599"),
        pytest.param("InternalFailure", "ServiceError", id="internal-failure"),
        pytest.param("KMSInternalException", "ServiceError", id="kms-internal"),
        pytest.param("", "ServiceError", id="empty"),
        pytest.param("UnrecognizedClientException", "InvalidCredentials", id="bad-credentials"),
        pytest.param("ExpiredTokenException", "InvalidCredentials", id="expired"),
        pytest.param("InvalidCiphertextException", "InvalidCiphertext", id="invalid-ciphertext"),
        pytest.param("IncorrectKeyException", "IncorrectKey", id="incorrect-key"),
        pytest.param("DisabledException", "KeyUnavailable", id="disabled"),
        pytest.param("ParameterNotFound", "ParameterNotFound", id="parameter-not-found"),
        pytest.param("ParameterVersionNotFound", "ParameterNotFound", id="version-not-found"),
        pytest.param("ThrottlingException", "Throttled", id="throttling"),
        pytest.param("ValidationException", "InvalidRequest", id="validation"),
    ],
)
def test_reason_for_code(code: str, reason: str) -> None:
    assert reason_for_code(code) == reason


@pytest.mark.parametrize("code", ["404", "400", "SomethingNew", "403x"])
def test_reason_for_unknown_code_passes_through(code: str) -> None:
    assert reason_for_code(code) == code


@given(st.integers(min_value=500, max_value=599))
@PROPERTY
def test_reason_for_5xx_property(status: int) -> None:
    assert reason_for_code(str(status)) == "ServiceError"


def test_bootstrap_error_survives_pickling_with_its_failures() -> None:
    import pickle

    error = BootstrapError(
        [Failure("B", "ssm", "/b", "ParameterNotFound"), Failure("A", "kms", "-", "Malformed")]
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is BootstrapError and copy.failures == error.failures and str(copy) == str(error)
    assert type(copy).__module__ == "secretboot"


class TestKeyringFernet:
    NEW = "2vZ6hA4d1r1u2K5S7dQ8Zp0o3mXxV9bN4cL6eY1tGfQ="
    OLD = "dGhpcyBpcyB0aGUgb2xkIGtleSwgMzIgYnl0ZXMhISE="

    def _keyring(self, **values: str) -> Keyring:
        return Keyring(values, {name: SsmReference(f"/app/{name.lower()}") for name in values})

    def test_single_key_gives_a_fernet(self) -> None:
        from cryptography.fernet import Fernet

        box = self._keyring(SECRET_KEY=self.NEW).fernet("SECRET_KEY")
        assert isinstance(box, Fernet)
        assert Fernet(self.NEW).decrypt(box.encrypt(b"data")) == b"data"

    def test_fallbacks_decrypt_old_tokens_and_encrypt_with_the_new_key(self) -> None:
        from cryptography.fernet import Fernet, InvalidToken, MultiFernet

        old_token = Fernet(self.OLD).encrypt(b"old row")
        box = self._keyring(SECRET_KEY=self.NEW, SECRET_KEY_FALLBACK=self.OLD).fernet(
            "SECRET_KEY", fallbacks=["SECRET_KEY_FALLBACK"]
        )
        assert isinstance(box, MultiFernet)
        assert box.decrypt(old_token) == b"old row"
        rotated = box.rotate(old_token)
        assert Fernet(self.NEW).decrypt(rotated) == b"old row"
        with pytest.raises(InvalidToken):
            Fernet(self.OLD).decrypt(box.encrypt(b"new"))

    def test_missing_fallback_is_skipped_missing_key_is_an_error(self) -> None:
        from cryptography.fernet import Fernet

        keyring = self._keyring(SECRET_KEY=self.NEW)
        assert isinstance(keyring.fernet("SECRET_KEY", fallbacks=["SECRET_KEY_FALLBACK"]), Fernet)
        with pytest.raises(KeyError):
            keyring.fernet("OTHER")
        with pytest.raises(TypeError):
            keyring.fernet("SECRET_KEY", fallbacks="SECRET_KEY_FALLBACK")  # type: ignore[arg-type]

    def test_material_that_is_not_a_fernet_key_names_the_variable_only(self) -> None:
        keyring = self._keyring(SECRET_KEY="django-insecure-not-a-fernet-key")
        with pytest.raises(ValueError, match="SECRET_KEY is not a Fernet key") as info:
            keyring.fernet("SECRET_KEY")
        assert "django-insecure" not in str(info.value)
