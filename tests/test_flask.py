"""Flask: the extension in a real app (tests/flask_app) against moto over HTTP, in and out of process."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask.testing import FlaskClient
from itsdangerous import BadSignature, URLSafeTimedSerializer

import secretboot
import secretboot._resolve
from secretboot import BootstrapError, ConfigurationError
from secretboot import _cli as secretboot_cli
from secretboot.contrib.flask import SecretBoot
from tests.flask_app import TOKEN_SALT, add_views, create_app
from tests.test_bootstrap import encrypt, failure_texts, put

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "flask.md").read_text()

# One transport is enough where the subject is Flask's process, not the AWS call.
ONE_TRANSPORT = pytest.mark.parametrize("aws_env", ["fast"], indirect=True)


def _secret(label: str) -> str:
    return f"{label}-{os.urandom(12).hex()}"


def _wrap(kms: Any, key_id: str, plaintext: str) -> str:
    return "kms:" + encrypt(kms, key_id, plaintext)


def _login(client: FlaskClient, user: str) -> str:
    assert client.post("/login", data={"user": user}).status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _session(cookie: str, key: str) -> dict[str, Any]:
    """Open a session cookie the way Flask does, with ``key`` as SECRET_KEY."""
    probe = Flask("probe")
    probe.secret_key = key
    serializer = SecureCookieSessionInterface().get_signing_serializer(probe)
    assert serializer is not None
    data: dict[str, Any] = serializer.loads(cookie)
    return data


def _example(name: str) -> str:
    block = DOC.split(f"<!-- example: {name} -->\n```python\n", 1)[1]
    return block.split("```", 1)[0]


def _run_example(name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"docs_flask_{name}"}
    exec(compile(_example(name), f"docs/flask.md ({name})", "exec", dont_inherit=True), namespace)
    return namespace


def _count_resolutions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = secretboot._resolve.resolve

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(secretboot._resolve, "resolve", counting)
    return calls


# -- sessions and signing with the resolved SECRET_KEY ----------------------------------------


def test_session_is_signed_with_the_resolved_kms_key(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    plaintext = _secret("flask-key")
    ciphertext = _wrap(kms, key_id, plaintext)
    os.environ["SECRET_KEY"] = ciphertext
    app = create_app()
    assert app.config["SECRET_KEY"] == plaintext
    assert type(app.config["SECRET_KEY"]) is str

    client = app.test_client()
    cookie = _login(client, "ada")
    assert client.get("/whoami").get_data(as_text=True) == "ada"
    assert _session(cookie, plaintext) == {"user": "ada"}
    with pytest.raises(BadSignature):
        _session(cookie, ciphertext)
    # A fresh client with a cookie signed by another key is anonymous.
    forged = app.test_client()
    forged.set_cookie("session", URLSafeTimedSerializer(ciphertext).dumps({"user": "mallory"}))
    assert forged.get("/whoami").get_data(as_text=True) == "anonymous"


def test_itsdangerous_tokens_use_the_resolved_ssm_key(aws_env: dict[str, str], ssm: Any) -> None:
    plaintext = _secret("ssm-key")
    put(ssm, "/myapp/prod/secret-key", plaintext)
    os.environ["SECRET_KEY"] = "ssm:/myapp/prod/secret-key"
    client = create_app().test_client()

    token = client.get("/token", query_string={"user": "grace"}).get_data(as_text=True)
    assert URLSafeTimedSerializer(plaintext, salt=TOKEN_SALT).loads(token) == {"user": "grace"}
    with pytest.raises(BadSignature):
        URLSafeTimedSerializer("ssm:/myapp/prod/secret-key", salt=TOKEN_SALT).loads(token)
    assert client.get("/verify", query_string={"token": token}).get_data(as_text=True) == "grace"
    tampered = URLSafeTimedSerializer("ssm:/myapp/prod/secret-key", salt=TOKEN_SALT).dumps({"user": "x"})
    assert client.get("/verify", query_string={"token": tampered}).status_code == 400


def test_default_loads_every_resolved_value_and_nothing_more(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    key, password = _secret("key"), _secret("db")
    put(ssm, "/myapp/prod/db-password", password)
    os.environ.update(
        {
            "SECRET_KEY": _wrap(kms, key_id, key),
            "DB_PASSWORD": "ssm:/myapp/prod/db-password",
            "API_URL": "https://example.com",
        }
    )
    app = Flask(__name__)
    before = dict(app.config)
    extension = SecretBoot(app)

    added = {k: v for k, v in app.config.items() if k not in before or before[k] != v}
    assert added == {"SECRET_KEY": key, "DB_PASSWORD": password}
    assert all(type(v) is str for v in added.values())
    assert app.extensions["secretboot"] is extension
    assert "secretboot" in app.cli.commands
    # What a developer might print: names and options, never values.
    shown = repr(extension) + repr(app.extensions) + repr(secretboot.bootstrap())
    assert key not in shown and password not in shown
    assert repr(extension) == "SecretBoot()"


# -- the app-factory pattern --------------------------------------------------------------------


def test_factory_builds_many_apps_from_one_bootstrap(
    aws_env: dict[str, str], kms: Any, key_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plaintext = _secret("key")
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, plaintext)
    resolutions = _count_resolutions(monkeypatch)
    first, second = create_app(), create_app()
    assert first is not second
    assert len(resolutions) == 1
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"] == plaintext
    # A session made by one app is valid in the other.
    cookie = _login(first.test_client(), "ada")
    other = second.test_client()
    other.set_cookie("session", cookie)
    assert other.get("/whoami").get_data(as_text=True) == "ada"


def test_init_app_on_an_app_created_later(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    extension = SecretBoot(names=["SECRET_KEY"])  # module level in a real project
    plaintext = _secret("key")
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, plaintext)
    secretboot.bootstrap()  # say, settings code booted first: the extension reuses the keyring

    app = Flask(__name__)
    assert "secretboot" not in app.extensions
    extension.init_app(app)
    assert app.extensions["secretboot"] is extension
    assert app.config["SECRET_KEY"] == plaintext
    later = create_app(extension)
    assert later.config["SECRET_KEY"] == plaintext
    assert later.extensions["secretboot"] is extension


def test_docs_factory_example(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    plaintext = _secret("key")
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, plaintext)
    app = _run_example("factory")["create_app"]()
    assert app.config["SECRET_KEY"] == plaintext
    assert isinstance(app.extensions["secretboot"], SecretBoot)


def test_docs_rotation_example_accepts_sessions_signed_with_the_old_key(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    old, new = _secret("old"), _secret("new")
    create = _run_example("rotation")["create_app"]

    os.environ["SECRET_KEY"] = _wrap(kms, key_id, old)
    before_rotation = create()
    add_views(before_rotation)
    assert before_rotation.config["SECRET_KEY_FALLBACKS"] == []
    old_cookie = _login(before_rotation.test_client(), "ada")

    secretboot.reset()  # the next deployment: a new process
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, new)
    os.environ["SECRET_KEY_FALLBACK"] = _wrap(kms, key_id, old)
    after = create()
    add_views(after)
    assert after.config["SECRET_KEY"] == new
    assert after.config["SECRET_KEY_FALLBACKS"] == [old]
    assert "SECRET_KEY_FALLBACK" not in after.config
    client = after.test_client()
    client.set_cookie("session", old_cookie)
    assert client.get("/whoami").get_data(as_text=True) == "ada"
    new_cookie = _login(client, "grace")
    assert _session(new_cookie, new) == {"user": "grace"}


# -- names and prefix ---------------------------------------------------------------------------


def test_names_loads_exactly_the_declared_variables(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    key, token = _secret("key"), _secret("token")
    os.environ.update(
        {
            "SECRET_KEY": _wrap(kms, key_id, key),
            "API_TOKEN": _wrap(kms, key_id, token),
            "SMTP_PASSWORD": "plain-in-development",  # not a reference: loaded as it is
        }
    )
    extension = SecretBoot(names=("SECRET_KEY", "SMTP_PASSWORD", "SECRET_KEY"))
    assert extension.names == ("SECRET_KEY", "SMTP_PASSWORD")
    app = create_app(extension)
    assert app.config["SECRET_KEY"] == key
    assert app.config["SMTP_PASSWORD"] == "plain-in-development"
    assert "API_TOKEN" not in app.config
    assert secretboot.getenv("API_TOKEN") == token  # resolved all the same, read where it is used


def test_names_with_an_unset_variable_fails_and_applies_nothing(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, _secret("key"))
    app = Flask(__name__)
    before = dict(app.config)
    with pytest.raises(BootstrapError) as info:
        SecretBoot(app, names=["SECRET_KEY", "NOT_SET_ANYWHERE", "ALSO_MISSING"])
    assert [(f.variable, f.reason) for f in info.value.failures] == [
        ("ALSO_MISSING", "Missing"),
        ("NOT_SET_ANYWHERE", "Missing"),
    ]
    assert dict(app.config) == before
    assert "secretboot" not in app.extensions


def test_prefix_strips_the_prefix_and_loads_only_its_resolved_variables(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str
) -> None:
    key, password = _secret("key"), _secret("db")
    put(ssm, "/myapp/prod/db-password", password)
    os.environ.update(
        {
            "MYAPP_SECRET_KEY": _wrap(kms, key_id, key),
            "MYAPP_DB_PASSWORD": "ssm:/myapp/prod/db-password",
            "MYAPP_DEBUG": "true",  # plain: left to from_prefixed_env() and friends
            "OTHER_TOKEN": _wrap(kms, key_id, _secret("other")),
        }
    )
    extension = SecretBoot(prefix="MYAPP_")
    assert extension.prefix == "MYAPP_" and repr(extension) == "SecretBoot(prefix='MYAPP_')"
    app = Flask(__name__)
    before = dict(app.config)
    extension.init_app(app)
    assert app.config["SECRET_KEY"] == key
    assert app.config["DB_PASSWORD"] == password
    assert set(app.config) - set(before) == {"DB_PASSWORD"}
    assert app.config["DEBUG"] is before["DEBUG"] is False
    assert _session(_login(create_app(extension).test_client(), "ada"), key) == {"user": "ada"}


def test_prefix_fits_flasks_from_prefixed_env(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    plaintext = _secret("key")
    os.environ.update({"FLASK_SECRET_KEY": _wrap(kms, key_id, plaintext), "FLASK_MAX_FORM_PARTS": "50"})
    app = Flask(__name__)
    app.config.from_prefixed_env()  # first: it copies the ciphertext, which the extension replaces
    SecretBoot(app, prefix="FLASK_")
    assert app.config["SECRET_KEY"] == plaintext
    assert app.config["MAX_FORM_PARTS"] == 50


def test_options_are_keyword_only_and_checked() -> None:
    app = Flask(__name__)
    with pytest.raises(TypeError):
        SecretBoot(app, ["SECRET_KEY"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="single string"):
        SecretBoot(names="SECRET_KEY")
    with pytest.raises(TypeError, match="non-empty"):
        SecretBoot(names=["SECRET_KEY", ""])
    with pytest.raises(ValueError, match="exclude"):
        SecretBoot(names=["SECRET_KEY"], prefix="MYAPP_")
    with pytest.raises(ValueError, match="prefix"):
        SecretBoot(prefix="")
    with pytest.raises(TypeError, match="prefix"):
        SecretBoot(prefix=b"MYAPP_")  # type: ignore[arg-type]
    names = ["SECRET_KEY"]
    extension = SecretBoot(names=names)
    names.append("CHANGED")
    assert extension.names == ("SECRET_KEY",)  # a copy, never the caller's list


# -- failure at app creation --------------------------------------------------------------------


def test_unresolvable_references_fail_app_creation_and_touch_nothing(
    aws_env: dict[str, str], kms: Any, key_id: str
) -> None:
    good = _secret("good")
    broken_blob = base64.b64encode(b"garbage-ciphertext-bytes").decode()
    os.environ.update(
        {
            "DB_PASSWORD": _wrap(kms, key_id, good),
            "SECRET_KEY": "kms:" + broken_blob,
            "API_TOKEN": "ssm:/myapp/prod/missing",
        }
    )
    app = Flask(__name__)
    before = dict(app.config)
    with pytest.raises(BootstrapError) as info:
        SecretBoot(app)
    assert info.value.variables == ("API_TOKEN", "SECRET_KEY")
    assert {f.reason for f in info.value.failures} == {"ParameterNotFound", "InvalidCiphertext"}
    text = failure_texts(info.value)
    assert "SECRET_KEY" in text and "/myapp/prod/missing" in text
    assert broken_blob not in text and good not in text
    assert dict(app.config) == before
    assert "secretboot" not in app.extensions and "secretboot" not in app.cli.commands
    with pytest.raises(BootstrapError):
        create_app()


def test_ciphertext_left_in_secret_key_fails(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    ciphertext = _wrap(kms, key_id, _secret("key"))
    os.environ["FLASK_SECRET_KEY"] = ciphertext
    app = Flask(__name__)
    app.config.from_prefixed_env()  # SECRET_KEY = the ciphertext
    before = dict(app.config)
    with pytest.raises(BootstrapError) as info:
        SecretBoot(app)  # loads FLASK_SECRET_KEY under its own name: SECRET_KEY keeps the ciphertext
    [failure] = info.value.failures
    assert (failure.variable, failure.kind, failure.reason) == ("SECRET_KEY", "kms", "Unresolved")
    assert ciphertext[4:] not in failure_texts(info.value)
    assert dict(app.config) == before

    app = Flask(__name__)
    app.config["SECRET_KEY_FALLBACKS"] = ["ssm:/myapp/old-key"]
    with pytest.raises(BootstrapError) as info:
        SecretBoot(app, names=["FLASK_SECRET_KEY"])
    assert info.value.variables == ("SECRET_KEY_FALLBACKS[0]",)


@pytest.mark.parametrize(
    ("variable", "extension", "key"),
    [
        ("SERVER_NAME", SecretBoot(), "SERVER_NAME"),
        ("SESSION_COOKIE_DOMAIN", SecretBoot(names=["SESSION_COOKIE_DOMAIN"]), "SESSION_COOKIE_DOMAIN"),
        ("MYAPP_DEBUG", SecretBoot(prefix="MYAPP_"), "DEBUG"),
        ("MYAPP_SECRET_KEY_FALLBACKS", SecretBoot(prefix="MYAPP_"), "SECRET_KEY_FALLBACKS"),
    ],
)
def test_flasks_own_settings_are_refused(
    aws_env: dict[str, str], ssm: Any, variable: str, extension: SecretBoot, key: str
) -> None:
    value = _secret("value")
    put(ssm, "/myapp/value", value)
    os.environ[variable] = "ssm:/myapp/value"
    app = Flask(__name__)
    before = dict(app.config)
    with pytest.raises(ConfigurationError) as info:
        extension.init_app(app)
    message = str(info.value)
    assert f"{variable} would become app.config[{key!r}]" in message
    assert value not in message
    assert dict(app.config) == before


# -- flask secretboot check ---------------------------------------------------------------------


def _secretboot_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = secretboot_cli.main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_is_secretboot_check(
    aws_env: dict[str, str], kms: Any, key_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plaintext = _secret("key")
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, plaintext)
    os.environ["LOG_LEVEL"] = "info"
    runner = create_app().test_cli_runner()
    broken = tmp_path / "broken.env"
    broken.write_text("API_TOKEN=ssm:/myapp/prod/missing\n")

    cases = [
        ([], 0),
        (["--json"], 0),
        (["--offline"], 0),
        ([f"--env-file={broken}"], 1),
        (["--env-file", str(broken), "--json"], 1),
        (["--env-file", str(tmp_path / "absent.env")], 2),
    ]
    for args, expected in cases:
        code, out, err = _secretboot_check(capsys, *args)
        result = runner.invoke(args=["secretboot", "check", *args])
        assert (result.exit_code, code) == (expected, expected), args
        assert (result.stdout, result.stderr) == (out, err), args
        assert plaintext not in result.output
    table = runner.invoke(args=["secretboot", "check"]).stdout
    assert table.splitlines()[0].split() == ["NAME", "KIND", "TARGET", "STATUS"]
    assert "SECRET_KEY" in table and "resolved" in table and "LOG_LEVEL" not in table

    help_text = runner.invoke(args=["secretboot", "check", "--help"]).stdout
    for word in ("--env-file", "--offline", "--json", "exit codes", "  2  usage"):
        assert word in help_text


def _flask(*args: str, cwd: Path = ROOT, pythonpath: str = str(ROOT)) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=pythonpath, FLASK_SKIP_DOTENV="1")  # no stray .env
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.flask_app:create_app", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@ONE_TRANSPORT
def test_flask_command_in_a_real_process(
    aws_env: dict[str, str], kms: Any, key_id: str, tmp_path: Path
) -> None:
    plaintext = _secret("key")
    os.environ["SECRET_KEY"] = _wrap(kms, key_id, plaintext)
    run = _flask("secretboot", "check")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1].split()[:2] == ["SECRET_KEY", "kms"]
    assert run.stdout.rstrip().endswith("resolved")

    broken = tmp_path / "broken.env"
    broken.write_text("API_TOKEN=ssm:/myapp/prod/missing\n")
    run = _flask("secretboot", "check", "--env-file", str(broken), "--json")
    assert run.returncode == 1, run.stderr
    assert '"status": "ParameterNotFound"' in run.stdout

    run = _flask("secretboot", "check", "--env-file", str(tmp_path / "absent.env"))
    assert run.returncode == 2
    assert "absent.env" in run.stderr and "does not exist" in run.stderr
    for output in (run.stdout, run.stderr):
        assert plaintext not in output


@ONE_TRANSPORT
def test_start_up_failure_in_a_real_process(aws_env: dict[str, str], kms: Any, key_id: str) -> None:
    broken_blob = base64.b64encode(b"garbage-ciphertext-bytes").decode()
    good = _secret("good")
    os.environ["SECRET_KEY"] = "kms:" + broken_blob
    os.environ["DB_PASSWORD"] = _wrap(kms, key_id, good)
    run = _flask("routes")  # any command that needs the app
    assert run.returncode == 1
    assert "BootstrapError: secretboot could not resolve 1 variable:" in run.stderr
    assert "SECRET_KEY (kms <ciphertext, 24 bytes>): InvalidCiphertext" in run.stderr
    # The check fails too: today at the app's BootstrapError; as a plugin command, with its table.
    check = _flask("secretboot", "check")
    assert check.returncode == 1
    assert "SECRET_KEY" in check.stdout + check.stderr
    for output in (run.stdout + run.stderr, check.stdout + check.stderr):
        assert broken_blob not in output and good not in output


@ONE_TRANSPORT
def test_check_as_a_flask_plugin_command_runs_without_the_app(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    """With a ``flask.commands`` entry point (proposed for pyproject.toml), the group runs even
    when the app cannot be created, and prints the table."""
    dist = tmp_path / "secretboot_flask_plugin-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: secretboot-flask-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[flask.commands]\nsecretboot = secretboot.contrib.flask:cli\n")
    os.environ["API_TOKEN"] = "ssm:/myapp/prod/missing"
    run = _flask("secretboot", "check", pythonpath=f"{tmp_path}{os.pathsep}{ROOT}")
    assert run.returncode == 1, run.stderr
    assert "BootstrapError" not in run.stderr  # the app was never created
    row = run.stdout.splitlines()[1].split()
    assert row[:4] == ["API_TOKEN", "ssm", "/myapp/prod/missing", "ParameterNotFound:"]


# -- importing ----------------------------------------------------------------------------------


def test_importing_the_extension_does_nothing() -> None:
    code = (
        "import json, logging, os, sys; import flask\n"
        "before, env = set(sys.modules), dict(os.environ); handlers = logging.getLogger().handlers[:]\n"
        "import secretboot.contrib.flask\n"
        "from secretboot import _bootstrap\n"
        "print(json.dumps({'modules': sorted(m for m in set(sys.modules) - before"
        " if not m.startswith('secretboot')), 'env': dict(os.environ) == env,"
        " 'log': logging.getLogger().handlers == handlers, 'booted': _bootstrap._state.keyring is not None}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    env["SECRET_KEY"] = "ssm:/would/fail/if/resolved"
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.strip() == '{"modules": [], "env": true, "log": true, "booted": false}'
