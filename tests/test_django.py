"""Django: a real project (tests/django_project) whose settings load secrets with secretboot.

Start-up behaviour runs out of process (``manage.py`` against the session's moto server), and
so does the in-process part (``probe.py`` with Django's test client), because Django's settings
are configured once per process. django-environ and the ``fallbacks`` helper need no settings,
so they run here, on both transports.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import environ
import pytest
from django.core import signing
from django.core.exceptions import ImproperlyConfigured

import secretboot
from secretboot._reference import is_reference
from secretboot.contrib.django import fallbacks
from tests.conftest import CREDENTIALS, REGION, moto_api
from tests.localaws import client

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "django_project"
DOCS = (ROOT / "docs" / "django.md").read_text()
TIMEOUT = 60
SALT = "demo.links"  # demo/views.py
SESSION_SALT = "django.contrib.sessions.backends.signed_cookies"


def _doc_block(marker: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in docs/django.md."""
    after = DOCS.split(f"<!-- {marker} -->\n", 1)[1]
    assert after.startswith("```")
    return after.split("\n", 1)[1].split("```", 1)[0]


class Aws:
    def __init__(self, endpoint: str) -> None:
        moto_api(endpoint, "reset")
        self.endpoint = endpoint
        self.kms: Any = client(endpoint, "kms")
        self.ssm: Any = client(endpoint, "ssm")
        self.key_id = self.kms.create_key(Description="secretboot Django tests")["KeyMetadata"]["KeyId"]

    def wrap(self, plaintext: str) -> str:
        """Bare base64 ciphertext (moto's lacks the AWS header, so it is not detected as such)."""
        blob = self.kms.encrypt(KeyId=self.key_id, Plaintext=plaintext.encode())["CiphertextBlob"]
        return base64.b64encode(blob).decode()

    def put(self, name: str, value: str) -> str:
        self.ssm.put_parameter(Name=name, Value=value, Type="SecureString")
        return f"ssm:{name}"


@dataclass
class Project:
    """The demo's environment: references in, plaintext known to the test only."""

    aws: Aws
    env: dict[str, str]
    new_key: str
    old_key: str
    db_password: str

    @property
    def ciphertext(self) -> str:
        return self.env["SECRET_KEY"]

    def secrets(self) -> list[str]:
        """What must never be printed: plaintext and ciphertext."""
        return [self.new_key, self.old_key, self.db_password, self.ciphertext.removeprefix("kms:")]

    def run(
        self, *args: str, settings: str = "demo.settings", env: dict[str, str] | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=PROJECT,
            env={**self.env, "DJANGO_SETTINGS_MODULE": settings, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def manage(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("manage.py", *args, **kwargs)

    def assert_no_leak(self, done: subprocess.CompletedProcess[str]) -> None:
        output = done.stdout + done.stderr
        for secret in self.secrets():
            assert secret not in output


def _base_env(endpoint: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SECRETBOOT_", "DJANGO_"))
        and not k.lower().endswith("_proxy")
        and not is_reference(v)
    }
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_REGION=REGION, PYTHONPATH=str(ROOT), **CREDENTIALS)
    return env


@pytest.fixture
def project(moto_endpoint: str) -> Project:
    aws = Aws(moto_endpoint)
    new_key, old_key, db_password = (secrets.token_urlsafe(40) for _ in range(3))
    env = _base_env(moto_endpoint)
    env.update(
        SECRET_KEY="kms:" + aws.wrap(new_key),
        SECRET_KEY_FALLBACK=aws.put("/demo/old-secret-key", old_key),
        DB_PASSWORD=aws.put("/demo/db-password", db_password),
    )
    return Project(aws, env, new_key, old_key, db_password)


# -- the package ------------------------------------------------------------------------------


def test_importing_the_app_package_imports_no_django_and_changes_nothing() -> None:
    code = (
        "import json, os, sys; before = dict(os.environ); import secretboot.contrib.django as app;"
        "from secretboot._bootstrap import _state;"
        "print(json.dumps({'django': sorted(m for m in sys.modules if m.split('.')[0] == 'django'),"
        " 'env': dict(os.environ) == before, 'booted': _state.keyring is not None,"
        " 'all': app.__all__}))"
    )
    env = _base_env("http://127.0.0.1:9")
    env["SECRET_KEY"] = "ssm:/never/resolved"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"django": [], "env": True, "booted": False, "all": ["fallbacks"]}


def test_docs_settings_are_the_demo_projects_settings() -> None:
    settings = (PROJECT / "demo" / "settings.py").read_text().splitlines()
    for marker in ("django-settings", "django-fallbacks"):
        lines = [line for line in _doc_block(marker).splitlines() if line.strip()]
        positions = [settings.index(line) for line in lines]
        assert positions == sorted(positions), marker


# -- start-up ---------------------------------------------------------------------------------


def test_manage_check_passes_with_references_resolved(project: Project) -> None:
    done = project.manage("check")
    assert done.returncode == 0, done.stderr
    assert "System check identified no issues" in done.stdout
    project.assert_no_leak(done)


def test_signed_values_sessions_and_fallbacks_use_the_resolved_keys(project: Project) -> None:
    old = signing.TimestampSigner(key=project.old_key, salt=SALT, fallback_keys=[])
    forged = signing.TimestampSigner(key=project.ciphertext, salt=SALT, fallback_keys=[])
    forged_session = signing.TimestampSigner(key=project.ciphertext, salt=SESSION_SALT, fallback_keys=[])
    tokens = {
        "old": old.sign_object("signed with the old key"),
        "forged": forged.sign_object("signed with the ciphertext"),
        "forged_session": forged_session.sign_object({"value": "forged"}, compress=True),
    }
    done = project.run("probe.py", stdin=json.dumps(tokens))
    assert done.returncode == 0, done.stderr
    project.assert_no_leak(done)
    result = json.loads(done.stdout)

    # The app signs with the resolved SECRET_KEY, not with the ciphertext.
    signed = result["signed"]
    assert signing.loads(signed, key=project.new_key, salt=SALT, fallback_keys=[]) == "hello"
    with pytest.raises(signing.BadSignature):
        signing.loads(signed, key=project.ciphertext, salt=SALT, fallback_keys=[])
    # The old key, resolved from SSM into SECRET_KEY_FALLBACKS, still verifies; the ciphertext does not.
    assert result["old"] == [200, '{"value": "signed with the old key"}']
    assert result["forged"] == [400, "bad signature"]
    # A session round-trips through the test client in a cookie signed with the resolved key.
    assert result["session"] == "round trip"
    cookie = signing.loads(result["cookie"], key=project.new_key, salt=SESSION_SALT, fallback_keys=[])
    assert cookie == {"value": "round trip"}
    assert result["forged_session"] is None


def test_a_broken_reference_stops_start_up_naming_the_variable(project: Project) -> None:
    done = project.manage("check", env={"SECRET_KEY_FALLBACK": "ssm:/missing"})
    assert done.returncode != 0
    error, failure = done.stderr.strip().splitlines()[-2:]
    assert re.fullmatch(
        r"secretboot(\._errors)?\.BootstrapError: secretboot could not resolve 1 variable:", error
    )
    assert failure == (
        "  SECRET_KEY_FALLBACK (ssm /missing): ParameterNotFound: no such parameter, version or label "
        "(or not visible to these credentials)"
    )
    assert "System check" not in done.stdout
    project.assert_no_leak(done)


def _fake_aws_ciphertext() -> str:
    """Bare base64 with the AWS KMS ciphertext header, as the Lambda console stores it."""
    return base64.b64encode(b"\x01\x02\x02\x00\x78" + os.urandom(160)).decode()


@pytest.mark.parametrize(
    "command", [["check"], ["migrate"], ["runserver", "--noreload", "127.0.0.1:0"]], ids=lambda c: c[0]
)
def test_settings_that_forget_to_resolve_fail_the_system_check(project: Project, command: list[str]) -> None:
    extra = {
        "EMAIL_HOST_PASSWORD": _fake_aws_ciphertext(),
        # moto's ciphertext has no AWS header: declared, as SECRETBOOT_KMS_VARS allows.
        "CACHE_PASSWORD": project.aws.wrap("cache password"),
        "SECRETBOOT_KMS_VARS": "CACHE_PASSWORD",
        "PAYMENTS_API_KEY": "{{resolve:ssm-secure:/demo/payments}}",
    }
    done = project.manage(*command, settings="demo.settings_forgetful", env=extra)
    assert done.returncode == 1
    assert "SystemCheckError" in done.stderr
    found = re.findall(
        r"^\?: \((secretboot\.[EW]\d+)\) (\S+) holds (.+) that was never resolved", done.stderr, re.M
    )
    assert sorted(found) == [
        ("secretboot.E001", "CACHES['default']['OPTIONS']['PASSWORD']", "KMS ciphertext"),
        ("secretboot.E001", "DATABASES['default']['PASSWORD']", "an SSM reference"),
        ("secretboot.E001", "EMAIL_HOST_PASSWORD", "KMS ciphertext"),
        ("secretboot.E001", "SECRET_KEY", "KMS ciphertext"),
        ("secretboot.E001", "SECRET_KEY_FALLBACKS[0]", "an SSM reference"),
        ("secretboot.W001", "PAYMENTS_API_KEY", "an SSM reference"),
    ]
    # The docs' example output is what Django prints.
    lines = [line.strip() for line in done.stderr.splitlines()]
    for line in _doc_block("django-check-output").splitlines():
        assert line.strip() in lines
    assert "(the raw value of the environment variable SECRET_KEY_FALLBACK)" in done.stderr
    project.assert_no_leak(done)
    for name in ("EMAIL_HOST_PASSWORD", "CACHE_PASSWORD", "PAYMENTS_API_KEY"):
        assert extra[name] not in done.stdout + done.stderr


def test_export_then_os_environ_passes_the_check(project: Project) -> None:
    # Plaintext exported into os.environ is not mistaken for the ciphertext it replaced,
    # even for a SECRETBOOT_KMS_VARS variable, whose value has no recognizable shape.
    env = {"SECRET_KEY": project.ciphertext.removeprefix("kms:"), "SECRETBOOT_KMS_VARS": "SECRET_KEY"}
    done = project.manage("check", settings="demo.settings_export", env=env)
    assert done.returncode == 0, done.stderr
    assert "System check identified no issues" in done.stdout


# -- manage.py secretboot_check ---------------------------------------------------------------


@pytest.fixture
def env_files(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "broken.env").write_text("PAYMENTS_API_KEY=ssm:/demo/missing\nDEBUG=false\n")
    yield tmp_path


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ([], 0),
        (["--json"], 0),
        (["--offline"], 0),
        (["--env-file", "{dir}/broken.env"], 1),
        (["--env-file", "{dir}/broken.env", "--json"], 1),
        (["--env-file", "{dir}/missing.env"], 2),
    ],
    ids=["table", "json", "offline", "failing", "failing-json", "missing-file"],
)
def test_secretboot_check_command_prints_what_the_cli_prints(
    project: Project, env_files: Path, options: Sequence[str], code: int
) -> None:
    args = [option.format(dir=env_files) for option in options]
    cli = project.run("-m", "secretboot", "check", *args)
    command = project.manage("secretboot_check", *args)
    assert (cli.returncode, command.returncode) == (code, code), command.stderr
    assert command.stdout == cli.stdout
    # Both say which sources they read (the CLI's first line on stderr, once read).
    sources, _, errors = (
        cli.stderr.partition("\n")
        if cli.stderr.startswith("secretboot check: read ")
        else ("", "", cli.stderr)
    )
    if code != 2:
        assert sources.startswith("secretboot check: read the environment"), cli.stderr
        assert command.stderr.startswith(sources + "\n"), command.stderr
    if code == 0:
        assert errors == ""
        assert command.stderr == sources + "\n"
    elif errors:
        assert command.stderr.strip() == "CommandError: " + errors.strip().removeprefix("secretboot: ")
    else:
        assert (
            command.stderr.removeprefix(sources + "\n").strip()
            == "CommandError: some references do not resolve"
        )
    if "--json" in args:
        rows = json.loads(command.stdout)
        assert {row["name"] for row in rows} >= {"SECRET_KEY", "SECRET_KEY_FALLBACK", "DB_PASSWORD"}
    project.assert_no_leak(command)


def test_secretboot_check_command_help_lists_the_cli_options(project: Project) -> None:
    done = project.manage("help", "secretboot_check")
    assert done.returncode == 0, done.stderr
    for option in ("--env-file", "--offline", "--json"):
        assert option in done.stdout


# -- fallbacks() ------------------------------------------------------------------------------


def test_fallbacks_resolves_like_getenv_and_skips_unset_names(aws_env: dict[str, str], ssm: Any) -> None:
    ssm.put_parameter(Name="/demo/older", Value="older key", Type="SecureString")
    os.environ.update(OLD_1="plain old key", OLD_2="ssm:/demo/older", OLD_EMPTY="")
    assert fallbacks() == []
    assert fallbacks("OLD_2", "UNSET", "OLD_EMPTY", "OLD_1") == ["older key", "plain old key"]
    assert sorted(secretboot.bootstrap()) == ["OLD_2"]  # resolved by the boot getenv started
    with pytest.raises(TypeError, match="variable names"):
        fallbacks(["OLD_1"])  # type: ignore[arg-type]


# -- django-environ ---------------------------------------------------------------------------


def _provision_environ_example(aws_env: dict[str, str], ssm: Any, kms: Any, key_id: str) -> dict[str, str]:
    # Both secrets start with "$": the example must pass them through untouched.
    values = {
        "SECRET_KEY": "$" + secrets.token_urlsafe(40),
        "DATABASE_URL": "postgres://app:$ecret@db:5432/app",
    }
    blob = kms.encrypt(KeyId=key_id, Plaintext=values["SECRET_KEY"].encode())["CiphertextBlob"]
    ssm.put_parameter(Name="/demo/database-url", Value=values["DATABASE_URL"], Type="SecureString")
    os.environ.update(
        SECRET_KEY="kms:" + base64.b64encode(blob).decode(),
        DATABASE_URL="ssm:/demo/database-url",
        DEBUG="true",
        ALLOWED_HOSTS="a.example,b.example",
    )
    return values


def test_django_environ_example_from_the_docs(
    aws_env: dict[str, str], ssm: Any, kms: Any, key_id: str
) -> None:
    values = _provision_environ_example(aws_env, ssm, kms, key_id)
    namespace: dict[str, Any] = {}
    exec(compile(_doc_block("django-environ-example"), "docs/django.md", "exec"), namespace)
    assert namespace["DEBUG"] is True
    assert namespace["ALLOWED_HOSTS"] == ["a.example", "b.example"]
    assert namespace["SECRET_KEY"] == values["SECRET_KEY"]
    database = namespace["DATABASES"]["default"]
    assert (
        database["ENGINE"],
        database["USER"],
        database["PASSWORD"],
        database["HOST"],
        database["PORT"],
    ) == (
        "django.db.backends.postgresql",
        "app",
        "$ecret",
        "db",
        5432,
    )


def test_django_environ_reads_a_dollar_secret_as_a_proxy(
    aws_env: dict[str, str], ssm: Any, kms: Any, key_id: str
) -> None:
    # What docs/django.md warns about, on the installed django-environ.
    values = _provision_environ_example(aws_env, ssm, kms, key_id)
    secretboot.bootstrap(export=True)
    assert os.environ["SECRET_KEY"] == values["SECRET_KEY"]
    for escape_proxy in (False, True):
        env = environ.Env()
        env.escape_proxy = escape_proxy
        with pytest.raises(ImproperlyConfigured) as raised:
            env.str("SECRET_KEY")
        assert values["SECRET_KEY"][1:] in str(raised.value)  # the secret, in an error message
    # A key that happens to spell another variable's name silently becomes that variable's value.
    os.environ["SIGNING_KEY"] = "$DEBUG"
    assert environ.Env().str("SIGNING_KEY") == "true"
    # Without export, django-environ gets the reference itself (what secretboot.E001 reports).
    secretboot.reset()
    assert environ.Env().str("SECRET_KEY").startswith("kms:")
