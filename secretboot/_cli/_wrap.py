"""``migrate``, ``encrypt`` and ``rotate``: one value at a time, wrapped by KMS (or stored in SSM)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from secretboot import _envelope as envelope
from secretboot import _transport as t
from secretboot import _workflows as w
from secretboot._cli._base import (
    OK,
    Command,
    UsageError,
    admin,
    context_options,
    env_file_option,
    open_env_file,
    parse_context,
)
from secretboot._reference import KMS_PREFIX, KmsReference, is_reference, parse_reference
from secretboot._settings import DATA_KEY


def add_commands(command: Command) -> None:
    migrate = command(
        "migrate",
        _migrate,
        "Wrap a plaintext variable (say SECRET_KEY in .env, or in a Lambda function's environment) "
        "with KMS, once, in place.",
    )
    migrate.add_argument("name", metavar="NAME", help="the variable to wrap")
    migrate.add_argument("--key-id", required=True, help="KMS key id, ARN or alias to encrypt under")
    env_file_option(migrate)
    migrate.add_argument(
        "--from-env", action="store_true", help="read the plaintext from this process's environment"
    )
    context_options(migrate)
    migrate.add_argument(
        "--apply",
        action="store_true",
        help="with --lambda-function FN: read NAME from FN's environment and write it back wrapped "
        "(only if FN has not changed meanwhile); no .env involved",
    )
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
    context_options(encrypt)
    encrypt.add_argument(
        "--ssm", metavar="PARAM", help="store it as an SSM SecureString instead and print ssm:PARAM"
    )
    encrypt.add_argument("--overwrite", action="store_true", help="with --ssm: replace an existing PARAM")

    rotate = command("rotate", _rotate, "Re-wrap a kms: value under another key or context (ReEncrypt).")
    rotate.add_argument("name", metavar="NAME", help="the variable holding kms:<base64>")
    rotate.add_argument("--key-id", required=True, help="the KMS key to wrap it under from now on")
    env_file_option(rotate)
    context_options(rotate)
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


# -- migrate ----------------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    if args.apply:
        return _migrate_function(args)
    name: str = args.name
    env_file = open_env_file(
        args.env_file,
        create=args.from_env,
        otherwise=", or --from-env"
        + (
            f", or --apply to migrate {args.lambda_function}'s own environment"
            if args.lambda_function
            else ""
        ),
    )
    in_file = env_file.get(name)  # also refuses a file that sets NAME twice: which one wins is unclear
    w.refuse_expansion(env_file, name, "wrapping", own=not args.from_env)
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
    context = parse_context(args.context, args.lambda_function)
    w.check_plaintext(name, plaintext, to_ssm=bool(args.to_ssm), ssm_option="--to-ssm PARAM")

    aws = admin()
    updates: dict[str, str] = {}
    if args.to_ssm:
        updates[name] = w.store_in_ssm(
            aws, args.to_ssm, plaintext, key_id=args.key_id, overwrite=args.overwrite
        )
    elif args.rotate:
        updates[name] = w.wrap(aws, name, w.fresh_key(), key_id=args.key_id, context=context)
        updates[fallback] = w.wrap(aws, fallback, plaintext, key_id=args.key_id, context=context)
    else:
        updates[name] = w.wrap(aws, name, plaintext, key_id=args.key_id, context=context)

    env_file.write(env_file.with_values(updates))
    for variable, value in updates.items():
        print(f"{variable} in {env_file.path}: now {w.summary(value)}")
    if args.rotate:
        _rotation_advice(name, fallback)
    _next_steps(name, list(updates), env_file.path, context, args.from_env)
    return OK


def _migrate_function(args: argparse.Namespace) -> int:
    """``migrate --apply``: the Lambda function's own environment, read and written back."""
    function: str | None = args.lambda_function
    if not function:
        raise UsageError("--apply migrates a Lambda function's environment: pass --lambda-function FN")
    clashes = [
        option
        for option, given in (
            ("--env-file", args.env_file),
            ("--from-env", args.from_env),
            ("--context", args.context),
        )
        if given
    ]
    if clashes:
        # The function's environment is the source and the target; its context is fixed.
        raise UsageError(f"--apply reads and writes {function}'s environment: drop {', '.join(clashes)}")
    name: str = args.name
    done = w.migrate_function(
        admin(),
        function,
        name,
        key_id=args.key_id,
        rotate=args.rotate,
        to_ssm=args.to_ssm,
        overwrite=args.overwrite,
    )
    if done.already is not None:
        print(f"{name} in {function}'s environment is already a {done.already} reference; nothing changed.")
        return OK
    for variable, summary in done.changed.items():
        print(f"{variable} in {function}'s environment: now {summary}")
    print(
        f"{function}'s environment: {done.size} of {w.LAMBDA_ENVIRONMENT_LIMIT} bytes; "
        "every other variable unchanged"
    )
    if args.rotate:
        _rotation_advice(name, f"{name}_FALLBACK")
    print("Next:")
    if not args.to_ssm:
        print(f"  - bootstrap() in {function} decrypts it with LambdaFunctionName={function}, its default.")
    print(f"  - take the plaintext {name} out of whatever deploys {function} (template, pipeline),")
    print("    or the next deploy puts it back.")
    return OK


def _rotation_advice(name: str, fallback: str) -> None:
    print(
        f"{name} is a fresh 32-byte key; the old key is {fallback}. Keep both during the rollout "
        "(Django: SECRET_KEY_FALLBACKS; Fernet: MultiFernet), then delete the fallback."
    )


def _next_steps(
    name: str, names: list[str], path: str, context: Mapping[str, str] | None, from_env: bool
) -> None:
    print("Next:")
    shown = " and ".join(names)
    if context and set(context) == {"LambdaFunctionName"}:
        function = context["LambdaFunctionName"]
        print(f"  - set {shown} in {function}'s environment to the new value(s) in {path}")
        print(f"    (or let secretboot do it: migrate {name} --lambda-function {function} --apply);")
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
    context = parse_context(args.context, args.lambda_function)
    plaintext = _read_stdin(sys.stdin)
    w.check_plaintext("the input", plaintext, to_ssm=bool(args.ssm), ssm_option="--ssm PARAM")
    aws = admin()
    if args.ssm:
        print(w.store_in_ssm(aws, args.ssm, plaintext, key_id=args.key_id, overwrite=args.overwrite))
    else:
        print(w.wrap(aws, "the input", plaintext, key_id=args.key_id, context=context))
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


# -- rotate -----------------------------------------------------------------------------------


def _rotate(args: argparse.Namespace) -> int:
    name: str = args.name
    env_file = open_env_file(args.env_file, create=False)
    value = env_file.get(name)
    if value is None:
        raise UsageError(f"{name} is not set in {env_file.path}")
    ref = parse_reference(value, variable=name)
    if not isinstance(ref, KmsReference):
        raise UsageError(f"{name} in {env_file.path} is not KMS ciphertext ({KMS_PREFIX}...)")
    context = parse_context(args.context, args.lambda_function)
    source = parse_context(args.source_context, args.source_lambda_function, option="--source-context")
    # Without an explicit source context, try the new one, then none, as bootstrap() does
    # (values encrypted with the AWS CLI or before ~2021 carry no context).
    sources = [source] if source else ([context, None] if context else [None])
    # The data key is wrapped under the user's context plus the reserved pair, before and after.
    wrapping: Callable[[dict[str, str] | None], Mapping[str, str] | None] = (
        envelope.data_key_context if name == DATA_KEY else lambda user: user
    )
    aws = admin()
    mismatch = t.TransportError(t.INVALID_CIPHERTEXT, "")
    for source_context in sources:
        try:
            blob, key_arn = aws.re_encrypt(
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
    print(f"{name} in {env_file.path}: re-wrapped under {key_arn} with {w.describe_context(context)}")
    print(f"Next: set {name} where the app runs to the new value in {env_file.path}.")
    return OK
