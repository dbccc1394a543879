"""``seal``, ``reseal`` and ``keygen``: many values in a .env file under one data key."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping, Sequence

from secretboot import _envelope as envelope
from secretboot import _workflows as w
from secretboot._cli._base import (
    OK,
    Command,
    UsageError,
    admin,
    context_options,
    env_file_option,
    key_source_options,
    open_env_file,
    parse_context,
)
from secretboot._envfile import EnvFile
from secretboot._keysource import KmsKeySource, LocalKeySource
from secretboot._reference import SEALED_PREFIX, is_reference, parse_reference, parse_sealed
from secretboot._settings import DATA_KEY, KMS_CONTEXT, LAMBDA_FUNCTION_NAME, LOCAL_KEY_FILE


def add_commands(command: Command) -> None:
    seal = command(
        "seal",
        _seal,
        "Seal values in a .env file under one data key (envelope encryption): one KMS call at start-up.",
    )
    seal.add_argument(
        "names", nargs="*", metavar="NAME", help="variables to seal (default: every plain value in the file)"
    )
    env_file_option(seal)
    key_source_options(
        seal,
        key_help="KMS key id, ARN or alias to wrap a new data key with",
        file_help=f"a key file from 'secretboot keygen' to wrap a new data key with (no AWS; "
        f"default: ${LOCAL_KEY_FILE})",
    )
    context_options(seal)

    reseal = command("reseal", _reseal, "Seal every sealed value again under a fresh data key.")
    env_file_option(reseal)
    key_source_options(
        reseal,
        key_help="KMS key to wrap the new data key with (default: the one wrapping the current data key)",
        file_help="a key file to wrap the new data key with (no AWS; default: the one wrapping the "
        f"current data key, ${LOCAL_KEY_FILE})",
    )
    context_options(reseal)

    keygen = command("keygen", _keygen, "Write a new 256-bit local master key file (mode 0600).")
    keygen.add_argument("path", metavar="PATH", help="the key file to create (never overwritten)")
    keygen.add_argument("--force", action="store_true", help="write it even inside a git work tree")


def _seal(args: argparse.Namespace) -> int:
    env_file = open_env_file(args.env_file, create=False)
    context = parse_context(args.context, args.lambda_function)
    existing = w.data_key(env_file)
    key_file = args.local_key_file or w.configured_key_file(env_file)
    if existing is None and not (args.key_id or key_file):
        raise UsageError(f"no {DATA_KEY} in {env_file.path} yet: pass --key-id KEY or --local-key-file PATH")
    names = _names_to_seal(env_file, args.names)
    if not names:
        print(f"nothing to seal in {env_file.path}")
        return OK
    if existing is None:
        provider = "local" if args.local_key_file else None
        source = w.key_source(admin, context, key_id=args.key_id, key_file=key_file, provider=provider)
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
        source = w.key_source(
            admin, context, key_id=args.key_id, key_file=key_file, provider=existing.provider
        )
        data_key, updates = w.unwrap(source, existing, env_file), {}
    cipher = envelope.aead(data_key)
    updates.update(w.sealed_values(cipher, {name: w.plain(env_file, name) for name in names}))
    env_file.write(env_file.with_values(updates))
    for name in names:
        print(f"{name} in {env_file.path}: now sealed ({len(parse_sealed(updates[name]).blob)} bytes)")
    if DATA_KEY in updates:
        print(f"{DATA_KEY} in {env_file.path}: a new data key, wrapped by {source.describe()}")
    _next_steps(env_file, context, source)
    return OK


def _reseal(args: argparse.Namespace) -> int:
    env_file = open_env_file(args.env_file, create=False)
    context = parse_context(args.context, args.lambda_function)
    existing = w.data_key(env_file)
    if existing is None:
        raise UsageError(f"{DATA_KEY} is not set in {env_file.path}: nothing was sealed there")
    sealed = {}
    for name in env_file.names():
        value = env_file.get(name) or ""
        if value.startswith(SEALED_PREFIX) and not name.startswith(("AWS_", "SECRETBOOT_")):
            sealed[name] = parse_sealed(value, variable=name)
    # The current data key opens with the configured key file; --local-key-file names the new one.
    old_source = w.key_source(
        admin,
        context,
        key_id=None,
        key_file=w.configured_key_file(env_file) or args.local_key_file,
        provider=existing.provider,
        old=True,
    )
    old_cipher = envelope.aead(w.unwrap(old_source, existing, env_file))
    plaintexts = {name: w.open_sealed(old_cipher, name, ref, env_file) for name, ref in sealed.items()}
    if args.key_id or args.local_key_file:
        provider = "local" if args.local_key_file else "kms"
        key_file = args.local_key_file or w.configured_key_file(env_file)
        new_source = w.key_source(admin, context, key_id=args.key_id, key_file=key_file, provider=provider)
    elif isinstance(old_source, KmsKeySource):
        new_source = KmsKeySource(admin(), old_source.key_arn, context)
    else:
        new_source = old_source
    data_key, wrapped = new_source.new()
    updates = {DATA_KEY: str(wrapped)}
    updates.update(w.sealed_values(envelope.aead(data_key), plaintexts))
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
    _next_steps(env_file, context, new_source)
    return OK


def _keygen(args: argparse.Namespace) -> int:
    envelope.write_key_file(args.path, force=args.force)
    print(f"wrote a new 256-bit key to {args.path} (mode 0600). Back it up: sealed values need it.")
    print(f"Next: secretboot seal --local-key-file {args.path}, and set {LOCAL_KEY_FILE}={args.path} where")
    print("the app runs. Keep the key out of version control.")
    return OK


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
        w.refuse_expansion(env_file, name, "sealing")
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


def _next_steps(
    env_file: EnvFile, context: Mapping[str, str] | None, source: KmsKeySource | LocalKeySource
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
