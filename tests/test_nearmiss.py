"""Near misses: plain values that look like a misspelt reference.

Pure unit tests of ``near_miss`` (no AWS, no I/O), then what ``bootstrap()``, ``check`` and
``SECRETBOOT_STRICT`` do with a near miss (no reference, so no AWS either).
"""

from __future__ import annotations

import re
from base64 import b64encode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretboot import is_reference
from secretboot._nearmiss import near_miss

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CANARY = "s3cr3t-CANARY-9f2"
KMS_HEADER = b"\x01\x02\x02\x00\x78"
BARE_KMS = b64encode(KMS_HEADER + bytes(range(95))).decode()  # 100 bytes: detected as bare ciphertext
REASON = re.compile(
    r"looks like a misspelt reference: '(?P<typed>[^']{1,20})' \(did you mean "
    r"'(?P<meant>kms:|ssm:|sealed:|secretsmanager:|\{\{resolve:)'\?\)"
)
WRAPPED = re.compile(
    r"looks like (a '(kms:|ssm:|sealed:|secretsmanager:)' reference|KMS ciphertext) "
    r"with quotes or whitespace around it"
)


# --------------------------------------------------------------------------- plain values

PLAIN = [
    "",
    " ",
    "hunter2",
    "correct horse battery staple",
    "true",
    "0",
    "42",
    "3.14",
    "https://example.com/path?q=1#frag",
    "http://localhost:8080",
    "https://user:pa55@example.com:8443/x",
    "postgres://user:pass@host:5432/db",
    "postgresql://app:s3cr3t@db.internal:5432/app?sslmode=require",
    "mysql://root:root@127.0.0.1:3306/test",
    "redis://:pw@h:6379/0",
    "rediss://default:pw@cache.example.com:6380",
    "amqp://guest:guest@rabbit:5672//",
    "mongodb+srv://u:p@cluster0.abcde.mongodb.net/db",
    "s3://bucket/key",
    "s3://my-bucket/sm:path/ssm:file",
    "file:///x",
    "ftp://ftp.example.com/pub",
    "ssh://git@github.com:22/org/repo.git",
    "git@github.com:org/repo.git",
    "tcp://0.0.0.0:9000",
    "udp://collector:8125",
    "unix:///var/run/docker.sock",
    "sqlite:///db.sqlite3",
    "sms:+15551234567",
    "sip:alice@example.com",
    "sips:bob@example.com",
    "tel:+1-555-0100",
    "ms:1500",
    "mms:stream.example.com",
    "ssl:host=example.com:port=443",
    "sso:enabled",
    "mailto:a@b",
    "urn:isbn:0451450523",
    "data:text/plain;base64,SGVsbG8sIFdvcmxkIQ==",
    "text/plain;charset=utf-8",
    "host:port",
    "db.example.com:5432",
    "localhost:8000",
    "user:pass@host",
    "admin:admin",
    "12:30",
    "23:59:59",
    "2024-01-01T12:30:00Z",
    "::1",
    "fe80::1",
    "[2001:db8::1]:443",
    "00:1A:2B:3C:4D:5E",
    "C:\\path\\to\\file",
    "C:/Program Files/app",
    '{"a": 1}',
    '{"resolve": "ssm:/a"}',
    "{resolve: true}",
    "{{ var }}",
    "{{ resolve_url }}",
    "{{ user.name }}:{{ user.id }}",
    "{% if x %}y{% endif %}",
    "%(asctime)s:%(name)s:%(message)s",
    "%(levelname)s;%(message)s",
    "arn:aws:ssm:us-east-1:123456789012:parameter/p/n",
    "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
    "aGVsbG8gd29ybGQ=",
    "AQICAH",
    "AQICAHnotreally",
    "0123456789abcdef" * 4,
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMe",
    "x ssm:/a/b",
    "secret:/myapp/prod/db",
    "secrets:db",
    "session:abc123def456",
    "scaled:2x",
    "sm:hello world",
    "KMS: enabled",
    "kms",
    "ssm",
    "secretsmanager",
    "Note: rotate monthly",
    "warning;error;critical",
    "a;b;c",
    "en_US.UTF-8",
    "Europe/London",
    "MSK:+0300",
    "sqs:my-queue",
    "sns:topic",
    "kafka:9092",
    "memcached:11211",
    "smtp:587",
    "resolve:true",
    "resolver:8.8.8.8",
    "-sm:myapp/db",
    "sm:8080",
    "smm:12:30",
    "secretmanager:443",
    "SSM:10.0.0.1",
]


@pytest.mark.parametrize("value", PLAIN)
def test_plain_values_are_not_near_misses(value: str) -> None:
    assert not is_reference(value)
    assert near_miss(value) is None


def test_plain_corpus_is_large() -> None:
    assert len(set(PLAIN)) >= 60


# --------------------------------------------------------------------------- real references

REFERENCES = [
    "kms:aGVsbG8=",
    "kms:QR==",
    BARE_KMS,
    "ssm:/myapp/prod/db",
    "ssm:db",
    "ssm:/myapp/prod/db:3",
    "ssm:/myapp/prod/db:prod",
    "ssm:arn:aws:ssm:us-east-1:123456789012:parameter/myapp/prod/db",
    "sealed:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "secretsmanager:myapp/prod/db",
    "secretsmanager:myapp/prod/db#password",
    "secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:myapp/prod/db-AbCdEf#password",
    "{{resolve:ssm-secure:/myapp/prod/api-token}}",
    "{{resolve:ssm-secure:/myapp/prod/api-token:2}}",
    "{{resolve:ssm:/myapp/prod/url}}",
    "{{resolve:secretsmanager:MySecret:SecretString:password:AWSPREVIOUS}}",
    "{{resolve:secretsmanager:MySecret::password}}",
    # Malformed references: parse_reference already fails them closed, so they are not near misses.
    "kms:",
    "kms:abc",
    "ssm:a/b",
    "sealed:abc",
    "secretsmanager:",
    "{{resolve:ssm:/x}",
    "{{resolve:SSM:/a}}",
    "{{resolve:ssm-foo:/a}}",
    "https://host/{{resolve:ssm:/a}}",
    "ssm:/a ",
]


@pytest.mark.parametrize("value", REFERENCES)
def test_references_are_never_near_misses(value: str) -> None:
    assert is_reference(value)
    assert near_miss(value) is None


# --------------------------------------------------------------------------- near misses

# (value, what the reason quotes, the prefix it names); CANARY stands for the secret part.
NEAR_MISSES = [
    (f"smm:/myapp/{CANARY}", "smm:", "ssm:"),
    (f"sm:myapp/{CANARY}", "sm:", "secretsmanager:"),
    (f"SM:myapp/{CANARY}#password", "SM:", "secretsmanager:"),
    (f"secretmanager:{CANARY}", "secretmanager:", "secretsmanager:"),
    (f"secrets-manager:{CANARY}#key", "secrets-manager:", "secretsmanager:"),
    (f"secrets_manager:{CANARY}", "secrets_manager:", "secretsmanager:"),
    (f"SecretsManager:{CANARY}", "SecretsManager:", "secretsmanager:"),
    (f"secretsmanger:{CANARY}", "secretsmanger:", "secretsmanager:"),
    (f"secretsmanager;{CANARY}", "secretsmanager;", "secretsmanager:"),
    (f"aws-secretsmanager:{CANARY}", "aws-secretsmanager:", "secretsmanager:"),
    (f"kms;{CANARY}", "kms;", "kms:"),
    (f"KMS:{CANARY}", "KMS:", "kms:"),
    (f"Kms:{CANARY}==", "Kms:", "kms:"),
    (f"ksm:{CANARY}", "ksm:", "kms:"),
    (f"mks:{CANARY}", "mks:", "kms:"),
    (f"aws-kms:{CANARY}", "aws-kms:", "kms:"),
    (f"SSM:/{CANARY}", "SSM:", "ssm:"),
    (f"ssm;/app/{CANARY}", "ssm;", "ssm:"),
    (f"ssm-secure:/app/{CANARY}", "ssm-secure:", "ssm:"),
    (f"ssm_secure:/app/{CANARY}:3", "ssm_secure:", "ssm:"),
    (f"SSM-Secure:/app/{CANARY}", "SSM-Secure:", "ssm:"),
    (f"sealed;{CANARY}", "sealed;", "sealed:"),
    (f"seal:{CANARY}", "seal:", "sealed:"),
    (f"Sealed:{CANARY}", "Sealed:", "sealed:"),
    (f"seald:{CANARY}", "seald:", "sealed:"),
    (f"saeled:{CANARY}", "saeled:", "sealed:"),
    (f"{{resolve:ssm:/{CANARY}}}}}", "{resolve:", "{{resolve:"),
    (f"{{{{ resolve:ssm:/{CANARY}}}}}", "{{ resolve:", "{{resolve:"),
    (f"{{{{resolve :ssm-secure:/{CANARY}}}}}", "{{resolve :", "{{resolve:"),
    (f"{{{{resolv:ssm:/{CANARY}}}}}", "{{resolv:", "{{resolve:"),
    (f"{{{{reslove:secretsmanager:{CANARY}}}}}", "{{reslove:", "{{resolve:"),
    (f"{{{{Resolve:ssm:/{CANARY}}}}}", "{{Resolve:", "{{resolve:"),
    (f"{{ {{resolve:secretsmanager:{CANARY}}}}}", "{ {resolve:", "{{resolve:"),
    (f"{{{{resolve;ssm:/{CANARY}}}}}", "{{resolve;", "{{resolve:"),
    (f"resolve:ssm:/{CANARY}", "resolve:", "{{resolve:"),
]


@pytest.mark.parametrize(("value", "typed", "meant"), NEAR_MISSES)
def test_near_misses_name_the_prefix_and_nothing_after_it(value: str, typed: str, meant: str) -> None:
    assert not is_reference(value)
    reason = near_miss(value)
    assert reason is not None
    assert reason == f"looks like a misspelt reference: '{typed}' (did you mean '{meant}'?)"
    assert CANARY not in reason
    assert value.startswith(typed)


def test_near_miss_corpus_is_large() -> None:
    assert len({value for value, _, _ in NEAR_MISSES}) >= 25


# Values a shell, a YAML file or a console copy left quotes or whitespace around.
WRAPPED_REFERENCES = [
    (" ssm:/a", "ssm:"),
    (f'"kms:{b64encode(CANARY.encode()).decode()}"', "kms:"),
    (f"'ssm:/myapp/{CANARY}'", "ssm:"),
    ("\tsealed:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "sealed:"),
    (f"`secretsmanager:{CANARY}`", "secretsmanager:"),
]


@pytest.mark.parametrize(("value", "prefix"), WRAPPED_REFERENCES)
def test_references_in_quotes_or_whitespace(value: str, prefix: str) -> None:
    assert not is_reference(value)
    assert near_miss(value) == f"looks like a '{prefix}' reference with quotes or whitespace around it"


@pytest.mark.parametrize("value", [BARE_KMS + "\n", f'"{BARE_KMS}"', " " + BARE_KMS])
def test_bare_ciphertext_in_quotes_or_whitespace(value: str) -> None:
    # The docs' example: a console value that picked up a newline is otherwise plain.
    assert not is_reference(value)
    reason = near_miss(value)
    assert reason == "looks like KMS ciphertext with quotes or whitespace around it"
    assert BARE_KMS[:20] not in reason


def test_quoted_misspelt_prefix_quotes_only_the_word() -> None:
    assert near_miss(f'"smm:/{CANARY}"') == "looks like a misspelt reference: 'smm:' (did you mean 'ssm:'?)"


@pytest.mark.parametrize(
    "value",
    [
        "secretsmanager:" + "a" * 600,  # real prefix: an error when parsed, not a near miss
        "smm:/" + "a" * 1_000_000,
        "x" * 1_000_000,
        "{" * 1_000_000,
        "{{ resolve" + " " * 1_000_000,
        "secrets-manager" + "-" * 1_000_000 + ":x",
    ],
)
def test_long_values_are_handled(value: str) -> None:
    # Only a bounded head is examined before anything is matched.
    reason = near_miss(value)
    assert reason is None or len(reason) < 120


def test_words_longer_than_twenty_characters_are_not_quoted() -> None:
    assert near_miss("secretsmanager" + "x" * 7 + ":db") is None
    assert near_miss("awssecretsmanager:db") is not None


def test_non_str_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        near_miss(b"smm:/a")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

HEADS = sorted({typed for _, typed, _ in NEAR_MISSES})


@PROPERTY
@given(st.sampled_from(HEADS), st.text(max_size=40), st.text(max_size=40))
def test_reason_never_holds_what_follows_the_head(head: str, before: str, after: str) -> None:
    value = head + before + CANARY + after
    reason = near_miss(value)
    if reason is not None:
        assert CANARY not in reason
        match = REASON.fullmatch(reason)
        assert match is not None or WRAPPED.fullmatch(reason) is not None
        if match is not None:
            assert value.startswith(match["typed"])
            assert len(match["typed"]) <= len(head)


@PROPERTY
@given(st.text(max_size=80))
def test_any_text_gives_none_or_a_reason_of_the_known_forms(value: str) -> None:
    reason = near_miss(value)
    if is_reference(value):
        assert reason is None
    if reason is not None:
        match = REASON.fullmatch(reason)
        assert match is not None or WRAPPED.fullmatch(reason) is not None
        if match is not None:
            # The quoted part is the value's own head, up to its first ':' or ';'.
            assert value.strip(" \t\r\n\"'`").startswith(match["typed"])


URL = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}{path}",
    st.sampled_from(["http", "https", "postgres", "mysql", "redis", "amqp", "s3", "ftp", "file", "ssh"]),
    st.one_of(st.just(""), st.from_regex(r"[a-z0-9]{1,8}(:[A-Za-z0-9!$%]{0,12})?@", fullmatch=True)),
    st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,20}\.){0,3}[a-z]{2,6}", fullmatch=True),
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    st.from_regex(r"(/[A-Za-z0-9_.~%\-:]{0,12}){0,4}", fullmatch=True),
)
HOST_PORT = st.builds(
    lambda host, port: f"{host}:{port}",
    st.from_regex(r"[a-z][a-z0-9\-]{0,20}(\.[a-z]{2,6}){0,3}", fullmatch=True),
    st.integers(0, 65535),
)


@PROPERTY
@given(st.one_of(URL, HOST_PORT))
def test_urls_and_host_ports_are_plain(value: str) -> None:
    assert near_miss(value) is None


# --- bootstrap(), check, SECRETBOOT_STRICT --------------------------------------------------------

MISSPELT = {"API_TOKEN": f"smm:/app/{CANARY}", "DEBUG": "1", "DATABASE_URL": "postgres://u:p@db:5432/app"}


def test_bootstrap_warns_about_a_near_miss_and_starts(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import secretboot

    caplog.set_level(logging.WARNING, logger="secretboot")
    keyring = secretboot.bootstrap(environ=MISSPELT)

    assert len(keyring) == 0
    [line] = [r.getMessage() for r in caplog.records if r.name == "secretboot"]
    assert line == (
        "API_TOKEN looks like a misspelt reference: 'smm:' (did you mean 'ssm:'?); it is used as "
        "plain text (SECRETBOOT_STRICT=true makes this fail start-up)"
    )
    assert CANARY not in caplog.text


def test_strict_makes_a_near_miss_fail_start_up_naming_only_the_variable() -> None:
    import secretboot
    from secretboot import BootstrapError

    with pytest.raises(BootstrapError) as info:
        secretboot.bootstrap(environ={**MISSPELT, "SECRETBOOT_STRICT": "true"})

    [failure] = info.value.failures
    assert (failure.variable, failure.reason) == ("API_TOKEN", "NearMiss")
    assert CANARY not in str(info.value) and CANARY not in repr(failure)


def test_strict_takes_only_a_boolean() -> None:
    import secretboot
    from secretboot import ConfigurationError

    with pytest.raises(ConfigurationError, match="SECRETBOOT_STRICT must be one of"):
        secretboot.bootstrap(environ={**MISSPELT, "SECRETBOOT_STRICT": "maybe"})


def test_check_reports_a_near_miss_as_an_error() -> None:
    from secretboot._check import check

    rows = {row.name: row for row in check(environ=MISSPELT, offline=True)}

    assert set(rows) == {"API_TOKEN"}  # the URL with a colon in it is plain, and not listed
    assert not rows["API_TOKEN"].ok
    assert rows["API_TOKEN"].status == "NearMiss"
    assert CANARY not in str(rows["API_TOKEN"].as_dict())
