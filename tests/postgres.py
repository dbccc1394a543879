"""A throwaway PostgreSQL cluster for the tests: a temp dir, 127.0.0.1 on a free port, stopped by PID.

``postgres_cluster()`` runs ``initdb`` into a new temporary directory and ``pg_ctl start -w``;
the server listens on 127.0.0.1 (a free port, password logins: scram-sha-256) and on a unix
socket in the same directory (the superuser ``postgres``, trusted: that is how the tests
rotate passwords). On leaving, the postmaster is stopped by the PID in its ``postmaster.pid``
(SIGINT: fast shutdown, then SIGKILL after a timeout), whatever happened, and the directory is
removed.

PostgreSQL refuses to run as root: when the tests run as root (CI, this machine), the cluster
belongs to ``nobody`` (every Debian system has it; nothing needs creating) and ``initdb`` and
``pg_ctl`` run as that user. The binaries are looked up on PATH and then in Debian's
``/usr/lib/postgresql/<version>/bin``; when they are absent, ``PostgresMissing`` says what to
install (``.ci/run`` installs Debian's ``postgresql``): the tests fail, they are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"
RUN_AS_WHEN_ROOT = "nobody"
START_TIMEOUT = 60
STOP_TIMEOUT = 15
_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's layout (newest)."""
    found = shutil.which("pg_ctl")
    if found:
        bindir = Path(found).resolve().parent
        if all((bindir / name).exists() for name in _BINARIES):
            return bindir
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in versions:
        if all((bindir / name).exists() for name in _BINARIES):
            return bindir
    raise PostgresMissing(
        "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed: "
        "install Debian's postgresql package (apt-get install postgresql; .ci/run does) "
        "or put a PostgreSQL bin folder on PATH"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Postgres:
    """A running cluster: where it listens, its files, and a few superuser helpers."""

    host: str
    port: int
    socket_dir: Path
    data_dir: Path
    log_file: Path
    pid: int

    def admin(self, dbname: str = "postgres") -> Any:
        """A psycopg connection as the superuser, over the unix socket, in autocommit."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname, autocommit=True
        )

    def execute(self, sql: Any, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.admin(dbname) as conn:
            cursor = conn.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description else []

    def create_role(self, role: str, password: str, *, database: str) -> None:
        """A login role owning a new database of its own."""
        from psycopg import sql

        self.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), password))
        owner = sql.Identifier(role)
        self.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), owner))

    def set_password(self, role: str, password: str) -> None:
        """``ALTER ROLE ... PASSWORD``: from now on only the new password logs in (open sessions stay)."""
        from psycopg import sql

        self.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), password))

    def sessions(self, role: str) -> list[int]:
        """Backend PIDs of the role's open sessions."""
        rows = self.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s ORDER BY pid", role)
        return [int(row[0]) for row in rows]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _run_as() -> dict[str, Any]:
    """subprocess options that drop root for PostgreSQL, which refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(RUN_AS_WHEN_ROOT)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def _alive(pid: int) -> bool:
    """Running (a zombie that no one has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """Fast shutdown (SIGINT) of a postmaster; SIGKILL if it has not gone after ``timeout``."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """Start a cluster in a new temporary directory; stop it by PID and remove it on leaving."""
    bindir = find_bindir()
    run_as = _run_as()
    root = Path(tempfile.mkdtemp(prefix="secretboot-pg-"))
    data_dir, log_file = root / "data", root / "server.log"
    pid: int | None = None
    try:
        if run_as:
            os.chown(root, run_as["user"], run_as["group"])
        options: dict[str, Any] = {
            "cwd": root,
            "env": _server_env(),
            "capture_output": True,
            "text": True,
            "check": False,
            **run_as,
        }
        done = subprocess.run(
            [
                str(bindir / "initdb"),
                f"--pgdata={data_dir}",
                f"--username={SUPERUSER}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=START_TIMEOUT,
            **options,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        port = free_port()
        server_options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={port}",
                f"-c unix_socket_directories={root}",
                "-c lc_messages=C",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=40",
                "-c shared_buffers=16MB",
            ]
        )
        done = subprocess.run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-D",
                str(data_dir),
                "-l",
                str(log_file),
                "-o",
                server_options,
            ],
            timeout=START_TIMEOUT + 10,
            **options,
        )
        pid = _postmaster_pid(data_dir)
        if done.returncode != 0 or pid is None:
            log = log_file.read_text(errors="replace") if log_file.exists() else ""
            output = f"{done.stdout}\n{done.stderr}\n{log}"
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}):\n{output}")
        yield Postgres("127.0.0.1", port, root, data_dir, log_file, pid)
    finally:
        if pid is None:
            pid = _postmaster_pid(data_dir)  # a start that failed half-way
        if pid is not None:
            stop_pid(pid)
        shutil.rmtree(root, ignore_errors=True)
