"""``check`` and ``exec``: what an app would get at start-up, reported or handed to a command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from secretboot._cli._base import (
    CANNOT_EXECUTE,
    CHECK_SOURCES,
    DEFAULT_ENV_FILE,
    FAILED,
    NOT_FOUND,
    OK,
    Command,
    UsageError,
    error,
)
from secretboot._settings import ENV_FILE

if TYPE_CHECKING:
    from secretboot._check import Row


def add_commands(command: Command) -> None:
    check = command("check", _check, "List every reference, its target and whether it resolves.")
    check.add_argument(
        "--env-file",
        help=f"a .env file to read too (default: {DEFAULT_ENV_FILE} if present, as migrate and seal read it)",
    )
    check.add_argument("--no-env-file", action="store_true", help="read the process environment only")
    check.add_argument("--offline", action="store_true", help="only parse; ask AWS nothing")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")

    run = command("exec", _exec, "Resolve everything, then replace this process with COMMAND.")
    run.add_argument("--env-file", help="a .env file to read too (as bootstrap(env_file=...))")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")


# -- check ------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from secretboot._check import check

    env_file, sources = _check_sources(args)
    rows = check(env_file=env_file, offline=args.offline)
    # On stderr, so that --json stays one JSON document on stdout; once read, not before.
    print(f"{CHECK_SOURCES}{sources}", file=sys.stderr)
    render_check(rows, sources, sys.stdout, as_json=args.json)
    return OK if all(row.ok for row in rows) else FAILED


def render_check(rows: Sequence[Row], sources: str, out: TextIO, *, as_json: bool = False) -> None:
    """``check``'s report: a table (or JSON) of every reference and whether it resolves."""
    if as_json:
        print(json.dumps([row.as_dict() for row in rows], indent=2), file=out)
    elif not rows:
        print(f"no references found in {sources}", file=out)
    else:
        header = ("NAME", "KIND", "TARGET", "STATUS")
        table = [header] + [
            (r.name, r.kind, r.target, r.status + (f": {r.detail}" if r.detail else "")) for r in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(3)]
        for line in table:
            print("  ".join(line[i].ljust(widths[i]) for i in range(3)) + "  " + line[3], file=out)


def _check_sources(args: argparse.Namespace) -> tuple[str | None, str]:
    """The env file ``check`` reads (as bootstrap() would, else ./.env if present) and how to say so.

    A check that skipped the .env which migrate and seal write would report an all-clear
    for a project whose references all live there.
    """
    if args.no_env_file and args.env_file:
        raise UsageError("--env-file and --no-env-file: choose one")
    if args.env_file:
        return args.env_file, f"the environment and {args.env_file}"
    configured = os.environ.get(ENV_FILE)
    if configured:
        return None, f"the environment and {configured} (from {ENV_FILE})"  # bootstrap() reads it
    if not args.no_env_file and os.path.isfile(DEFAULT_ENV_FILE):
        return DEFAULT_ENV_FILE, f"the environment and {DEFAULT_ENV_FILE}"
    return None, "the environment"


# -- exec -------------------------------------------------------------------------------------


def _exec(args: argparse.Namespace) -> int:
    import secretboot

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("exec needs a command: secretboot exec -- COMMAND [ARGS...]")
    # export: the plaintext (and the file's values) go into this environment,
    # which the command inherits; this process is replaced right after.
    secretboot.bootstrap(env_file=args.env_file, export=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - running the user's command is the point
    except FileNotFoundError:
        error(f"{argv[0]}: command not found")
        return NOT_FOUND
    except PermissionError:
        error(f"{argv[0]}: cannot execute")
        return CANNOT_EXECUTE
    except OSError as exc:
        error(f"{argv[0]}: cannot execute ({type(exc).__name__})")
        return CANNOT_EXECUTE
    return OK  # not reached: exec does not return
