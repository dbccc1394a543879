"""The ``secretboot`` command: thin wrappers over library functions, one exit point.

Plaintext is read from a file, the environment or stdin, never from argv (which
``ps`` shows), and never printed. Ciphertext is printed only by ``encrypt``,
whose whole point is to print it.

This module holds the parser, ``main`` (the one place errors become exit codes) and the
console script; each family of commands lives in its own module with its options:
``_wrap`` (migrate, encrypt, rotate), ``_seal`` (seal, reseal, keygen), ``_run`` (check, exec).
The work itself is in ``secretboot._workflows``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from secretboot import __version__
from secretboot import _transport as t
from secretboot._cli import _run, _seal, _wrap
from secretboot._cli._base import (
    CANNOT_EXECUTE,
    CHECK_SOURCES,
    COMMAND_EXIT_CODES,
    EXIT_CODES,
    FAILED,
    INTERRUPTED,
    NOT_FOUND,
    OK,
    USAGE,
    UsageError,
    error,
)
from secretboot._cli._run import render_check
from secretboot._envfile import EnvFileWriteError
from secretboot._errors import BootstrapError, SecretbootError, VerificationError

__all__ = [
    "CANNOT_EXECUTE",
    "CHECK_SOURCES",
    "COMMAND_EXIT_CODES",
    "EXIT_CODES",
    "FAILED",
    "INTERRUPTED",
    "NOT_FOUND",
    "OK",
    "USAGE",
    "UsageError",
    "build_parser",
    "entry_point",
    "main",
    "render_check",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would exit by itself; route it through main()'s single exit.
        command = self.prog.removeprefix("secretboot").strip()
        message = _without_values(message)
        raise UsageError(f"{command}: {message}" if command else message)


def _without_values(message: str) -> str:
    """argparse's ``message`` with nothing the command line gave: only option names, metavars
    and choices, which come from the parser. Arguments can hold what must not be echoed
    (a plaintext typed where it does not belong, a token): the forms argparse quotes a value
    in are rewritten, and any form not known here is replaced as a whole."""
    if message.startswith("argument "):
        name, sep, problem = message.removeprefix("argument ").partition(": ")
        if sep:  # an action's name (option strings or metavar) holds no ": "
            return f"argument {name}: {_problem_without_value(problem)}"
    if message.startswith(("the following arguments are required: ", "one of the arguments ")):
        return message  # names from the parser
    if message.startswith("unrecognized arguments"):
        return f"unrecognized arguments (not repeated here); {_PLAINTEXT_NEVER_IN_ARGV}"
    if message.startswith("ambiguous option: ") and " could match " in message:
        return "ambiguous option: could match" + message[message.rfind(" could match ") + 12 :]
    return "invalid arguments (not repeated here); see --help"


def _problem_without_value(problem: str) -> str:
    if problem.startswith(("expected ", "not allowed with argument ")):
        return problem  # counts and option names
    if problem.startswith("invalid choice") and " (choose from " in problem:
        return "invalid choice" + problem[problem.rfind(" (choose from ") :]
    if problem.startswith("unknown parser ") and " (choices: " in problem:
        return "invalid choice" + problem[problem.rfind(" (choices: ") :]
    if problem.startswith("invalid ") and " value: " in problem:
        return problem[: problem.index(" value: ")] + " value"  # "invalid int value"
    if problem.startswith("ignored explicit argument"):
        return "takes no value"
    return "invalid value"


_PLAINTEXT_NEVER_IN_ARGV = "plaintext is read from stdin or a file, never from arguments"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never calls ``sys.exit``)."""
    parser = build_parser()
    _tolerant_output()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # counted, never repeated: a stray argument may be a misplaced plaintext
            raise UsageError(
                f"{args.command + ': ' if args.command else ''}{len(extras)} unrecognized "
                f"argument(s), not repeated here; {_PLAINTEXT_NEVER_IN_ARGV}"
            )
        _check_values(args)
        if args.command is None:
            parser.print_help(sys.stderr)
            return USAGE
        code: int = args.run(args)
        return code
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else OK
    except (BootstrapError, EnvFileWriteError, VerificationError) as exc:
        # A BootstrapError lists which variables failed and why.
        error(str(exc).removeprefix("secretboot "))
        return FAILED
    except SecretbootError as exc:
        # Usage, configuration, syntax and unreadable-file errors.
        error(str(exc))
        return USAGE
    except t.TransportError as exc:
        error(f"AWS request failed: {exc}")
        return FAILED
    except KeyboardInterrupt:
        error("interrupted")
        return INTERRUPTED
    except UnicodeError:  # text no encoding can write, say a lone surrogate in an argument
        error("an argument or a file's text is not valid Unicode")
        return USAGE


def _tolerant_output() -> None:
    """Paths from argv that are not UTF-8 must print, not crash after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


# Options that take a list; every other option takes one string (or is a flag).
_LIST_OPTIONS = frozenset({"argv", "context", "names", "source_context"})


def _check_values(args: argparse.Namespace) -> None:
    """argparse (3.11) turns ``--option=--`` into ``[]``: refuse what is not a string."""
    for name, value in vars(args).items():
        if name in _LIST_OPTIONS:
            bad = not isinstance(value, list) or not all(isinstance(item, str) for item in value)
        else:
            bad = isinstance(value, list)
        if bad:
            raise UsageError(f"--{name.replace('_', '-')}: expected a value")


def entry_point() -> None:
    """The console script: the process's single exit."""
    sys.exit(main())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="secretboot",
        description="Resolve, check and create KMS- and SSM-backed secrets in the environment.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"secretboot {__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=COMMAND_EXIT_CODES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(command=name, run=run)
        return sub

    # In the order `secretboot --help` lists them.
    _wrap.add_commands(command)  # migrate, encrypt, rotate
    _run.add_commands(command)  # check, exec
    _seal.add_commands(command)  # seal, reseal, keygen
    return parser
