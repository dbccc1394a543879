"""Editing .env files in place: other bytes untouched, atomic, mode kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
