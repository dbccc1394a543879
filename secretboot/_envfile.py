"""Editing a ``.env`` file in place: one variable's line changes, every other byte stays.

Parsing is python-dotenv's; each binding keeps its original text, so the file is
rebuilt from the originals with only the chosen bindings rewritten. Writes are
atomic (a temporary file in the same folder, then ``os.replace``) and keep the
file's mode; a new file gets 0600. Nothing here logs or reports a value.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Mapping

from secretboot._errors import SecretbootError

NEW_FILE_MODE = 0o600


class EnvFileError(SecretbootError):
    """The file cannot be read, or is ambiguous about the variable."""


class EnvFileWriteError(EnvFileError):
    """The file cannot be written; it is left as it was."""


class EnvFile:
    """A parsed ``.env`` file. ``get`` reads a value; ``with_values`` rewrites lines."""

    def __init__(self, path: str | os.PathLike[str], text: str, *, exists: bool) -> None:
        from dotenv.parser import parse_stream

        self.path = os.fspath(path)
        self.exists = exists
        self._text = text
        bindings = list(parse_stream(io.StringIO(text)))
        self._chunks = [(b.key, b.original.string) for b in bindings]
        self._values = {b.key: b.value for b in bindings if b.key is not None}
        self._counts: dict[str, int] = {}
        for key, _ in self._chunks:
            if key is not None:
                self._counts[key] = self._counts.get(key, 0) + 1

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = False) -> EnvFile:
        reason = ""
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                return cls(path, handle.read(), exists=True)
        except FileNotFoundError:
            if missing_ok:
                return cls(path, "", exists=False)
            reason = "no such file"
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
            reason = f"cannot be read ({type(exc).__name__})"
        # Raised outside the except blocks: a UnicodeDecodeError holds the file's bytes.
        raise EnvFileError(f"{os.fspath(path)}: {reason}")

    def __contains__(self, name: object) -> bool:
        return name in self._counts

    def names(self) -> list[str]:
        """Every variable the file sets, in order of first appearance."""
        return list(self._counts)

    def get(self, name: str) -> str | None:
        """The value of ``name``; an error if it is set more than once (which wins is unclear)."""
        if self._counts.get(name, 0) > 1:
            raise EnvFileError(f"{self.path}: {name} is set {self._counts[name]} times; keep one")
        return self._values.get(name)

    def expands(self, name: str) -> bool:
        """Does ``bootstrap()`` read ``name`` differently, through python-dotenv's ``${VAR}`` expansion?"""
        if "$" not in (self._values.get(name) or ""):
            return False
        from dotenv import dotenv_values

        return dotenv_values(stream=io.StringIO(self._text)).get(name) != self._values.get(name)

    def expanded_in(self, name: str) -> list[str]:
        """The variables whose values expand ``${name}`` when ``bootstrap()`` reads the file."""
        from dotenv.variables import Variable, parse_variables

        return [
            other
            for other, value in self._values.items()
            if value
            and "$" in value
            and any(isinstance(atom, Variable) and atom.name == name for atom in parse_variables(value))
        ]

    def with_values(self, values: Mapping[str, str]) -> str:
        """The file's text with each named variable set; new ones are appended in order."""
        pending = dict(values)
        out = []
        for key, original in self._chunks:
            if key is not None and key in pending:
                out.append(_rewrite(original, key, pending.pop(key)))
            else:
                out.append(original)
        text = "".join(out)
        if pending:
            # New lines end the way the file's first line does.
            first = re.search(r"\r\n|\n|\r", text)
            newline = first[0] if first else "\n"
            if text and not text.endswith(("\n", "\r")):
                text += newline
            text += "".join(f"{key}={value}{newline}" for key, value in pending.items())
        return text

    def write(self, text: str) -> None:
        """Replace the file atomically with ``text``, keeping its mode (0600 when new)."""
        write_atomic(self.path, text)


def _rewrite(original: str, key: str, value: str) -> str:
    """``original`` (one binding's text) with its value replaced, its layout kept.

    Everything up to the ``=`` stays as written: leading blank lines, indentation,
    ``export``, and the key itself, quoted or not; so does the line ending (LF, CRLF or a
    lone CR). Each candidate is parsed back, and used only if it reads as ``key=value``.
    """
    ending = re.search(r"(\r\n|\n|\r)$", original)
    end = ending[0] if ending else ""
    body = original[: len(original) - len(end)]
    candidates = []
    head = re.match(r"""\s*(?:export[^\S\r\n]+)?(?:'[^']*'|"[^"]*"|[^=#\s]+)""", body)
    if head is not None:
        equals = re.match(r"[^\S\r\n]*=", body[head.end() :])
        kept = body[: head.end() + equals.end()] if equals else head[0] + "="
        candidates.append(f"{kept}{value}{end}")
    candidates.append(f"{key}={value}{end}")
    from dotenv.parser import parse_stream

    for line in candidates:
        if [(b.key, b.value) for b in parse_stream(io.StringIO(line)) if b.key] == [(key, value)]:
            return line
    raise EnvFileWriteError(f"cannot rewrite the line that sets {key!r} so that it reads back")


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    On any failure the original file is untouched and the temporary file removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise EnvFileWriteError(f"{path}: cannot write in its folder ({type(exc).__name__})") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise EnvFileWriteError(f"{path}: cannot be written ({type(exc).__name__})") from None
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
