"""The ``secretboot`` command: thin wrappers over library functions, one exit point.

Plaintext is read from a file, the environment or stdin, never from argv (which
``ps`` shows), and never printed. Ciphertext is printed only by ``encrypt``,
whose whole point is to print it.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

from secretboot import __version__
from secretboot import _envelope as envelope
from secretboot import _transport as t
from secretboot._envfile import EnvFile, EnvFileWriteError
from secretboot._errors import BootstrapError, ReferenceSyntaxError, SecretbootError
from secretboot._keysource import KmsKeySource, LocalKeySource
from secretboot._reference import (
    KMS_PREFIX,
    SEALED_MAX_BLOB,
    SEALED_OVERHEAD,
    SEALED_PREFIX,
    KmsReference,
    SealedReference,
    SsmReference,
    is_reference,
    parse_reference,
    parse_sealed,
)
from secretboot._settings import (
    DATA_KEY,
    ENV_FILE,
    KMS_CONTEXT,
    LAMBDA_FUNCTION_NAME,
    LOCAL_KEY_FILE,
    RESERVED_CONTEXT_PREFIX,
    reserved_context_keys,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from secretboot._boto3 import Boto3Admin

OK = 0
FAILED = 1  # a secret could not be resolved, encrypted, stored or written
USAGE = 2  # bad arguments or input: a missing variable, an unreadable file, a value too large
CANNOT_EXECUTE = 126  # exec: the command exists but cannot be run
NOT_FOUND = 127  # exec: no such command
INTERRUPTED = 130  # Ctrl-C

_MEANINGS = {
    OK: 'success (including "nothing to change")',
    FAILED: "a secret could not be resolved, encrypted, stored or written",
    USAGE: "usage or input error (bad arguments, missing variable, unreadable file, value too large)",
    CANNOT_EXECUTE: "exec: the command cannot be executed",
    NOT_FOUND: "exec: the command was not found",
    INTERRUPTED: "interrupted",
}


def _exit_table(meanings: Mapping[int, str], footer: str = "") -> str:
    lines = [f"  {code:<3}  {meaning}" for code, meaning in meanings.items()]
    return "exit codes:\n" + "\n".join(lines) + "\n" + footer


# The whole table, in `secretboot --help` and the README.
EXIT_CODES = _exit_table(_MEANINGS)

_WRITES = {code: _MEANINGS[code] for code in (OK, FAILED, USAGE, INTERRUPTED)}

# Each command's --help lists the codes that command can return, and only those.
COMMAND_EXIT_CODES = {
    "migrate": _exit_table(_WRITES),
    "encrypt": _exit_table(
        {
            OK: "success",
            FAILED: "the value could not be encrypted or stored",
            USAGE: _MEANINGS[USAGE],
            INTERRUPTED: _MEANINGS[INTERRUPTED],
        }
    ),
    # The same words as `flask secretboot check` (secretboot/contrib/flask.py).
    "check": _exit_table(
        {
            OK: "every reference resolves (with --offline: parses)",
            FAILED: "a reference does not resolve",
            USAGE: "usage or input error (bad option, unreadable --env-file)",
            INTERRUPTED: _MEANINGS[INTERRUPTED],
        }
    ),
    "exec": _exit_table(
        {
            FAILED: "a secret could not be resolved (COMMAND was not run)",
            USAGE: "usage or input error (bad arguments, unreadable --env-file)",
            CANNOT_EXECUTE: "the command cannot be executed",
            NOT_FOUND: "the command was not found",
            INTERRUPTED: _MEANINGS[INTERRUPTED],
        },
        "  otherwise COMMAND's own exit code: exec replaces this process with it\n",
    ),
    "seal": _exit_table(_WRITES),
    "reseal": _exit_table(_WRITES),
    # keygen asks AWS nothing: whatever stops it is a usage or input error.
    "keygen": _exit_table(
        {
            OK: "success",
            USAGE: "usage or input error (the file exists, or cannot be created or written)",
            INTERRUPTED: _MEANINGS[INTERRUPTED],
        }
    ),
    "rotate": _exit_table(_WRITES),
}

KMS_PLAINTEXT_LIMIT = 4096  # bytes KMS Encrypt accepts
SEALED_MAX_PLAINTEXT = SEALED_MAX_BLOB - SEALED_OVERHEAD
DEFAULT_ENV_FILE = ".env"
CHECK_SOURCES = "secretboot check: read "  # the line on stderr saying what check read


class UsageError(SecretbootError):
    """Bad arguments or input: exit 2."""


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
    parser = _build_parser()
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
    except (BootstrapError, EnvFileWriteError) as exc:
        # A BootstrapError lists which variables failed and why.
        _error(str(exc).removeprefix("secretboot "))
        return FAILED
    except SecretbootError as exc:
        # Usage, configuration, syntax and unreadable-file errors.
        _error(str(exc))
        return USAGE
    except t.TransportError as exc:
        _error(f"AWS request failed: {exc}")
        return FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return INTERRUPTED
    except UnicodeError:  # text no encoding can write, say a lone surrogate in an argument
        _error("an argument or a file's text is not valid Unicode")
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


def _error(message: str) -> None:
    print(f"secretboot: {message}", file=sys.stderr)


def _build_parser() -> argparse.ArgumentParser:
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

    migrate = command(
        "migrate",
        _migrate,
        "Wrap a plaintext variable (say SECRET_KEY in .env) with KMS, once, in place.",
    )
    migrate.add_argument("name", metavar="NAME", help="the variable to wrap")
    migrate.add_argument("--key-id", required=True, help="KMS key id, ARN or alias to encrypt under")
    migrate.add_argument("--env-file", help=f"the file to read and rewrite (default: {DEFAULT_ENV_FILE})")
    migrate.add_argument(
        "--from-env", action="store_true", help="read the plaintext from this process's environment"
    )
    _context_options(migrate)
    migrate.add_argument(
        "--to-ssm", metavar="PARAM", help="store it as an SSM SecureString and write NAME=ssm:PARAM"
    )
    migrate.add_argument("--overwrite", action="store_true", help="with --to-ssm: replace an existing PARAM")
    migrate.add_argument(
        "--rotate",
        action="store_true",
        help="also replace the value with a fresh 32-byte key; keep the old one, wrapped, as NAME_FALLBACK",
    )

    encrypt = command("encrypt", _encrypt, "Encrypt stdin with KMS and print one kms:<base64> value.")
    encrypt.add_argument("--key-id", required=True, help="KMS key id, ARN or alias to encrypt under")
    _context_options(encrypt)
    encrypt.add_argument(
        "--ssm", metavar="PARAM", help="store it as an SSM SecureString instead and print ssm:PARAM"
    )
    encrypt.add_argument("--overwrite", action="store_true", help="with --ssm: replace an existing PARAM")

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

    seal = command(
        "seal",
        _seal,
        "Seal values in a .env file under one data key (envelope encryption): one KMS call at start-up.",
    )
    seal.add_argument(
        "names", nargs="*", metavar="NAME", help="variables to seal (default: every plain value in the file)"
    )
    seal.add_argument("--env-file", help=f"the file to read and rewrite (default: {DEFAULT_ENV_FILE})")
    _key_source_options(
        seal,
        key_help="KMS key id, ARN or alias to wrap a new data key with",
        file_help=f"a key file from 'secretboot keygen' to wrap a new data key with (no AWS; "
        f"default: ${LOCAL_KEY_FILE})",
    )
    _context_options(seal)

    reseal = command("reseal", _reseal, "Seal every sealed value again under a fresh data key.")
    reseal.add_argument("--env-file", help=f"the file to read and rewrite (default: {DEFAULT_ENV_FILE})")
    _key_source_options(
        reseal,
        key_help="KMS key to wrap the new data key with (default: the one wrapping the current data key)",
        file_help="a key file to wrap the new data key with (no AWS; default: the one wrapping the "
        f"current data key, ${LOCAL_KEY_FILE})",
    )
    _context_options(reseal)

    keygen = command("keygen", _keygen, "Write a new 256-bit local master key file (mode 0600).")
    keygen.add_argument("path", metavar="PATH", help="the key file to create (never overwritten)")
    keygen.add_argument("--force", action="store_true", help="write it even inside a git work tree")

    rotate = command("rotate", _rotate, "Re-wrap a kms: value under another key or context (ReEncrypt).")
    rotate.add_argument("name", metavar="NAME", help="the variable holding kms:<base64>")
    rotate.add_argument("--key-id", required=True, help="the KMS key to wrap it under from now on")
    rotate.add_argument("--env-file", help=f"the file to read and rewrite (default: {DEFAULT_ENV_FILE})")
    _context_options(rotate)
    rotate.add_argument(
        "--source-context",
        action="append",
        default=[],
        metavar="K=V",
        help="the current encryption context (default: the new one)",
    )
    rotate.add_argument(
        "--source-lambda-function", metavar="FN", help="the current context is LambdaFunctionName=FN"
    )
    return parser


def _context_options(parser: argparse.ArgumentParser) -> None:
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


def _key_source_options(parser: argparse.ArgumentParser, *, key_help: str, file_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key-id", help=key_help)
    group.add_argument("--local-key-file", metavar="PATH", help=file_help)


def _context(
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


def _describe_context(context: Mapping[str, str] | None) -> str:
    if not context:
        return "no encryption context"
    return "encryption context " + ", ".join(f"{k}={v}" for k, v in context.items())


def _admin() -> Boto3Admin:
    from secretboot._boto3 import Boto3Admin

    return Boto3Admin({k: v for k, v in os.environ.items() if k.startswith("AWS_")})


def _open_env_file(path: str | None, *, create: bool) -> EnvFile:
    if path is not None:
        return EnvFile.load(path, missing_ok=create)
    if os.path.exists(DEFAULT_ENV_FILE) or create:
        return EnvFile.load(DEFAULT_ENV_FILE, missing_ok=create)
    raise UsageError(f"no {DEFAULT_ENV_FILE} here: pass --env-file PATH, or --from-env")


# -- migrate ----------------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    name: str = args.name
    env_file = _open_env_file(args.env_file, create=args.from_env)
    in_file = env_file.get(name)  # also refuses a file that sets NAME twice: which one wins is unclear
    _refuse_expansion(env_file, name, "wrapping", own=not args.from_env)
    plaintext = os.environ.get(name) if args.from_env else in_file
    where = "the environment" if args.from_env else env_file.path
    if plaintext is None:
        raise UsageError(f"{name} is not set in {where}")
    if is_reference(plaintext):
        ref = parse_reference(plaintext, variable=name)
        kind = ref.kind if ref is not None else "reference"
        print(f"{name} in {where} is already a {kind} reference; nothing changed.")
        return OK
    if args.rotate and args.to_ssm:
        raise UsageError("--rotate wraps both keys with KMS; it cannot be combined with --to-ssm")
    fallback = f"{name}_FALLBACK"
    if args.rotate and fallback in env_file:
        raise UsageError(f"{fallback} is already set in {env_file.path}; remove it first")
    context = _context(args.context, args.lambda_function)
    _check_plaintext(name, plaintext, to_ssm=bool(args.to_ssm), ssm_option="--to-ssm PARAM")

    admin = _admin()
    updates: dict[str, str] = {}
    if args.to_ssm:
        _store_in_ssm(admin, args.to_ssm, plaintext, key_id=args.key_id, overwrite=args.overwrite)
        updates[name] = f"ssm:{args.to_ssm}"
    elif args.rotate:
        fresh = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
        updates[name] = _wrap(admin, name, fresh, key_id=args.key_id, context=context)
        updates[fallback] = _wrap(admin, fallback, plaintext, key_id=args.key_id, context=context)
    else:
        updates[name] = _wrap(admin, name, plaintext, key_id=args.key_id, context=context)

    env_file.write(env_file.with_values(updates))
    for variable, value in updates.items():
        print(f"{variable} in {env_file.path}: now {_summary(value)}")
    if args.rotate:
        print(
            f"{name} is a fresh 32-byte key; the old key is {fallback}. Keep both during the rollout "
            "(Django: SECRET_KEY_FALLBACKS; Fernet: MultiFernet), then delete the fallback."
        )
    _next_steps(name, list(updates), env_file.path, context, args.from_env)
    return OK


def _refuse_expansion(env_file: EnvFile, name: str, what: str, *, own: bool = True) -> None:
    """bootstrap() reads .env files with python-dotenv's ${VAR} expansion, before resolving:
    a protected value that uses it, or that others expand, would reach the app changed."""
    if own and env_file.expands(name):
        raise UsageError(
            f"{name} in {env_file.path} uses ${{VAR}} expansion, which {what} would freeze as the "
            "literal text; write the value out in full first"
        )
    users = env_file.expanded_in(name)
    if users:
        raise UsageError(
            f"{name} is expanded into {', '.join(users)} as ${{{name}}}, which {what} would turn "
            "into ciphertext there"
        )


def _check_plaintext(name: str, plaintext: str, *, to_ssm: bool, ssm_option: str) -> None:
    size = len(plaintext.encode("utf-8"))
    if size == 0:
        raise UsageError(f"{name} is empty; there is nothing to protect")
    if not to_ssm and size > KMS_PLAINTEXT_LIMIT:
        raise UsageError(
            f"{name} is {size} bytes; KMS encrypts at most {KMS_PLAINTEXT_LIMIT}. Store it in SSM "
            f"instead ({ssm_option}) or seal it (secretboot seal: envelope encryption, up to 1 MiB)"
        )


def _wrap(
    admin: Boto3Admin, name: str, plaintext: str, *, key_id: str, context: dict[str, str] | None
) -> str:
    """Encrypt, then decrypt and compare (constant time) before anything is written."""
    data = plaintext.encode("utf-8")
    blob = admin.encrypt(data, key_id=key_id, context=context)
    roundtrip, _ = admin.decrypt(blob, context=context, key_id=key_id)
    if not hmac.compare_digest(roundtrip, data):
        raise t.TransportError(
            "VerificationFailed", f"{name}: decrypting the new ciphertext did not give it back"
        )
    return str(KmsReference(blob))


def _store_in_ssm(admin: Boto3Admin, param: str, plaintext: str, *, key_id: str, overwrite: bool) -> None:
    SsmReference(param)  # the name must be one bootstrap() can read back
    admin.put_secure_string(param, plaintext, key_id=key_id, overwrite=overwrite)
    answer = admin.get_parameters([param])
    stored = next((p.value for p in answer.found), None)
    if stored is None or not hmac.compare_digest(stored.encode(), plaintext.encode()):
        raise t.TransportError(
            "VerificationFailed", f"{param}: reading the parameter back did not give it back"
        )


def _summary(value: str) -> str:
    """What a reference is, without its ciphertext."""
    ref = parse_reference(value)
    if isinstance(ref, KmsReference):
        return f"kms (KMS ciphertext, {len(ref.ciphertext)} bytes)"
    return value  # ssm:PARAM names the parameter: not a secret


def _next_steps(
    name: str, names: list[str], path: str, context: Mapping[str, str] | None, from_env: bool
) -> None:
    print("Next:")
    shown = " and ".join(names)
    if context and set(context) == {"LambdaFunctionName"}:
        function = context["LambdaFunctionName"]
        print(f"  - set {shown} in {function}'s environment to the new value(s) in {path};")
        print("    bootstrap() there decrypts with this context by default.")
    elif context:
        print(f"  - set {shown} where the app runs to the new value(s) in {path}, and")
        print(f"    SECRETBOOT_KMS_CONTEXT='{json.dumps(dict(context))}' next to it.")
    else:
        print(f"  - set {shown} where the app runs to the new value(s) in {path}.")
    if from_env:
        print(f"  - remove the plaintext {name} from wherever this environment got it.")
    print(f"  - check it: secretboot check --env-file {path}")


# -- encrypt ----------------------------------------------------------------------------------


def _encrypt(args: argparse.Namespace) -> int:
    context = _context(args.context, args.lambda_function)
    plaintext = _read_stdin(sys.stdin)
    _check_plaintext("the input", plaintext, to_ssm=bool(args.ssm), ssm_option="--ssm PARAM")
    admin = _admin()
    if args.ssm:
        _store_in_ssm(admin, args.ssm, plaintext, key_id=args.key_id, overwrite=args.overwrite)
        print(f"ssm:{args.ssm}")
    else:
        print(_wrap(admin, "the input", plaintext, key_id=args.key_id, context=context))
    return OK


def _read_stdin(stream: TextIO) -> str:
    """The plaintext: typed without echo on a terminal, else read whole from the pipe.

    One trailing newline is dropped, so ``echo value | secretboot encrypt`` wraps ``value``.
    """
    if stream.isatty():
        import getpass

        return getpass.getpass("Plaintext (not echoed): ")
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode()
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None:  # raised here, not in the except block, which holds the input as context
        raise UsageError("the input is not UTF-8 text")
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


# -- check ------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    from secretboot._check import check

    env_file, sources = _check_sources(args)
    rows = check(env_file=env_file, offline=args.offline)
    # On stderr, so that --json stays one JSON document on stdout; once read, not before.
    print(f"{CHECK_SOURCES}{sources}", file=sys.stderr)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    elif not rows:
        print(f"no references found in {sources}")
    else:
        header = ("NAME", "KIND", "TARGET", "STATUS")
        table = [header] + [
            (r.name, r.kind, r.target, r.status + (f": {r.detail}" if r.detail else "")) for r in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(3)]
        for line in table:
            print("  ".join(line[i].ljust(widths[i]) for i in range(3)) + "  " + line[3])
    return OK if all(row.ok for row in rows) else FAILED


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
        _error(f"{argv[0]}: command not found")
        return NOT_FOUND
    except PermissionError:
        _error(f"{argv[0]}: cannot execute")
        return CANNOT_EXECUTE
    except OSError as exc:
        _error(f"{argv[0]}: cannot execute ({type(exc).__name__})")
        return CANNOT_EXECUTE
    return OK  # not reached: exec does not return


# -- seal, reseal, keygen ---------------------------------------------------------------------


def _seal(args: argparse.Namespace) -> int:
    env_file = _open_env_file(args.env_file, create=False)
    context = _context(args.context, args.lambda_function)
    existing = _data_key(env_file)
    if existing is None and not (args.key_id or _local_key_file(args, env_file)):
        raise UsageError(f"no {DATA_KEY} in {env_file.path} yet: pass --key-id KEY or --local-key-file PATH")
    names = _names_to_seal(env_file, args.names)
    if not names:
        print(f"nothing to seal in {env_file.path}")
        return OK
    if existing is None:
        source = _key_source(args, env_file, context, provider="local" if args.local_key_file else None)
        data_key, wrapped = source.new()
        updates = {DATA_KEY: str(wrapped)}
    else:
        # Values sealed together share the data key already there.
        wanted = "kms" if args.key_id else "local" if args.local_key_file else existing.provider
        if wanted != existing.provider:
            raise UsageError(
                f"{DATA_KEY} in {env_file.path} is wrapped by {existing.provider}; "
                "move it first with secretboot reseal"
            )
        source = _key_source(args, env_file, context, provider=existing.provider)
        data_key, updates = _unwrap(source, existing, env_file), {}
    cipher = envelope.aead(data_key)
    updates.update(_sealed_values(cipher, {name: _plain(env_file, name) for name in names}))
    env_file.write(env_file.with_values(updates))
    for name in names:
        print(f"{name} in {env_file.path}: now sealed ({_sealed_size(updates[name])} bytes)")
    if DATA_KEY in updates:
        print(f"{DATA_KEY} in {env_file.path}: a new data key, wrapped by {source.describe()}")
    _sealed_next_steps(env_file, args, context, source)
    return OK


def _reseal(args: argparse.Namespace) -> int:
    env_file = _open_env_file(args.env_file, create=False)
    context = _context(args.context, args.lambda_function)
    existing = _data_key(env_file)
    if existing is None:
        raise UsageError(f"{DATA_KEY} is not set in {env_file.path}: nothing was sealed there")
    sealed = {}
    for name in env_file.names():
        value = env_file.get(name) or ""
        if value.startswith(SEALED_PREFIX) and not name.startswith(("AWS_", "SECRETBOOT_")):
            sealed[name] = parse_sealed(value, variable=name)
    old_source = _key_source(args, env_file, context, provider=existing.provider, old=True)
    old_cipher = envelope.aead(_unwrap(old_source, existing, env_file))
    plaintexts = {name: _open(old_cipher, name, ref, env_file) for name, ref in sealed.items()}
    if args.key_id or args.local_key_file:
        new_source = _key_source(args, env_file, context, provider="local" if args.local_key_file else "kms")
    elif isinstance(old_source, KmsKeySource):
        new_source = KmsKeySource(_admin(), old_source.key_arn, context)
    else:
        new_source = old_source
    data_key, wrapped = new_source.new()
    updates = {DATA_KEY: str(wrapped)}
    updates.update(_sealed_values(envelope.aead(data_key), plaintexts))
    env_file.write(env_file.with_values(updates))
    print(
        f"{env_file.path}: {len(sealed)} sealed value(s) under a new data key, "
        f"wrapped by {new_source.describe()}"
    )
    if isinstance(old_source, KmsKeySource) and old_source.was_old_form:
        print(
            f"{DATA_KEY} was in the old form (no {envelope.DATA_KEY_PURPOSE[0]} context pair), "
            "which bootstrap() no longer opens; the new one has it."
        )
    _sealed_next_steps(env_file, args, context, new_source)
    return OK


def _keygen(args: argparse.Namespace) -> int:
    envelope.write_key_file(args.path, force=args.force)
    print(f"wrote a new 256-bit key to {args.path} (mode 0600). Back it up: sealed values need it.")
    print(f"Next: secretboot seal --local-key-file {args.path}, and set {LOCAL_KEY_FILE}={args.path} where")
    print("the app runs. Keep the key out of version control.")
    return OK


def _data_key(env_file: EnvFile) -> envelope.WrappedKey | None:
    raw = env_file.get(DATA_KEY)
    if raw is None:
        return None
    try:
        return envelope.parse_data_key(raw)
    except ReferenceSyntaxError as exc:
        raise UsageError(f"{DATA_KEY} in {env_file.path}: {exc.reason}") from None


def _local_key_file(args: argparse.Namespace, env_file: EnvFile) -> str | None:
    path: str | None = args.local_key_file or os.environ.get(LOCAL_KEY_FILE) or env_file.get(LOCAL_KEY_FILE)
    return path or None


def _key_source(
    args: argparse.Namespace,
    env_file: EnvFile,
    context: Mapping[str, str] | None,
    *,
    provider: str | None,
    old: bool = False,
) -> KmsKeySource | LocalKeySource:
    """The key source for ``provider`` (``None``: whichever option was given).

    ``old``: the source of the current data key, whose key file is the configured
    one (--local-key-file then names the new key's).
    """
    if provider == "local" or (provider is None and not args.key_id):
        path = (
            (os.environ.get(LOCAL_KEY_FILE) or env_file.get(LOCAL_KEY_FILE) or args.local_key_file)
            if old
            else _local_key_file(args, env_file)
        )
        if not path:
            raise UsageError(
                f"the data key is wrapped by a key file: set {LOCAL_KEY_FILE} or --local-key-file"
            )
        return LocalKeySource(path)
    if old:  # reseal: also a data key in the form from before the reserved context pair
        return KmsKeySource(_admin(), None, context, old_form=True)
    return KmsKeySource(_admin(), args.key_id, context)


def _unwrap(source: KmsKeySource | LocalKeySource, wrapped: envelope.WrappedKey, env_file: EnvFile) -> bytes:
    try:
        return source.unwrap(wrapped)
    except envelope.IntegrityError:
        raise UsageError(f"{DATA_KEY} in {env_file.path} does not open with {source.describe()}") from None
    except t.TransportError as exc:
        if exc.reason != t.INVALID_CIPHERTEXT:
            raise
        raise t.TransportError(
            exc.reason,
            f"{DATA_KEY} in {env_file.path} did not decrypt: pass the --context or --lambda-function "
            "it was sealed with (a data key wrapped by an older secretboot, without the "
            f"{envelope.DATA_KEY_PURPOSE[0]} context pair, must first be migrated: secretboot reseal)",
        ) from None


def _names_to_seal(env_file: EnvFile, names: Sequence[str]) -> list[str]:
    """The named variables, or every plain non-empty value; never configuration."""
    for name in names:
        if name.startswith(("AWS_", "SECRETBOOT_")):
            raise UsageError(f"{name} is configuration, which bootstrap() never resolves; not sealed")
        value = env_file.get(name)
        if value is None:
            raise UsageError(f"{name} is not set in {env_file.path}")
        if not value:
            raise UsageError(f"{name} is empty in {env_file.path}; there is nothing to seal")
        _refuse_expansion(env_file, name, "sealing")
    chosen = []
    for name in names or env_file.names():
        value = env_file.get(name) or ""
        if name.startswith(("AWS_", "SECRETBOOT_")) or not value:
            continue
        if is_reference(value):
            ref = parse_reference(value, variable=name)
            if names:
                kind = ref.kind if ref is not None else "unknown"
                print(f"{name} in {env_file.path} is already a reference ({kind}); left as it is.")
            continue
        if env_file.expands(name) or env_file.expanded_in(name):
            print(f"{name} in {env_file.path} uses or feeds ${{VAR}} expansion; left as it is.")
            continue
        chosen.append(name)
    return chosen


def _plain(env_file: EnvFile, name: str) -> bytes:
    plaintext = (env_file.get(name) or "").encode("utf-8")
    if len(plaintext) > SEALED_MAX_PLAINTEXT:
        raise UsageError(
            f"{name} is {len(plaintext)} bytes; a sealed value holds at most {SEALED_MAX_PLAINTEXT}"
        )
    return plaintext


def _sealed_values(cipher: AESGCM, plaintexts: Mapping[str, bytes]) -> dict[str, str]:
    """Seal each value for its name, and open it again before anything is written."""
    sealed = {}
    for name, plaintext in plaintexts.items():
        ref = envelope.seal(cipher, name, plaintext)
        if not hmac.compare_digest(envelope.open_sealed(cipher, name, ref), plaintext):
            raise t.TransportError("VerificationFailed", f"{name}: the sealed value did not open to itself")
        sealed[name] = str(ref)
    return sealed


def _open(cipher: AESGCM, name: str, ref: SealedReference, env_file: EnvFile) -> bytes:
    try:
        return envelope.open_sealed(cipher, name, ref)
    except envelope.IntegrityError:
        raise UsageError(
            f"{name} in {env_file.path} does not open with {DATA_KEY} (edited, copied from another "
            "variable, or sealed under another data key); nothing was changed"
        ) from None


def _sealed_size(value: str) -> int:
    return len(parse_sealed(value).blob)


def _sealed_next_steps(
    env_file: EnvFile,
    args: argparse.Namespace,
    context: Mapping[str, str] | None,
    source: KmsKeySource | LocalKeySource,
) -> None:
    print("Next:")
    print(f"  - ship {env_file.path}'s sealed values and {DATA_KEY} together: they open only as a set.")
    # What bootstrap() needs to find in its environment to open them.
    if isinstance(source, LocalKeySource):
        setting = f"{LOCAL_KEY_FILE}={shlex.quote(source.path)}"
    elif context and set(context) == {"LambdaFunctionName"}:
        setting = f"{LAMBDA_FUNCTION_NAME}={shlex.quote(context['LambdaFunctionName'])}"
    elif context:
        setting = f"{KMS_CONTEXT}={shlex.quote(json.dumps(dict(context)))}"
    else:
        setting = ""
    if setting:
        print(f"  - bootstrap() opens them with {setting} in its environment.")
    print(f"  - check it: {setting + ' ' if setting else ''}secretboot check --env-file {env_file.path}")


# -- rotate -----------------------------------------------------------------------------------


def _rotate(args: argparse.Namespace) -> int:
    name: str = args.name
    env_file = _open_env_file(args.env_file, create=False)
    value = env_file.get(name)
    if value is None:
        raise UsageError(f"{name} is not set in {env_file.path}")
    ref = parse_reference(value, variable=name)
    if not isinstance(ref, KmsReference):
        raise UsageError(f"{name} in {env_file.path} is not KMS ciphertext ({KMS_PREFIX}...)")
    context = _context(args.context, args.lambda_function)
    source = _context(args.source_context, args.source_lambda_function, option="--source-context")
    # Without an explicit source context, try the new one, then none, as bootstrap() does
    # (values encrypted with the AWS CLI or before ~2021 carry no context).
    sources = [source] if source else ([context, None] if context else [None])
    # The data key is wrapped under the user's context plus the reserved pair, before and after.
    wrapping: Callable[[dict[str, str] | None], Mapping[str, str] | None] = (
        envelope.data_key_context if name == DATA_KEY else lambda user: user
    )
    admin = _admin()
    mismatch = t.TransportError(t.INVALID_CIPHERTEXT, "")
    for source_context in sources:
        try:
            blob, key_arn = admin.re_encrypt(
                ref.ciphertext,
                source_context=wrapping(source_context),
                key_id=args.key_id,
                context=wrapping(context),
            )
            break
        except t.TransportError as exc:
            if exc.reason != t.INVALID_CIPHERTEXT:
                raise
            mismatch = exc
    else:  # no source context fitted
        if name == DATA_KEY:
            raise t.TransportError(
                mismatch.reason,
                f"{DATA_KEY} in {env_file.path} did not decrypt: pass the --source-context it was "
                "sealed with (a data key wrapped by an older secretboot, without the "
                f"{envelope.DATA_KEY_PURPOSE[0]} context pair, is migrated by secretboot reseal)",
            )
        raise mismatch
    new_value = str(KmsReference(blob))
    env_file.write(env_file.with_values({name: new_value}))
    print(f"{name} in {env_file.path}: re-wrapped under {key_arn} with {_describe_context(context)}")
    print(f"Next: set {name} where the app runs to the new value in {env_file.path}.")
    return OK
