"""Canary secrets: plant distinctive plaintext and ciphertext, drive every error path, and look
for them wherever a user, a log pipeline or another process could see them.

One registry (``Canaries``) holds every planted value: plaintexts, their KMS ciphertext, sealed
blobs, the data key (raw and wrapped), a local master key, a Secrets Manager JSON secret and
the AWS secret access key. A value counts as leaked when any 16-character run of any of its
encodings shows up: the text itself, repr/ascii/JSON/URL escapes, hex, and standard and
URL-safe base64 at every alignment. The key id every moto ciphertext starts with is public (it
is in the key's ARN, which ``check`` prints), so only the bytes after it are canaries.

What is searched, after each run:

- stdout and stderr: ``capfd`` in process, pipes for the console script, Django, Flask and the
  Lambda runtime;
- every log record at DEBUG on the root logger (botocore and urllib3 included) emitted by the
  code under test: the test's own thread and secretboot's worker threads. moto's server runs in
  this process too; its threads are the other side of the wire, not the subject;
- the error: ``str``, ``repr``, ``args`` and attributes of the exception and of every
  exception chained to it (``__cause__`` and ``__context__``, suppressed or not), each
  ``Failure``, ``traceback.format_exception``, the traceback with its frames' locals (which
  may show the configuration the test passed in, never what was resolved from it), and the
  pickled exception;
- files: every new or changed file in the test's folder and in the system temporary folder.
  ``tempfile.gettempdir()`` (and ``TMPDIR`` for child processes) is pointed at a folder of the
  test's own, because other sessions share ``/tmp`` and its listing is never quiet;
- ``os.environ``, which must be unchanged unless ``export`` was asked for; and the environment
  ``secretboot exec`` hands its command, which must hold the resolved values it was meant to get
  and nothing else secret.

A leak found in secretboot is a test marked ``xfail(strict=True)`` with the symptom as its reason.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import secretboot
from secretboot import BootstrapError, ConfigurationError, SecretbootError, _cli, _lifecycle
from secretboot import _envelope as envelope
from secretboot._check import check
from secretboot.contrib.flask import SecretBoot
from secretboot.contrib.flask import cli as flask_cli
from tests.awsproxy import AwsProxy, Fault, black_hole, error, reset, server_error, throttle
from tests.conftest import moto_api
from tests.lambda_runtime import RuntimeEmulator, start_runtime
from tests.localaws import REGION, client
from tests.test_bootstrap import failure_texts
from tests.test_cli import Cli, Run, _needles
from tests.test_sealed import chain, make_local

ROOT = Path(__file__).resolve().parent.parent
DJANGO_PROJECT = ROOT / "tests" / "django_project"
WINDOW = 16  # any run of this many characters of any encoding of a canary is a leak
GRAM = 8  # the scanner's stride: WINDOW >= 2 * GRAM - 1, so no run of WINDOW slips between strides
KEY_ID_SIZE = 36  # moto's ciphertext starts with the key id, which is public
TIMEOUT = 60  # seconds any child process may take
FUNCTION = "secretboot-example"

# One transport is enough where the subject is the CLI's own AWS calls (always boto3) ...
ONE_TRANSPORT = pytest.mark.parametrize("aws_env", ["boto3"], indirect=True)
# ... where what is tested happens before any request, without AWS, or after the boot ...
TRANSPORT_INDEPENDENT = pytest.mark.parametrize("aws_env", ["fast"], indirect=True)
# ... and where the subject is a framework's process, not the AWS call.
FRAMEWORK = pytest.mark.parametrize("aws_env", ["fast"], indirect=True)


# -- the canary registry ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _byte_forms(data: bytes) -> list[bytes]:
    """``data`` as it could show up in text: raw, hex, repr-escaped, base64 at every alignment."""
    forms = [data, data.hex().encode(), data.hex().upper().encode(), repr(data)[2:-1].encode()]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data)
        core = encoded[4 if offset else 0 : -4]  # the characters only ``data`` determines
        forms += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return forms


def _text_forms(text: str) -> list[bytes]:
    """``text`` as it could show up: itself, escaped (repr, ascii, JSON, URL) and as bytes."""
    raw = text.encode("utf-8", "surrogatepass")  # environment values may hold lone surrogates
    forms = [raw, *(form.encode() for form in (repr(text)[1:-1], ascii(text)[1:-1], json.dumps(text)[1:-1]))]
    with contextlib.suppress(UnicodeEncodeError):  # both need text that UTF-8 can encode
        forms += [*_needles(text), urllib.parse.quote(text, safe="").encode()]
    return forms + _byte_forms(raw)


class Canaries:
    """Every value planted by one test, and a scanner that finds any of them in any output."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self._windows: dict[bytes, set[str]] = {}  # every WINDOW-long run of every form
        self._grams: set[bytes] = set()  # every GRAM-long run: the cheap first test

    def _add(self, label: str, forms: list[bytes]) -> None:
        assert label not in self.labels, f"canary {label} registered twice"
        self.labels.append(label)
        for form in forms:
            assert len(form) >= WINDOW, f"canary {label} is too short to find: {form!r}"
            for i in range(len(form) - WINDOW + 1):
                self._windows.setdefault(form[i : i + WINDOW], set()).add(label)
            self._grams.update(form[i : i + GRAM] for i in range(len(form) - GRAM + 1))

    def text(self, label: str, value: str | None = None) -> str:
        """A distinctive plaintext (or ``value``), registered."""
        value = value if value is not None else f"CANARY-{label}-{uuid.uuid4()}"
        self._add(label, _text_forms(value))
        return value

    def blob(self, label: str, data: bytes, *, public: int = 0) -> bytes:
        """Binary secret material; its first ``public`` bytes are not secret (a key id)."""
        self._add(label, _byte_forms(data[public:]))
        return data

    def value(self, label: str, value: str) -> str:
        """A ``kms:``, ``sealed:`` or ``local:`` value: its blob is the canary."""
        prefix, _, body = value.partition(":")
        data = base64.b64decode(body, validate=True)
        self.blob(label, data, public=KEY_ID_SIZE if prefix == "kms" else 0)
        return value

    def found(self, data: bytes | str) -> set[str]:
        """The labels of every canary in ``data``."""
        if isinstance(data, str):
            data = data.encode("utf-8", "backslashreplace")
        # A run of WINDOW >= 2 * GRAM - 1 characters holds a GRAM-long run starting at a multiple of
        # GRAM: look there first, and at every WINDOW that could hold it only on a hit.
        windows, grams = self._windows, self._grams
        labels: set[str] = set()
        for at in range(0, len(data) - GRAM + 1, GRAM):
            if data[at : at + GRAM] in grams:
                for start in range(max(0, at - WINDOW + GRAM), min(at, len(data) - WINDOW) + 1):
                    hit = windows.get(data[start : start + WINDOW])
                    if hit:
                        labels |= hit
        return labels

    def assert_absent(
        self, surfaces: Mapping[str, bytes | str], allowed: Mapping[str, Collection[str]] | None = None
    ) -> None:
        """No canary in any surface, but those ``allowed`` there (by surface name)."""
        leaks = []
        for name, data in surfaces.items():
            extra = self.found(data) - set((allowed or {}).get(name, ()))
            if extra:
                leaks.append(f"{name} holds {sorted(extra)}:\n{_excerpt(data)}")
        assert not leaks, "canaries leaked:\n" + "\n\n".join(leaks)


def _excerpt(data: bytes | str) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")
    return text if len(text) < 3000 else text[:3000] + f"... ({len(text)} characters)"


def test_the_scanner_finds_every_encoding_and_runs_of_it() -> None:
    # The scanner must be able to fail, or every test below proves nothing.
    canaries = Canaries()
    text = canaries.text("PLAIN", f"CANARY-PLAIN-{uuid.uuid4()} ünï ✓")
    raw = canaries.blob("RAW", os.urandom(40))
    blob = canaries.value("CT", "kms:" + _b64(b"k" * KEY_ID_SIZE + os.urandom(60)))
    data = base64.b64decode(blob[4:])
    shown = [
        text,
        repr(text),
        ascii(text),
        json.dumps({"v": text}),
        urllib.parse.quote(text),
        text.encode().hex(),
        _b64(b"x" + text.encode()),
        base64.urlsafe_b64encode(b"xy" + text.encode()).decode(),
        f"prefix {text[3:22]} suffix",  # a 19-character run
    ]
    for item in shown:
        assert canaries.found(item) >= {"PLAIN"}, item
    for item in (repr(raw), raw.hex(), _b64(raw)[5:30], raw):
        assert "RAW" in canaries.found(item), item
    for item in (blob, blob[20:], repr(data), data[KEY_ID_SIZE:].hex()):
        assert "CT" in canaries.found(item), item
    # The key id is public: ARNs and key ids are shown on purpose.
    assert canaries.found(data[:KEY_ID_SIZE].decode() + " " + _b64(data[:KEY_ID_SIZE])) == set()
    assert canaries.found("CANARY-OTHER-" + str(uuid.uuid4())) == set()
    with pytest.raises(AssertionError, match="PLAIN"):
        canaries.assert_absent({"stdout": "x " + text[-20:]})
    canaries.assert_absent({"stdout": "x " + text[-20:]}, {"stdout": ["PLAIN"]})


# -- observing one run ------------------------------------------------------------------------

# Records of these threads are the code under test's: the test's own and secretboot's workers.
_OUR_THREADS = ("MainThread", "secretboot")
_LOGGERS = ("", "botocore", "boto3", "urllib3", "secretboot", "s3transfer")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _Records(logging.Handler):
    """Formats each record of the code under test as it is emitted (args may change later)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        if not record.threadName or not record.threadName.startswith(_OUR_THREADS):
            return
        try:
            text = self._formatter.format(record)
        except Exception as exc:  # a record that cannot be formatted is still searched
            text = f"{record.msg!r} {record.args!r} ({type(exc).__name__})"
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        self.texts.append(f"{text}\nargs: {record.args!r}\nextra: {extra!r}\nstack: {record.stack_info}")


def _attributes(exc: BaseException) -> str:
    """What an error reporter could pick off an exception: its attributes and their items."""
    parts = []
    values = dict(getattr(exc, "__dict__", {}))
    for name in getattr(type(exc), "__slots__", ()):
        values.setdefault(name, getattr(exc, name, None))
    for name, value in values.items():
        parts.append(f"{name}={value!r}")
        if isinstance(value, list | tuple):
            parts += [f"{name}[]: {item} {item!r}" for item in value]
    return "\n".join(parts)


def exception_surfaces(exc: BaseException) -> dict[str, str | bytes]:
    """Everything a user, a log or an error reporter could see of ``exc``."""
    surfaces: dict[str, str | bytes] = {}
    for i, item in enumerate(chain(exc)):
        name = f"exception[{i}] {type(item).__name__}"
        surfaces[f"{name} str"] = str(item)
        surfaces[f"{name} repr"] = repr(item)
        surfaces[f"{name} args"] = repr(item.args)
        surfaces[f"{name} attributes"] = _attributes(item)
    surfaces["failure texts"] = failure_texts(exc)
    surfaces["traceback"] = "".join(traceback.format_exception(exc))
    with contextlib.suppress(Exception):  # not every exception pickles; those that do are searched
        surfaces["pickled"] = pickle.dumps(exc)
    return surfaces


def locals_surface(exc: BaseException) -> str:
    """The traceback with every frame's locals, as error reporters that capture them show it."""
    return "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())


def _files(folder: Path) -> dict[Path, tuple[int, int, int]]:
    """Every file under ``folder`` (dotfiles and leftovers too), with what shows a change."""
    found = {}
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                found[path] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def _changed_files(folder: Path, before: Mapping[Path, tuple[int, int, int]]) -> dict[str, bytes]:
    """The content of every file under ``folder`` created or changed since ``before``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path, stamp in _files(folder).items()
        if before.get(path) != stamp and not path.is_symlink()
    }


@dataclass(repr=False)
class Observation:
    """What one run showed: output, log records, the error, files, and environment changes."""

    canaries: Canaries
    inputs: set[str]  # canaries the test put in the configuration (environment, env files)
    result: Any = None
    error: BaseException | None = None
    out: str = ""
    err: str = ""
    logs: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # new or changed files
    environ: dict[str, str | None] = field(default_factory=dict)  # changed variables

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            self.result = function(*args, **kwargs)
        except Exception as exc:
            self.error = exc
        return self.result

    def surfaces(self) -> dict[str, str | bytes]:
        surfaces: dict[str, str | bytes] = {"stdout": self.out, "stderr": self.err}
        surfaces.update({f"log record {i}": text for i, text in enumerate(self.logs)})
        surfaces.update({f"file {name}": data for name, data in self.files.items()})
        surfaces.update({f"os.environ[{name!r}]": repr(value) for name, value in self.environ.items()})
        if self.error is not None:
            surfaces.update(exception_surfaces(self.error))
            surfaces["traceback with locals"] = locals_surface(self.error)
        return surfaces

    def assert_clean(
        self, allowed: Mapping[str, Collection[str]] | None = None, *, environ_changes: bool = False
    ) -> None:
        """No canary anywhere it was not meant to be; ``os.environ`` unchanged unless allowed."""
        allowed = dict(allowed or {})
        # Frames' locals show the configuration the test passed in, never what was resolved.
        allowed.setdefault("traceback with locals", self.inputs)
        self.canaries.assert_absent(self.surfaces(), allowed)
        if not environ_changes:
            assert self.environ == {}, f"os.environ changed: {sorted(self.environ)}"


@pytest.fixture
def canaries() -> Canaries:
    return Canaries()


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary folder, as the code under test (and its children) see it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


Observe = Callable[..., contextlib.AbstractContextManager[Observation]]


@pytest.fixture
def observe(canaries: Canaries, capfd: pytest.CaptureFixture[str], tmp_path: Path, temp_dir: Path) -> Observe:
    @contextlib.contextmanager
    def run(environ: Mapping[str, str] | None = None) -> Iterator[Observation]:
        before_files = _files(tmp_path)
        before_environ = dict(os.environ)
        inputs = canaries.found(repr(environ) + repr(before_environ))
        for path in before_files:
            inputs |= canaries.found(path.read_bytes())
        observation = Observation(canaries, inputs)
        handler = _Records()
        loggers = [logging.getLogger(name) for name in _LOGGERS]
        levels = [logger.level for logger in loggers]
        capfd.readouterr()
        logging.getLogger().addHandler(handler)
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
        try:
            yield observation
        finally:
            logging.getLogger().removeHandler(handler)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            observation.out, observation.err = capfd.readouterr()
            observation.logs = handler.texts
            after = dict(os.environ)
            observation.environ = {
                name: after.get(name)
                for name in before_environ.keys() | after.keys()
                if before_environ.get(name) != after.get(name)
            }
            observation.files = _changed_files(tmp_path, before_files)

    return run


# -- the world the canaries live in -----------------------------------------------------------


@dataclass
class World:
    """A KMS key, the planted secrets and helpers to make references to them."""

    canaries: Canaries
    folder: Path
    env: dict[str, str]  # AWS settings (the secret access key is a canary); no references yet
    endpoint: str
    key_id: str
    key_arn: str
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = client(self.endpoint, service)
        return self.clients[service]

    def plain(self, label: str) -> str:
        return self.canaries.text(label)

    def kms(
        self,
        label: str,
        *,
        plaintext: bytes | None = None,
        context: Mapping[str, str] | None = None,
        key_id: str | None = None,
    ) -> str:
        """``kms:<base64>`` of a new plaintext canary ``label``; the ciphertext is ``label-ct``."""
        if plaintext is None:
            plaintext = self.plain(label).encode()
        extra = {"EncryptionContext": dict(context)} if context else {}
        blob = self.client("kms").encrypt(KeyId=key_id or self.key_id, Plaintext=plaintext, **extra)
        return self.canaries.value(f"{label}-ct", "kms:" + _b64(blob["CiphertextBlob"]))

    def ssm(self, label: str) -> str:
        name = f"/canary/{label.lower()}"
        self.client("ssm").put_parameter(Name=name, Value=self.plain(label), Type="SecureString")
        return f"ssm:{name}"

    def secret(self, label: str, document: Mapping[str, str] | str | None = None) -> str:
        """A Secrets Manager secret ``canary/<label>``: by default a JSON object holding two canaries,
        ``<label>-PASSWORD`` (what references pick out) and ``<label>-NOTE`` (only in the whole secret)."""
        if document is None:
            document = {
                "username": "app",
                "password": self.plain(f"{label}-PASSWORD"),
                "note": self.plain(f"{label}-NOTE"),
            }
        text = document if isinstance(document, str) else json.dumps(document)
        name = f"canary/{label.lower()}"
        self.client("secretsmanager").create_secret(Name=name, SecretString=text)
        return name

    def kms_data_key(self, label: str, context: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        """A data key from GenerateDataKey: (plaintext, ``kms:`` wrapped), both canaries.

        Wrapped as ``secretboot seal`` wraps it: under ``context`` plus the reserved pair."""
        answer = self.client("kms").generate_data_key(
            KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=envelope.data_key_context(context)
        )
        self.canaries.blob(f"{label}-raw", answer["Plaintext"])
        return answer["Plaintext"], self.canaries.value(label, "kms:" + _b64(answer["CiphertextBlob"]))

    def sealed(self, data_key: bytes, name: str, label: str) -> str:
        """``sealed:<base64>`` of a new plaintext canary ``label``, sealed for variable ``name``."""
        value = str(envelope.seal(envelope.aead(data_key), name, self.plain(label).encode()))
        return self.canaries.value(f"{label}-sealed", value)

    def local(self, label: str) -> dict[str, str]:
        """A key file, a data key wrapped by it: the settings that open values sealed under it."""
        made = make_local(self.folder, f"{label.lower()}.key")
        self.canaries.blob(f"{label}-master", made.master)
        self.canaries.blob(f"{label}-data-key", made.data_key)
        self.canaries.value(f"{label}-wrapped", made.wrapped)
        return {"SECRETBOOT_DATA_KEY": made.wrapped, "SECRETBOOT_LOCAL_KEY_FILE": str(made.key_file)}


def _new_world(canaries: Canaries, folder: Path, env: dict[str, str]) -> World:
    kms = client(env["AWS_ENDPOINT_URL"], "kms")
    meta = kms.create_key(Description="secretboot canary tests")["KeyMetadata"]
    return World(canaries, folder, env, env["AWS_ENDPOINT_URL"], meta["KeyId"], meta["Arn"], {"kms": kms})


@pytest.fixture
def world(
    aws_env: dict[str, str], canaries: Canaries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> World:
    """moto, freshly reset, and an environment pointing at it whose AWS secret key is a canary."""
    aws_secret = canaries.text("AWS-SECRET")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    env = {**aws_env, "AWS_SECRET_ACCESS_KEY": aws_secret}
    return _new_world(canaries, tmp_path, env)


def reasons(exc: BaseException | None) -> dict[str, str]:
    assert isinstance(exc, BootstrapError), repr(exc)
    return {f.variable: f.reason for f in exc.failures}


# -- the library: malformed references --------------------------------------------------------

# (case, the value built around a canary plaintext P, planted where a careless message would quote it)
MALFORMED: list[tuple[str, Callable[[str], str]]] = [
    ("kms-bad-character", lambda p: f"kms:{p}!"),
    ("kms-bad-padding", lambda p: "kms:" + _b64(p.encode())[:-1]),
    ("kms-too-long", lambda p: "kms:" + _b64(p.encode() * 200)),
    ("ssm-space", lambda p: f"ssm:/app/{p} x"),
    ("ssm-relative-path", lambda p: f"ssm:app/{p}"),
    ("ssm-empty-selector", lambda p: f"ssm:/app/{p}:"),
    ("ssm-bad-selector", lambda p: f"ssm:/app/x:{p}!"),
    ("ssm-reserved-label", lambda p: f"ssm:/app/x:aws{p}"),
    ("ssm-bad-arn", lambda p: f"ssm:arn:aws:ssm:us-east-1:1234:parameter/{p}"),
    ("sealed-bad-base64", lambda p: f"sealed:{p}!"),
    ("sealed-bad-version", lambda p: "sealed:" + _b64(p.encode())),
    ("sealed-too-short", lambda p: "sealed:" + _b64(b"\x01" + p.encode()[:20])),
    ("secretsmanager-space", lambda p: f"secretsmanager:{p} x"),
    ("secretsmanager-empty-id", lambda p: f"secretsmanager:#{p}"),
    ("secretsmanager-bad-arn", lambda p: f"secretsmanager:arn:aws:secretsmanager:us-east-1:12:secret:{p}"),
    ("dynamic-not-whole", lambda p: f"{p} {{{{resolve:ssm:/app/x}}}}"),
    ("dynamic-space", lambda p: f"{{{{resolve:ssm-secure:/app/{p} x}}}}"),
    ("dynamic-version", lambda p: f"{{{{resolve:ssm:/app/x:{p}}}}}"),
    ("dynamic-secretsmanager-fields", lambda p: f"{{{{resolve:secretsmanager:db:SecretString:k:s:{p}:x}}}}"),
    ("dynamic-secretsmanager-binary", lambda p: f"{{{{resolve:secretsmanager:{p}:SecretBinary}}}}"),
]


@pytest.mark.parametrize(("case", "make"), MALFORMED, ids=[case for case, _ in MALFORMED])
def test_malformed_references_never_quote_the_value(
    canaries: Canaries, observe: Observe, case: str, make: Callable[[str], str]
) -> None:
    plain = canaries.text("PLAIN")
    env = {"BROKEN": make(plain)}
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env)
    assert reasons(obs.error) == {"BROKEN": "Malformed"}, case
    obs.assert_clean()


@pytest.mark.parametrize("variant", ["plaintext", "hex", "prefixed"])
def test_kms_vars_holding_plaintext_are_never_quoted(world: World, observe: Observe, variant: str) -> None:
    # SECRETBOOT_KMS_VARS names a variable that was never migrated: it still holds plaintext.
    plain = world.plain("PLAIN")
    value = {"plaintext": plain, "hex": plain.encode().hex()[:64], "prefixed": "kms:" + plain}[variant]
    env = {**world.env, "SECRETBOOT_KMS_VARS": "SECRET_KEY, NOT_SET", "SECRET_KEY": value}
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env)
    # Hex is valid base64, so it goes as far as Decrypt.
    expected = "InvalidCiphertext" if variant == "hex" else "Malformed"
    assert reasons(obs.error) == {"SECRET_KEY": expected, "NOT_SET": "Missing"}
    obs.assert_clean()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p,
        lambda p: f"kms:{p}",
        lambda p: f"local:{p}",
        lambda p: "local:" + _b64(p.encode()),
        lambda p: "kms:" + _b64(p.encode()),
    ],
    ids=["bare", "kms-not-base64", "local-not-base64", "local-wrong-size", "kms-not-ciphertext"],
)
def test_a_malformed_data_key_is_never_quoted(
    world: World, observe: Observe, make: Callable[[str], str]
) -> None:
    data_key = os.urandom(32)
    env = {
        **world.env,
        "SECRETBOOT_DATA_KEY": make(world.plain("DATA-KEY-TEXT")),
        "DB_PASSWORD": world.sealed(data_key, "DB_PASSWORD", "DB"),
    }
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env)
    assert reasons(obs.error)["DB_PASSWORD"] in ("Malformed", "InvalidCiphertext")
    obs.assert_clean()


# -- the library: AWS answers -----------------------------------------------------------------


def _full_house(world: World) -> dict[str, str]:
    """One resolvable reference of every kind, each a canary: what a failure sits next to."""
    data_key, wrapped = world.kms_data_key("DATA-KEY")
    secret = world.secret("SM")
    return {
        **world.env,
        "OK_KMS": world.kms("OK-KMS"),
        "OK_SSM": world.ssm("OK-SSM"),
        "OK_SM": f"secretsmanager:{secret}#password",
        "OK_SM_WHOLE": f"secretsmanager:{secret}",
        "SECRETBOOT_DATA_KEY": wrapped,
        "OK_SEALED": world.sealed(data_key, "OK_SEALED", "OK-SEALED"),
    }


def test_everything_resolves_and_the_plaintext_is_only_in_the_keyring(world: World, observe: Observe) -> None:
    env = _full_house(world)
    with observe(env) as obs:
        keyring = obs.call(secretboot.bootstrap, environ=env)
        check_rows = check(environ=env)
        # Outside secretboot's calls: botocore's records reach the capture unless secretboot drops them.
        for name in ("botocore.auth", "botocore.endpoint", "botocore.parsers"):
            logging.getLogger(name).debug("probe")
    assert obs.error is None, repr(obs.error)
    assert keyring["OK_SSM"].startswith("CANARY-OK-SSM-") and keyring["OK_SM"].startswith("CANARY-SM-PASS")
    assert json.loads(keyring["OK_SM_WHOLE"])["password"] == keyring["OK_SM"]
    assert [row.status for row in check_rows] == ["resolved"] * 5
    obs.canaries.assert_absent(
        {
            "repr(keyring)": repr(keyring),
            "str(keyring)": str(keyring),
            "references": repr(dict(keyring.references)),
            "check rows": repr([row.as_dict() for row in check_rows]),
        }
    )
    obs.assert_clean()
    assert any("resolved 5 secrets" in text for text in obs.logs), "the INFO line was not captured"
    # botocore logs every request's parameters, response bodies and (botocore.auth) the session
    # token at DEBUG: the probes show such records would have been captured, had they been let out.
    for name in ("botocore.auth", "botocore.endpoint", "botocore.parsers"):
        assert any(text.startswith(f"{name} DEBUG probe\n") for text in obs.logs), f"no {name} records"


# Failures decided by an AWS answer run on both transports; those decided locally (after the
# same requests) on one.
AWS_FAILURES = [
    "kms-wrong-context",
    "kms-lambda-context-fallback",
    "kms-key-pin",
    "ssm-not-found",
    "ssm-version-not-found",
    "secretsmanager-not-found",
    "secretsmanager-version-not-found",
    "sealed-data-key-wrong-context",
]
LOCAL_FAILURES = [
    "kms-not-text",
    "secretsmanager-not-json",
    "secretsmanager-json-key-not-found",
    "secretsmanager-binary-with-key",
    "sealed-integrity",
    "sealed-copied",
    "sealed-data-key-missing",
    "ssm-not-allowed",
    "secretsmanager-not-allowed",
]


@pytest.mark.parametrize(
    ("aws_env", "case"),
    [(transport, case) for case in AWS_FAILURES for transport in ("fast", "boto3")]
    + [("fast", case) for case in LOCAL_FAILURES],
    indirect=["aws_env"],
)
def test_each_aws_failure_names_the_variable_never_a_value(world: World, observe: Observe, case: str) -> None:
    env = _full_house(world)
    expected = {
        "kms-wrong-context": "InvalidCiphertext",
        "kms-lambda-context-fallback": "InvalidCiphertext",
        "kms-key-pin": "AccessDenied",  # moto's answer to a wrong KeyId; AWS says IncorrectKey
        "kms-not-text": "NotText",
        "ssm-not-found": "ParameterNotFound",
        "ssm-version-not-found": "ParameterNotFound",
        "secretsmanager-not-found": "NotFound",
        "secretsmanager-version-not-found": "NotFound",
        "secretsmanager-not-json": "NotJson",
        "secretsmanager-json-key-not-found": "JsonKeyNotFound",
        "secretsmanager-binary-with-key": "NotJson",
        "sealed-integrity": "Integrity",
        "sealed-copied": "Integrity",
        "sealed-data-key-missing": "Missing",
        "sealed-data-key-wrong-context": "InvalidCiphertext",
        "ssm-not-allowed": "NotAllowed",
        "secretsmanager-not-allowed": "NotAllowed",
    }[case]
    broken: list[str] = ["BROKEN"]
    sm = world.client("secretsmanager")
    if case == "kms-wrong-context":
        env["BROKEN"] = world.kms("WRONG-CONTEXT", context={"app": "a"})
        env["SECRETBOOT_KMS_CONTEXT"] = '{"app": "b"}'
        broken = ["BROKEN", "OK_KMS", "OK_SEALED"]  # the context applies to every Decrypt
    elif case == "kms-lambda-context-fallback":
        env["BROKEN"] = world.kms("OTHER-FUNCTION", context={"LambdaFunctionName": "other"})
        env["AWS_LAMBDA_FUNCTION_NAME"] = "this"
    elif case == "kms-key-pin":
        other = world.client("kms").create_key(Description="another")["KeyMetadata"]["KeyId"]
        env["BROKEN"] = world.kms("OTHER-KEY", key_id=other)
        env["SECRETBOOT_KMS_KEY_ID"] = world.key_id
    elif case == "kms-not-text":
        raw = world.canaries.blob("BINARY", b"\xff\xfe" + os.urandom(30))
        env["BROKEN"] = world.kms("BINARY", plaintext=raw)
    elif case == "ssm-not-found":
        env["BROKEN"] = "ssm:/canary/missing"
    elif case == "ssm-version-not-found":
        env["BROKEN"] = env["OK_SSM"] + ":7"
    elif case == "secretsmanager-not-found":
        env["BROKEN"] = "secretsmanager:canary/missing#password"
    elif case == "secretsmanager-version-not-found":
        env["BROKEN"] = "{{resolve:secretsmanager:canary/sm:SecretString:password:AWSPREVIOUS}}"
    elif case == "secretsmanager-not-json":
        name = world.secret("NOT-JSON", document=world.plain("NOT-JSON-TEXT") + " {")
        env["BROKEN"] = f"secretsmanager:{name}#password"
    elif case == "secretsmanager-json-key-not-found":
        env["BROKEN"] = "secretsmanager:canary/sm#no-such-key"
    elif case == "secretsmanager-binary-with-key":
        raw = world.canaries.blob("SM-BINARY", os.urandom(48))
        sm.create_secret(Name="canary/binary", SecretBinary=raw)
        env["BROKEN"] = "secretsmanager:canary/binary#password"
    elif case == "sealed-integrity":
        blob = bytearray(base64.b64decode(env["OK_SEALED"].removeprefix("sealed:")))
        blob[-1] ^= 1
        env["BROKEN"] = world.canaries.value("FLIPPED", "sealed:" + _b64(bytes(blob)))
        del env["OK_SEALED"]
    elif case == "sealed-copied":
        env["BROKEN"] = env["OK_SEALED"]  # sealed for OK_SEALED: it opens under that name only
    elif case == "sealed-data-key-missing":
        del env["SECRETBOOT_DATA_KEY"]
        broken = ["OK_SEALED"]
    elif case == "sealed-data-key-wrong-context":
        env["SECRETBOOT_KMS_CONTEXT"] = '{"app": "other"}'
        broken = ["OK_KMS", "OK_SEALED"]
    elif case == "ssm-not-allowed":
        env["BROKEN"] = env["OK_SSM"]
        env["SECRETBOOT_SSM_PATHS"] = "/elsewhere/"
        broken = ["BROKEN", "OK_SSM"]
    elif case == "secretsmanager-not-allowed":
        env["BROKEN"] = "secretsmanager:canary/sm#username"
        env["SECRETBOOT_SECRETS_MANAGER_PATHS"] = "elsewhere/"
        broken = ["BROKEN", "OK_SM", "OK_SM_WHOLE"]
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env)
    assert reasons(obs.error) == dict.fromkeys(broken, expected), case
    obs.assert_clean()


@pytest.mark.parametrize("allowed", ["ssm", "kms"])
def test_access_denied_in_iam_mode(world: World, observe: Observe, moto_endpoint: str, allowed: str) -> None:
    env = _full_house(world)
    iam = world.client("iam")
    iam.create_user(UserName="reader")
    statement = {"Effect": "Allow", "Action": f"{allowed}:*", "Resource": "*"}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    iam.put_user_policy(UserName="reader", PolicyName=f"{allowed}-only", PolicyDocument=policy)
    access = iam.create_access_key(UserName="reader")["AccessKey"]
    env["AWS_ACCESS_KEY_ID"] = access["AccessKeyId"]
    env["AWS_SECRET_ACCESS_KEY"] = world.canaries.text("IAM-SECRET", access["SecretAccessKey"])
    moto_api(moto_endpoint, "reset-auth", b"0")
    try:
        with observe(env) as obs:
            obs.call(secretboot.bootstrap, environ=env)
    finally:
        moto_api(moto_endpoint, "reset-auth", b"inf")
    denied = {"ssm": ["OK_KMS", "OK_SEALED"], "kms": ["OK_SSM"]}[allowed] + ["OK_SM", "OK_SM_WHOLE"]
    assert reasons(obs.error) == dict.fromkeys(denied, "AccessDenied")
    obs.assert_clean()


# The fault proxy stands between secretboot and moto; SECRETBOOT_TIMEOUT=1 bounds every case.
# Each fault: how to make it (given text to echo), the requests it takes (None: all), and the
# reasons the variables may fail with.
ALL_VARIABLES = ("OK_KMS", "OK_SSM", "OK_SM", "OK_SM_WHOLE", "OK_SEALED")
FAULTS: dict[str, tuple[Callable[[str], Fault], str | None, set[str]]] = {
    "throttled": (lambda echo: throttle(), None, {"Timeout", "Throttled"}),
    "5xx": (lambda echo: server_error(503), None, {"ServiceError", "Timeout"}),
    "reset": (lambda echo: reset(), None, {"ConnectionError", "Timeout"}),
    "black-hole": (lambda echo: black_hole(), None, {"Timeout"}),
    # An endpoint that quotes the request back: the message is scrubbed of anything data-like.
    "echo": (lambda echo: error(400, "ValidationException", echo), None, {"InvalidRequest"}),
    # What real KMS answers for a blob made under another key than SECRETBOOT_KMS_KEY_ID.
    "incorrect-key": (
        lambda echo: error(400, "IncorrectKeyException", echo),
        "TrentService.Decrypt",
        {"IncorrectKey"},
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_transport_faults_and_timeouts(world: World, observe: Observe, fault: str) -> None:
    env = _full_house(world)
    make, target, expected = FAULTS[fault]
    echo = f"1 validation error: Value '{world.plain('ECHOED')}' at 'plaintext'; blob {env['OK_KMS'][4:]}"
    with AwsProxy(world.endpoint) as proxy:
        proxy.add_fault(make(echo), target=target)
        env.update(AWS_ENDPOINT_URL=proxy.url, SECRETBOOT_TIMEOUT="1", SECRETBOOT_KMS_KEY_ID=world.key_id)
        with observe(env) as obs:
            obs.call(secretboot.bootstrap, environ=env)
    failures = reasons(obs.error)
    failing = ("OK_KMS", "OK_SEALED") if target == "TrentService.Decrypt" else ALL_VARIABLES
    assert sorted(failures) == sorted(failing)
    assert set(failures.values()) <= expected, failures
    obs.assert_clean()


def _local_data_key(local: Mapping[str, str]) -> bytes:
    """The plaintext data key that ``World.local`` settings wrap."""
    master = envelope.read_key_file(local["SECRETBOOT_LOCAL_KEY_FILE"])
    return envelope.unwrap_local(master, envelope.parse_data_key(local["SECRETBOOT_DATA_KEY"]))


@TRANSPORT_INDEPENDENT
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("resolves", {}),
        ("key-file-not-set", {"DB_PASSWORD": "Missing", "API_TOKEN": "Missing"}),
        ("key-file-missing", {"DB_PASSWORD": "KeyFile", "API_TOKEN": "KeyFile"}),
        ("not-a-key-file", {"DB_PASSWORD": "KeyFile", "API_TOKEN": "KeyFile"}),
        ("wrong-master-key", {"DB_PASSWORD": "Integrity", "API_TOKEN": "Integrity"}),
        ("sealed-under-another-data-key", {"API_TOKEN": "Integrity"}),
    ],
)
def test_sealed_values_under_a_local_key(
    world: World, observe: Observe, case: str, expected: dict[str, str]
) -> None:
    local = world.local("LOCAL")
    data_key = _local_data_key(local)
    env = {
        **world.env,
        **local,
        "DB_PASSWORD": world.sealed(data_key, "DB_PASSWORD", "DB"),
        "API_TOKEN": world.sealed(data_key, "API_TOKEN", "API"),
    }
    if case == "key-file-not-set":
        del env["SECRETBOOT_LOCAL_KEY_FILE"]
    elif case == "key-file-missing":
        env["SECRETBOOT_LOCAL_KEY_FILE"] = str(world.folder / "absent.key")
    elif case == "not-a-key-file":
        path = world.folder / "not-a.key"
        path.write_text(world.plain("KEY-FILE-TEXT") + "\n")
        path.chmod(0o600)  # private, so that its content is read
        env["SECRETBOOT_LOCAL_KEY_FILE"] = str(path)
    elif case == "wrong-master-key":
        env["SECRETBOOT_LOCAL_KEY_FILE"] = world.local("OTHER")["SECRETBOOT_LOCAL_KEY_FILE"]
    elif case == "sealed-under-another-data-key":
        env["API_TOKEN"] = world.sealed(
            world.canaries.blob("OTHER-DATA-KEY", os.urandom(32)), "API_TOKEN", "API2"
        )
    with observe(env) as obs:
        keyring = obs.call(secretboot.bootstrap, environ=env)
    if expected:
        assert reasons(obs.error) == expected
    else:
        assert sorted(keyring) == ["API_TOKEN", "DB_PASSWORD"] and keyring["DB_PASSWORD"].startswith(
            "CANARY-DB-"
        )
    obs.assert_clean()


# -- the library: configuration, getenv, the keyring ------------------------------------------


@TRANSPORT_INDEPENDENT
@pytest.mark.parametrize(
    "setting",
    [
        ("SECRETBOOT_TIMEOUT", "soon"),
        ("SECRETBOOT_TIMEOUT", "0"),
        ("SECRETBOOT_KMS_CONTEXT", "{not json"),
        ("SECRETBOOT_KMS_CONTEXT", '["a"]'),
        ("SECRETBOOT_EXPORT", "maybe"),
        ("SECRETBOOT_TRANSPORT", "carrier-pigeon"),
        ("SECRETBOOT_SNAPSTART", "freeze"),
    ],
    ids=lambda s: f"{s[0]}={s[1]}",
)
def test_configuration_errors_name_the_setting_never_a_secret(
    world: World, observe: Observe, setting: tuple[str, str]
) -> None:
    env = {**_full_house(world), setting[0]: setting[1], "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start"}
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env)
    assert isinstance(obs.error, ConfigurationError), repr(obs.error)
    assert setting[0] in str(obs.error)
    obs.assert_clean()


def test_fast_transport_refused_by_configuration(world: World, observe: Observe) -> None:
    env = {**_full_house(world), "SECRETBOOT_TRANSPORT": "fast", "HTTPS_PROXY": "http://127.0.0.1:9"}
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env)
    assert isinstance(obs.error, ConfigurationError), repr(obs.error)
    obs.assert_clean()


def _env_file(world: World, lines: list[str], name: str = ".env") -> Path:
    path = world.folder / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@TRANSPORT_INDEPENDENT
@pytest.mark.parametrize("case", ["missing", "folder", "set-twice", "set-twice-export"])
def test_env_file_errors_name_the_file_never_its_contents(world: World, observe: Observe, case: str) -> None:
    env = _full_house(world)
    path = _env_file(
        world,
        [
            f"SECRET_KEY={world.plain('FILE-1')}",
            f"DB_PASSWORD={world.kms('FILE-KMS')}",
            f"export SECRET_KEY='{world.plain('FILE-2')}'" if case.startswith("set-twice") else "A=1",
        ],
    )
    if case == "missing":
        path = world.folder / "absent.env"
    elif case == "folder":
        path = world.folder
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env, env_file=path, export=case.endswith("export"))
    assert isinstance(obs.error, ConfigurationError), repr(obs.error)
    obs.assert_clean()


@TRANSPORT_INDEPENDENT
def test_an_env_file_that_is_not_utf8_is_never_quoted(world: World, observe: Observe) -> None:
    env = _full_house(world)
    path = world.folder / ".env"
    path.write_bytes(f"SECRET_KEY={world.plain('LATIN1')}\nDB_PASSWORD={world.kms('FILE-KMS')}\n".encode())
    path.write_bytes(path.read_bytes() + "PASSWORD=pässwörd\n".encode("latin-1"))
    with observe(env) as obs:
        obs.call(secretboot.bootstrap, environ=env, env_file=path)
    assert isinstance(obs.error, ConfigurationError), repr(obs.error)
    assert "UnicodeDecodeError" in str(obs.error)
    obs.assert_clean()


@TRANSPORT_INDEPENDENT
@pytest.mark.parametrize("late", ["kms", "ssm", "sealed", "secretsmanager"])
def test_getenv_of_a_reference_set_after_bootstrap(world: World, observe: Observe, late: str) -> None:
    env = _full_house(world)
    for name, value in env.items():
        os.environ[name] = value
    secretboot.bootstrap()
    value = {
        "kms": world.kms("LATE-KMS"),
        "ssm": world.ssm("LATE-SSM"),
        "sealed": env["OK_SEALED"],
        "secretsmanager": "secretsmanager:canary/sm",
    }[late]
    os.environ["LATE"] = value
    with observe(dict(os.environ)) as obs:
        obs.call(secretboot.getenv, "LATE")
    assert reasons(obs.error) == {"LATE": "NotResolved"}
    obs.assert_clean()


@TRANSPORT_INDEPENDENT
def test_keyring_misuse_names_the_variable_never_the_value(world: World, observe: Observe) -> None:
    env = {**_full_house(world), "NOT_FERNET": world.kms("NOT-FERNET")}
    keyring = secretboot.bootstrap(environ=env)
    attempts: list[Callable[[], object]] = [
        lambda: keyring["ABSENT"],
        lambda: keyring.as_bytes("ABSENT"),
        lambda: keyring.fernet("NOT_FERNET"),
        lambda: keyring.fernet("OK_SSM", fallbacks=["OK_KMS"]),
        lambda: keyring.fernet("OK_KMS", fallbacks="OK_SSM"),
        lambda: pickle.dumps(keyring),
        lambda: copy.deepcopy(keyring),
    ]
    for attempt in attempts:
        with observe(env) as obs:
            obs.call(attempt)
        assert obs.error is not None
        obs.assert_clean()


@TRANSPORT_INDEPENDENT
def test_keyring_fernet_of_a_non_ascii_secret(world: World, observe: Observe) -> None:
    plain = world.canaries.text("UNICODE", f"CANARY-UNICODE-{uuid.uuid4()}-pässwörd")
    env = {**world.env, "UNICODE": world.kms("UNICODE-KEY", plaintext=plain.encode())}
    keyring = secretboot.bootstrap(environ=env)
    with observe(env) as obs:
        obs.call(keyring.fernet, "UNICODE")
    assert isinstance(obs.error, ValueError) and "UNICODE is not a Fernet key" in str(obs.error)
    obs.assert_clean()


@pytest.mark.parametrize("case", ["binary-vars", "as-bytes", "aws-secret-key"])
def test_text_that_is_not_utf8_encodable(world: World, observe: Observe, case: str) -> None:
    plain = world.canaries.text("SURROGATE", f"CANARY-SURROGATE-{uuid.uuid4()}-\ud800-tail")
    world.client("ssm").put_parameter(Name="/canary/surrogate", Value=plain, Type="SecureString")
    env = {**world.env, "ODD": "ssm:/canary/surrogate"}
    if case == "binary-vars":
        env["SECRETBOOT_BINARY_VARS"] = "ODD"
    elif case == "aws-secret-key":
        env["AWS_SECRET_ACCESS_KEY"] = world.canaries.text("ODD-AWS-SECRET", f"{uuid.uuid4()}\udcff")
    with observe(env) as obs:
        keyring = obs.call(secretboot.bootstrap, environ=env)
        if case == "as-bytes" and keyring is not None:
            obs.call(keyring.as_bytes, "ODD")
    # Refused at start-up, naming the variable: such text never reaches the keyring.
    assert isinstance(obs.error, secretboot.BootstrapError)
    assert obs.error.variables == ("ODD",)
    obs.assert_clean()


def test_export_puts_plaintext_only_where_asked_and_reset_takes_it_back(
    world: World, observe: Observe
) -> None:
    env = _full_house(world)
    file = _env_file(world, [f"FILE_SECRET={world.kms('FILE-KMS')}", "PLAIN_SETTING=1"])
    for name, value in env.items():
        os.environ[name] = value
    before = dict(os.environ)
    # Each resolved variable and the plaintext it is meant to hold once exported.
    meant = {
        "OK_KMS": ["OK-KMS"],
        "OK_SSM": ["OK-SSM"],
        "OK_SM": ["SM-PASSWORD"],
        "OK_SM_WHOLE": ["SM-PASSWORD", "SM-NOTE"],
        "OK_SEALED": ["OK-SEALED"],
        "FILE_SECRET": ["FILE-KMS"],
    }
    with observe(dict(os.environ)) as obs:
        keyring = obs.call(secretboot.bootstrap, env_file=file, export=True)
    assert obs.error is None, repr(obs.error)
    assert sorted(keyring) == sorted(meant)
    assert {name for name, value in obs.environ.items() if value is not None} == {*meant, "PLAIN_SETTING"}
    obs.assert_clean(
        {f"os.environ[{name!r}]": labels for name, labels in meant.items()}, environ_changes=True
    )
    # The exporting process's own /proc/<pid>/environ keeps the block it started with (putenv does
    # not rewrite it); only its children get the plaintext.
    with open("/proc/self/environ", "rb") as handle:
        obs.canaries.assert_absent({"/proc/self/environ": handle.read()})
    dump = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]
    child = json.loads(subprocess.run(dump, capture_output=True, check=True, timeout=TIMEOUT).stdout)
    assert {name: child[name] for name in keyring} == dict(keyring)
    secretboot.reset()
    assert dict(os.environ) == before
    child_after = subprocess.run(dump, capture_output=True, check=True, timeout=TIMEOUT).stdout
    resolved = {label for labels in meant.values() for label in labels}
    assert obs.canaries.found(child_after).isdisjoint(resolved)


# -- the library: the refresh lifecycle (issue 17) ---------------------------------------------
# The background refresh logs from its own thread ("secretboot-refresh"), which the observation
# captures; max_age is at its floor (1 s) and SECRETBOOT_TIMEOUT small, so each case takes a
# few seconds of real time.


def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def secretboot_lines(obs: Observation, level: str) -> list[str]:
    return [text.split("\n", 1)[0] for text in obs.logs if text.startswith(f"secretboot {level} ")]


def _rotate(world: World, env: Mapping[str, str], suffix: str) -> dict[str, str]:
    """New versions of the SSM parameter and the Secrets Manager secret, both new canaries.

    Made on a thread of its own: the test's admin client logs what it sends, and only the
    test's main thread and secretboot's threads are the code under test."""
    document = {"password": world.plain(f"SM-PASSWORD-{suffix}"), "note": world.plain(f"SM-NOTE-{suffix}")}
    value = world.plain(f"OK-SSM-{suffix}")
    ssm, sm = world.client("ssm"), world.client("secretsmanager")

    def rotate() -> None:
        name = env["OK_SSM"].removeprefix("ssm:")
        ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
        sm.put_secret_value(SecretId="canary/sm", SecretString=json.dumps(document))

    admin = threading.Thread(target=rotate, name="test-admin")
    admin.start()
    admin.join(30)
    return {"OK_SSM": f"OK-SSM-{suffix}", "OK_SM": f"SM-PASSWORD-{suffix}"}


class _HookThatQuotes:
    """An on_refresh callback whose exception quotes every value it was given."""

    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []

    def __call__(self, keyring: secretboot.Keyring, changed: frozenset[str]) -> None:
        self.calls.append(changed)
        raise ValueError("could not reload with " + repr(dict(keyring.items())))


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Threads that die with an exception (what an error reporter's threading hook sees)."""
    deaths: list[str] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        deaths.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")

    monkeypatch.setattr(threading, "excepthook", hook)
    return deaths


REFRESH_FAULTS: dict[str, Callable[[str], Fault]] = {
    "throttled": lambda echo: throttle(echo),
    "denied": lambda echo: error(400, "AccessDeniedException", echo),
    "outage": lambda echo: server_error(503, message=echo),
}


@pytest.mark.parametrize("fault", list(REFRESH_FAULTS))
def test_a_failing_background_refresh_names_variables_never_values(
    world: World, observe: Observe, thread_deaths: list[str], fault: str
) -> None:
    env = _full_house(world)
    echo = f"Value '{world.plain('ECHOED')}' at 'plaintext'; blob {env['OK_KMS'][4:]}"
    hook = _HookThatQuotes()
    callback_warned = threading.Event()
    seen: set[str] = set()

    class _Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.add(record.msg)  # the formats only: the canary checks the records themselves
            if any("raised" in m for m in seen) and any("refreshed after" in m for m in seen):
                callback_warned.set()

    watch = _Watch()
    logging.getLogger("secretboot").addHandler(watch)
    with AwsProxy(world.endpoint) as proxy:
        # Small, so retried faults fail fast; boto3 builds its clients within it too, which a
        # loaded machine can take more than half a second for.
        quick = "2" if env.get("SECRETBOOT_TRANSPORT") == "boto3" else "0.5"
        env.update(AWS_ENDPOINT_URL=proxy.url, SECRETBOOT_TIMEOUT=quick)
        unregister = secretboot.on_refresh(hook)
        try:
            with observe(env) as obs:
                # The fault at once: the first refresh is due in 0.9 s.
                keyring = secretboot.bootstrap(environ=env, max_age=1)
                rule = proxy.add_fault(REFRESH_FAULTS[fault](echo))
                before = dict(keyring.items())
                refresher = _lifecycle._state.refresher
                assert refresher is not None
                # Two failed refreshes: the first warns, the retry (after backoff) does not.
                until(lambda: refresher.failures >= 2, 30)
                assert dict(keyring.items()) == before  # the last good values are kept
                rotated = _rotate(world, env, "2")
                proxy.clear_faults()
                # The callback's WARNING is logged after it raises: wait for it too.
                until(lambda: refresher.failures == 0 and bool(hook.calls) and callback_warned.is_set(), 30)
        finally:
            unregister()
            logging.getLogger("secretboot").removeHandler(watch)
    assert rule.fired >= 2
    assert keyring["OK_SSM"].startswith(f"CANARY-{rotated['OK_SSM']}-")
    # (A loaded machine may have refreshed once before the fault: nothing changed then.)
    assert hook.calls[-1] == {"OK_SSM", "OK_SM", "OK_SM_WHOLE"} and not any(hook.calls[:-1])
    warnings = secretboot_lines(obs, "WARNING")
    assert len([w for w in warnings if "could not refresh" in w]) == 1, warnings
    assert all(name in warnings[0] for name in ALL_VARIABLES), warnings[0]
    assert any("raised ValueError" in w for w in warnings), warnings
    infos = secretboot_lines(obs, "INFO")
    assert any("refreshed after" in line for line in infos), infos
    assert any("3 values changed" in line for line in infos), infos
    # The refresh thread lives on; nothing died with an exception (which would hold values).
    assert refresher.thread is not None and refresher.thread.is_alive()
    assert thread_deaths == []
    obs.assert_clean()


@TRANSPORT_INDEPENDENT
def test_stale_reads_name_the_variable_never_a_value(world: World, observe: Observe) -> None:
    env = {**_full_house(world), "SECRETBOOT_MAX_STALE": "0", "SECRETBOOT_TIMEOUT": "0.5"}
    with AwsProxy(world.endpoint) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.url
        keyring = secretboot.bootstrap(environ=env, max_age=1)
        with observe(env) as obs:
            proxy.add_fault(error(400, "AccessDeniedException", f"no {world.plain('DENIED-ECHO')}"))
            until(lambda: keyring._stale)
            obs.call(secretboot.getenv, "OK_SSM")
        assert isinstance(obs.error, secretboot.StaleError) and str(obs.error).startswith("OK_SSM is stale")
        errors = secretboot_lines(obs, "ERROR")
        assert len(errors) == 1 and "no longer served" in errors[0], errors
        obs.assert_clean()
        reads: list[Callable[[], object]] = [
            lambda: keyring["OK_KMS"],
            lambda: keyring.get("OK_SM"),  # not a KeyError: get() must not hide it
            lambda: keyring.as_bytes("OK_SEALED"),
            lambda: secretboot.getenv("OK_SM_WHOLE", "a default"),
        ]
        for read in reads:
            with observe(env) as obs:
                obs.call(read)
            assert isinstance(obs.error, secretboot.StaleError), repr(obs.error)
            obs.assert_clean()
        # No value in it either way; but a KeyError is what a caller's "key absent" branch eats.
        with observe(env) as obs:
            obs.call(keyring.fernet, "OK_SM_WHOLE")
        obs.assert_clean()
        assert isinstance(obs.error, KeyError | secretboot.StaleError), repr(obs.error)


@TRANSPORT_INDEPENDENT
def test_keyring_fernet_of_a_stale_name_says_stale(world: World) -> None:
    env = {**_full_house(world), "SECRETBOOT_MAX_STALE": "0", "SECRETBOOT_TIMEOUT": "0.5"}
    keyring = secretboot.bootstrap(environ=env, max_age=1)
    world.client("ssm").delete_parameter(Name=env["OK_SSM"].removeprefix("ssm:"))
    until(lambda: keyring._stale)
    with pytest.raises(secretboot.StaleError, match=r"^OK_SSM is stale"):
        keyring.fernet("OK_SSM")


def test_refresh_now_failures_and_pacing_name_variables_never_values(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _full_house(world)
    with observe(env) as obs:
        obs.call(secretboot.refresh_now, ["OK_SSM"])
    assert isinstance(obs.error, SecretbootError) and "before bootstrap()" in str(obs.error)
    obs.assert_clean()
    with AwsProxy(world.endpoint) as proxy:
        env.update(AWS_ENDPOINT_URL=proxy.url)  # nothing here is retried until the deadline
        secretboot.bootstrap(environ=env)
        proxy.reset_counts()
        # Paced: every name was resolved at boot, under SECRETBOOT_REFRESH_MIN_INTERVAL ago.
        with observe(env) as obs:
            changed = obs.call(secretboot.refresh_now, [*ALL_VARIABLES, world.plain("NOT-A-NAME")])
        assert changed == frozenset() and obs.error is None and proxy.counts() == {}
        obs.assert_clean()
        secretboot.reset()
        env["SECRETBOOT_REFRESH_MIN_INTERVAL"] = "0"
        keyring = secretboot.bootstrap(environ=env)
        echo = f"Value '{world.plain('ECHOED')}'; blob {env['OK_KMS'][4:]}"
        proxy.add_fault(error(400, "AccessDeniedException", echo))
        with observe(env) as obs:
            obs.call(secretboot.refresh_now, ["OK_SSM", "OK_KMS", "OK_SEALED"])
        assert reasons(obs.error) == dict.fromkeys(["OK_KMS", "OK_SEALED", "OK_SSM"], "AccessDenied")
        warnings = secretboot_lines(obs, "WARNING")
        assert len(warnings) == 1 and "could not resolve" in warnings[0], warnings
        obs.assert_clean()
        proxy.clear_faults()
        rotated = _rotate(world, env, "3")
        hook = _HookThatQuotes()
        unregister = secretboot.on_refresh(hook)
        try:
            with observe(env) as obs:
                changed = obs.call(secretboot.refresh_now, None)
        finally:
            unregister()
    assert obs.error is None and changed == {"OK_SSM", "OK_SM", "OK_SM_WHOLE"}
    assert hook.calls == [changed] and keyring["OK_SM"].startswith(f"CANARY-{rotated['OK_SM']}-")
    assert any("raised ValueError" in w for w in secretboot_lines(obs, "WARNING")), obs.logs
    assert any("3 values changed" in line for line in secretboot_lines(obs, "INFO")), obs.logs
    obs.assert_clean()
    with pytest.raises(TypeError):
        secretboot.refresh_now("OK_SSM")  # one str is not an iterable of names


@pytest.mark.parametrize("case", ["not-found", "denied"])
def test_prefetch_failures_name_variables_never_values(world: World, observe: Observe, case: str) -> None:
    env = _full_house(world)
    expected = {"MISSING": "ParameterNotFound"}
    with AwsProxy(world.endpoint) as proxy:
        env.update(AWS_ENDPOINT_URL=proxy.url)  # nothing here is retried until the deadline
        if case == "not-found":
            env["MISSING"] = "ssm:/canary/missing"
        else:
            echo = f"Value '{world.plain('ECHOED')}'; blob {env['OK_KMS'][4:]}"
            proxy.add_fault(error(400, "AccessDeniedException", echo), target="AmazonSSM.")
            expected = {"OK_SSM": "AccessDenied"}
        # Never joined: the failure is logged when it happens, and reset() drops it.
        with observe(env) as obs:
            secretboot.prefetch(environ=env)
            job = _lifecycle._state.prefetch
            assert job is not None
            job.thread.join(10)
            secretboot.reset()
        errors = secretboot_lines(obs, "ERROR")
        assert len(errors) == 1 and errors[0].startswith("secretboot ERROR prefetch() could not resolve")
        assert all(f"{name} ({reason})" in errors[0] for name, reason in expected.items()), errors
        obs.assert_clean()
        # Joined: bootstrap() raises what the thread found, from the caller's thread.
        with observe(env) as obs:
            secretboot.prefetch(environ=env)
            obs.call(secretboot.bootstrap, environ=env)
    assert reasons(obs.error) == expected
    assert len(secretboot_lines(obs, "ERROR")) == 1, obs.logs
    obs.assert_clean()


# -- the command line, in process: every failure path -----------------------------------------


def _cli_file(world: World, *extra: str) -> Path:
    """A .env as people write them, with canary plaintext (one non-ASCII) and ciphertext."""
    plain_a = world.canaries.text("PLAIN-A", f"CANARY-PLAIN-A-{uuid.uuid4()} ünï ✓")
    lines = [
        "# app settings",
        f"PLAIN_SECRET='{plain_a}'",
        f"WRAPPED={world.kms('WRAPPED')}",
        f"export OTHER={world.plain('PLAIN-C')}",
        *extra,
    ]
    return _env_file(world, lines)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _main(obs: Observation, argv: list[str], stdin: bytes = b"") -> int:
    """``secretboot ARGV`` in this process, with ``stdin`` as its standard input."""
    stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    saved = sys.stdin
    sys.stdin = stream
    try:
        code = obs.call(_cli.main, argv)
    finally:
        sys.stdin = saved
    assert obs.error is None, f"secretboot {argv} raised instead of exiting: {obs.error!r}"
    return int(code)


CLI_FAILURES = {
    # migrate
    "migrate-missing-variable": 2,
    "migrate-set-twice": 2,
    "migrate-expanded-into-another": 2,
    "migrate-uses-expansion": 2,
    "migrate-too-large": 2,
    "migrate-empty": 2,
    "migrate-malformed-reference": 2,
    "migrate-unknown-key": 1,
    "migrate-unreachable": 1,
    "migrate-to-ssm-bad-name": 2,
    "migrate-to-ssm-exists": 1,
    "migrate-rotate-fallback-exists": 2,
    "migrate-rotate-to-ssm": 2,
    "migrate-from-env-not-set": 2,
    # encrypt
    "encrypt-unknown-key": 1,
    "encrypt-not-utf8": 2,
    "encrypt-too-large": 2,
    "encrypt-empty": 2,
    "encrypt-bad-context": 2,
    "encrypt-ssm-bad-name": 2,
    "encrypt-ssm-exists": 1,
    "encrypt-unreachable": 1,
    # seal
    "seal-no-key": 2,
    "seal-configuration": 2,
    "seal-not-set": 2,
    "seal-empty": 2,
    "seal-wrong-key-file": 2,
    "seal-not-a-key-file": 2,
    "seal-unknown-kms-key": 1,
    "seal-kms-wrong-context": 1,
    "seal-provider-mismatch": 2,
    # reseal
    "reseal-no-data-key": 2,
    "reseal-tampered": 2,
    "reseal-wrong-key-file": 2,
    "reseal-malformed-data-key": 2,
    "reseal-kms-wrong-context": 1,
    # rotate
    "rotate-plaintext": 2,
    "rotate-malformed": 2,
    "rotate-not-set": 2,
    "rotate-wrong-source-context": 1,
    "rotate-unknown-key": 1,
    # keygen
    "keygen-exists": 2,
    "keygen-in-git-tree": 2,
    # exec, as far as it can go in process: it fails before it would replace the process
    "exec-broken-reference": 1,
    "exec-no-command": 2,
}


@ONE_TRANSPORT
@pytest.mark.parametrize("case", list(CLI_FAILURES))
def test_cli_failures_print_names_never_values(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    command, _, detail = case.partition("-")
    key = world.key_id
    unknown_key = str(uuid.uuid4())
    extra: list[str] = []
    argv: list[str] = [command]
    stdin = (world.canaries.text("STDIN", f"CANARY-STDIN-{uuid.uuid4()} ünï") + "\n").encode()
    ssm = world.client("ssm")
    if command == "migrate":
        argv += ["PLAIN_SECRET", "--key-id", key]
        if detail == "missing-variable":
            argv[1] = "NOT_THERE"
        elif detail == "set-twice":
            extra = [f"PLAIN_SECRET={world.plain('PLAIN-D')}"]
        elif detail == "expanded-into-another":
            extra = ["URL=postgres://app:${PLAIN_SECRET}@db/app"]
        elif detail == "uses-expansion":
            extra = ["USES=${OTHER}-and-more"]
            argv[1] = "USES"
        elif detail == "too-large":
            extra = [f"BIG={world.plain('BIG') * 90}"]
            argv[1] = "BIG"
        elif detail == "empty":
            extra = ["EMPTY="]
            argv[1] = "EMPTY"
        elif detail == "malformed-reference":
            extra = [f"BROKEN=kms:{world.plain('BROKEN')}!"]
            argv[1] = "BROKEN"
        elif detail == "unknown-key":
            argv[3] = unknown_key
        elif detail == "unreachable":
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
        elif detail == "to-ssm-bad-name":
            argv += ["--to-ssm", "bad name"]
        elif detail == "to-ssm-exists":
            ssm.put_parameter(Name="/canary/exists", Value=world.plain("EXISTING"), Type="SecureString")
            argv += ["--to-ssm", "/canary/exists"]
        elif detail == "rotate-fallback-exists":
            extra = [f"PLAIN_SECRET_FALLBACK={world.plain('FALLBACK')}"]
            argv += ["--rotate"]
        elif detail == "rotate-to-ssm":
            argv += ["--rotate", "--to-ssm", "/canary/new"]
        elif detail == "from-env-not-set":
            argv = ["migrate", "NOT_THERE", "--key-id", key, "--from-env"]
    elif command == "encrypt":
        argv += ["--key-id", key]
        if detail == "unknown-key":
            argv[2] = unknown_key
        elif detail == "not-utf8":
            stdin = world.canaries.blob("STDIN-BYTES", b"\xff\xfe" + os.urandom(40))
        elif detail == "too-large":
            stdin = (world.plain("BIG") * 90).encode()
        elif detail == "empty":
            stdin = b"\n"
        elif detail == "bad-context":
            argv += ["--context", "no-equals-sign"]
        elif detail == "ssm-bad-name":
            argv += ["--ssm", "bad name"]
        elif detail == "ssm-exists":
            ssm.put_parameter(Name="/canary/exists", Value=world.plain("EXISTING"), Type="SecureString")
            argv += ["--ssm", "/canary/exists"]
        elif detail == "unreachable":
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    elif command == "seal":
        local = world.local("LOCAL")
        if detail == "no-key":
            argv += ["PLAIN_SECRET"]
        elif detail == "configuration":
            argv += ["AWS_SECRET_ACCESS_KEY", "--local-key-file", local["SECRETBOOT_LOCAL_KEY_FILE"]]
        elif detail == "not-set":
            argv += ["NOT_THERE", "--local-key-file", local["SECRETBOOT_LOCAL_KEY_FILE"]]
        elif detail == "empty":
            extra = ["EMPTY="]
            argv += ["EMPTY", "--local-key-file", local["SECRETBOOT_LOCAL_KEY_FILE"]]
        elif detail == "wrong-key-file":
            other = world.local("OTHER")
            extra = [f"SECRETBOOT_DATA_KEY={local['SECRETBOOT_DATA_KEY']}"]
            argv += ["PLAIN_SECRET", "--local-key-file", other["SECRETBOOT_LOCAL_KEY_FILE"]]
        elif detail == "not-a-key-file":
            bad = world.folder / "not-a.key"
            bad.write_text(world.plain("KEY-FILE-TEXT") + "\n")
            bad.chmod(0o600)  # private, so that its content is read
            argv += ["PLAIN_SECRET", "--local-key-file", str(bad)]
        elif detail == "unknown-kms-key":
            argv += ["PLAIN_SECRET", "--key-id", unknown_key]
        elif detail == "kms-wrong-context":
            _, wrapped = world.kms_data_key("FILE-DATA-KEY", {"app": "a"})
            extra = [f"SECRETBOOT_DATA_KEY={wrapped}"]
            argv += ["PLAIN_SECRET", "--context", "app=b"]
        elif detail == "provider-mismatch":
            extra = [f"SECRETBOOT_DATA_KEY={local['SECRETBOOT_DATA_KEY']}"]
            argv += ["PLAIN_SECRET", "--key-id", key]
    elif command == "reseal":
        local = world.local("LOCAL")
        data_key = _local_data_key(local)
        sealed = [
            f"DB_PASSWORD={world.sealed(data_key, 'DB_PASSWORD', 'DB')}",
            f"API_TOKEN={world.sealed(data_key, 'API_TOKEN', 'API')}",
        ]
        files = [f"SECRETBOOT_DATA_KEY={local['SECRETBOOT_DATA_KEY']}", *sealed]
        monkeypatch.setenv("SECRETBOOT_LOCAL_KEY_FILE", local["SECRETBOOT_LOCAL_KEY_FILE"])
        if detail == "no-data-key":
            extra = sealed
        elif detail == "tampered":
            blob = bytearray(base64.b64decode(sealed[1].split("=", 1)[1].removeprefix("sealed:")))
            blob[-3] ^= 0x40
            extra = [
                files[0],
                sealed[0],
                "API_TOKEN=" + world.canaries.value("TAMPERED", "sealed:" + _b64(blob)),
            ]
        elif detail == "wrong-key-file":
            other = world.local("OTHER")
            monkeypatch.setenv("SECRETBOOT_LOCAL_KEY_FILE", other["SECRETBOOT_LOCAL_KEY_FILE"])
            extra = files
        elif detail == "malformed-data-key":
            extra = ["SECRETBOOT_DATA_KEY=local:" + _b64(world.plain("DATA-KEY-TEXT").encode()), *sealed]
        elif detail == "kms-wrong-context":
            kms_key, wrapped = world.kms_data_key("FILE-DATA-KEY", {"app": "a"})
            extra = [
                f"SECRETBOOT_DATA_KEY={wrapped}",
                f"DB_PASSWORD={world.sealed(kms_key, 'DB_PASSWORD', 'DB-KMS')}",
            ]
            argv += ["--context", "app=b"]
    elif command == "rotate":
        argv += ["WRAPPED", "--key-id", key]
        if detail == "plaintext":
            argv[1] = "PLAIN_SECRET"
        elif detail == "malformed":
            extra = [f"BROKEN=kms:{world.plain('BROKEN')}!"]
            argv[1] = "BROKEN"
        elif detail == "not-set":
            argv[1] = "NOT_THERE"
        elif detail == "wrong-source-context":
            argv += ["--source-context", "app=x"]
        elif detail == "unknown-key":
            argv[3] = unknown_key
    elif command == "keygen":
        if detail == "exists":
            argv += [world.local("LOCAL")["SECRETBOOT_LOCAL_KEY_FILE"]]
        else:
            (world.folder / "repo" / ".git").mkdir(parents=True)
            argv += [str(world.folder / "repo" / "dev.key")]
    elif command == "exec":
        argv += ["--env-file", ".env"]
        if detail == "broken-reference":
            extra = [
                f"DB_PASSWORD={world.kms('OTHER-CONTEXT', context={'app': 'x'})}",
                "API=ssm:/canary/gone",
            ]
            argv += ["--", sys.executable, "-c", "open('ran', 'w').close()"]
    _cli_file(world, *extra)
    monkeypatch.chdir(world.folder)
    with observe(dict(os.environ)) as obs:
        code = _main(obs, argv, stdin)
    assert code == CLI_FAILURES[case], f"{argv} -> {code}\n{obs.out}\n{obs.err}"
    assert obs.err.startswith("secretboot: "), obs.err
    assert obs.files == {}, f"files changed: {sorted(obs.files)}"
    obs.assert_clean()


def _check_file(world: World) -> Path:
    """A .env whose references fail in every way ``check`` reports, next to ones that resolve."""
    data_key, wrapped = world.kms_data_key("FILE-DATA-KEY")
    secret = world.secret("SM")
    sealed = world.sealed(data_key, "OK_SEALED", "OK-SEALED")
    not_json = world.secret("NOT-JSON", document=world.plain("NOT-JSON-TEXT") + " {")
    binary = world.kms("BINARY", plaintext=world.canaries.blob("BINARY-BYTES", b"\xff" + os.urandom(40)))
    return _cli_file(
        world,
        f"SECRETBOOT_DATA_KEY={wrapped}",
        f"OK_SEALED={sealed}",
        f"COPIED_SEALED={sealed}",
        f"OK_SSM={world.ssm('OK-SSM')}",
        f"OK_SM=secretsmanager:{secret}#password",
        f"NO_KEY=secretsmanager:{secret}#missing",
        f"NOT_JSON=secretsmanager:{not_json}#password",
        "MISSING_SM=secretsmanager:canary/gone",
        "MISSING_SSM=ssm:/canary/gone",
        f"WRONG_CONTEXT={world.kms('WRONG-CONTEXT', context={'app': 'x'})}",
        f"MALFORMED=kms:{world.plain('MALFORMED')}!",
        f"BINARY={binary}",
    )


CHECK_STATUSES = {
    "BINARY": "NotText",
    "COPIED_SEALED": "Integrity",
    "MALFORMED": "Malformed",
    "MISSING_SM": "NotFound",
    "MISSING_SSM": "ParameterNotFound",
    "NOT_JSON": "NotJson",
    "NO_KEY": "JsonKeyNotFound",
    "OK_SEALED": "resolved",
    "OK_SM": "resolved",
    "OK_SSM": "resolved",
    "WRAPPED": "resolved",
    "WRONG_CONTEXT": "InvalidCiphertext",
}


@pytest.mark.parametrize("options", [["--json"], [], ["--offline"], ["--offline", "--json"]])
def test_cli_check_reports_every_failure_by_name(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, options: list[str]
) -> None:
    _check_file(world)
    monkeypatch.chdir(world.folder)
    with observe(dict(os.environ)) as obs:
        code = _main(obs, ["check", "--env-file", ".env", *options])
    assert code == 1, obs.out + obs.err
    if options == ["--json"]:
        rows = {row["name"]: row for row in json.loads(obs.out)}
        assert {name: row["status"] for name, row in rows.items()} == CHECK_STATUSES
        # The key's ARN is shown on purpose (and holds the key id every moto blob starts with).
        assert rows["WRAPPED"]["target"].endswith(f", key {world.key_arn}")
    obs.assert_clean()


# -- the command line, in process: what it is meant to print and write ------------------------


@ONE_TRANSPORT
@pytest.mark.parametrize("case", ["migrate", "migrate-rotate", "migrate-to-ssm", "seal", "reseal", "rotate"])
def test_cli_rewrites_leave_no_plaintext_behind(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    local = world.local("LOCAL")
    path = _cli_file(world)
    argv = {
        "migrate": ["migrate", "PLAIN_SECRET", "--key-id", world.key_id],
        "migrate-rotate": ["migrate", "PLAIN_SECRET", "--key-id", world.key_id, "--rotate"],
        "migrate-to-ssm": ["migrate", "PLAIN_SECRET", "--key-id", world.key_id, "--to-ssm", "/canary/moved"],
        "seal": ["seal", "--local-key-file", local["SECRETBOOT_LOCAL_KEY_FILE"]],
        "reseal": ["reseal", "--key-id", world.key_id],
        "rotate": ["rotate", "WRAPPED", "--key-id", world.key_id, "--context", "app=new"],
    }[case]
    if case == "reseal":  # seal first, under the key file; reseal moves it to KMS
        monkeypatch.setenv("SECRETBOOT_LOCAL_KEY_FILE", local["SECRETBOOT_LOCAL_KEY_FILE"])
        monkeypatch.chdir(world.folder)
        assert _cli.main(["seal"]) == 0
    original = world.canaries.found(path.read_bytes())
    # What must be gone from the file: the plaintext that was protected, or the blob replaced.
    gone = {
        "migrate": {"PLAIN-A"},
        "migrate-rotate": {"PLAIN-A"},
        "migrate-to-ssm": {"PLAIN-A"},
        "seal": {"PLAIN-A", "PLAIN-C"},
        "reseal": set(),
        "rotate": {"WRAPPED-ct"},
    }[case]
    assert gone <= original
    monkeypatch.chdir(world.folder)
    with observe(dict(os.environ)) as obs:
        code = _main(obs, argv)
    assert code == 0, obs.out + obs.err
    assert set(obs.files) == {".env"}
    obs.assert_clean({"file .env": original - gone})
    if case == "reseal":
        assert path.read_text().count("sealed:") == 2
    # ... and bootstrap() reads back what was protected.
    settings = {"SECRETBOOT_LOCAL_KEY_FILE": local["SECRETBOOT_LOCAL_KEY_FILE"]}
    if case == "rotate":
        settings["SECRETBOOT_KMS_CONTEXT"] = '{"app": "new"}'
    keyring = secretboot.bootstrap(env_file=path, environ={**world.env, **settings})
    name, label = {
        "migrate-rotate": ("PLAIN_SECRET_FALLBACK", "PLAIN-A"),
        "rotate": ("WRAPPED", "WRAPPED"),
    }.get(case, ("PLAIN_SECRET", "PLAIN-A"))
    assert keyring[name].startswith(f"CANARY-{label}-")


@ONE_TRANSPORT
@pytest.mark.parametrize("target", ["kms", "ssm"])
def test_cli_encrypt_prints_only_the_reference(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    plain = world.canaries.text("STDIN", f"CANARY-STDIN-{uuid.uuid4()} ünï")
    argv = ["encrypt", "--key-id", world.key_id, "--context", "app=x"]
    if target == "ssm":
        argv = ["encrypt", "--key-id", world.key_id, "--ssm", "/canary/typed"]
    monkeypatch.chdir(world.folder)
    with observe(dict(os.environ)) as obs:
        code = _main(obs, argv, (plain + "\n").encode())
    assert code == 0, obs.err
    (line,) = obs.out.splitlines()
    if target == "kms":
        blob = base64.b64decode(line.removeprefix("kms:"), validate=True)
        kms = world.client("kms")
        assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "x"})["Plaintext"] == plain.encode()
    else:
        assert line == "ssm:/canary/typed"
    obs.assert_clean()


@ONE_TRANSPORT
def test_cli_keygen_writes_the_key_only_to_its_file(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(world.folder)
    with observe(dict(os.environ)) as obs:
        code = _main(obs, ["keygen", "dev.key"])
    assert code == 0, obs.err
    assert set(obs.files) == {"dev.key"}
    key = base64.b64decode((world.folder / "dev.key").read_bytes().strip(), validate=True)
    world.canaries.blob("NEW-MASTER", key)
    obs.assert_clean({"file dev.key": ["NEW-MASTER"]})


# -- the command line, out of process ---------------------------------------------------------


@dataclass
class Process:
    """A finished child: its output, and the files it created or changed."""

    run: Run
    files: dict[str, bytes]


def _run_cli(
    world: World, temp_dir: Path, *args: str, env: Mapping[str, str] | None = None, stdin: bytes = b""
) -> Process:
    """The installed console script in the test's folder; its AWS secret key is the canary."""
    cli = Cli(world.folder, world.endpoint)
    before = _files(world.folder)
    settings = {
        "AWS_SECRET_ACCESS_KEY": world.env["AWS_SECRET_ACCESS_KEY"],
        "TMPDIR": str(temp_dir),
        **(env or {}),
    }
    run = cli.run(*args, env=settings, stdin=stdin)
    return Process(run, _changed_files(world.folder, before))


def _process_surfaces(process: Process) -> dict[str, bytes | str]:
    return {
        "stdout": process.run.out,
        "stderr": process.run.err,
        **{f"file {name}": data for name, data in process.files.items()},
    }


_DUMP_ENVIRONMENT = "import json, os, sys; sys.stdout.write(json.dumps(dict(os.environ)))"


def test_cli_exec_hands_the_command_exactly_the_resolved_values(
    world: World, temp_dir: Path, aws_env: dict[str, str]
) -> None:
    local = world.local("LOCAL")
    data_key = _local_data_key(local)
    secret = world.secret("SM")
    _env_file(
        world,
        [
            f"SECRET_KEY={world.kms('FILE-KMS')}",
            f"DB_PASSWORD={world.ssm('FILE-SSM')}",
            f"API_TOKEN={world.sealed(data_key, 'API_TOKEN', 'FILE-SEALED')}",
            f"SM_PASSWORD=secretsmanager:{secret}#password",
            *(f"{name}={value}" for name, value in local.items()),
            "PLAIN=not-a-secret",
        ],
    )
    env = {"ENV_SECRET": world.kms("ENV-KMS"), "SECRETBOOT_TRANSPORT": aws_env["SECRETBOOT_TRANSPORT"]}
    process = _run_cli(
        world, temp_dir, "exec", "--env-file", ".env", "--", sys.executable, "-c", _DUMP_ENVIRONMENT, env=env
    )
    assert process.run.returncode == 0, str(process.run)
    child = json.loads(process.run.out)
    # Meant to get them: each resolved variable its own plaintext, nothing else secret.
    resolved = {
        "SECRET_KEY": "FILE-KMS",
        "DB_PASSWORD": "FILE-SSM",
        "API_TOKEN": "FILE-SEALED",
        "SM_PASSWORD": "SM-PASSWORD",
        "ENV_SECRET": "ENV-KMS",
    }
    assert {name: world.canaries.found(child[name]) for name in resolved} == {
        name: {label} for name, label in resolved.items()
    }
    # What else it gets is documented: the environment it was started with, and the file's plain
    # values, SECRETBOOT_* settings included (the wrapped data key; never the data key itself).
    expected = Cli(world.folder, world.endpoint).environ(
        {"AWS_SECRET_ACCESS_KEY": world.env["AWS_SECRET_ACCESS_KEY"], "TMPDIR": str(temp_dir), **env}
    )
    expected.update({name: child[name] for name in resolved}, PLAIN="not-a-secret", **local)
    assert {k: v for k, v in child.items() if k != "LC_CTYPE"} == {
        k: v for k, v in expected.items() if k != "LC_CTYPE"
    }
    world.canaries.assert_absent(
        {"stderr": process.run.err, **{f"child {name}": value for name, value in child.items()}},
        {
            **{f"child {name}": [label] for name, label in resolved.items()},
            "child AWS_SECRET_ACCESS_KEY": ["AWS-SECRET"],
            "child SECRETBOOT_DATA_KEY": ["LOCAL-wrapped"],
        },
    )
    assert process.files == {}


def test_cli_exec_runs_nothing_when_a_reference_fails(
    world: World, temp_dir: Path, aws_env: dict[str, str]
) -> None:
    _check_file(world)
    marker = world.folder / "ran"
    touch = f"open({str(marker)!r}, 'w').close()"
    env = {"ENV_SECRET": world.kms("ENV-KMS"), "SECRETBOOT_TRANSPORT": aws_env["SECRETBOOT_TRANSPORT"]}
    process = _run_cli(
        world, temp_dir, "exec", "--env-file", ".env", "--", sys.executable, "-c", touch, env=env
    )
    assert process.run.returncode == 1, str(process.run)
    assert not marker.exists()
    assert process.run.err.startswith(b"secretboot: could not resolve 8 variables:\n"), str(process.run)
    world.canaries.assert_absent(_process_surfaces(process))


def test_cli_check_json_out_of_process(world: World, temp_dir: Path, aws_env: dict[str, str]) -> None:
    _check_file(world)
    env = {"ENV_SECRET": world.kms("ENV-KMS"), "SECRETBOOT_TRANSPORT": aws_env["SECRETBOOT_TRANSPORT"]}
    process = _run_cli(world, temp_dir, "check", "--env-file", ".env", "--json", env=env)
    assert process.run.returncode == 1, str(process.run)
    assert {row["name"]: row["status"] for row in json.loads(process.run.out)} == {
        **CHECK_STATUSES,
        "ENV_SECRET": "resolved",
    }
    world.canaries.assert_absent(_process_surfaces(process))


@ONE_TRANSPORT
def test_cli_encrypt_out_of_process(world: World, temp_dir: Path) -> None:
    plain = world.canaries.text("STDIN", f"CANARY-STDIN-{uuid.uuid4()} ünï")
    process = _run_cli(world, temp_dir, "encrypt", "--key-id", world.key_id, stdin=(plain + "\n").encode())
    assert process.run.returncode == 0, str(process.run)
    assert process.run.out.startswith(b"kms:") and process.run.err == b""
    world.canaries.assert_absent(_process_surfaces(process))


# -- the Lambda example under the real runtime client -----------------------------------------


def test_lambda_init_failure_posts_and_prints_names_never_values(world: World, temp_dir: Path) -> None:
    secret = world.secret("SM")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": world.env["AWS_SECRET_ACCESS_KEY"],
        "AWS_ENDPOINT_URL": world.endpoint,
        "SECRETBOOT_TRANSPORT": world.env["SECRETBOOT_TRANSPORT"],
        "POWERTOOLS_SERVICE_NAME": FUNCTION,
        "TMPDIR": str(temp_dir),
        # Resolves (wrapped the way the console does for this function): its plaintext is in
        # memory when the others fail, and must go no further.
        "SECRET_KEY": world.kms("LAMBDA-KEY", context={"LambdaFunctionName": FUNCTION}),
        "API_TOKEN": "ssm:/canary/missing",
        "OTHER_FUNCTION": world.kms("OTHER-FUNCTION", context={"LambdaFunctionName": "another"}),
        "MALFORMED": f"kms:{world.plain('MALFORMED')}!",
        "SM_KEY": f"secretsmanager:{secret}#missing",
    }
    before = _files(world.folder)
    emulator = RuntimeEmulator(function_name=FUNCTION, region=REGION)
    emulator.start()
    try:
        runtime = start_runtime(emulator, "app.handler", env=env)
        try:
            code = runtime.wait_exit(TIMEOUT)
        finally:
            runtime.stop()
    finally:
        emulator.stop()
    assert code == 1, runtime.output
    assert emulator.next_calls == 0, "INIT finished: the handler could have run"
    [posted] = emulator.init_errors
    assert posted.error_type == "BootstrapError"
    message = posted.body["errorMessage"]
    for name in ("API_TOKEN", "OTHER_FUNCTION", "MALFORMED", "SM_KEY"):
        assert name in message
    assert "SECRET_KEY" not in message
    files = _changed_files(world.folder, before)
    world.canaries.assert_absent(
        {
            "runtime output": runtime.output,
            "/init/error body": json.dumps(posted.body),
            "/init/error type": posted.error_type,
            **{f"file {name}": data for name, data in files.items()},
        }
    )


# -- Django: a real project, out of process ---------------------------------------------------


def _manage(world: World, temp_dir: Path, *args: str, settings: str, env: Mapping[str, str]) -> Process:
    from tests.test_django import _base_env

    full = {
        **_base_env(world.endpoint),
        "AWS_SECRET_ACCESS_KEY": world.env["AWS_SECRET_ACCESS_KEY"],
        "SECRETBOOT_TRANSPORT": world.env["SECRETBOOT_TRANSPORT"],
        "TMPDIR": str(temp_dir),
        "DJANGO_SETTINGS_MODULE": settings,
        **env,
    }
    before = _files(world.folder)
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=DJANGO_PROJECT,
        env=full,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Process(
        Run(tuple(args), done.returncode, done.stdout, done.stderr), _changed_files(world.folder, before)
    )


def _django_env(world: World) -> dict[str, str]:
    """The demo project's secrets, all canaries, all resolvable."""
    return {
        "SECRET_KEY": world.kms("DJANGO-KEY"),
        "SECRET_KEY_FALLBACK": world.ssm("DJANGO-OLD-KEY"),
        "DB_PASSWORD": world.ssm("DJANGO-DB"),
    }


@FRAMEWORK
def test_django_settings_that_cannot_resolve_stop_start_up(world: World, temp_dir: Path) -> None:
    env = {
        **_django_env(world),
        "DB_PASSWORD": "ssm:/canary/missing",
        "MALFORMED": f"kms:{world.plain('MALFORMED')}!",
        "WRONG_CONTEXT": world.kms("WRONG-CONTEXT", context={"app": "x"}),
    }
    process = _manage(world, temp_dir, "check", settings="demo.settings", env=env)
    assert process.run.returncode == 1, str(process.run)
    assert b"BootstrapError: secretboot could not resolve 3 variables:" in process.run.err
    world.canaries.assert_absent(_process_surfaces(process))


@FRAMEWORK
@pytest.mark.parametrize("options", [["--json"], []])
def test_django_secretboot_check_command(world: World, temp_dir: Path, options: list[str]) -> None:
    _check_file(world)
    env = _django_env(world)
    process = _manage(
        world,
        temp_dir,
        "secretboot_check",
        "--env-file",
        str(world.folder / ".env"),
        *options,
        settings="demo.settings",
        env=env,
    )
    assert process.run.returncode == 1, str(process.run)
    if options:
        statuses = {row["name"]: row["status"] for row in json.loads(process.run.out)}
        assert statuses == {**CHECK_STATUSES, **dict.fromkeys(env, "resolved")}
    world.canaries.assert_absent(_process_surfaces(process))


@FRAMEWORK
def test_django_settings_that_forget_to_resolve_fail_the_system_check(world: World, temp_dir: Path) -> None:
    data_key, wrapped = world.kms_data_key("DJANGO-DATA-KEY")
    secret = world.secret("SM")
    env = {
        **_django_env(world),
        "SECRETBOOT_DATA_KEY": wrapped,
        "DB_PASSWORD": world.sealed(data_key, "DB_PASSWORD", "DJANGO-SEALED"),
        "CACHE_PASSWORD": f"secretsmanager:{secret}#password",
        "EMAIL_HOST_PASSWORD": world.kms("EMAIL")[4:],
        "SECRETBOOT_KMS_VARS": "EMAIL_HOST_PASSWORD",
        "PAYMENTS_API_KEY": "{{resolve:ssm-secure:/canary/django-db}}",
    }
    process = _manage(world, temp_dir, "check", settings="demo.settings_forgetful", env=env)
    assert process.run.returncode == 1, str(process.run)
    assert process.run.err.count(b"secretboot.E001") == 5, str(process.run)
    world.canaries.assert_absent(_process_surfaces(process))


# -- Flask: a real app, in and out of process -------------------------------------------------


def _flask_env(world: World, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "SECRET_KEY": world.kms("FLASK-KEY"),
        "API_TOKEN": world.ssm("FLASK-TOKEN"),
        "DB_PASSWORD": "ssm:/canary/missing",
        "MALFORMED": f"kms:{world.plain('MALFORMED')}!",
        "SM_KEY": f"secretsmanager:{world.secret('SM')}#missing",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _flask_extension(
    world: World, monkeypatch: pytest.MonkeyPatch, case: str
) -> tuple[Any, SecretBoot, set[str]]:
    """An app and an extension set up to fail as ``case`` says; the canaries put in app.config."""
    from flask import Flask

    env = _flask_env(world, monkeypatch)
    app = Flask("canary")
    extension = SecretBoot()
    if case != "default":  # only the reference that fails in the way under test
        for name in ("DB_PASSWORD", "MALFORMED", "SM_KEY"):
            monkeypatch.delenv(name)
    if case == "prefix":
        monkeypatch.setenv("APP_DB", env["DB_PASSWORD"])
        extension = SecretBoot(prefix="APP_")
    elif case == "names":
        extension = SecretBoot(names=["SECRET_KEY", "NOT_SET"])
    elif case == "unresolved-secret-key":
        app.config["SECRET_KEY"] = world.kms("PRESET-KEY")
        app.config["SECRET_KEY_FALLBACKS"] = [world.kms("PRESET-OLD-KEY")]
        extension = SecretBoot(names=["API_TOKEN"])
    elif case == "flask-setting":
        monkeypatch.setenv("SESSION_COOKIE_NAME", world.kms("COOKIE-NAME"))
    return app, extension, world.canaries.found(repr(dict(app.config)))


@pytest.mark.parametrize("case", ["default", "prefix"])
def test_flask_extension_failures(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    app, extension, _ = _flask_extension(world, monkeypatch, case)
    config = dict(app.config)
    with observe(dict(os.environ)) as obs:
        obs.call(extension.init_app, app)
    assert isinstance(obs.error, BootstrapError), repr(obs.error)
    assert dict(app.config) == config, "a failed init_app changed app.config"
    obs.assert_clean()


@FRAMEWORK
@pytest.mark.parametrize("case", ["names", "unresolved-secret-key", "flask-setting", "django-fallbacks"])
def test_contrib_errors_keep_no_resolved_plaintext_in_their_frames(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    from secretboot.contrib.django import fallbacks

    if case == "django-fallbacks":
        monkeypatch.setenv("OLD_KEY", world.kms("OLD-KEY"))
        secretboot.bootstrap()
        monkeypatch.setenv("OLDER_KEY", world.kms("LATE-KEY"))  # set after bootstrap(): NotResolved
        with observe(dict(os.environ)) as obs:
            obs.call(fallbacks, "OLD_KEY", "OLDER_KEY")
    else:
        app, extension, config = _flask_extension(world, monkeypatch, case)
        with observe(dict(os.environ)) as obs:
            obs.call(extension.init_app, app)
        obs.inputs |= config  # the ciphertext the test itself put in app.config
    assert isinstance(obs.error, SecretbootError), repr(obs.error)
    # Everything but the frames' locals is clean: shown as a normal traceback, nothing leaks.
    surfaces = obs.surfaces()
    del surfaces["traceback with locals"]
    obs.canaries.assert_absent(surfaces)
    obs.assert_clean()


@FRAMEWORK
@pytest.mark.parametrize("options", [["--json"], [], ["--offline"]])
def test_flask_secretboot_check_command(
    world: World, observe: Observe, monkeypatch: pytest.MonkeyPatch, options: list[str]
) -> None:
    _flask_env(world, monkeypatch)
    with observe(dict(os.environ)) as obs:
        result = obs.call(CliRunner().invoke, flask_cli, ["check", *options])
    assert result.exit_code == 1, result.output
    if options == ["--json"]:
        rows = json.loads(result.stdout)
        assert {row["name"]: row["status"] for row in rows}["DB_PASSWORD"] == "ParameterNotFound"
    obs.canaries.assert_absent({"click output": result.output, "click stderr": result.stderr})
    obs.assert_clean()


@FRAMEWORK
@pytest.mark.parametrize("command", [["routes"], ["secretboot", "check"]])
def test_flask_app_that_cannot_start_out_of_process(
    world: World, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    from tests.test_flask import _flask

    _flask_env(world, monkeypatch)
    before = _files(world.folder)
    done = _flask(*command)
    assert done.returncode == 1, done.stderr
    if command == ["routes"]:
        assert "BootstrapError: secretboot could not resolve 3 variables:" in done.stderr
    else:  # the plugin command runs without the app, and prints the table
        assert "DB_PASSWORD" in done.stdout and "ParameterNotFound" in done.stdout
    world.canaries.assert_absent({"stdout": done.stdout, "stderr": done.stderr})
    assert _changed_files(world.folder, before) == {}
