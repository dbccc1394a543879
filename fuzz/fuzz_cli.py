"""Fuzz target: the ``secretboot`` command line, every subcommand and option, in process.

Contract: ``secretboot._cli.main(argv)`` returns one of the documented exit codes (0, 1, 2,
126, 127, 130) and raises nothing; neither stdout nor stderr holds the canary planted in the
values it reads from ``.env`` files, key files, the environment or stdin. Paths and variable
names from argv may come back; a stray or invalid argument is never repeated by a usage error
(tests/test_cli.py checks that with a table), but argv is not the canary's place here.

Each run starts in a fresh copy of a working folder holding a hostile ``.env`` (from the
input), a key file, sealed, KMS, duplicate and non-UTF-8 ``.env`` files. No AWS is reachable
(no credentials, every endpoint a closed local port). ``exec`` runs nothing: ``os.execvp`` is
replaced for the run. argv words never hold '/' (so the CLI cannot write outside the working
folder).

    python fuzz/fuzz_cli.py -max_total_time=60
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile

try:
    from fuzz import _harness as h
except ImportError:  # run as a script: fuzz/ is sys.path[0]
    import _harness as h  # type: ignore[no-redef,import-not-found,unused-ignore]

COMMANDS, OPTIONS = h.cli_vocabulary()
STDINS = (b"", b"\n", h.CANARY.encode(), b"\xff\xfe" + h.CANARY.encode(), (h.CANARY * 500).encode())

_folder: str | None = None


def _work_folder() -> str:
    global _folder
    if _folder is None:
        _folder = tempfile.mkdtemp(prefix="secretboot-fuzz-cli-")
        atexit.register(shutil.rmtree, _folder, ignore_errors=True)
    return _folder


def word_from(reader: h.Reader) -> str:
    if reader.byte() % 3:
        return reader.pick(h.CLI_WORDS)
    return h.safe_word(reader.text(24))


def argv_from(reader: h.Reader) -> list[str]:
    if reader.byte() % 4:  # mostly argv that parses, so that the commands themselves run
        argv = h.well_formed_argv(reader.pick(COMMANDS), reader, lambda: word_from(reader))
        if reader.byte() % 4 == 0:
            argv.insert(reader.number(len(argv) + 1), word_from(reader))
        return argv
    argv = [reader.pick(COMMANDS)] if reader.byte() % 8 else []
    for _ in range(reader.number(9)):
        kind = reader.byte() % 4
        if kind == 0:
            argv.append(reader.pick(OPTIONS))
        elif kind == 1:
            argv.append(reader.pick(h.CLI_WORDS))
        elif kind == 2:
            argv.append(reader.pick(OPTIONS) + "=" + reader.pick(h.CLI_WORDS))
        else:
            argv.append(h.safe_word(reader.text(24)))
    return argv


def env_text(reader: h.Reader) -> bytes:
    """The hostile ``.env``: lines whose values hold the canary."""
    lines = []
    for _ in range(reader.number(6)):
        name = reader.pick(
            ("A", "PLAIN", "K", "S1", "DUP", "SECRETBOOT_DATA_KEY", "SECRETBOOT_LOCAL_KEY_FILE")
        )
        lines.append(f"{name}={h.hostile_value(reader)}")
    text = "\n".join(lines)
    return text.encode("utf-8", "surrogatepass")


def TestOneInput(data: bytes) -> None:
    reader = h.Reader(data)
    folder = _work_folder()
    h.clean_folder(folder)
    paths = h.write_fixtures(folder, env_text(reader))
    argv = argv_from(reader)
    stdin = STDINS[reader.number(len(STDINS))]
    environ = h.unreachable_aws(PORT, credentials=False) | {"PLAIN_FROM_ENV": h.CANARY, "HOME": folder}
    allowed = h.env_file_names(paths)
    with h.timed(f"secretboot {argv!r}", budget=30.0):
        result = h.run_cli(argv, cwd=folder, environ=environ, stdin=stdin)
    h.check_cli(result, argv, allowed)


PORT = h.closed_port()

if __name__ == "__main__":
    h.fuzz_main(TestOneInput, sys.argv)
