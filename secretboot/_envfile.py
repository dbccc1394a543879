"""Editing a ``.env`` file in place: one variable's line changes, every other byte stays.

Parsing is python-dotenv's; each binding keeps its original text, so the file is
rebuilt from the originals with only the chosen bindings rewritten, a UTF-8
byte-order mark included. Writes are atomic (a temporary file in the folder of the
real file, then ``os.replace``): a symbolic link is written through and stays a link,
and the file keeps its owner, group and mode (a new file gets 0600). What cannot be
written that way is refused, the file left as it was: a dangling link, something other
than a regular file, a file with other hard links, an owner that cannot be kept, a file
changed since it was read. Nothing here logs or reports a value.
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
BOM = "\ufeff"

# What a file looked like when it was read: (device, inode, size, mtime in ns); () for "absent".
Identity = tuple[int, ...]
ABSENT: Identity = ()


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
        # A UTF-8 byte-order mark is kept aside and put back by with_values(): older
        # python-dotenv releases would read it as part of the first name.
        self._bom = BOM if text.startswith(BOM) else ""
        text = text[len(self._bom) :]
        self._text = text
        self._read_as: Identity | None = None
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
                env_file = cls(path, handle.read(), exists=True)
                env_file._read_as = _identity(os.fstat(handle.fileno()))
                return env_file
        except FileNotFoundError:
            if missing_ok:
                env_file = cls(path, "", exists=False)
                env_file._read_as = ABSENT
                return env_file
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
        return self._bom + text

    def write(self, text: str) -> None:
        """Replace the file atomically with ``text``; see ``write_atomic``.

        Refused if the file changed (or appeared) since ``load`` read it: the text was
        built from what was read, and writing it would undo the other change.
        """
        write_atomic(self.path, text, expected=self._read_as)


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


def write_atomic(path: str | os.PathLike[str], text: str, *, expected: Identity | None = None) -> None:
    """Write ``text`` to ``path`` via a temporary file beside the real file and ``os.replace``.

    A symbolic link (or a chain of them) is resolved and the file it names replaced, so the
    link stays a link. The new file gets the old one's owner, group and mode (0600 when
    there was none). Refused, with ``EnvFileWriteError``: a dangling or looping link,
    something other than a regular file, a file with several hard links (replacing one name
    would leave the old content under the others), an owner or group that cannot be kept,
    and a file that is not ``expected`` (see ``EnvFile.write``) or changes while being
    written. On any failure the original file is untouched and the temporary file removed.
    """
    path = os.fspath(path)
    target, before = _real_file(path)
    where = _where(path, target)
    if expected is not None and (ABSENT if before is None else _identity(before)) != expected:
        raise EnvFileWriteError(f"{where}: changed since it was read; not written, run the command again")
    folder = os.path.dirname(target)
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as exc:
        raise EnvFileWriteError(f"{where}: cannot write in its folder ({type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            if before is None:
                os.fchmod(handle.fileno(), NEW_FILE_MODE)
            else:
                _keep_owner(handle.fileno(), before, where)
                # After fchown, which may clear the set-user-ID and set-group-ID bits.
                os.fchmod(handle.fileno(), stat.S_IMODE(before.st_mode))
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if not _unchanged(path, target, before):
            raise EnvFileWriteError(f"{where}: changed while it was being written; not written")
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise EnvFileWriteError(f"{where}: cannot be written ({type(exc).__name__})") from None
        raise
    _fsync_folder(folder)


def _identity(info: os.stat_result) -> Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _where(path: str, target: str) -> str:
    return path if target == os.path.abspath(path) else f"{path} (-> {target})"


def _real_file(path: str) -> tuple[str, os.stat_result | None]:
    """The absolute path of the file ``path`` names, symbolic links resolved, and its status.

    ``None`` for a file that does not exist yet (a dangling link is not that). Raises
    ``EnvFileWriteError`` for what ``write_atomic`` must not replace. (The OS errors
    suppressed below carry a file name at most, never content.)
    """
    try:
        os.lstat(path)
    except FileNotFoundError:
        return os.path.abspath(path), None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise EnvFileWriteError(f"{path}: cannot be examined ({type(exc).__name__}); not written") from None
    try:
        target = os.path.realpath(path, strict=True)
        info = os.stat(target)
    except OSError as exc:
        raise EnvFileWriteError(
            f"{path}: a symbolic link whose target is missing or cannot be resolved "
            f"({type(exc).__name__}); not written"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise EnvFileWriteError(f"{_where(path, target)}: not a regular file; not written")
    if info.st_nlink > 1:
        raise EnvFileWriteError(
            f"{_where(path, target)}: has {info.st_nlink} hard links; replacing it would leave "
            "the old content under the other names (keep one name, or use a symbolic link); not written"
        )
    return target, info


def _keep_owner(fd: int, before: os.stat_result, where: str) -> None:
    now = os.fstat(fd)
    if (now.st_uid, now.st_gid) == (before.st_uid, before.st_gid):
        return
    try:
        os.fchown(fd, before.st_uid, before.st_gid)
    except PermissionError:
        owner = f"{before.st_uid}:{before.st_gid}"
        raise EnvFileWriteError(
            f"{where}: cannot keep its owner and group ({owner}); run as its owner, or as root"
        ) from None


def _unchanged(path: str, target: str, before: os.stat_result | None) -> bool:
    """Does ``path`` still name ``target``, as it was (or still nothing)?

    This narrows the window for a concurrent change to the moment between this check and
    ``os.replace``; POSIX offers no rename that compares first.
    """
    try:
        now_target, now = _real_file(path)
    except EnvFileWriteError:
        return False
    if now_target != target or (now is None) != (before is None):
        return False
    if now is None or before is None:
        return True
    fields = ("st_dev", "st_ino", "st_nlink", "st_uid", "st_gid", "st_mode", "st_size", "st_mtime_ns")
    return all(getattr(now, name) == getattr(before, name) for name in fields)


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
