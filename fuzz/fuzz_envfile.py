"""Fuzz target: ``.env`` files of arbitrary bytes, as ``bootstrap()`` and the CLI read them.

Contract: ``bootstrap(env_file=...)``, ``check(offline=True)`` and ``EnvFile.load`` with its
readers raise nothing but ``SecretbootError``, and no message holds the canary planted in the
file's values (variable names and reference targets may show: they are names). No AWS is
reachable (every endpoint is a closed local port), so a reference fails at once.

Rewriting one variable (what migrate, seal and rotate do) must leave every other variable as
it was and give the new value back (or refuse with ``EnvFileWriteError``).

    python fuzz/fuzz_envfile.py -max_total_time=60
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

try:
    from fuzz import _harness as h
except ImportError:  # run as a script: fuzz/ is sys.path[0]
    import _harness as h  # type: ignore[no-redef,import-not-found,unused-ignore]

from secretboot import SecretbootError
from secretboot._check import check
from secretboot._envfile import EnvFile, EnvFileError

KEYS = (
    "A",
    "B",
    "DB_PASSWORD",
    "export A",
    " A",
    "A ",
    "'A'",
    '"B"',
    "SECRETBOOT_KMS_VARS",
    "SECRETBOOT_EXPORT",
)
SEPARATORS = ("=", " = ", "=\t", ":", "")
QUOTES = ("", "'", '"', "`")
ENDINGS = ("\n", "\r\n", "\n\n", "", " # comment\n", "\\\n")
GARBAGE = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"#", b"'", b'"', b"${", b"\\")
SETTINGS = (
    "SECRETBOOT_EXPORT=1\n",
    "SECRETBOOT_KMS_VARS=A,B\n",
    "SECRETBOOT_BINARY_VARS=A\n",
    "SECRETBOOT_SSM_PATHS=/app\n",
    "SECRETBOOT_KMS_CONTEXT={bad\n",
    "SECRETBOOT_DATA_KEY=local:AAAA\n",
    "SECRETBOOT_LOCAL_KEY_FILE=missing.key\n",
    "AWS_ACCESS_KEY_ID=\n",
    "SECRETBOOT_TIMEOUT=900\n",
)

_folder: str | None = None


def _path() -> str:
    global _folder
    if _folder is None:
        _folder = tempfile.mkdtemp(prefix="secretboot-fuzz-envfile-")
        atexit.register(shutil.rmtree, _folder, ignore_errors=True)
    return os.path.join(_folder, "hostile.env")


def file_bytes(reader: h.Reader) -> bytes:
    """Raw bytes, or lines of KEY=VALUE with hostile values (holding the canary) and garbage."""
    if reader.byte() % 4 == 0:
        return reader.rest()
    out = bytearray()
    for _ in range(reader.number(8)):
        kind = reader.byte() % 6
        if kind == 0:
            out += reader.pick(GARBAGE)
        elif kind == 1:
            out += reader.pick(SETTINGS).encode()
        else:
            quote = reader.pick(QUOTES)
            value = h.hostile_value(reader) if kind < 4 else h.plant(reader.text(32), reader.byte())
            line = reader.pick(KEYS) + reader.pick(SEPARATORS) + quote + value + quote + reader.pick(ENDINGS)
            out += line.encode("utf-8", "surrogatepass")
    return bytes(out)


def check_envfile(path: str, allowed: set[str]) -> None:
    try:
        env_file = EnvFile.load(path)
    except EnvFileError as exc:
        h.assert_no_echo(str(exc), allowed, where="EnvFile.load error")
        return
    for name in env_file.names():
        try:
            value = env_file.get(name)
        except EnvFileError as exc:
            h.assert_no_echo(str(exc), allowed, where="EnvFile.get error")
            continue
        env_file.expands(name)
        env_file.expanded_in(name)
        try:
            rewritten = EnvFile(path, env_file.with_values({name: "kms:AAAA"}), exists=True)
        except EnvFileError as exc:  # a line it cannot rewrite so that it reads back: refused
            h.assert_no_echo(str(exc), allowed, where="EnvFile.with_values error")
            continue
        assert rewritten.get(name) == "kms:AAAA", f"{name!r} does not read back after a rewrite"
        for other in env_file.names():
            if other != name and env_file._counts[other] == 1:
                assert rewritten.get(other) == env_file.get(other), f"rewriting {name!r} changed {other!r}"
        assert value is None or isinstance(value, str)


def TestOneInput(data: bytes) -> None:
    reader = h.Reader(data)
    path = _path()
    content = file_bytes(reader)
    with open(path, "wb") as handle:
        handle.write(content)
    allowed = h.env_file_names([path]) | h.shown_forms([path])

    check_envfile(path, allowed)

    environ = h.unreachable_aws(PORT)
    h.check_bootstrap(environ, env_file=path, allowed=allowed)
    try:
        with h.timed("check --offline"):
            rows = check(environ=environ, env_file=path, offline=True)
    except SecretbootError as exc:
        h.assert_no_echo(str(exc), allowed, where="check error")
    else:
        for row in rows:
            h.assert_no_echo(f"{row.kind} {row.status} {row.detail}", where="check row")
            h.assert_no_echo(f"{row.name} {row.target}", allowed, where="check row")


PORT = h.closed_port()

if __name__ == "__main__":
    h.fuzz_main(TestOneInput, sys.argv)
