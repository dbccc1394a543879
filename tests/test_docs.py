"""The README's snippet and the quick-start example run as tests."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import secretboot

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _quickstart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "docs" / "examples" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_snippet_works_as_written(aws_env: dict[str, str]) -> None:
    snippet = README.split("<!-- readme-snippet -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    os.environ.update(_quickstart()._provision(aws_env["AWS_ENDPOINT_URL"]))
    namespace: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["api_url"] == "https://example.com"
    password = namespace["db_password"]
    assert isinstance(password, str) and re.fullmatch(r"[0-9a-f]{24}", password)
    secrets = namespace["secrets"]
    assert isinstance(secrets, secretboot.Keyring)
    assert sorted(secrets) == ["API_TOKEN", "DB_PASSWORD", "LEGACY_KEY", "SIGNING_KEY"]


def test_quickstart_command_runs_and_prints_no_values() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(
        [sys.executable, "docs/examples/quickstart.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    output = run.stdout + run.stderr
    for name in ("API_TOKEN", "DB_PASSWORD", "LEGACY_KEY", "SIGNING_KEY"):
        assert f"resolved {name}" in output
    assert "resolved 4 secrets" in output
    # The example's secrets are random hex of 24 or 32 characters; none may be printed.
    assert not re.search(r"[0-9a-f]{24,}", output)


def test_ci_runs_the_readme_test_command() -> None:
    lines = README.splitlines()
    command = lines[lines.index("# 2. Run the tests") + 1]
    assert "pytest" in command
    assert "grep -A1 '^# 2. Run the tests' README.md" in (ROOT / ".ci" / "run").read_text()


def _grammar_examples() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "reference-syntax.md").read_text()
    section = text.split("## Examples", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            value, expected = (cell.strip() for cell in line.strip().strip("|").split(" | ", 1))
            rows.append((value[1:-1], expected))
    return rows


EXAMPLES = _grammar_examples()


@pytest.mark.parametrize(("value", "expected"), EXAMPLES, ids=[v[:40] for v, _ in EXAMPLES])
def test_grammar_doc_examples_parse_as_documented(value: str, expected: str) -> None:
    try:
        ref = secretboot.parse_reference(value, variable="VAR")
    except secretboot.ReferenceSyntaxError as exc:
        assert expected == f"error ({exc.kind}): {exc.reason}"
        return
    if ref is None:
        assert expected.startswith("plain")
        assert not secretboot.is_reference(value)
    else:
        assert expected.startswith(f"`{ref}`")
        assert secretboot.parse_reference(str(ref)) == ref


def test_grammar_doc_has_examples() -> None:
    assert len(EXAMPLES) >= 20


# -- docs/envelope.md -------------------------------------------------------------------------

ENVELOPE = ROOT / "docs" / "envelope.md"


def _fenced_after(text: str, marker: str) -> str:
    """The fenced block right after ``<!-- marker -->``."""
    after = text.split(f"<!-- {marker} -->\n", 1)[1]
    return after.split("\n", 1)[1].split("```\n", 1)[0]


def test_envelope_doc_commands_parse() -> None:
    from secretboot import _cli
    from secretboot._cli import _base as _cli_base

    text = ENVELOPE.read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    used = set()
    for line in (line for block in blocks for line in block.splitlines()):
        words = shlex.split(line, comments=True)
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words.pop(0)  # VAR=value in front of the command
        if words[:1] != ["secretboot"]:
            continue
        args = _cli.build_parser().parse_args(words[1:])
        if hasattr(args, "context"):
            _cli_base.parse_context(args.context, args.lambda_function)
        used.add(args.command)
    assert used == {"seal", "reseal", "rotate", "keygen", "check"}


def test_envelope_doc_local_workflow_runs_as_documented(tmp_path: Path) -> None:
    """The local key provider's example: run on its .env, with its output compared."""
    text = ENVELOPE.read_text()
    home, app, bin_dir = tmp_path / "home", tmp_path / "app", tmp_path / "bin"
    for folder in (home, app, bin_dir):
        folder.mkdir()
    (app / ".env").write_text(_fenced_after(text, "local-env"))
    launcher = bin_dir / "secretboot"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m secretboot "$@"\n')
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT))
    run = subprocess.run(
        ["bash", "-e", "-c", _fenced_after(text, "local-commands")],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.replace(str(home), "/home/me") == _fenced_after(text, "local-output")
    assert ((home / ".config" / "secretboot" / "myapp-dev.key").stat().st_mode & 0o777) == 0o600
    sealed = (app / ".env").read_text()
    assert "SECRET_KEY=sealed:" in sealed and "DB_PASSWORD=sealed:" in sealed
    assert "DEBUG=true\n" in sealed and "SECRETBOOT_DATA_KEY=local:" in sealed
    assert "dev-only-secret-key" not in sealed and "postgres" not in sealed


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_envelope_doc_states_the_data_key_context_and_messages_as_the_code_does(tmp_path: Path) -> None:
    from secretboot import _envelope, _sealed

    envelope_doc = _flat((ROOT / "docs" / "envelope.md").read_text())
    key, value = _envelope.DATA_KEY_PURPOSE
    assert f'"{key}": "{value}"' in envelope_doc
    assert f"start with `{_envelope.RESERVED_CONTEXT_PREFIX}` are secretboot's own" in envelope_doc
    assert _sealed._OLD_FORM_HINT.removeprefix("; ") in envelope_doc
    # The key file refusal, as bootstrap() words it (the doc's path is an example).
    path = tmp_path / "myapp-dev.key"
    path.write_text("x\n")
    path.chmod(0o644)
    with pytest.raises(secretboot.ConfigurationError) as info:
        _envelope.read_key_file(str(path))
    message = str(info.value).replace(str(tmp_path), "/home/me/.config/secretboot")
    assert f"SECRETBOOT_LOCAL_KEY_FILE: {message}" in envelope_doc
