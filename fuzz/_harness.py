"""The hostile-input contract, shared by the fuzz targets and ``tests/test_hostile.py``.

Whatever goes in, only ``SecretbootError`` subclasses (or a usage error and an exit code)
come out: never another exception, never a hang, and never the input echoed back. A
distinctive ``CANARY`` is planted in the values a target feeds in; it may come back out only
where secretboot shows a name by design (a parameter name, a secret id, a variable name, a
path or any other argv word), never in a message about a value.

Nothing here needs atheris: ``Reader`` stands in for its ``FuzzedDataProvider``, so every
target also runs under plain Python (and under pytest) on a fixed corpus.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import socket
import sys
import time
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import secretboot
from secretboot import BootstrapError, ReferenceSyntaxError, SecretbootError, is_reference, parse_reference

T = TypeVar("T")

# Planted in values; a value that comes back out in an error or output is a leak.
CANARY = "Zq7CANARYx9"
# Any parse, of any input up to about 1 MB, finishes well within this (seconds).
PARSE_BUDGET = 2.0
# The exit codes the CLI documents.
EXIT_CODES = frozenset({0, 1, 2, 126, 127, 130})
# A root folder that does not exist: argv words holding '/' point below it, never at real files.
NOWHERE = "/secretboot-hostile-nowhere"

PREFIXES = (
    "",
    "kms:",
    "ssm:",
    "sealed:",
    "secretsmanager:",
    "{{resolve:ssm:",
    "{{resolve:ssm-secure:",
    "{{resolve:secretsmanager:",
    "{{resolve:",
    "AQICAH",
    "ssm:arn:aws:ssm:us-east-1:123456789012:parameter/",
    "secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:",
    "{{resolve:secretsmanager:arn:aws:secretsmanager:us-east-1:123456789012:secret:",
    "local:",
)
SUFFIXES = ("", "}}", "=", "==", ":1", ":label", "#key", ":SecretString:k}}", "\n", "\x00")
# Characters that break parsers: separators of the grammar, controls, NUL, surrogates.
SPECIALS = (
    "\x00",
    "\n",
    "\r",
    "\t",
    "\x1b",
    "\x7f",
    "\u2028",
    "\ufeff",
    "\ud800",
    "\udcff",
    "\U0010ffff",
    "#",
    ":",
    "{",
    "}",
    "/",
    "=",
    "$",
    "${A}",
    "'",
    '"',
    "\\",
    " ",
)


class Reader:
    """Draws values from fuzz bytes, like atheris's ``FuzzedDataProvider`` (and without it).

    Past the end of the data every draw gives zeros and empty strings.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def number(self, below: int) -> int:
        """A number in ``range(below)``."""
        value = self.byte() | self.byte() << 8 if below > 256 else self.byte()
        return value % below if below > 0 else 0

    def pick(self, choices: Sequence[T]) -> T:
        return choices[self.number(len(choices))]

    def blob(self, most: int) -> bytes:
        size = min(self.number(most + 1), self.remaining())
        self._pos += size
        return self._data[self._pos - size : self._pos]

    def text(self, most: int) -> str:
        """Text of any code points: UTF-8 (bad bytes become lone surrogates), UTF-16 or Latin-1."""
        raw = self.blob(most)
        how = self.byte() % 4
        if how == 0:
            return raw.decode("utf-8", "surrogateescape")
        if how == 1:
            return raw[: len(raw) // 2 * 2].decode("utf-16-le", "surrogatepass")
        if how == 2:
            return raw.decode("latin-1")
        # Mostly grammar: separators and specials mixed into the bytes.
        return "".join(self.pick(SPECIALS) if b % 3 == 0 else chr(b) for b in raw)

    def rest(self) -> bytes:
        raw = self._data[self._pos :]
        self._pos = len(self._data)
        return raw


def plant(text: str, where: int) -> str:
    """``text`` with the canary inserted at ``where`` (modulo its length)."""
    cut = where % (len(text) + 1)
    return text[:cut] + CANARY + text[cut:]


def hostile_value(reader: Reader) -> str:
    """A value meant to look like a reference, with the canary somewhere in its body."""
    body = plant(reader.text(64), reader.byte())
    return reader.pick(PREFIXES) + body + reader.pick(SUFFIXES)


# Seeds every target runs once before fuzzing (they also load every lazily imported module,
# so that atheris instruments it) and that the tests run without atheris.
SEEDS = (
    b"",
    b"\x00",
    b"\x01kms:AAAA",
    b"\x02" + CANARY.encode() * 3,
    bytes(range(256)),
    b"\xff" * 64,
    "\x01ssm:/app/prod/db\n{{resolve:ssm:/a}}\ud800".encode("utf-8", "surrogatepass"),
)


def fuzz_main(test_one_input: Callable[[bytes], None], argv: list[str]) -> None:
    """Fuzz with atheris if it is installed; else run each file named in ``argv`` once."""
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        for path in argv[1:]:
            with open(path, "rb") as handle:
                test_one_input(handle.read())
        print(f"atheris is not installed: ran {len(argv) - 1} input(s) once", file=sys.stderr)
        return
    logging.getLogger("dotenv").setLevel(logging.ERROR)  # "could not parse statement" per input
    for seed in SEEDS:
        test_one_input(seed)
    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


# -- the contract -------------------------------------------------------------------------------


class Echoed(AssertionError):
    """The canary came back out where no name is shown."""


def assert_no_echo(text: str, allowed: Iterable[str] = (), *, where: str = "output") -> None:
    """``text`` holds no canary once every ``allowed`` string (names shown by design) is cut out."""
    for shown in sorted({a for a in allowed if a}, key=len, reverse=True):
        text = text.replace(shown, "")
    at = text.find(CANARY)
    if at >= 0:
        raise Echoed(f"canary in {where}: {text[max(0, at - 80) : at + 80]!r}")


def shown_forms(names: Iterable[str]) -> set[str]:
    """A name as text, as a repr and inside JSON: the ways the CLI and errors print one."""
    forms = set()
    for name in names:
        forms |= {name, repr(name)[1:-1], json.dumps(name)[1:-1], json.dumps(name, ensure_ascii=False)[1:-1]}
    return forms


def listed_names(env: Mapping[str, str | None]) -> set[str]:
    """Names in settings, which errors show by design: the variables listed in
    ``SECRETBOOT_KMS_VARS`` and ``SECRETBOOT_BINARY_VARS`` (a ``Missing`` failure names one) and
    the paths in ``SECRETBOOT_LOCAL_KEY_FILE`` and ``SECRETBOOT_ENV_FILE``."""
    from secretboot import _settings as s

    listed = [
        name.strip()
        for setting in (s.KMS_VARS, s.BINARY_VARS)
        for name in (env.get(setting) or "").split(",")
        if name.strip()
    ]
    listed += [env.get(setting) or "" for setting in (s.LOCAL_KEY_FILE, s.ENV_FILE)]
    return shown_forms(listed)


def reference_names(values: Iterable[str]) -> set[str]:
    """What valid references among ``values`` show by design: the names an SSM or Secrets
    Manager reference carries (its target and canonical form). A KMS or sealed reference shows
    only its size: its ciphertext is data, never allowed back out."""
    names: set[str] = set()
    for value in values:
        try:
            ref = parse_reference(value)
        except ReferenceSyntaxError:
            continue
        if ref is not None:
            names.add(ref.target)
            if ref.kind in ("ssm", "secretsmanager"):
                names.add(str(ref))
    return shown_forms(names)


@contextlib.contextmanager
def timed(what: str, budget: float = PARSE_BUDGET) -> Iterator[None]:
    started = time.perf_counter()
    yield
    took = time.perf_counter() - started
    assert took < budget, f"{what} took {took:.2f} s (budget {budget} s)"


def check_reference(value: str, variable: str | None = "HOSTILE") -> None:
    """Detection and parsing: a bool, a reference, ``None`` or ``ReferenceSyntaxError``; no echo."""
    from secretboot._reference import KmsReference, SealedReference, parse_kms, parse_sealed

    with timed("is_reference"):
        detected = is_reference(value)
    assert isinstance(detected, bool)
    try:
        with timed("parse_reference"):
            ref = parse_reference(value, variable=variable)
    except ReferenceSyntaxError as exc:
        assert exc.variable == variable
        assert_no_echo(f"{exc}\n{exc!r}\n{exc.reason}\n{exc.kind}", where="ReferenceSyntaxError")
    else:
        if ref is not None:
            assert detected, "parsed as a reference, yet not detected as one"
            assert parse_reference(str(ref)) == ref, "the canonical form does not parse back"
            if isinstance(ref, (KmsReference, SealedReference)):
                # Ciphertext is data: only its size may show.
                assert_no_echo(f"{ref!r} {ref.target}", where="repr of a blob reference")
    for strict in (parse_kms, parse_sealed):
        try:
            with timed(strict.__name__):
                strict(value, variable=variable)
        except ReferenceSyntaxError as exc:
            assert_no_echo(str(exc), where=f"{strict.__name__} error")


def check_failures(exc: SecretbootError, allowed: Iterable[str]) -> None:
    """A ``BootstrapError``'s failures show names and reasons, never values."""
    allowed = set(allowed)
    if isinstance(exc, BootstrapError):
        for failure in exc.failures:
            assert_no_echo(f"{failure.kind} {failure.reason} {failure.detail}", where="failure detail")
            if CANARY in failure.target:
                assert failure.target in allowed, f"failure target {failure.target!r} is not a name"
    assert_no_echo(str(exc), allowed, where=type(exc).__name__)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every message secretboot logs (at any level) while inside."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("secretboot")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def check_bootstrap(
    environ: Mapping[str, str],
    *,
    env_file: str | None = None,
    allowed: Iterable[str] = (),
    export: bool | None = None,
) -> secretboot.Keyring | None:
    """``bootstrap()`` returns a keyring or raises a ``SecretbootError`` that echoes no value."""
    allowed = set(allowed) | reference_names(environ.values()) | shown_forms(environ) | listed_names(environ)
    try:
        with captured_logs() as logs:
            try:
                return secretboot.bootstrap(environ=environ, env_file=env_file, export=export, refresh=True)
            except SecretbootError as exc:
                check_failures(exc, allowed)
                return None
    finally:
        secretboot.reset()
        assert_no_echo("\n".join(logs), allowed, where="log")


# -- an unreachable AWS ---------------------------------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unreachable_aws(port: int, *, credentials: bool = True) -> dict[str, str]:
    """AWS settings that reach nothing: every endpoint a closed local port, no proxies.

    Without ``credentials`` boto3 fails before any request (NoCredentials): the CLI's
    admin calls then fail at once instead of after botocore's retries.
    """
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ENDPOINT_URL_KMS": url,
        "AWS_ENDPOINT_URL_SSM": url,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": url,
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": f"{NOWHERE}/config",
        "AWS_SHARED_CREDENTIALS_FILE": f"{NOWHERE}/credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SECRETBOOT_TIMEOUT": "1",
    }
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[proxy] = env[proxy.lower()] = ""  # a .env file cannot add one: the environment wins
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": "AKIDHOSTILE", "AWS_SECRET_ACCESS_KEY": "hostile-secret-key"}
    return env


# -- the CLI, in process --------------------------------------------------------------------------


class CliResult:
    __slots__ = ("code", "err", "out")

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err


def _refuse_exec(file: str, args: Sequence[str]) -> None:
    # exec would replace the test process: never run anything, answer "not found".
    raise FileNotFoundError(2, "not run by the hostile-input tests", file)


def run_cli(argv: Sequence[str], *, cwd: str, environ: Mapping[str, str], stdin: bytes = b"") -> CliResult:
    """``secretboot._cli.main(argv)`` in this process, as a real run would see it.

    ``os.environ`` is exactly ``environ``, the working folder ``cwd``, stdin a pipe holding
    ``stdin``; stdout is strict UTF-8 (as on a UTF-8 terminal or pipe) and stderr
    backslash-escapes what it cannot encode, as Python's does. ``os.execvp`` runs nothing.
    Everything (environment, folder, streams, secretboot's state) is put back afterwards.
    """
    from secretboot._cli import main

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    saved_exec = os.execvp
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    sys.stdout, sys.stderr = out, err
    os.execvp = _refuse_exec  # type: ignore[assignment]
    try:
        code = main(list(argv))
        out.flush()
        err.flush()
    finally:
        secretboot.reset()  # exec exports into os.environ; undo it before putting that back
        os.execvp = saved_exec
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    decoded = (s.buffer.getvalue().decode("utf-8") for s in (out, err))
    return CliResult(code, *decoded)


def check_cli(result: CliResult, argv: Sequence[str], allowed: Iterable[str]) -> None:
    """An exit code from the table, and no value in the output (argv words may come back)."""
    assert result.code in EXIT_CODES, f"exit code {result.code!r}"
    shown = set(allowed) | shown_forms(argv)
    assert_no_echo(result.out, shown, where="stdout")
    assert_no_echo(result.err, shown, where="stderr")


def env_file_names(paths: Iterable[str]) -> set[str]:
    """Names the CLI may show from these ``.env`` files: variable names and reference targets,
    read both as written and as ``bootstrap()`` reads them (with ``${VAR}`` expansion)."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    names: set[str] = set()
    values: list[str] = []
    listed: set[str] = set()
    for path in paths:
        for newline in ("", None):  # as EnvFile reads it (bytes kept), as bootstrap() does
            try:
                with open(path, encoding="utf-8", newline=newline) as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError, ValueError):
                continue
            for binding in parse_stream(io.StringIO(text)):
                if binding.key is not None:
                    names.add(binding.key)
                    values.append(binding.value or "")
            expanded = dotenv_values(stream=io.StringIO(text))
            values += [v for v in expanded.values() if v is not None]
            listed |= listed_names(expanded)
    return shown_forms(names) | reference_names(values) | listed


# -- fixture files for the CLI --------------------------------------------------------------------

_FIXTURES: dict[str, bytes] = {}


def cli_fixtures() -> dict[str, bytes]:
    """Files the CLI's argv may name: a key file, sealed, KMS, duplicate, non-UTF-8 ``.env`` files.

    Every plaintext in them is the canary (made once per process).
    """
    if not _FIXTURES:
        from secretboot import _envelope as envelope

        master, data_key = os.urandom(32), os.urandom(32)
        cipher = envelope.aead(data_key)
        sealed = envelope.seal(cipher, "S1", f"sealed-{CANARY}".encode())
        wrapped = envelope.wrap_local(master, data_key)
        _FIXTURES.update(
            {
                "key.bin": b64encode(master) + b"\n",
                "notakey.bin": f"{CANARY} not base64\n".encode(),
                "plain.env": f"PLAIN={CANARY}\nOTHER=x-{CANARY}\nREF=ssm:/app/db\nEMPTY=\n".encode(),
                "dup.env": f"DUP=one-{CANARY}\nexport DUP=two-{CANARY}\nPLAIN={CANARY}\n".encode(),
                "bad.env": b"PLAIN=\xff\xfe" + CANARY.encode() + b"\n",
                "sealed.env": (
                    f"SECRETBOOT_DATA_KEY={wrapped}\nSECRETBOOT_LOCAL_KEY_FILE=key.bin\n"
                    f"S1={sealed}\nS2=sealed:AQ{CANARY}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n"
                    f"PLAIN={CANARY}\n"
                ).encode(),
                "kms.env": (
                    f"K=kms:{b64encode(CANARY.encode() * 4).decode()}\nBAD=kms:{CANARY}!\n"
                    f"PLAIN={CANARY}\nX=${{PLAIN}}\n"
                ).encode(),
            }
        )
    return dict(_FIXTURES)


def write_fixtures(folder: str, env_text: bytes) -> list[str]:
    """Write the fixture files and ``.env`` (``env_text``) into ``folder``; their paths."""
    files = cli_fixtures()
    files[".env"] = env_text
    os.makedirs(os.path.join(folder, "adir"), exist_ok=True)
    paths = []
    for name, content in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(content)
        if name.endswith(".bin"):
            os.chmod(path, 0o600)  # key files open to group or others are refused before reading
        paths.append(path)
    return paths


def clean_folder(folder: str) -> None:
    """Remove what a CLI run left in ``folder`` (files it wrote, keys it made)."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            continue
        os.unlink(entry.path)


def cli_vocabulary() -> tuple[list[str], list[str]]:
    """(every subcommand, every option string of the parser and its subcommands)."""
    import argparse

    from secretboot._cli import build_parser

    parser = build_parser()
    commands: list[str] = []
    options: set[str] = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands.append(name)
                for inner in sub._actions:
                    options.update(inner.option_strings)
    return commands, sorted(options)


class Option:
    """One option of a subcommand: its spellings, whether it takes a value, whether required."""

    __slots__ = ("flags", "required", "takes_value")

    def __init__(self, flags: Sequence[str], takes_value: bool, required: bool) -> None:
        self.flags = tuple(flags)
        self.takes_value = takes_value
        self.required = required


@functools.cache
def cli_grammar() -> dict[str, tuple[list[str], list[Option]]]:
    """Each subcommand's positionals (their nargs) and options, read from the parser itself."""
    import argparse

    from secretboot._cli import build_parser

    grammar: dict[str, tuple[list[str], list[Option]]] = {}
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            positionals: list[str] = []
            options: list[Option] = []
            for inner in sub._actions:
                if not inner.option_strings:
                    positionals.append(str(inner.nargs))
                elif not isinstance(inner, argparse._HelpAction):
                    options.append(Option(inner.option_strings, inner.nargs != 0, inner.required))
            grammar[name] = (positionals, options)
    return grammar


def well_formed_argv(command: str, reader: Reader, word: Callable[[], str]) -> list[str]:
    """argv that parses (mostly): ``command``, its required options and positionals, some
    optional ones, each value drawn by ``word``; the parser then hands it to the command."""
    positionals, options = cli_grammar()[command]
    argv = [command]
    for option in options:
        if option.required or reader.byte() % 3 == 0:
            argv.append(reader.pick(option.flags))
            if option.takes_value:
                argv.append(word())
    for nargs in positionals:
        if nargs == "...":  # exec's COMMAND [ARGS...]
            argv += ["--", word()]
        elif nargs == "*":
            argv += [word() for _ in range(reader.number(3))]
        else:
            argv.append(word())
    return argv


CLI_WORDS = (
    ".env",
    "plain.env",
    "dup.env",
    "bad.env",
    "sealed.env",
    "kms.env",
    "key.bin",
    "notakey.bin",
    "new.key",
    "missing.env",
    "adir",
    ".",
    "..",
    "",
    "-",
    "--",
    "A",
    "PLAIN",
    "OTHER",
    "REF",
    "EMPTY",
    "DUP",
    "S1",
    "S2",
    "K",
    "BAD",
    "X",
    "PLAIN_FROM_ENV",
    "SECRETBOOT_DATA_KEY",
    "AWS_REGION",
    "alias/app",
    "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    f"{NOWHERE}/app/db",
    "K=V",
    "=V",
    "K=",
    "LambdaFunctionName=fn",
    "fn",
    "true",
)


def safe_word(word: str) -> str:
    """An argv word that cannot name a file outside the working folder.

    The CLI writes files (.env rewrites, key files): a hostile word is kept to one path
    component below the working folder; the only absolute paths are under ``NOWHERE``.
    """
    return word.replace("/", "_").replace("\\", "_")
