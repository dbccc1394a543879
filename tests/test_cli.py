"""Out-of-process tests of the ``secretboot`` command: the real console script against moto.

Every run is a fresh process, in the test's own folder, with a clean environment that points at
the session's moto server. After a run the canary plaintext (in several encodings) is looked for
in stdout, stderr and every file under the folder; ciphertext may appear only in the target
``.env`` file (and in the output of ``encrypt``, whose job is to print it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.fernet import Fernet, MultiFernet

import secretboot
from secretboot import _cli
from secretboot._cli import _base as _cli_base
from secretboot._reference import is_reference
from tests.awsproxy import AwsProxy
from tests.conftest import CREDENTIALS, REGION, moto_api
from tests.localaws import client

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("secretboot")
TIMEOUT = 60  # seconds any one command may take

# The plaintext that must never escape: distinctive, with a space, '#', '=' and non-ASCII text.
CANARY = "canary-Zq8w plain#text=ünï-7f3a"
CANARY_MARK = "canary-Zq8w"  # catches a truncated or re-escaped copy too
EXIT_TABLE = {0: "success", 1: "could not be resolved", 2: "usage", 126: "cannot", 127: "not found"}

# Launcher that caps the size of files the command may write (RLIMIT_FSIZE), then runs it:
# Python ignores SIGXFSZ, so an oversized write fails with EFBIG, as a full disk would.
FSIZE_LAUNCHER = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


# -- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    returncode: int
    out: bytes
    err: bytes

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")

    def __str__(self) -> str:
        return f"{shlex.join(self.args)} -> {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass(frozen=True)
class Key:
    id: str
    arn: str


class Aws:
    """Clients for the test itself (setting things up, checking what the CLI did)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.kms: Any = client(endpoint, "kms")
        self.ssm: Any = client(endpoint, "ssm")

    def create_key(self) -> Key:
        meta = self.kms.create_key(Description="secretboot CLI tests")["KeyMetadata"]
        return Key(meta["KeyId"], meta["Arn"])

    def encrypt(self, plaintext: str, key: Key, context: Mapping[str, str] | None = None) -> str:
        extra = {"EncryptionContext": dict(context)} if context else {}
        blob = self.kms.encrypt(KeyId=key.id, Plaintext=plaintext.encode(), **extra)["CiphertextBlob"]
        return "kms:" + base64.b64encode(blob).decode()

    def decrypt(self, value: str, context: Mapping[str, str] | None = None) -> tuple[str, str]:
        """(plaintext, the ARN of the key that decrypted it) for a ``kms:<base64>`` value."""
        assert value.startswith("kms:"), value[:8]
        extra = {"EncryptionContext": dict(context)} if context else {}
        answer = self.kms.decrypt(CiphertextBlob=base64.b64decode(value[4:], validate=True), **extra)
        return answer["Plaintext"].decode(), answer["KeyId"]

    def parameter(self, name: str) -> dict[str, Any]:
        return dict(self.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"])


class Cli:
    """Runs the console script in ``folder`` with a clean environment pointing at ``endpoint``."""

    def __init__(self, folder: Path, endpoint: str) -> None:
        self.folder = folder
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "SECRETBOOT_"))
            and not k.lower().endswith("_proxy")
            and not is_reference(v)
        }
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            PYTHONPATH=str(ROOT),
            **CREDENTIALS,
        )
        self.env = env

    def command(self, args: Sequence[str], *, module: bool = False, fsize: int | None = None) -> list[str]:
        assert SCRIPT.is_file(), f"the console script is not installed at {SCRIPT}"
        base = [sys.executable, "-m", "secretboot"] if module else [str(SCRIPT)]
        if fsize is not None:
            base = [sys.executable, "-c", FSIZE_LAUNCHER, str(fsize), *base]
        return [*base, *args]

    def environ(self, env: Mapping[str, str | None] | None) -> dict[str, str]:
        merged = dict(self.env)
        for name, value in (env or {}).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        return merged

    def run(
        self,
        *args: str,
        stdin: bytes | str = b"",
        env: Mapping[str, str | None] | None = None,
        module: bool = False,
        fsize: int | None = None,
    ) -> Run:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        done = subprocess.run(
            self.command(args, module=module, fsize=fsize),
            input=data,
            capture_output=True,
            cwd=self.folder,
            env=self.environ(env),
            timeout=TIMEOUT,
            check=False,
        )
        return Run(tuple(args), done.returncode, done.stdout, done.stderr)

    def popen(self, *args: str, env: Mapping[str, str | None] | None = None, **kwargs: Any) -> Any:
        return subprocess.Popen(
            self.command(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.folder,
            env=self.environ(env),
            **kwargs,
        )


def _needles(secret: str) -> list[bytes]:
    """``secret`` as bytes, hex and base64 (every alignment, standard and urlsafe)."""
    data = secret.encode()
    needles = [data, data.hex().encode()]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data)
        core = encoded[4 if offset else 0 : -4]  # the characters only ``data`` determines
        needles += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return needles


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``: dotfiles and temporary leftovers included."""
    found = []
    for parent, _dirs, names in os.walk(folder):
        found += [Path(parent, name) for name in names]
    return sorted(found)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_no_leak(run: Run | None, folder: Path, secret: str, *, allowed: Sequence[Path] = ()) -> None:
    """``secret`` is in no output and in no file under ``folder`` except ``allowed``."""
    needles = _needles(secret)
    if secret == CANARY:
        needles.append(CANARY_MARK.encode())
    if run is not None:
        for needle in needles:
            assert needle not in run.out, f"stdout leaks {needle!r}: {run}"
            assert needle not in run.err, f"stderr leaks {needle!r}: {run}"
    keep = {p.resolve() for p in allowed}
    for path in _files(folder):
        if path.resolve() in keep or path.is_symlink():
            continue
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path.relative_to(folder)} holds {needle!r}"


def assert_usage_error(run: Run, code: int = _cli.USAGE) -> None:
    assert run.returncode == code, str(run)
    assert run.stderr.startswith("secretboot: "), str(run)
    assert "Traceback" not in run.stderr, str(run)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _value(path: Path, name: str) -> str:
    """The raw value of ``name``'s (unquoted) line in ``path``."""
    found = re.findall(rf"^[ \t]*(?:export[ \t]+)?{name}=([^\r\n]*)", path.read_text(), re.M)
    assert len(found) == 1, f"{name} appears {len(found)} times in {path.name}"
    return str(found[0])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# A .env written the way people write them: CRLF and LF lines, comments, blank lines, quoting,
# `export`, indentation, and a last line without a newline. SECRET_KEY's line is SECRET_LINE.
LINES = [
    b"# app settings (edited by hand)\r\n",
    b"\r\n",
    b"DEBUG='1'  # quoted, with a comment\r\n",
    b'export SECRET_KEY="' + CANARY.encode() + b'"\r\n',
    b'API_URL="https://example.com/?a=1&b=2"\n',
    b"   export   INDENTED=x\n",
    b"\n",
    b"# the end\n",
    b"LAST=no-newline",
]
SECRET_LINE = 3
ORIGINAL = b"".join(LINES)


def _env_file(folder: Path, content: bytes = ORIGINAL, *, mode: int = 0o640, name: str = ".env") -> Path:
    path = folder / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _with_line(index: int, line: bytes, lines: Sequence[bytes] = LINES) -> bytes:
    return b"".join([*lines[:index], line, *lines[index + 1 :]])


class Snapshot:
    """A file's bytes, mode and inode, and the folder's listing, to prove nothing changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.exists = path.exists()
        self.data = path.read_bytes() if self.exists and path.is_file() else None
        self.mode = _mode(path) if self.exists else None
        self.inode = path.stat().st_ino if self.exists else None
        self.listing = _listing(path.parent)

    def assert_unchanged(self) -> None:
        assert self.path.exists() == self.exists
        if self.exists:
            if self.data is not None:
                assert self.path.read_bytes() == self.data, "the file's bytes changed"
            assert _mode(self.path) == self.mode, "the file's mode changed"
            assert self.path.stat().st_ino == self.inode, "the file was replaced"
        assert _listing(self.path.parent) == self.listing, "files appeared or vanished"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    """A freshly reset moto."""
    moto_api(moto_endpoint, "reset")
    return Aws(moto_endpoint)


@pytest.fixture
def key(aws: Aws) -> Key:
    return aws.create_key()


@pytest.fixture
def cli(aws: Aws, tmp_path: Path) -> Cli:
    return Cli(tmp_path, aws.endpoint)


# -- the console script, help, version, usage errors ------------------------------------------


def test_console_script_is_installed() -> None:
    assert SCRIPT.is_file(), f"pip install -e . should have created {SCRIPT}"
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.parametrize("command", [[], ["migrate"], ["encrypt"], ["check"], ["exec"], ["rotate"]])
def test_help_shows_the_exit_code_table(cli: Cli, command: list[str]) -> None:
    run = cli.run(*command, "--help")
    assert run.returncode == 0, str(run)
    assert run.stderr == ""
    assert run.stdout.startswith(f"usage: secretboot {' '.join(command)}".rstrip())
    table = _cli.COMMAND_EXIT_CODES[command[0]] if command else _cli.EXIT_CODES
    for line in table.splitlines():
        assert line in run.stdout.splitlines(), f"--help lacks {line!r}"
    if not command:  # the whole table; each command lists its own (tests/test_error_messages.py)
        for code, words in EXIT_TABLE.items():
            assert re.search(rf"^  {code} +.*{words}", run.stdout, re.M | re.I), f"exit code {code} missing"
    assert re.search(r"^  130 +interrupted", run.stdout, re.M)


def test_version(cli: Cli) -> None:
    run = cli.run("--version")
    assert run.returncode == 0, str(run)
    assert run.stdout == f"secretboot {secretboot.__version__}\n"


def test_no_command_prints_usage_on_stderr(cli: Cli) -> None:
    run = cli.run()
    assert run.returncode == 2, str(run)
    assert run.stdout == ""
    assert run.stderr.startswith("usage: secretboot")
    assert "exit codes:" in run.stderr


def test_python_dash_m_is_the_same_command(cli: Cli, aws: Aws, key: Key) -> None:
    for args in (["--help"], ["check", "--help"], ["--version"], [], ["--bogus"]):
        script, module = cli.run(*args), cli.run(*args, module=True)
        assert (module.returncode, module.stdout, module.stderr) == (
            script.returncode,
            script.stdout,
            script.stderr,
        ), args
    run = cli.run("encrypt", "--key-id", key.id, stdin=CANARY + "\n", module=True)
    assert (run.returncode, run.stderr) == (0, ""), str(run)
    assert aws.decrypt(run.stdout.strip()) == (CANARY, key.arn)
    assert_no_leak(run, cli.folder, CANARY)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "1 unrecognized argument(s), not repeated here"),
        (["bogus"], "invalid choice"),
        (["check", "--bogus"], "check: 1 unrecognized argument(s), not repeated here"),
        (["migrate", "SECRET_KEY"], "required: --key-id"),
        (["migrate", "--key-id", "k"], "required: NAME"),
        (["migrate", "SECRET_KEY", "--key-id", "k", "extra"], "migrate: 1 unrecognized argument(s)"),
        (["encrypt"], "required: --key-id"),
        (
            ["encrypt", "--key-id", "k", "a-positional-value"],
            "plaintext is read from stdin or a file, never from arguments",
        ),
        (["rotate", "--key-id", "k"], "required: NAME"),
        (["migrate", "SECRET_KEY", "--key-id", "k", "--context", "no-equals-sign"], "K=V"),
        (["migrate", "SECRET_KEY", "--key-id", "k", "--context", "=v"], "K=V"),
        (
            ["migrate", "SECRET_KEY", "--key-id", "k", "--context", "a=b", "--lambda-function", "f"],
            "exclusive",
        ),
        (["encrypt", "--key-id", "k", "--context", "a=b", "--lambda-function", "f"], "exclusive"),
        (
            [
                "rotate",
                "WRAPPED",
                "--key-id",
                "k",
                "--source-context",
                "a=b",
                "--source-lambda-function",
                "f",
            ],
            "exclusive",
        ),
        (["rotate", "WRAPPED", "--key-id", "k", "--context", "a"], "K=V"),
        (["exec"], "exec needs a command"),
        (["exec", "--"], "exec needs a command"),
    ],
)
def test_usage_errors_exit_2_and_touch_nothing(cli: Cli, args: list[str], message: str) -> None:
    env_file = _env_file(cli.folder, ORIGINAL + b"\nWRAPPED=kms:AAAA\n")
    before = Snapshot(env_file)
    run = cli.run(*args, stdin=CANARY)
    assert_usage_error(run)
    assert message in run.stderr, str(run)
    assert run.stdout == ""
    before.assert_unchanged()
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])


# A word that must never be repeated: what a user could type as a misplaced plaintext.
TOKEN = "argv-canary-Jt52"

# Bad command lines for every subcommand, with TOKEN as a stray, invalid or misplaced value.
BAD_ARGV = {
    "top-stray": [TOKEN],
    "top-option": ["--" + TOKEN],
    "top-flag-value": ["--version=" + TOKEN],
    "migrate-stray": ["migrate", "A", "--key-id", "k", TOKEN],
    "migrate-flag-value": ["migrate", "A", "--key-id", "k", "--from-env=" + TOKEN],
    "migrate-prefix-flag-value": ["migrate", "A", "--key-id", "k", "--o=" + TOKEN],
    "migrate-unknown-option": ["migrate", "A", "--key-id", "k", "--" + TOKEN],
    "migrate-context-no-pair": ["migrate", "A", "--key-id", "k", "--context", TOKEN],
    "migrate-context-reserved": ["migrate", "A", "--key-id", "k", "--context", "secretboot:purpose=" + TOKEN],
    "encrypt-stray": ["encrypt", "--key-id", "k", TOKEN],
    "encrypt-stray-no-key": ["encrypt", TOKEN],
    "encrypt-flag-value": ["encrypt", "--key-id", "k", "--overwrite=" + TOKEN],
    "encrypt-unknown-option-value": ["encrypt", "--key-id", "k", "--plaintext=" + TOKEN],
    "encrypt-context-no-pair": ["encrypt", "--key-id", "k", "--context=" + TOKEN],
    "check-stray": ["check", TOKEN],
    "check-flag-value": ["check", "--json=" + TOKEN],
    "check-unknown-option-value": ["check", "--" + TOKEN + "=" + TOKEN],
    "exec-unknown-option": ["exec", "--" + TOKEN, "--", "true"],
    "exec-no-command": ["exec", "--e=" + TOKEN],
    "seal-stray-option": ["seal", "A", "--key-id", "k", "--bogus=" + TOKEN],
    "seal-both-keys": ["seal", "A", "--key-id", "k", "--local-key-file", TOKEN],
    "seal-context-no-pair": ["seal", "A", "--key-id", "k", "--context", TOKEN],
    "reseal-stray": ["reseal", TOKEN],
    "reseal-unknown-option": ["reseal", "--source-context", TOKEN],
    "reseal-context-reserved": ["reseal", "--context", "secretboot:x=" + TOKEN],
    "keygen-stray": ["keygen", "new.key", TOKEN],
    "keygen-flag-value": ["keygen", "new.key", "--force=" + TOKEN],
    "rotate-stray": ["rotate", "K", "--key-id", "k", TOKEN],
    "rotate-ambiguous": ["rotate", "K", "--key-id", "k", "--s=" + TOKEN],
    "rotate-ambiguous-spaced": ["rotate", "K", "--key-id", "k", "--source=" + TOKEN],
    "rotate-source-no-pair": ["rotate", "K", "--key-id", "k", "--source-context", TOKEN],
    "rotate-source-reserved": ["rotate", "K", "--key-id", "k", "--source-context", "secretboot:p=" + TOKEN],
    "rotate-missing-value": ["rotate", "K", TOKEN, "--key-id"],
}


def test_bad_argv_table_covers_every_subcommand() -> None:
    assert {argv[0] for argv in BAD_ARGV.values()} >= {
        "migrate", "encrypt", "check", "exec", "seal", "reseal", "keygen", "rotate",
    }  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_ARGV))
def test_usage_errors_never_repeat_argument_values(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value on the command line may be a plaintext typed in the wrong place: an error counts
    or names the option, never repeats the value (argparse's own messages included)."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "SECRETBOOT_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    _env_file(tmp_path, b"A=plain-a\nK=kms:AAAA\n")
    before = Snapshot(tmp_path / ".env")
    code = _cli.main(BAD_ARGV[case])
    out, err = capsys.readouterr()
    assert code == _cli.USAGE, (code, out, err)
    assert err.startswith("secretboot: ") and "Traceback" not in err
    assert TOKEN not in out + err and "Jt52" not in out + err
    before.assert_unchanged()
    assert not (tmp_path / "new.key").exists()


# -- migrate ----------------------------------------------------------------------------------


def test_migrate_rewrites_one_line_and_keeps_every_other_byte(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder, mode=0o640)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id)
    assert run.returncode == 0, str(run)

    value = _value(env_file, "SECRET_KEY")
    expected = _with_line(SECRET_LINE, b"export SECRET_KEY=" + value.encode() + b"\r\n")
    assert env_file.read_bytes() == expected
    assert _mode(env_file) == 0o640
    assert aws.decrypt(value) == (CANARY, key.arn)

    blob_size = len(base64.b64decode(value[4:]))
    assert f"SECRET_KEY in .env: now kms (KMS ciphertext, {blob_size} bytes)" in run.stdout
    assert "Next:" in run.stdout
    assert run.stderr == ""
    assert_no_leak(run, cli.folder, CANARY)  # the target itself no longer holds it either
    assert_no_leak(run, cli.folder, value, allowed=[env_file])
    assert _listing(cli.folder) == [".env"]


def test_migrate_refuses_a_value_the_app_sees_expanded(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder, b"HOST=db.internal\nSECRET_KEY=pw@${HOST}\n")
    before = Snapshot(env_file)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id)
    assert_usage_error(run)
    assert "SECRET_KEY in .env uses ${VAR} expansion" in run.stderr
    before.assert_unchanged()


def test_migrate_again_changes_nothing(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder)
    assert cli.run("migrate", "SECRET_KEY", "--key-id", key.id).returncode == 0
    before = Snapshot(env_file)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id)
    assert run.returncode == 0, str(run)
    assert "already a kms reference; nothing changed" in run.stdout
    before.assert_unchanged()
    assert_no_leak(run, cli.folder, _value(env_file, "SECRET_KEY"), allowed=[env_file])


def test_migrate_for_a_lambda_function_decrypts_there(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder, f"SECRET_KEY='{CANARY}'\n".encode())
    plaintext = CANARY
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--lambda-function", "billing-fn")
    assert run.returncode == 0, str(run)
    assert "billing-fn" in run.stdout
    value = _value(env_file, "SECRET_KEY")
    assert aws.decrypt(value, {"LambdaFunctionName": "billing-fn"}) == (plaintext, key.arn)
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        aws.decrypt(value)  # the context is bound: without it, no plaintext

    # bootstrap() in that function (AWS_LAMBDA_FUNCTION_NAME set) decrypts it by default.
    in_lambda = {"AWS_LAMBDA_FUNCTION_NAME": "billing-fn"}
    check = cli.run("check", "--env-file", ".env", env=in_lambda)
    assert check.returncode == 0, str(check)
    assert re.search(r"^SECRET_KEY +kms +KMS blob, \d+ bytes, key arn:\S+ +resolved$", check.stdout, re.M)
    probe = (
        "import hashlib, secretboot; "
        "print(hashlib.sha256(secretboot.bootstrap()['SECRET_KEY'].encode()).hexdigest())"
    )
    booted = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cli.folder,
        env=cli.environ({**in_lambda, "SECRETBOOT_ENV_FILE": ".env"}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert booted.returncode == 0, booted.stderr
    assert booted.stdout.strip() == _sha(plaintext)
    # ... and in another function it does not.
    other = cli.run("check", "--env-file", ".env", env={"AWS_LAMBDA_FUNCTION_NAME": "other-fn"})
    assert other.returncode == 1, str(other)
    assert "InvalidCiphertext" in other.stdout
    for done in (run, check, other):
        assert_no_leak(done, cli.folder, plaintext)
        assert_no_leak(done, cli.folder, value, allowed=[env_file])


def test_migrate_with_context_pairs(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder)
    context = {"app": "billing", "stage": "prod"}
    run = cli.run(
        "migrate", "SECRET_KEY", "--key-id", key.id, "--context", "app=billing", "--context", "stage=prod"
    )
    assert run.returncode == 0, str(run)
    value = _value(env_file, "SECRET_KEY")
    assert aws.decrypt(value, context)[0] == CANARY
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        aws.decrypt(value, {"app": "billing"})
    assert "SECRETBOOT_KMS_CONTEXT=" in run.stdout
    # What the "Next:" step says to set makes bootstrap() decrypt it.
    setting = re.search(r"SECRETBOOT_KMS_CONTEXT='([^']*)'", run.stdout)
    assert setting is not None and json.loads(setting[1]) == context
    check = cli.run("check", "--env-file", ".env", env={"SECRETBOOT_KMS_CONTEXT": setting[1]})
    assert check.returncode == 0, str(check)
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, value, allowed=[env_file])


def test_migrate_from_env_creates_a_0600_file(cli: Cli, aws: Aws, key: Key) -> None:
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--from-env", env={"SECRET_KEY": CANARY})
    assert run.returncode == 0, str(run)
    env_file = cli.folder / ".env"
    assert _mode(env_file) == 0o600
    value = _value(env_file, "SECRET_KEY")
    assert env_file.read_bytes() == f"SECRET_KEY={value}\n".encode()
    assert aws.decrypt(value)[0] == CANARY
    assert "remove the plaintext SECRET_KEY" in run.stdout
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, value, allowed=[env_file])
    assert _listing(cli.folder) == [".env"]


def test_migrate_from_env_appends_to_an_existing_file(cli: Cli, aws: Aws, key: Key) -> None:
    original = b"# keep me\r\nA=1\r\nB='two words'"  # CRLF, and no newline at the end
    env_file = _env_file(cli.folder, original, mode=0o604)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--from-env", env={"SECRET_KEY": CANARY})
    assert run.returncode == 0, str(run)
    value = _value(env_file, "SECRET_KEY")
    assert env_file.read_bytes() == original + f"\r\nSECRET_KEY={value}\r\n".encode()
    assert _mode(env_file) == 0o604
    assert aws.decrypt(value)[0] == CANARY
    assert_no_leak(run, cli.folder, CANARY)


def test_migrate_with_env_file_option_writes_in_that_folder(cli: Cli, aws: Aws, key: Key) -> None:
    (cli.folder / "deploy").mkdir()
    env_file = _env_file(cli.folder / "deploy", name="prod.env", mode=0o600)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--env-file", "deploy/prod.env")
    assert run.returncode == 0, str(run)
    value = _value(env_file, "SECRET_KEY")
    assert env_file.read_bytes() == _with_line(SECRET_LINE, f"export SECRET_KEY={value}\r\n".encode())
    assert _mode(env_file) == 0o600
    assert "SECRET_KEY in deploy/prod.env: now kms" in run.stdout
    assert _listing(cli.folder) == ["deploy", "deploy/prod.env"]
    assert_no_leak(run, cli.folder, CANARY)


def test_migrate_to_ssm(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--to-ssm", "/app/prod/secret-key")
    assert run.returncode == 0, str(run)
    assert env_file.read_bytes() == _with_line(SECRET_LINE, b"export SECRET_KEY=ssm:/app/prod/secret-key\r\n")
    assert "SECRET_KEY in .env: now ssm:/app/prod/secret-key" in run.stdout
    parameter = aws.parameter("/app/prod/secret-key")
    assert (parameter["Type"], parameter["Value"]) == ("SecureString", CANARY)
    assert_no_leak(run, cli.folder, CANARY)
    check = cli.run("check", "--env-file", ".env")
    assert check.returncode == 0, str(check)
    assert re.search(r"^SECRET_KEY +ssm +/app/prod/secret-key +resolved$", check.stdout, re.M)
    assert_no_leak(check, cli.folder, CANARY)


def test_migrate_to_an_existing_parameter_needs_overwrite(cli: Cli, aws: Aws, key: Key) -> None:
    aws.ssm.put_parameter(Name="/app/secret", Value="the-old-value", Type="SecureString")
    env_file = _env_file(cli.folder)
    before = Snapshot(env_file)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--to-ssm", "/app/secret")
    assert_usage_error(run, code=1)
    assert "ParameterAlreadyExists" in run.stderr
    assert run.stdout == ""
    before.assert_unchanged()
    assert aws.parameter("/app/secret")["Value"] == "the-old-value"
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])

    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--to-ssm", "/app/secret", "--overwrite")
    assert run.returncode == 0, str(run)
    assert aws.parameter("/app/secret")["Value"] == CANARY
    assert env_file.read_bytes() == _with_line(SECRET_LINE, b"export SECRET_KEY=ssm:/app/secret\r\n")
    assert_no_leak(run, cli.folder, CANARY)


def test_migrate_rotate_wraps_a_fresh_key_and_keeps_the_old_as_fallback(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder, mode=0o640)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--lambda-function", "fn", "--rotate")
    assert run.returncode == 0, str(run)
    context = {"LambdaFunctionName": "fn"}
    value, fallback = _value(env_file, "SECRET_KEY"), _value(env_file, "SECRET_KEY_FALLBACK")
    # SECRET_KEY's line is rewritten in place; the fallback is appended, ending like line one.
    expected = _with_line(SECRET_LINE, f"export SECRET_KEY={value}\r\n".encode())
    assert env_file.read_bytes() == expected + f"\r\nSECRET_KEY_FALLBACK={fallback}\r\n".encode()
    assert _mode(env_file) == 0o640

    fresh, arn = aws.decrypt(value, context)
    assert arn == key.arn
    assert len(fresh) == 44 and len(base64.urlsafe_b64decode(fresh)) == 32
    assert fresh != CANARY
    assert aws.decrypt(fallback, context) == (CANARY, key.arn)
    token = Fernet(fresh).encrypt(b"signed")  # the fresh key is a Fernet key
    assert MultiFernet([Fernet(fresh), Fernet(Fernet.generate_key())]).decrypt(token) == b"signed"

    assert "SECRET_KEY_FALLBACK" in run.stdout and "MultiFernet" in run.stdout
    for secret in (CANARY, fresh):
        assert_no_leak(run, cli.folder, secret)
    for blob in (value, fallback):
        assert_no_leak(run, cli.folder, blob, allowed=[env_file])
    check = cli.run("check", "--env-file", ".env", env={"AWS_LAMBDA_FUNCTION_NAME": "fn"})
    assert check.returncode == 0, str(check)
    assert check.stdout.count(" resolved") == 2


def test_migrate_rotate_refuses_an_existing_fallback(cli: Cli, key: Key) -> None:
    env_file = _env_file(cli.folder, ORIGINAL + b"\nSECRET_KEY_FALLBACK=older\n")
    before = Snapshot(env_file)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--rotate")
    assert_usage_error(run)
    assert "SECRET_KEY_FALLBACK" in run.stderr
    before.assert_unchanged()
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])


def test_migrate_rotate_with_to_ssm_is_refused(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder)
    before = Snapshot(env_file)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--rotate", "--to-ssm", "/app/secret")
    assert_usage_error(run)
    before.assert_unchanged()
    assert aws.ssm.describe_parameters()["Parameters"] == []


def _sized(filler: str, size: int) -> str:
    """The canary padded with ``filler`` to exactly ``size`` bytes of UTF-8."""
    count, rest = divmod(size - len(CANARY.encode()), len(filler.encode()))
    assert rest == 0
    return CANARY + filler * count


@pytest.mark.parametrize(
    ("filler", "size", "to_ssm", "code"),
    [
        ("k", 4096, False, 0),  # KMS's limit, exactly
        ("k", 4097, False, 2),
        ("é", 4097, False, 2),  # about 2060 characters, but 4097 bytes: the limit is in bytes
        ("k", 5000, True, 0),  # SSM takes it
    ],
    ids=["4096-bytes", "4097-bytes", "4097-utf8-bytes", "5000-bytes-to-ssm"],
)
def test_migrate_size_limit(
    cli: Cli, aws: Aws, key: Key, filler: str, size: int, to_ssm: bool, code: int
) -> None:
    secret = _sized(filler, size)
    env_file = _env_file(cli.folder, f"A=1\nSECRET_KEY='{secret}'\nB=2\n".encode())
    before = Snapshot(env_file)
    extra = ["--to-ssm", "/big"] if to_ssm else []
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, *extra)
    assert run.returncode == code, str(run)
    if code == 2:
        before.assert_unchanged()
        assert "--to-ssm" in run.stderr and "envelope" in run.stderr
        assert f"{size} bytes" in run.stderr
        assert_no_leak(run, cli.folder, secret, allowed=[env_file])
        return
    value = _value(env_file, "SECRET_KEY")
    if to_ssm:
        assert value == "ssm:/big"
        assert aws.parameter("/big")["Value"] == secret
    else:
        assert aws.decrypt(value)[0] == secret
    assert env_file.read_bytes() == f"A=1\nSECRET_KEY={value}\nB=2\n".encode()
    assert_no_leak(run, cli.folder, secret)


@pytest.mark.parametrize(
    "case",
    [
        "unknown-key",
        "unreachable-endpoint",
        "missing-variable",
        "duplicate-variable",
        "empty-value",
        "malformed-reference",
        "no-env-file",
        "missing-env-file-option",
        "env-file-is-a-folder",
        "not-utf8",
        "bad-ssm-name",
        "from-env-unset",
        "write-fails",
    ],
)
def test_failed_migrate_leaves_the_file_byte_identical(cli: Cli, aws: Aws, key: Key, case: str) -> None:
    args = ["migrate", "SECRET_KEY", "--key-id", key.id]
    env: dict[str, str | None] = {}
    code = 2
    fsize = None
    content = ORIGINAL
    if case == "unknown-key":
        args[3], code = "0d9e4c1e-1111-4a2b-9c3d-000000000000", 1
    elif case == "unreachable-endpoint":
        env["AWS_ENDPOINT_URL"], code = f"http://127.0.0.1:{_closed_port()}", 1
    elif case == "missing-variable":
        args[1] = "NOT_THERE"
    elif case == "duplicate-variable":
        content = ORIGINAL + b"\nSECRET_KEY=another\n"
    elif case == "empty-value":
        content = _with_line(SECRET_LINE, b"SECRET_KEY=\r\n") + f"\nOTHER='{CANARY}'".encode()
    elif case == "malformed-reference":
        content = _with_line(SECRET_LINE, b"SECRET_KEY=kms:not*base64\r\n") + b"\n#" + CANARY.encode()
    elif case == "missing-env-file-option":
        args += ["--env-file", "nowhere.env"]
    elif case == "env-file-is-a-folder":
        (cli.folder / "folder.env").mkdir()
        args += ["--env-file", "folder.env"]
    elif case == "not-utf8":
        content = ORIGINAL + b"\nBAD=\xff\xfe\n"
    elif case == "bad-ssm-name":
        args += ["--to-ssm", "no spaces/allowed"]
    elif case == "from-env-unset":
        args.append("--from-env")
        env["SECRET_KEY"] = None
    elif case == "write-fails":
        # The new text is longer than the old (the ciphertext is longer than the plaintext):
        # a cap at the old size lets the read succeed and makes the write fail.
        code, fsize = 1, len(ORIGINAL)
    env_file = cli.folder / ".env"
    if case not in ("no-env-file", "from-env-unset"):
        _env_file(cli.folder, content)
    before = Snapshot(env_file)
    run = cli.run(*args, env=env, fsize=fsize)
    assert_usage_error(run, code)
    assert run.stdout == ""
    before.assert_unchanged()
    assert not env_file.exists() or env_file.read_bytes() == content
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])
    if code == 1 and case != "write-fails":
        assert "AWS request failed" in run.stderr
    if case == "write-fails":
        assert ".env: cannot be written" in run.stderr
    assert aws.ssm.describe_parameters()["Parameters"] == []


def test_migrate_from_env_refuses_a_duplicate_variable_in_the_file(cli: Cli, key: Key) -> None:
    content = f"SECRET_KEY=first\nA=1\nSECRET_KEY='{CANARY}'\n".encode()
    env_file = _env_file(cli.folder, content)
    before = Snapshot(env_file)
    run = cli.run("migrate", "SECRET_KEY", "--key-id", key.id, "--from-env", env={"SECRET_KEY": "new"})
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])
    assert_usage_error(run)
    assert "SECRET_KEY is set 2 times" in run.stderr
    before.assert_unchanged()


@pytest.mark.parametrize(
    ("sig", "stage", "code"),
    [(signal.SIGKILL, "TrentService.Decrypt", -signal.SIGKILL), (signal.SIGINT, "TrentService.Encrypt", 130)],
    ids=["SIGKILL-while-verifying", "SIGINT-while-encrypting"],
)
def test_interrupted_migrate_leaves_the_file_intact(
    cli: Cli, aws: Aws, key: Key, sig: signal.Signals, stage: str, code: int
) -> None:
    env_file = _env_file(cli.folder)
    before = Snapshot(env_file)
    with AwsProxy(aws.endpoint, latency=3.0) as proxy:
        process = cli.popen("migrate", "SECRET_KEY", "--key-id", key.id, env={"AWS_ENDPOINT_URL": proxy.url})
        try:
            _wait_for(lambda: proxy.counts().get(stage, 0) > 0, 30, f"{stage} to reach the proxy")
            time.sleep(0.3)  # the request is in flight: the command waits for the answer
            assert process.poll() is None
            process.send_signal(sig)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
    run = Run(("migrate",), process.returncode, out, err)
    assert run.returncode == code, str(run)
    if sig == signal.SIGINT:
        assert run.stderr == "secretboot: interrupted\n"
    assert run.stdout == ""
    before.assert_unchanged()
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])


# -- encrypt ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "plaintext"),
    [
        (CANARY + "\n", CANARY),
        (CANARY, CANARY),
        (CANARY + "\r\n", CANARY),
        (CANARY + "\n\n", CANARY + "\n"),  # only one newline is dropped
    ],
    ids=["newline", "none", "crlf", "two-newlines"],
)
def test_encrypt_prints_one_kms_value(cli: Cli, aws: Aws, key: Key, stdin: str, plaintext: str) -> None:
    run = cli.run("encrypt", "--key-id", key.id, stdin=stdin)
    assert run.returncode == 0, str(run)
    assert run.stderr == ""
    assert re.fullmatch(r"kms:[A-Za-z0-9+/]+={0,2}\n", run.stdout), run.stdout
    assert aws.decrypt(run.stdout.strip()) == (plaintext, key.arn)
    assert_no_leak(run, cli.folder, plaintext)
    assert _listing(cli.folder) == []


def test_encrypt_binds_the_context(cli: Cli, aws: Aws, key: Key) -> None:
    run = cli.run("encrypt", "--key-id", key.id, "--context", "app=billing", stdin=CANARY)
    assert run.returncode == 0, str(run)
    assert aws.decrypt(run.stdout.strip(), {"app": "billing"})[0] == CANARY
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        aws.decrypt(run.stdout.strip())
    run = cli.run("encrypt", "--key-id", key.id, "--lambda-function", "my-fn", stdin=CANARY)
    assert run.returncode == 0, str(run)
    assert aws.decrypt(run.stdout.strip(), {"LambdaFunctionName": "my-fn"})[0] == CANARY
    assert_no_leak(run, cli.folder, CANARY)


def test_encrypt_to_ssm(cli: Cli, aws: Aws, key: Key) -> None:
    run = cli.run("encrypt", "--key-id", key.id, "--ssm", "/app/token", stdin=CANARY + "\n")
    assert (run.returncode, run.stdout, run.stderr) == (0, "ssm:/app/token\n", ""), str(run)
    parameter = aws.parameter("/app/token")
    assert (parameter["Type"], parameter["Value"]) == ("SecureString", CANARY)
    again = cli.run("encrypt", "--key-id", key.id, "--ssm", "/app/token", stdin="second")
    assert_usage_error(again, code=1)
    assert aws.parameter("/app/token")["Value"] == CANARY
    replaced = cli.run("encrypt", "--key-id", key.id, "--ssm", "/app/token", "--overwrite", stdin="second")
    assert (replaced.returncode, replaced.stdout) == (0, "ssm:/app/token\n"), str(replaced)
    assert aws.parameter("/app/token")["Value"] == "second"
    for done in (run, again, replaced):
        assert_no_leak(done, cli.folder, CANARY)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("empty", 2),
        ("just-a-newline", 2),
        ("too-large", 2),
        ("not-utf8", 2),
        ("unknown-key", 1),
        ("unreachable-endpoint", 1),
        ("bad-ssm-name", 2),
    ],
)
def test_encrypt_failures(cli: Cli, aws: Aws, key: Key, case: str, code: int) -> None:
    stdin = {"empty": b"", "just-a-newline": b"\n", "not-utf8": CANARY.encode() + b"\xff"}.get(
        case, CANARY.encode()
    )
    if case == "too-large":
        stdin = CANARY.encode() + b"k" * 4096
    args = ["encrypt", "--key-id", key.id]
    env: dict[str, str] = {}
    if case == "unknown-key":
        args[2] = "0d9e4c1e-1111-4a2b-9c3d-000000000000"
    elif case == "unreachable-endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    elif case == "bad-ssm-name":
        args += ["--ssm", "bad name"]
    run = cli.run(*args, stdin=stdin, env=env)
    assert_usage_error(run, code)
    assert run.stdout == ""
    if case == "too-large":
        assert f"the input is {len(stdin)} bytes" in run.stderr and "envelope" in run.stderr
    assert_no_leak(run, cli.folder, CANARY)
    assert _listing(cli.folder) == []


def test_encrypt_too_large_points_to_its_own_ssm_option(cli: Cli, key: Key) -> None:
    run = cli.run("encrypt", "--key-id", key.id, stdin=b"k" * 4097)
    assert_usage_error(run)
    assert "--ssm PARAM" in run.stderr and "--to-ssm" not in run.stderr, str(run)
    follow = cli.run("encrypt", "--key-id", key.id, "--ssm", "/p", stdin=b"k" * 4097)
    assert (follow.returncode, follow.stdout) == (0, "ssm:/p\n"), str(follow)  # the suggestion works


def test_encrypt_has_no_option_that_takes_the_plaintext(cli: Cli) -> None:
    run = cli.run("encrypt", "--help")
    assert run.returncode == 0, str(run)
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", run.stdout.split("exit codes:")[0]))
    assert options == {"-h", "--help", "--key-id", "--context", "--lambda-function", "--ssm", "--overwrite"}
    usage = run.stdout.split("\n\n")[0]
    assert "PLAINTEXT" not in usage.upper() and "VALUE" not in usage.upper()


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {marker!r}; got {data!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"closed before {marker!r}; got {data!r}"
            data += chunk
    return data


def _drain(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


def test_encrypt_on_a_terminal_reads_without_echo(cli: Cli, aws: Aws, key: Key) -> None:
    master, slave = os.openpty()
    try:
        # A new session has no controlling terminal, so getpass reads the terminal on stdin.
        process = cli.popen("encrypt", "--key-id", key.id, stdin=slave, start_new_session=True)
        os.close(slave)
        slave = -1
        try:
            prompt = _read_until(process.stderr.fileno(), b": ", timeout=TIMEOUT)
            os.write(master, CANARY.encode() + b"\n")
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=TIMEOUT)
        echoed = _drain(master)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    run = Run(("encrypt",), process.returncode, out, prompt + err)
    assert run.returncode == 0, str(run)
    assert b"not echoed" in prompt
    assert CANARY.encode() not in echoed, "the terminal echoed the plaintext"
    assert aws.decrypt(run.stdout.strip())[0] == CANARY
    assert_no_leak(run, cli.folder, CANARY)


# -- check ------------------------------------------------------------------------------------


def _references(aws: Aws, key: Key) -> bytes:
    aws.ssm.put_parameter(Name="/app/db-password", Value=CANARY, Type="SecureString")
    wrapped = aws.encrypt(CANARY, key)
    return (
        f"# references\nSECRET_KEY={wrapped}\nDB_PASSWORD=ssm:/app/db-password\n"
        "PLAIN=not-a-reference\nexport TOKEN={{resolve:ssm-secure:/app/db-password}}\n"
    ).encode()


def test_check_table(cli: Cli, aws: Aws, key: Key) -> None:
    content = _references(aws, key)
    env_file = _env_file(cli.folder, content)
    run = cli.run("check", "--env-file", ".env")
    assert run.returncode == 0, str(run)
    lines = run.stdout.splitlines()
    assert re.split(r"\s+", lines[0]) == ["NAME", "KIND", "TARGET", "STATUS"]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
    blob = base64.b64decode(_value(env_file, "SECRET_KEY")[4:])
    assert rows == [
        ["DB_PASSWORD", "ssm", "/app/db-password", "resolved"],
        ["SECRET_KEY", "kms", f"KMS blob, {len(blob)} bytes, key {key.arn}", "resolved"],
        ["TOKEN", "ssm", "/app/db-password", "resolved"],
    ]
    assert run.stderr == "secretboot check: read the environment and .env\n"
    assert env_file.read_bytes() == content
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, _value(env_file, "SECRET_KEY"), allowed=[env_file])


def test_check_json_reports_each_failure_by_reason(cli: Cli, aws: Aws, key: Key) -> None:
    wrong_context = aws.encrypt(CANARY, key, {"app": "other"})
    content = (
        _references(aws, key)
        + (f"MISSING=ssm:/app/missing\nWRONG_CONTEXT={wrong_context}\nMALFORMED=kms:not*base64\n").encode()
    )
    _env_file(cli.folder, content)
    run = cli.run("check", "--env-file", ".env", "--json")
    assert run.returncode == 1, str(run)
    report = json.loads(run.stdout)
    assert [set(row) for row in report] == [{"name", "kind", "target", "status", "detail"}] * len(report)
    statuses = {row["name"]: row["status"] for row in report}
    assert statuses == {
        "DB_PASSWORD": "resolved",
        "MALFORMED": "Malformed",
        "MISSING": "ParameterNotFound",
        "SECRET_KEY": "resolved",
        "TOKEN": "resolved",
        "WRONG_CONTEXT": "InvalidCiphertext",
    }
    assert [row["name"] for row in report] == sorted(statuses)
    by_name = {row["name"]: row for row in report}
    assert by_name["MISSING"]["target"] == "/app/missing"
    assert by_name["SECRET_KEY"]["target"].endswith(f", key {key.arn}")
    assert_no_leak(run, cli.folder, CANARY, allowed=[cli.folder / ".env"])
    assert_no_leak(run, cli.folder, wrong_context, allowed=[cli.folder / ".env"])
    assert "not*base64" not in run.stdout + run.stderr


def test_check_reads_the_process_environment(cli: Cli, aws: Aws, key: Key) -> None:
    wrapped = aws.encrypt(CANARY, key)
    run = cli.run("check", env={"SECRET_KEY": wrapped, "MISSING": "ssm:/nope"})
    assert run.returncode == 1, str(run)
    assert re.search(r"^MISSING +ssm +/nope +ParameterNotFound", run.stdout, re.M)
    assert re.search(r"^SECRET_KEY +kms +KMS blob, \d+ bytes, key arn:\S+ +resolved$", run.stdout, re.M)
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, wrapped)


def test_check_offline_asks_aws_nothing(cli: Cli, aws: Aws, key: Key) -> None:
    content = _references(aws, key)
    _env_file(cli.folder, content)
    closed = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}"}
    online = cli.run("check", "--env-file", ".env", env=closed)
    assert online.returncode == 1, str(online)  # proves the endpoint is unreachable
    run = cli.run("check", "--env-file", ".env", "--offline", "--json", env=closed)
    assert run.returncode == 0, str(run)
    report = json.loads(run.stdout)
    assert {row["name"]: row["status"] for row in report} == dict.fromkeys(
        ("DB_PASSWORD", "SECRET_KEY", "TOKEN"), "parsed"
    )
    _env_file(cli.folder, content + b"MALFORMED=ssm:bad name\n")
    run = cli.run("check", "--env-file", ".env", "--offline", env=closed)
    assert run.returncode == 1, str(run)
    assert re.search(r"^MALFORMED +ssm +\S+ +Malformed", run.stdout, re.M)
    assert re.search(r"^SECRET_KEY +kms +KMS blob, \d+ bytes +parsed$", run.stdout, re.M)
    for done in (online, run):
        assert_no_leak(done, cli.folder, CANARY)


def test_check_does_not_print_a_plaintext_listed_as_kms(cli: Cli) -> None:
    # SECRETBOOT_KMS_VARS names SECRET_KEY, but it has not been migrated yet: still plaintext.
    env_file = _env_file(
        cli.folder, f"SECRETBOOT_KMS_VARS=SECRET_KEY,API_KEY\nSECRET_KEY='{CANARY}'\n".encode()
    )
    hexed = CANARY.encode().hex()[:48]  # valid base64 too, so it goes as far as Decrypt
    for env in ({}, {"API_KEY": hexed}):
        for extra in ([], ["--offline"], ["--json"]):
            run = cli.run("check", "--env-file", ".env", *extra, env=env)
            assert run.returncode == 1, str(run)
            assert "SECRET_KEY" in run.stdout and "Malformed" in run.stdout
            assert "API_KEY" in run.stdout
            assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])
            assert hexed not in run.stdout + run.stderr


def test_check_without_references(cli: Cli) -> None:
    _env_file(cli.folder, b"A=1\nB=two\n")
    run = cli.run("check", "--env-file", ".env")
    assert (run.returncode, run.stdout) == (0, "no references found in the environment and .env\n"), str(run)
    run = cli.run("check", "--env-file", ".env", "--json")
    assert (run.returncode, json.loads(run.stdout)) == (0, [])
    assert run.stderr == "secretboot check: read the environment and .env\n"


def test_check_reads_dot_env_when_present_as_migrate_and_seal_do(cli: Cli) -> None:
    """No false all-clear: the references of a project that keeps them in .env are checked."""
    _env_file(cli.folder, b"API_TOKEN=ssm:/app/api-token\nDEBUG=1\n")
    run = cli.run("check", "--offline")
    assert run.returncode == 0, str(run)
    assert re.search(r"^API_TOKEN +ssm +/app/api-token +parsed$", run.stdout, re.M)
    assert run.stderr == "secretboot check: read the environment and .env\n"

    run = cli.run("check", "--offline", "--no-env-file")
    assert (run.returncode, run.stdout) == (0, "no references found in the environment\n"), str(run)
    assert run.stderr == "secretboot check: read the environment\n"

    # SECRETBOOT_ENV_FILE names the file bootstrap() reads: check reads that one, not ./.env.
    (cli.folder / "prod.env").write_bytes(b"DB_PASSWORD=ssm:/app/db\n")
    run = cli.run("check", "--offline", env={"SECRETBOOT_ENV_FILE": "prod.env"})
    assert re.search(r"^DB_PASSWORD +ssm", run.stdout, re.M) and "API_TOKEN" not in run.stdout, str(run)
    assert run.stderr == "secretboot check: read the environment and prod.env (from SECRETBOOT_ENV_FILE)\n"

    run = cli.run("check", "--env-file", ".env", "--no-env-file")
    assert_usage_error(run)


def test_check_missing_env_file_is_a_usage_error(cli: Cli) -> None:
    run = cli.run("check", "--env-file", "nowhere.env")
    assert_usage_error(run)
    assert "nowhere.env" in run.stderr


# -- exec -------------------------------------------------------------------------------------

# The command prints digests of what it got, never the values.
PROBE = (
    "import hashlib, json, os; e = os.environ; "
    "print(json.dumps({n: hashlib.sha256(e[n].encode()).hexdigest() for n in ('SECRET_KEY', 'DB_PASSWORD')}"
    " | {'PLAIN': e.get('PLAIN'), 'references': sorted(k for k, v in e.items()"
    " if v.startswith(('kms:', 'ssm:', '{{resolve:')))}))"
)


def test_exec_runs_the_command_with_resolved_values(cli: Cli, aws: Aws, key: Key) -> None:
    content = _references(aws, key)
    env_file = _env_file(cli.folder, content)
    run = cli.run("exec", "--env-file", ".env", "--", sys.executable, "-c", PROBE)
    assert run.returncode == 0, str(run)
    assert run.stderr == ""
    assert json.loads(run.stdout) == {
        "SECRET_KEY": _sha(CANARY),
        "DB_PASSWORD": _sha(CANARY),
        "PLAIN": "not-a-reference",
        "references": [],
    }
    assert env_file.read_bytes() == content
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, _value(env_file, "SECRET_KEY"), allowed=[env_file])


def test_exec_reads_the_environment_and_the_lambda_context(cli: Cli, aws: Aws, key: Key) -> None:
    wrapped = aws.encrypt(CANARY, key, {"LambdaFunctionName": "fn"})
    env = {"SECRET_KEY": wrapped, "DB_PASSWORD": wrapped, "PLAIN": "p", "AWS_LAMBDA_FUNCTION_NAME": "fn"}
    run = cli.run("exec", "--", sys.executable, "-c", PROBE, env=env)
    assert run.returncode == 0, str(run)
    assert json.loads(run.stdout) == {
        "SECRET_KEY": _sha(CANARY),
        "DB_PASSWORD": _sha(CANARY),
        "PLAIN": "p",
        "references": [],
    }


ARGV = ["two words", '"double"', "'single'", "--help", "-x", "--", "", "ünï", "$HOME", "*", "a=b"]


@pytest.mark.parametrize("dashes", [True, False])
def test_exec_passes_argv_through_exactly(cli: Cli, dashes: bool) -> None:
    echo = "import json, sys; print(json.dumps(sys.argv[1:]))"
    separator = ["--"] if dashes else []
    run = cli.run("exec", *separator, sys.executable, "-c", echo, *ARGV)
    assert run.returncode == 0, str(run)
    assert json.loads(run.stdout) == ARGV


def test_exec_exit_status_is_the_commands(cli: Cli) -> None:
    run = cli.run("exec", "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert (run.returncode, run.stdout, run.stderr) == (7, "", ""), str(run)


def test_exec_replaces_the_process_so_signals_are_the_commands(cli: Cli) -> None:
    code = "import os, signal; print(os.getpid(), flush=True); os.kill(os.getpid(), signal.SIGTERM)"
    process = cli.popen("exec", "--", sys.executable, "-c", code)
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)
    assert process.returncode == -signal.SIGTERM, err
    assert int(out) == process.pid  # the same process: secretboot exec'd, it did not fork


def test_exec_does_not_run_the_command_when_a_reference_fails(cli: Cli, aws: Aws, key: Key) -> None:
    content = _references(aws, key) + b"MISSING=ssm:/app/missing\n"
    _env_file(cli.folder, content)
    marker = cli.folder / "ran"
    touch = f"open({str(marker)!r}, 'w').close()"
    run = cli.run("exec", "--env-file", ".env", "--", sys.executable, "-c", touch)
    assert run.returncode == 1, str(run)
    failure = (
        r"^secretboot: .*could not resolve 1 variable:\n  MISSING \(ssm /app/missing\): ParameterNotFound"
    )
    assert re.search(failure, run.stderr, re.M), str(run)
    assert "Traceback" not in run.stderr
    assert not marker.exists(), "the command ran"
    assert "MISSING" in run.stderr and "ParameterNotFound" in run.stderr
    assert "SECRET_KEY" not in run.stderr  # only the failures are listed
    assert run.stdout == ""
    assert_no_leak(run, cli.folder, CANARY, allowed=[cli.folder / ".env"])
    assert_no_leak(run, cli.folder, _value(cli.folder / ".env", "SECRET_KEY"), allowed=[cli.folder / ".env"])


def test_exec_failure_prints_only_the_clis_error(cli: Cli) -> None:
    _env_file(cli.folder, b"MISSING=ssm:/app/missing\n")
    run = cli.run("exec", "--env-file", ".env", "--", "true")
    assert run.returncode == 1, str(run)
    # The error, then the failure list under it: nothing else.
    lines = run.stderr.splitlines()
    assert lines[0].startswith("secretboot: "), str(run)
    assert [line[:10] for line in lines[1:]] == ["  MISSING "], str(run)


def test_exec_with_a_missing_env_file_runs_nothing(cli: Cli) -> None:
    marker = cli.folder / "ran"
    run = cli.run("exec", "--env-file", "nowhere.env", "--", "touch", str(marker))
    assert_usage_error(run)
    assert not marker.exists()


def test_exec_unknown_and_unexecutable_commands(cli: Cli) -> None:
    run = cli.run("exec", "--", "secretboot-no-such-command-x9")
    assert_usage_error(run, code=127)
    assert "secretboot-no-such-command-x9: command not found" in run.stderr
    script = cli.folder / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    run = cli.run("exec", "--", "./not-executable.sh")
    assert_usage_error(run, code=126)
    run = cli.run("exec", "--", str(cli.folder))  # a folder
    assert_usage_error(run, code=126)


# -- rotate -----------------------------------------------------------------------------------


def _rotation_file(folder: Path, wrapped: str) -> tuple[Path, list[bytes]]:
    lines = [*LINES[:SECRET_LINE], f"export SECRET_KEY={wrapped}\r\n".encode(), *LINES[SECRET_LINE + 1 :]]
    return _env_file(folder, b"".join(lines), mode=0o640), lines


def test_rotate_rewraps_under_the_new_key(cli: Cli, aws: Aws, key: Key) -> None:
    context = {"LambdaFunctionName": "fn"}
    old = aws.encrypt(CANARY, key, context)
    env_file, lines = _rotation_file(cli.folder, old)
    new_key = aws.create_key()
    run = cli.run("rotate", "SECRET_KEY", "--key-id", new_key.id, "--lambda-function", "fn")
    assert run.returncode == 0, str(run)
    value = _value(env_file, "SECRET_KEY")
    assert value != old
    assert env_file.read_bytes() == _with_line(SECRET_LINE, f"export SECRET_KEY={value}\r\n".encode(), lines)
    assert _mode(env_file) == 0o640
    assert aws.decrypt(value, context) == (CANARY, new_key.arn)
    assert new_key.arn in run.stdout
    assert_no_leak(run, cli.folder, CANARY)
    for blob in (old, value):
        assert_no_leak(run, cli.folder, blob, allowed=[env_file])
    assert _listing(cli.folder) == [".env"]


def test_rotate_changes_the_context(cli: Cli, aws: Aws, key: Key) -> None:
    old = aws.encrypt(CANARY, key, {"LambdaFunctionName": "old-fn"})
    env_file, _ = _rotation_file(cli.folder, old)
    run = cli.run(
        "rotate", "SECRET_KEY", "--key-id", key.id, "--source-lambda-function", "old-fn", "--context", "app=x"
    )
    assert run.returncode == 0, str(run)
    value = _value(env_file, "SECRET_KEY")
    assert aws.decrypt(value, {"app": "x"}) == (CANARY, key.arn)
    # ... and from a context to none.
    run = cli.run("rotate", "SECRET_KEY", "--key-id", key.id, "--source-context", "app=x")
    assert run.returncode == 0, str(run)
    assert aws.decrypt(_value(env_file, "SECRET_KEY")) == (CANARY, key.arn)


def test_rotate_from_no_context_to_a_lambda_context(cli: Cli, aws: Aws, key: Key) -> None:
    old = aws.encrypt(CANARY, key)  # encrypted with the CLI or before ~2021: no context
    env_file, _ = _rotation_file(cli.folder, old)
    run = cli.run("rotate", "SECRET_KEY", "--key-id", key.id, "--lambda-function", "fn")
    assert run.returncode == 0, str(run)
    assert aws.decrypt(_value(env_file, "SECRET_KEY"), {"LambdaFunctionName": "fn"})[0] == CANARY


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("plain-value", 2),
        ("ssm-value", 2),
        ("missing-variable", 2),
        ("no-env-file", 2),
        ("wrong-source-context", 1),
        ("unknown-new-key", 1),
        ("unreachable-endpoint", 1),
    ],
)
def test_failed_rotate_leaves_the_file_byte_identical(
    cli: Cli, aws: Aws, key: Key, case: str, code: int
) -> None:
    wrapped = aws.encrypt(CANARY, key, {"app": "a"})
    value = {"plain-value": "plain-value", "ssm-value": "ssm:/app/secret"}.get(case, wrapped)
    env_file = cli.folder / ".env"
    if case != "no-env-file":
        _rotation_file(cli.folder, value)
    args = ["rotate", "SECRET_KEY", "--key-id", key.id, "--context", "app=a"]
    env: dict[str, str] = {}
    if case == "missing-variable":
        args[1] = "NOT_THERE"
    elif case == "wrong-source-context":
        args += ["--source-context", "app=b"]
    elif case == "unknown-new-key":
        args[3] = "0d9e4c1e-1111-4a2b-9c3d-000000000000"
    elif case == "unreachable-endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    before = Snapshot(env_file)
    run = cli.run(*args, env=env)
    assert_usage_error(run, code)
    assert run.stdout == ""
    before.assert_unchanged()
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, wrapped, allowed=[env_file])


# -- the README's command-line section --------------------------------------------------------


def _readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Command line\n" in readme, "README.md has no '## Command line' section"
    return readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", _readme_section(), re.M | re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("secretboot ")]


PLACEHOLDERS = {"$KEY": "alias/app", "$NEW_KEY": "alias/app-2", "$FN": "my-fn", "$PARAM": "/app/secret"}


def _argv(line: str) -> list[str]:
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    line = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "placeholder", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:  # stop at a pipe, a redirection or another command
        if word and set(word) <= set("();<>|&"):
            break
        words.append(word)
    return words[1:]


def test_readme_command_line_examples_parse() -> None:
    commands = _readme_commands()
    assert commands, "no `secretboot ...` lines in the README's ```sh blocks"
    used = set()
    for line in commands:
        try:
            args = _cli.build_parser().parse_args(_argv(line))
            if hasattr(args, "context"):
                _cli_base.parse_context(args.context, args.lambda_function)
        except (_cli.UsageError, SystemExit) as exc:
            pytest.fail(f"README example does not parse: {line!r}: {exc}")
        assert args.command is not None, line
        used.add(args.command)
    assert used == {"migrate", "encrypt", "check", "exec", "rotate", "seal", "reseal", "keygen"}, (
        "every command has an example"
    )


def test_readme_exit_code_table_matches_the_cli() -> None:
    documented = {int(code) for code in re.findall(r"^\|\s*(\d+)\s*\|", _readme_section(), re.M)}
    in_code = {int(code) for code in re.findall(r"^\s+(\d+)\s", _cli.EXIT_CODES, re.M)}
    assert in_code == {0, 1, 2, 126, 127, 130}
    assert documented == in_code


def test_leak_scanner_finds_every_encoding(tmp_path: Path) -> None:
    # The scanner itself must be able to fail, or every test above proves nothing.
    for needle in _needles(CANARY):
        (tmp_path / ".leftover.tmp").write_bytes(b"x" + needle + b"y")
        with pytest.raises(AssertionError):
            assert_no_leak(None, tmp_path, CANARY)
    embedded = base64.b64encode(b"ab" + CANARY.encode() + b"cd")
    (tmp_path / ".leftover.tmp").write_bytes(embedded)
    with pytest.raises(AssertionError):
        assert_no_leak(None, tmp_path, CANARY)
    (tmp_path / ".leftover.tmp").unlink()
    run = Run((), 0, b"", CANARY_MARK.encode())
    with pytest.raises(AssertionError):
        assert_no_leak(run, tmp_path, CANARY)
