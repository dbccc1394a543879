"""What every command shares: exit codes, the usage error, the options and helpers they repeat."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from secretboot._envfile import EnvFile
from secretboot._errors import SecretbootError
from secretboot._settings import RESERVED_CONTEXT_PREFIX, reserved_context_keys

if TYPE_CHECKING:
    from secretboot._boto3 import Boto3Admin

OK = 0
FAILED = 1  # a secret could not be resolved, encrypted, stored or written
USAGE = 2  # bad arguments or input: a missing variable, an unreadable file, a value too large
CANNOT_EXECUTE = 126  # exec: the command exists but cannot be run
NOT_FOUND = 127  # exec: no such command
INTERRUPTED = 130  # Ctrl-C

MEANINGS = {
    OK: 'success (including "nothing to change")',
    FAILED: "a secret could not be resolved, encrypted, stored or written",
    USAGE: "usage or input error (bad arguments, missing variable, unreadable file, value too large)",
    CANNOT_EXECUTE: "exec: the command cannot be executed",
    NOT_FOUND: "exec: the command was not found",
    INTERRUPTED: "interrupted",
}


def exit_table(meanings: Mapping[int, str], footer: str = "") -> str:
    lines = [f"  {code:<3}  {meaning}" for code, meaning in meanings.items()]
    return "exit codes:\n" + "\n".join(lines) + "\n" + footer


# The whole table, in `secretboot --help` and the README.
EXIT_CODES = exit_table(MEANINGS)

_WRITES = {code: MEANINGS[code] for code in (OK, FAILED, USAGE, INTERRUPTED)}

# Each command's --help lists the codes that command can return, and only those.
COMMAND_EXIT_CODES = {
    "migrate": exit_table(_WRITES),
    "encrypt": exit_table(
        {
            OK: "success",
            FAILED: "the value could not be encrypted or stored",
            USAGE: MEANINGS[USAGE],
            INTERRUPTED: MEANINGS[INTERRUPTED],
        }
    ),
    # The same words as `flask secretboot check` (secretboot/contrib/flask.py).
    "check": exit_table(
        {
            OK: "every reference resolves (with --offline: parses)",
            FAILED: "a reference does not resolve",
            USAGE: "usage or input error (bad option, unreadable --env-file)",
            INTERRUPTED: MEANINGS[INTERRUPTED],
        }
    ),
    "exec": exit_table(
        {
            FAILED: "a secret could not be resolved (COMMAND was not run)",
            USAGE: "usage or input error (bad arguments, unreadable --env-file)",
            CANNOT_EXECUTE: "the command cannot be executed",
            NOT_FOUND: "the command was not found",
            INTERRUPTED: MEANINGS[INTERRUPTED],
        },
        "  otherwise COMMAND's own exit code: exec replaces this process with it\n",
    ),
    "seal": exit_table(_WRITES),
    "reseal": exit_table(_WRITES),
    # keygen asks AWS nothing: whatever stops it is a usage or input error.
    "keygen": exit_table(
        {
            OK: "success",
            USAGE: "usage or input error (the file exists, or cannot be created or written)",
            INTERRUPTED: MEANINGS[INTERRUPTED],
        }
    ),
    "rotate": exit_table(_WRITES),
}

DEFAULT_ENV_FILE = ".env"
CHECK_SOURCES = "secretboot check: read "  # the line on stderr saying what check read

# Adds one subcommand: (name, handler, help) -> its parser.
Command = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


class UsageError(SecretbootError):
    """Bad arguments or input: exit 2."""


def error(message: str) -> None:
    print(f"secretboot: {message}", file=sys.stderr)


def context_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="K=V",
        help="encryption context pair; repeat for more (then set SECRETBOOT_KMS_CONTEXT to match)",
    )
    parser.add_argument(
        "--lambda-function",
        metavar="FN",
        help="use the Lambda console's context, LambdaFunctionName=FN (what bootstrap() tries in FN)",
    )


def key_source_options(parser: argparse.ArgumentParser, *, key_help: str, file_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key-id", help=key_help)
    group.add_argument("--local-key-file", metavar="PATH", help=file_help)


def env_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", help=f"the file to read and rewrite (default: {DEFAULT_ENV_FILE})")


def parse_context(
    pairs: Sequence[str], function: str | None, *, option: str = "--context"
) -> dict[str, str] | None:
    if pairs and function:
        raise UsageError(f"{option} and the Lambda function option are mutually exclusive")
    if function:
        return {"LambdaFunctionName": function}
    context = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes K=V pairs")
        context[key] = value
    if reserved_context_keys(context):
        # Those keys mark the sealed values' data key; see envelope.data_key_context.
        raise UsageError(
            f"{option}: encryption context keys starting with {RESERVED_CONTEXT_PREFIX} are secretboot's own"
        )
    return context or None


def admin() -> Boto3Admin:
    from secretboot._boto3 import Boto3Admin

    return Boto3Admin({k: v for k, v in os.environ.items() if k.startswith("AWS_")})


def open_env_file(path: str | None, *, create: bool, otherwise: str = "") -> EnvFile:
    """``path``, else ./.env; ``otherwise`` says what else the command could read instead."""
    if path is not None:
        return EnvFile.load(path, missing_ok=create)
    if os.path.exists(DEFAULT_ENV_FILE) or create:
        return EnvFile.load(DEFAULT_ENV_FILE, missing_ok=create)
    raise UsageError(f"no {DEFAULT_ENV_FILE} here: pass --env-file PATH{otherwise}")
