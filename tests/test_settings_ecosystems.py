"""docs/settings.md's examples, run as written: python-dotenv and pydantic-settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

import secretboot
from secretboot import ConfigurationError
from tests.test_bootstrap import encrypt, put

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "settings.md").read_text()

# One transport is enough where no reference is resolved.
ONE_TRANSPORT = pytest.mark.parametrize("aws_env", ["fast"], indirect=True)


def _block(name: str) -> str:
    """The fenced block right after ``<!-- example: name -->``."""
    after = DOC.split(f"<!-- example: {name} -->\n```", 1)[1]
    return after.split("\n", 1)[1].split("```", 1)[0]


def _run(*names: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {"__name__": "settings_example"} if namespace is None else namespace
    for name in names:
        exec(compile(_block(name), f"docs/settings.md ({name})", "exec", dont_inherit=True), namespace)
    return namespace


def _secret(label: str) -> str:
    return f"{label}-{os.urandom(12).hex()}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import secretboot._resolve

    calls: list[int] = []
    real = secretboot._resolve.resolve

    def counting(refs: Any, settings: Any, **kwargs: Any) -> Any:
        calls.append(len(refs))
        return real(refs, settings, **kwargs)

    monkeypatch.setattr(secretboot._resolve, "resolve", counting)
    return calls


# -- python-dotenv ------------------------------------------------------------------------------


@ONE_TRANSPORT
def test_dotenv_development_plaintext_needs_no_aws(
    aws_env: dict[str, str], workdir: Path, resolutions: list[int]
) -> None:
    (workdir / ".env").write_text(_block("dotenv-local"))
    settings = _run("dotenv")
    assert settings["SECRET_KEY"] == "local-development-only"
    assert settings["DATABASE_PASSWORD"] == "postgres"
    assert settings["DEBUG"] is True
    assert resolutions == [0]  # nothing to resolve
    assert "SECRET_KEY" not in os.environ  # read in-process, not copied into the environment


def test_dotenv_production_references(
    aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str, workdir: Path
) -> None:
    key, password = _secret("key"), _secret("db")
    put(ssm, "/myapp/prod/db-password", password)
    (workdir / ".env").write_text(
        f"SECRET_KEY=kms:{encrypt(kms, key_id, key)}\nDATABASE_PASSWORD=ssm:/myapp/prod/db-password\n"
    )
    settings = _run("dotenv")
    assert settings["SECRET_KEY"] == key
    assert (settings["DATABASE_PASSWORD"], settings["DEBUG"]) == (password, False)
    assert "SECRET_KEY" not in os.environ and "DATABASE_PASSWORD" not in os.environ


def test_dotenv_the_real_environment_wins_over_the_file(
    aws_env: dict[str, str], kms: Any, key_id: str, workdir: Path
) -> None:
    key = _secret("key")
    (workdir / ".env").write_text(_block("dotenv-local"))
    os.environ["SECRET_KEY"] = "kms:" + encrypt(kms, key_id, key)
    os.environ["DEBUG"] = "false"
    settings = _run("dotenv")
    assert settings["SECRET_KEY"] == key
    assert settings["DATABASE_PASSWORD"] == "postgres"  # only in the file
    assert settings["DEBUG"] is False


@ONE_TRANSPORT
def test_secretboot_env_file_variable_means_env_file(aws_env: dict[str, str], workdir: Path) -> None:
    (workdir / ".env").write_text(_block("dotenv-local"))
    os.environ["SECRETBOOT_ENV_FILE"] = ".env"
    secretboot.bootstrap()
    assert secretboot.getenv("SECRET_KEY") == "local-development-only"


@ONE_TRANSPORT
def test_dotenv_env_file_must_exist(aws_env: dict[str, str], workdir: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        _run("dotenv")


def test_load_dotenv_leaves_references_in_the_environment(
    aws_env: dict[str, str], kms: Any, key_id: str, workdir: Path
) -> None:
    key = _secret("key")
    reference = "kms:" + encrypt(kms, key_id, key)
    (workdir / ".env").write_text(f"SECRET_KEY={reference}\n")
    settings = _run("load-dotenv")
    assert settings["SECRET_KEY"] == key
    assert os.environ["SECRET_KEY"] == reference
    assert key not in os.environ.values()


# -- pydantic-settings --------------------------------------------------------------------------


@pytest.fixture
def myapp_env(aws_env: dict[str, str], kms: Any, ssm: Any, key_id: str) -> dict[str, str]:
    """The production environment: two references, two plain settings. Returns the plaintexts."""
    key, password = _secret("key"), _secret("db")
    put(ssm, "/myapp/prod/db-password", password)
    os.environ.update(
        {
            "MYAPP_SECRET_KEY": "kms:" + encrypt(kms, key_id, key),
            "MYAPP_DATABASE_PASSWORD": "ssm:/myapp/prod/db-password",
            "MYAPP_DATABASE_PORT": "6543",
            "MYAPP_DEBUG": "true",
        }
    )
    return {"secret_key": key, "database_password": password}


def _check_settings(settings: Any, plaintexts: dict[str, str]) -> None:
    assert settings.secret_key.get_secret_value() == plaintexts["secret_key"]
    assert settings.database_password.get_secret_value() == plaintexts["database_password"]
    assert isinstance(settings.secret_key, SecretStr)
    assert (settings.database_port, settings.debug) == (6543, True)
    shown = repr(settings) + str(settings) + settings.model_dump_json() + repr(settings.model_dump())
    for plaintext in plaintexts.values():
        assert plaintext not in shown
    assert repr(settings.secret_key) == "SecretStr('**********')"
    assert json.loads(settings.model_dump_json())["secret_key"] == "**********"


def test_pydantic_settings_with_values_passed_in(myapp_env: dict[str, str]) -> None:
    environ = dict(os.environ)
    settings = _run("pydantic-model", "pydantic-pass-in")["settings"]
    _check_settings(settings, myapp_env)
    assert dict(os.environ) == environ  # nothing written to the environment


def test_pydantic_settings_after_export(myapp_env: dict[str, str]) -> None:
    environ = dict(os.environ)
    settings = _run("pydantic-model", "pydantic-export")["settings"]
    _check_settings(settings, myapp_env)
    assert dict(os.environ) == environ  # reset() took the plaintext back out


@ONE_TRANSPORT
def test_pydantic_settings_in_development_reads_plaintext_itself(aws_env: dict[str, str]) -> None:
    os.environ.update({"MYAPP_SECRET_KEY": "dev-key", "MYAPP_DATABASE_PASSWORD": "postgres"})
    settings = _run("pydantic-model", "pydantic-pass-in")["settings"]
    assert settings.secret_key.get_secret_value() == "dev-key"
    assert settings.database_port == 5432


def test_pydantic_export_trap_is_caught_by_the_validator(myapp_env: dict[str, str]) -> None:
    secretboot.bootstrap()  # something booted earlier, without export
    with pytest.raises(ValidationError) as info:
        _run("pydantic-model", "pydantic-export")
    errors = info.value.errors(include_input=False)
    assert sorted(e["loc"][0] for e in errors) == ["database_password", "secret_key"]
    assert all("holds a secretboot reference" in e["msg"] for e in errors)
    message = str(info.value)
    assert os.environ["MYAPP_SECRET_KEY"][4:] not in message
    assert "/myapp/prod/db-password" not in message
    for plaintext in myapp_env.values():
        assert plaintext not in message + repr(info.value.errors())
