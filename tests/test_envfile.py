"""Editing .env files in place: other bytes untouched, atomic, mode kept."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretboot._envfile import EnvFile, EnvFileError, EnvFileWriteError, write_atomic

ORIGINAL = (
    "# settings for local development\r\n"
    'export DEBUG="1"\n'
    "\n"
    "SECRET_KEY='plain value'  # the old way\n"
    'MULTI="line one\nline two"\n'
    "   export   INDENTED=x\n"
    "LAST=no-newline"
)


def _file(tmp_path: Path, text: str = ORIGINAL, mode: int = 0o640) -> Path:
    path = tmp_path / ".env"
    path.write_bytes(text.encode())
    path.chmod(mode)
    return path


def test_only_the_named_lines_change(tmp_path: Path) -> None:
    env = EnvFile.load(_file(tmp_path))
    assert env.get("SECRET_KEY") == "plain value"
    text = env.with_values({"SECRET_KEY": "kms:AAAA", "INDENTED": "y", "LAST": "z", "NEW": "n"})
    assert text == (
        "# settings for local development\r\n"
        'export DEBUG="1"\n'
        "\n"
        "SECRET_KEY=kms:AAAA\n"
        'MULTI="line one\nline two"\n'
        "   export   INDENTED=y\n"
        "LAST=z\r\n"
        "NEW=n\r\n"  # new lines end as the file's first line does
    )


def test_write_keeps_mode_and_bytes(tmp_path: Path) -> None:
    path = _file(tmp_path, mode=0o640)
    env = EnvFile.load(path)
    env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (
        path.read_bytes()
        == ORIGINAL.replace("SECRET_KEY='plain value'  # the old way", "SECRET_KEY=kms:AAAA").encode()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_new_file_is_private(tmp_path: Path) -> None:
    env = EnvFile.load(tmp_path / "new.env", missing_ok=True)
    assert not env.exists
    env.write(env.with_values({"A": "kms:AAAA"}))
    assert stat.S_IMODE((tmp_path / "new.env").stat().st_mode) == 0o600
    assert (tmp_path / "new.env").read_text() == "A=kms:AAAA\n"


def test_failed_replace_leaves_the_original_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path)

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(EnvFileWriteError, match="cannot be written"):
        write_atomic(path, "SECRET_KEY=kms:AAAA\n")
    assert path.read_bytes() == ORIGINAL.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_interrupted_write_leaves_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path)

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "SECRET_KEY=kms:AAAA\n")
    assert path.read_bytes() == ORIGINAL.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_duplicate_variable_is_an_error_naming_it(tmp_path: Path) -> None:
    env = EnvFile.load(_file(tmp_path, "A=secret-one\nA=secret-two\n"))
    with pytest.raises(EnvFileError) as info:
        env.get("A")
    assert "A is set 2 times" in str(info.value)
    assert "secret" not in str(info.value).replace(str(tmp_path), "")


def test_unreadable_file_names_the_file_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"A=\xff\xfe-not-utf8\n")
    with pytest.raises(EnvFileError, match="cannot be read") as info:
        EnvFile.load(path)
    assert "not-utf8" not in str(info.value)
    with pytest.raises(EnvFileError, match="no such file"):
        EnvFile.load(tmp_path / "missing.env")


LINE = st.one_of(
    st.from_regex(r"# [a-z =]{0,20}", fullmatch=True),
    st.just(""),
    st.from_regex(r"(export )?[A-Z][A-Z0-9_]{0,8}=[a-z0-9:/.]{0,20}", fullmatch=True),
    st.from_regex(r"[A-Z][A-Z0-9_]{0,8}='[a-z ]{0,10}'", fullmatch=True),
)


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(LINE, max_size=8),
    after=st.lists(LINE, max_size=8),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_rewriting_one_variable_keeps_every_other_line(
    before: list[str], after: list[str], newline: str
) -> None:
    # TARGET appears once; the other lines use other names.
    lines = [*before, "TARGET=old-value", *after]
    text = newline.join(lines) + newline
    env = EnvFile(".env", text, exists=True)
    rewritten = env.with_values({"TARGET": "kms:AAAA"})
    assert rewritten == newline.join([*before, "TARGET=kms:AAAA", *after]) + newline


# -- where a rewrite goes, and what it keeps (issue 12) ----------------------------------------

SECRET_LINE = "SECRET_KEY='plain value'  # the old way"
REWRITTEN = ORIGINAL.replace(SECRET_LINE, "SECRET_KEY=kms:AAAA").encode()


def _rewrite_secret(path: Path) -> None:
    env = EnvFile.load(path)
    env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _plaintext_anywhere(root: Path) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and b"plain value" in p.read_bytes()
    ]


@pytest.mark.parametrize("layout", ["relative", "absolute", "chain"])
def test_symlinked_file_is_written_through_and_stays_a_link(tmp_path: Path, layout: str) -> None:
    # release/.env -> shared/.env, as deploy tools (Capistrano, Deployer) lay it out.
    (tmp_path / "shared").mkdir()
    (tmp_path / "release").mkdir()
    target = _file(tmp_path / "shared")
    os.chown(target, 4242, 4444)
    link = tmp_path / "release" / ".env"
    if layout == "relative":
        link.symlink_to(Path("..") / "shared" / ".env")
    elif layout == "absolute":
        link.symlink_to(target)
    else:  # release/.env -> current/.env -> ../shared/.env
        (tmp_path / "current").mkdir()
        (tmp_path / "current" / ".env").symlink_to(Path("..") / "shared" / ".env")
        link.symlink_to(Path("..") / "current" / ".env")
    before = {p: os.readlink(p) for p in tmp_path.rglob(".env") if p.is_symlink()}

    _rewrite_secret(link)

    assert {p: os.readlink(p) for p in tmp_path.rglob(".env") if p.is_symlink()} == before
    assert target.read_bytes() == REWRITTEN
    assert link.read_bytes() == REWRITTEN
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4444, 0o640)
    assert _plaintext_anywhere(tmp_path) == []
    assert [name for name in _all_files(tmp_path) if name.endswith(".tmp")] == []


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / ".env"
    link.symlink_to(tmp_path / "missing" / ".env")
    env = EnvFile.load(link, missing_ok=True)
    with pytest.raises(EnvFileWriteError, match="symbolic link") as info:
        env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
    assert str(link) in str(info.value)
    assert "kms:AAAA" not in str(info.value)
    assert link.is_symlink()
    assert os.readlink(link) == str(tmp_path / "missing" / ".env")
    assert _all_files(tmp_path) == [".env"]


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.env").symlink_to("b.env")
    (tmp_path / "b.env").symlink_to("a.env")
    with pytest.raises(EnvFileWriteError, match="symbolic link"):
        write_atomic(tmp_path / "a.env", "SECRET_KEY=kms:AAAA\n")
    assert os.readlink(tmp_path / "a.env") == "b.env"
    assert os.readlink(tmp_path / "b.env") == "a.env"
    assert _all_files(tmp_path) == ["a.env", "b.env"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "link to a directory", "link to a fifo"])
def test_something_other_than_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    thing = tmp_path / "thing"
    if "directory" in kind:
        thing.mkdir()
    else:
        os.mkfifo(thing)
    path = tmp_path / ".env" if kind.startswith("link") else thing
    if kind.startswith("link"):
        path.symlink_to("thing")
    listing = _all_files(tmp_path)
    with pytest.raises(EnvFileWriteError, match="not a regular file") as info:
        write_atomic(path, "SECRET_KEY=kms:AAAA\n")
    assert str(path) in str(info.value)
    assert path.is_symlink() == kind.startswith("link")
    assert thing.is_dir() == ("directory" in kind)
    assert _all_files(tmp_path) == listing


def test_symlink_whose_target_folder_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root every folder is writable; a read-only mount is simulated where the temp file goes.
    (tmp_path / "shared").mkdir()
    (tmp_path / "release").mkdir()
    target = _file(tmp_path / "shared")
    link = tmp_path / "release" / ".env"
    link.symlink_to(target)
    real_mkstemp = tempfile.mkstemp

    def read_only_shared(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if Path(kwargs["dir"]) == tmp_path / "shared":
            raise PermissionError(13, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only_shared)
    env = EnvFile.load(link)
    with pytest.raises(EnvFileWriteError, match="cannot write in its folder") as info:
        env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
    assert str(link) in str(info.value)
    assert "plain value" not in str(info.value)
    assert link.is_symlink()
    assert target.read_bytes() == ORIGINAL.encode()
    assert _all_files(tmp_path) == ["release/.env", "shared/.env"]


@pytest.mark.parametrize(
    ("mode", "umask"),
    [(0o640, 0o022), (0o664, 0o077), (0o400, 0o777)],
    ids=["0640", "0664-umask077", "0400-umask777"],
)
def test_owner_group_and_mode_are_kept(tmp_path: Path, mode: int, umask: int) -> None:
    path = _file(tmp_path, mode=mode)
    os.chown(path, 4242, 4444)
    old = os.umask(umask)
    try:
        _rewrite_secret(path)
    finally:
        os.umask(old)
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4444, mode)
    assert path.read_bytes() == REWRITTEN
    assert _all_files(tmp_path) == [".env"]


def test_owner_that_cannot_be_kept_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a non-root user meets when rewriting a file another user owns.
    path = _file(tmp_path)
    os.chown(path, 4242, 4444)
    env = EnvFile.load(path)

    def not_permitted(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", not_permitted)
    with pytest.raises(EnvFileWriteError, match="owner and group") as info:
        env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
    assert "4242:4444" in str(info.value)
    assert "plain value" not in str(info.value)
    assert path.read_bytes() == ORIGINAL.encode()
    assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4444)
    assert _all_files(tmp_path) == [".env"]


def test_hard_linked_file_is_refused(tmp_path: Path) -> None:
    # os.replace would give .env a new inode and leave the plaintext under the other name.
    path = _file(tmp_path)
    os.link(path, tmp_path / "backup.env")
    env = EnvFile.load(path)
    with pytest.raises(EnvFileWriteError, match="2 hard links") as info:
        env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
    assert "plain value" not in str(info.value)
    assert path.read_bytes() == ORIGINAL.encode()
    assert os.path.samefile(path, tmp_path / "backup.env")
    assert _all_files(tmp_path) == [".env", "backup.env"]


BOM = "\ufeff"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_byte_order_mark_is_kept(tmp_path: Path, newline: str) -> None:
    text = newline.join([f"{BOM}FIRST=plain-one", "# comment", "SECOND='plain two'", ""])
    path = _file(tmp_path, text)
    env = EnvFile.load(path)
    assert env.names() == ["FIRST", "SECOND"]
    assert env.get("FIRST") == "plain-one"
    env.write(env.with_values({"FIRST": "kms:AAAA", "THIRD": "kms:CCCC"}))
    assert path.read_bytes() == newline.join(
        ["\ufeffFIRST=kms:AAAA", "# comment", "SECOND='plain two'", "THIRD=kms:CCCC", ""]
    ).encode("utf-8")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfFIRST=")
    again = EnvFile.load(path)
    assert again.names() == ["FIRST", "SECOND", "THIRD"]
    assert again.get("FIRST") == "kms:AAAA"


def test_byte_order_mark_alone_is_kept_before_new_lines(tmp_path: Path) -> None:
    path = _file(tmp_path, BOM)
    env = EnvFile.load(path)
    assert env.names() == []
    env.write(env.with_values({"A": "kms:AAAA"}))
    assert path.read_bytes() == b"\xef\xbb\xbfA=kms:AAAA\n"


def test_file_changed_since_it_was_read_is_refused(tmp_path: Path) -> None:
    # An editor saved the file while a KMS call was under way: keep the editor's version.
    path = _file(tmp_path)
    env = EnvFile.load(path)
    path.write_bytes(ORIGINAL.encode() + b"\nADDED=by-hand\n")
    with pytest.raises(EnvFileWriteError, match="changed since it was read"):
        env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
    assert path.read_bytes() == ORIGINAL.encode() + b"\nADDED=by-hand\n"
    assert _all_files(tmp_path) == [".env"]


def test_file_created_since_it_was_found_missing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    env = EnvFile.load(path, missing_ok=True)
    path.write_text("A=written-meanwhile\n")
    with pytest.raises(EnvFileWriteError, match="changed since it was read"):
        env.write(env.with_values({"A": "kms:AAAA"}))
    assert path.read_text() == "A=written-meanwhile\n"
    assert _all_files(tmp_path) == [".env"]


def test_file_changed_while_being_written_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path)
    real_fsync = os.fsync

    def edit_meanwhile(fd: int) -> None:
        real_fsync(fd)
        if not path.read_bytes().endswith(b"ADDED=x\n"):
            with path.open("ab") as handle:
                handle.write(b"\nADDED=x\n")

    monkeypatch.setattr(os, "fsync", edit_meanwhile)
    with pytest.raises(EnvFileWriteError, match="changed while"):
        write_atomic(path, "SECRET_KEY=kms:AAAA\n")
    assert path.read_bytes() == ORIGINAL.encode() + b"\nADDED=x\n"
    assert _all_files(tmp_path) == [".env"]


def test_owner_that_cannot_be_kept_is_refused_for_a_real_user(tmp_path: Path) -> None:
    # The same, without a stand-in: this process turns into "nobody" for the write.
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # tmp_path's parents are closed to other users
    try:
        folder.chmod(0o777)
        path = _file(folder, mode=0o666)
        os.chown(path, 4242, 4444)
        env = EnvFile.load(path)
        os.seteuid(65534)
        try:
            with pytest.raises(EnvFileWriteError, match=r"owner and group \(4242:4444\)"):
                env.write(env.with_values({"SECRET_KEY": "kms:AAAA"}))
        finally:
            os.seteuid(0)
        assert path.read_bytes() == ORIGINAL.encode()
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4444)
        assert _all_files(folder) == [".env"]
    finally:
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
