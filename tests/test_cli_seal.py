"""Out-of-process tests of ``secretboot seal``, ``reseal``, ``keygen`` and ``rotate`` of the data key.

Every run is the real console script in the test's own folder against the session's moto server
(see tests/test_cli.py). Plaintext is looked for in every output and every file afterwards; what
the app finally sees is checked through ``secretboot exec``, which prints only SHA-256 digests.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from secretboot import _cli
from secretboot import _envelope as e
from secretboot._settings import DATA_KEY, LOCAL_KEY_FILE
from tests.conftest import moto_api
from tests.test_cli import (
    CANARY,
    LINES,
    ORIGINAL,
    Aws,
    Cli,
    Key,
    Run,
    Snapshot,
    _env_file,
    _listing,
    _mode,
    _sha,
    _value,
    assert_no_leak,
    assert_usage_error,
)
from tests.test_sealed import byte_needles

# Digests of the named variables as a command run by ``secretboot exec`` sees them.
DIGESTS = (
    "import hashlib, json, os, sys; "
    "print(json.dumps({n: hashlib.sha256(os.environ[n].encode()).hexdigest() for n in sys.argv[1:]}))"
)
NO_AWS: dict[str, str | None] = dict.fromkeys(
    ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
)
ONE = "canary-one-Kd93 #x=y"
TWO = "canary-two-Pp27"


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    moto_api(moto_endpoint, "reset")
    return Aws(moto_endpoint)


@pytest.fixture
def key(aws: Aws) -> Key:
    return aws.create_key()


@pytest.fixture
def cli(aws: Aws, tmp_path: Path) -> Cli:
    return Cli(tmp_path, aws.endpoint)


# -- helpers ----------------------------------------------------------------------------------


def seen(
    cli: Cli, names: Sequence[str], *, env: Mapping[str, str | None] | None = None, env_file: str = ".env"
) -> dict[str, str]:
    """SHA-256 of each named variable as ``secretboot exec --env-file`` hands it to a command."""
    run = cli.run("exec", "--env-file", env_file, "--", sys.executable, "-c", DIGESTS, *names, env=env)
    assert run.returncode == 0, str(run)
    return dict(json.loads(run.stdout))


def digests(values: Mapping[str, str]) -> dict[str, str]:
    return {name: _sha(value) for name, value in values.items()}


def ok(run: Run) -> Run:
    assert run.returncode == 0, str(run)
    assert "Traceback" not in run.stderr, str(run)
    return run


def kms_data_key(aws: Aws, wrapped: str, context: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """(plaintext data key, ARN of the key that wraps it) for a ``kms:`` data key wrapped under
    the user's ``context`` plus the reserved pair."""
    assert wrapped.startswith("kms:"), wrapped[:8]
    answer = aws.kms.decrypt(
        CiphertextBlob=base64.b64decode(wrapped[4:], validate=True),
        EncryptionContext=e.data_key_context(context),
    )
    return answer["Plaintext"], answer["KeyId"]


def assert_bytes_hidden(
    run: Run | None, folder: Path, secret: bytes, *, allowed: Sequence[Path] = ()
) -> None:
    """Raw key material appears in no output and no file (except ``allowed``), in any encoding."""
    needles = [n.encode() for n in byte_needles(secret)] + [secret]
    keep = {p.resolve() for p in allowed}
    texts = [run.out, run.err] if run is not None else []
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            if path.resolve() not in keep and not path.is_symlink():
                texts.append(path.read_bytes())
    for text in texts:
        for needle in needles:
            assert needle not in text


def make_key_file(path: Path) -> bytes:
    master = os.urandom(32)
    e.write_key_file(str(path), urandom=lambda n: master)
    return master


def local_sealed_file(folder: Path, key_path: Path, values: Mapping[str, str], head: str = "") -> Path:
    """A .env file sealed under a new local data key, built with the library."""
    master = make_key_file(key_path) if not key_path.exists() else e.read_key_file(str(key_path))
    data_key = os.urandom(32)
    cipher = e.aead(data_key)
    lines = [head, f"{DATA_KEY}={e.wrap_local(master, data_key)}\n"]
    lines += [f"{name}={e.seal(cipher, name, value.encode())}\n" for name, value in values.items()]
    return _env_file(folder, "".join(lines).encode())


def kms_sealed_file(
    aws: Aws,
    key: Key,
    folder: Path,
    values: Mapping[str, str],
    head: str = "",
    *,
    context: Mapping[str, str] | None = None,
    old_form: bool = False,
) -> Path:
    """A .env file sealed under a new KMS data key, built with the library; ``old_form``: the
    data key wrapped as before the reserved context pair (under the user's ``context`` alone)."""
    wrapping = dict(context or {}) if old_form else e.data_key_context(context)
    extra = {"EncryptionContext": wrapping} if wrapping else {}
    answer = aws.kms.generate_data_key(KeyId=key.id, KeySpec="AES_256", **extra)
    cipher = e.aead(answer["Plaintext"])
    lines = [head, f"{DATA_KEY}=kms:{base64.b64encode(answer['CiphertextBlob']).decode()}\n"]
    lines += [f"{name}={e.seal(cipher, name, value.encode())}\n" for name, value in values.items()]
    return _env_file(folder, "".join(lines).encode())


def other_lines(path: Path, *names: str) -> list[str]:
    """The file's lines except those of ``names``."""
    prefixes = tuple(f"{name}=" for name in names)
    return [line for line in path.read_text().splitlines(keepends=True) if not line.startswith(prefixes)]


# -- seal -------------------------------------------------------------------------------------


def test_seal_rewrites_only_the_named_lines(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = _env_file(cli.folder)  # CRLF and LF lines, comments, quoting, export, no final newline
    run = ok(cli.run("seal", "SECRET_KEY", "DEBUG", "LAST", "--key-id", key.id))
    values = {name: _value(env_file, name) for name in ("SECRET_KEY", "DEBUG", "LAST", DATA_KEY)}
    assert all(values[name].startswith("sealed:") for name in ("SECRET_KEY", "DEBUG", "LAST"))
    assert values[DATA_KEY].startswith("kms:")
    expected = list(LINES)
    expected[2] = f"DEBUG={values['DEBUG']}\r\n".encode()
    expected[3] = f"export SECRET_KEY={values['SECRET_KEY']}\r\n".encode()
    expected[8] = f"LAST={values['LAST']}".encode()
    # The new line ends the way the file's lines do (CRLF), after a newline for the last line.
    tail = f"\r\n{DATA_KEY}={values[DATA_KEY]}\r\n".encode()
    assert env_file.read_bytes() == b"".join(expected) + tail
    assert _mode(env_file) == 0o640
    assert _listing(cli.folder) == [".env"]  # no temporary file left behind
    # Output: names, sizes and the key's ARN; never a value, the data key or a sealed blob.
    for name in ("SECRET_KEY", "DEBUG", "LAST"):
        assert f"{name} in .env: now sealed (" in run.stdout
    assert key.arn in run.stdout
    data_key, arn = kms_data_key(aws, values[DATA_KEY])
    assert arn == key.arn and len(data_key) == 32
    assert_no_leak(run, cli.folder, CANARY)
    assert_no_leak(run, cli.folder, "no-newline")
    assert_bytes_hidden(run, cli.folder, data_key)
    for value in values.values():
        assert value.split(":", 1)[1][:40] not in run.stdout + run.stderr

    check = ok(cli.run("check", "--env-file", ".env", "--json"))
    rows = {row["name"]: (row["kind"], row["status"]) for row in json.loads(check.stdout)}
    assert rows == dict.fromkeys(("DEBUG", "LAST", "SECRET_KEY"), ("sealed", "resolved"))
    assert_no_leak(check, cli.folder, CANARY)
    assert seen(cli, ["SECRET_KEY", "DEBUG", "LAST", "API_URL"]) == digests(
        {"SECRET_KEY": CANARY, "DEBUG": "1", "LAST": "no-newline", "API_URL": "https://example.com/?a=1&b=2"}
    )


def test_seal_without_names_seals_every_plain_value(cli: Cli, aws: Aws, key: Key) -> None:
    already = aws.encrypt("already-canary-Ww61", key)
    head = (
        "# config\n"
        "AWS_DEFAULT_OUTPUT=json\n"
        "SECRETBOOT_EXPORT=false\n"
        "EMPTY=\n"
        f"ALREADY={already}\n"
        f'PLAIN_ONE="{ONE}"\n'
        f"export PLAIN_TWO={TWO}\n"
    )
    env_file = _env_file(cli.folder, head.encode())
    run = ok(cli.run("seal", "--key-id", key.id))
    assert sorted(line.split(" in ")[0] for line in run.stdout.splitlines() if "now sealed" in line) == [
        "PLAIN_ONE",
        "PLAIN_TWO",
    ]
    text = env_file.read_text()
    unchanged = (
        "# config\nAWS_DEFAULT_OUTPUT=json\nSECRETBOOT_EXPORT=false\nEMPTY=\n" + f"ALREADY={already}\n"
    )
    assert text.startswith(unchanged)
    assert _value(env_file, "PLAIN_ONE").startswith("sealed:")
    assert f"export PLAIN_TWO={_value(env_file, 'PLAIN_TWO')}\n" in text
    data_key_line = f"{DATA_KEY}={_value(env_file, DATA_KEY)}\n"
    assert_no_leak(run, cli.folder, ONE)
    assert_no_leak(run, cli.folder, TWO)

    # A second seal reuses the data key already in the file: no --key-id needed, its line unchanged.
    with env_file.open("a") as handle:
        handle.write("NEW=canary-new-Zz11\n")
    run = ok(cli.run("seal", "NEW"))
    assert "a new data key" not in run.stdout
    assert data_key_line in env_file.read_text()
    assert env_file.read_text().startswith(unchanged)
    assert _value(env_file, "NEW").startswith("sealed:")
    assert_no_leak(run, cli.folder, "canary-new-Zz11")
    assert seen(cli, ["PLAIN_ONE", "PLAIN_TWO", "NEW", "ALREADY"]) == digests(
        {"PLAIN_ONE": ONE, "PLAIN_TWO": TWO, "NEW": "canary-new-Zz11", "ALREADY": "already-canary-Ww61"}
    )
    # Sealing again changes nothing.
    before = Snapshot(env_file)
    run = ok(cli.run("seal"))
    assert "nothing to seal" in run.stdout
    before.assert_unchanged()


def test_seal_large_and_non_ascii_values(cli: Cli, key: Key) -> None:
    pem = (
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(["QUJDREVGR0hJSktM" * 4] * 160)
        + "\n-----END CERTIFICATE-----"
    )
    document = json.dumps({"pad": "x" * 3000, "ünï": "✓"})
    assert len(pem.encode()) > 10_000 and len(document.encode()) > 3000
    head = f"PEM=\"{pem}\"\nDOC='{document}'\nTEXT=ünïcødé ✓ 鍵\n"
    _env_file(cli.folder, head.encode())
    ok(cli.run("seal", "--key-id", key.id))
    assert seen(cli, ["PEM", "DOC", "TEXT"]) == digests({"PEM": pem, "DOC": document, "TEXT": "ünïcødé ✓ 鍵"})


def test_seal_refuses_a_value_the_app_sees_expanded(cli: Cli, tmp_path: Path) -> None:
    # bootstrap() reads .env with python-dotenv's ${VAR} expansion: sealing the raw text
    # would change what the app sees, so seal refuses and changes nothing.
    env_file = _env_file(cli.folder, b'HOST=db.internal\nDATABASE_URL="postgres://app:pw@${HOST}/app"\n')
    key_path = cli.folder / "master.key"
    make_key_file(key_path)
    env = {LOCAL_KEY_FILE: str(key_path)}
    before = seen(cli, ["DATABASE_URL"], env=env)
    assert before == digests({"DATABASE_URL": "postgres://app:pw@db.internal/app"})
    snapshot = Snapshot(env_file)
    run = cli.run("seal", "DATABASE_URL", "--local-key-file", str(key_path))
    assert run.returncode == 2, str(run)
    assert "DATABASE_URL" in run.stderr and "${VAR} expansion" in run.stderr
    snapshot.assert_unchanged()
    # HOST feeds DATABASE_URL's expansion: sealed, the app would see the sealed text in it.
    run = cli.run("seal", "HOST", "--local-key-file", str(key_path))
    assert run.returncode == 2, str(run)
    assert "HOST is expanded into DATABASE_URL" in run.stderr
    snapshot.assert_unchanged()
    # Without names it seals the rest and says which values it left alone.
    env_file.write_bytes(env_file.read_bytes() + b"TOKEN=plain-token\n")
    run = ok(cli.run("seal", "--local-key-file", str(key_path)))
    assert "DATABASE_URL in .env uses or feeds ${VAR} expansion; left as it is." in run.stdout
    assert "HOST in .env uses or feeds ${VAR} expansion; left as it is." in run.stdout
    assert seen(cli, ["DATABASE_URL"], env=env) == before
    assert _value(env_file, "TOKEN").startswith("sealed:")


# -- errors change nothing --------------------------------------------------------------------


def _error_setup(case: str, cli: Cli, aws: Aws, key: Key) -> tuple[Path, list[str]]:
    """(the .env file, the command's arguments) for each error case."""
    folder = cli.folder
    plain = f'A="{CANARY}"\nB=b-value\nAWS_SECRET_ACCESS_KEY=aws-{CANARY}\n'
    if case == "no-key":
        return _env_file(folder, plain.encode()), ["seal", "A"]
    if case == "unknown-name":
        return _env_file(folder, plain.encode()), ["seal", "NOPE", "--key-id", key.id]
    if case == "aws-name":
        return _env_file(folder, plain.encode()), ["seal", "AWS_SECRET_ACCESS_KEY", "--key-id", key.id]
    if case == "secretboot-name":
        content = plain + f"{LOCAL_KEY_FILE}=/x/y\n"
        return _env_file(folder, content.encode()), ["seal", LOCAL_KEY_FILE, "--key-id", key.id]
    if case == "both-key-options":
        return _env_file(folder, plain.encode()), ["seal", "A", "--key-id", key.id, "--local-key-file", "k"]
    if case == "local-over-kms":
        make_key_file(folder / "master.key")
        path = kms_sealed_file(aws, key, folder, {"A": CANARY}, head="B=b-value\n")
        return path, ["seal", "B", "--local-key-file", "master.key"]
    if case == "kms-over-local":
        path = local_sealed_file(folder, folder / "master.key", {"A": CANARY}, head="B=b-value\n")
        return path, ["seal", "B", "--key-id", key.id]
    if case == "wrong-local-key-file":
        path = local_sealed_file(folder, folder / "master.key", {"A": CANARY}, head="B=b-value\n")
        make_key_file(folder / "other.key")
        return path, ["seal", "B", "--local-key-file", "other.key"]
    if case in ("malformed-data-key-seal", "malformed-data-key-reseal"):
        content = f"{DATA_KEY}=kms:%%%not-base64\n" + plain
        args = ["seal", "A", "--key-id", key.id] if case.endswith("-seal") else ["reseal"]
        return _env_file(folder, content.encode()), args
    if case == "reseal-no-data-key":
        return _env_file(folder, plain.encode()), ["reseal", "--key-id", key.id]
    if case in ("reseal-tampered", "reseal-swapped"):
        path = kms_sealed_file(aws, key, folder, {"A": CANARY, "C": "c-" + CANARY})
        text = path.read_text()
        a, c = _value(path, "A"), _value(path, "C")
        if case == "reseal-tampered":
            blob = bytearray(base64.b64decode(a[7:]))
            blob[20] ^= 1
            text = text.replace(a, "sealed:" + base64.b64encode(bytes(blob)).decode())
        else:
            text = text.replace(a, "@A@").replace(c, a).replace("@A@", c)
        path.write_text(text)
        return path, ["reseal"]
    if case == "reseal-local-without-key-file":
        path = local_sealed_file(folder, folder / "master.key", {"A": CANARY})
        return path, ["reseal", "--key-id", key.id]
    if case == "rotate-local-data-key":
        path = local_sealed_file(folder, folder / "master.key", {"A": CANARY})
        return path, ["rotate", DATA_KEY, "--key-id", key.id]
    if case in ("open-key-file-seal", "open-key-file-reseal"):
        path = local_sealed_file(folder, folder / "master.key", {"A": CANARY}, head="B=b-value\n")
        (folder / "master.key").chmod(0o640)
        args = ["seal", "B"] if case.endswith("-seal") else ["reseal"]
        return path, [*args, "--local-key-file", "master.key"]
    if case == "no-env-file":
        return folder / ".env", ["seal", "A", "--key-id", key.id]
    if case == "unknown-kms-key":
        return _env_file(folder, plain.encode()), ["seal", "A", "--key-id", "alias/no-such-key"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("no-key", 2, "--key-id"),
        ("unknown-name", 2, "NOPE is not set"),
        ("aws-name", 2, "configuration"),
        ("secretboot-name", 2, "configuration"),
        ("both-key-options", 2, "not allowed with"),
        ("local-over-kms", 2, "reseal"),
        ("kms-over-local", 2, "reseal"),
        ("wrong-local-key-file", 2, "does not open"),
        ("malformed-data-key-seal", 2, DATA_KEY),
        ("malformed-data-key-reseal", 2, DATA_KEY),
        ("reseal-no-data-key", 2, f"{DATA_KEY} is not set"),
        ("reseal-tampered", 2, "A in .env does not open"),
        ("reseal-swapped", 2, "does not open"),
        ("reseal-local-without-key-file", 2, LOCAL_KEY_FILE),
        ("rotate-local-data-key", 2, "not KMS ciphertext"),
        ("open-key-file-seal", 2, "(mode 0640); a key must be private to its owner: chmod 600 master.key"),
        ("open-key-file-reseal", 2, "(mode 0640); a key must be private to its owner: chmod 600 master.key"),
        ("no-env-file", 2, ".env"),
        ("unknown-kms-key", 1, "AWS request failed"),
    ],
)
def test_failed_seal_or_reseal_changes_nothing(
    cli: Cli, aws: Aws, key: Key, case: str, code: int, words: str
) -> None:
    env_file, args = _error_setup(case, cli, aws, key)
    before = Snapshot(env_file)
    run = cli.run(*args)
    assert_usage_error(run, code)
    assert words in run.stderr, str(run)
    before.assert_unchanged()
    assert_no_leak(run, cli.folder, CANARY, allowed=[env_file])  # the plain input stays where it was


# -- reseal -----------------------------------------------------------------------------------

VALUES = {"A": ONE, "B": TWO, "C": CANARY}


def _sealed_lines(path: Path) -> dict[str, str]:
    return {name: _value(path, name) for name in (*VALUES, DATA_KEY)}


def test_reseal_under_the_same_kms_key(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES, head="# keep\nPLAIN=x\n")
    old = _sealed_lines(env_file)
    old_key, _ = kms_data_key(aws, old[DATA_KEY])
    run = ok(cli.run("reseal"))
    new = _sealed_lines(env_file)
    assert all(new[name] != old[name] for name in new)  # a new data key and every value sealed again
    new_key, arn = kms_data_key(aws, new[DATA_KEY])
    assert arn == key.arn and new_key != old_key
    assert env_file.read_text().startswith("# keep\nPLAIN=x\n")
    assert "3 sealed value(s)" in run.stdout
    assert _mode(env_file) == 0o640
    for value in VALUES.values():
        assert_no_leak(run, cli.folder, value)
    assert_bytes_hidden(run, cli.folder, new_key)
    assert seen(cli, list(VALUES)) == digests(VALUES)


def test_reseal_moves_the_data_key_to_another_kms_key(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES)
    other = aws.create_key()
    run = ok(cli.run("reseal", "--key-id", other.id))
    assert other.arn in run.stdout
    assert kms_data_key(aws, _value(env_file, DATA_KEY))[1] == other.arn
    assert seen(cli, list(VALUES)) == digests(VALUES)


def test_reseal_with_a_lambda_context(cli: Cli, aws: Aws, key: Key) -> None:
    _env_file(cli.folder, f'A="{ONE}"\n'.encode())
    ok(cli.run("seal", "--key-id", key.id, "--lambda-function", "fn"))
    ok(cli.run("reseal", "--lambda-function", "fn"))
    assert seen(cli, ["A"], env={"AWS_LAMBDA_FUNCTION_NAME": "fn"}) == digests({"A": ONE})
    # Without the context the data key does not open.
    run = cli.run("exec", "--env-file", ".env", "--", sys.executable, "-c", "pass")
    assert run.returncode == 1 and "InvalidCiphertext" in run.stderr, str(run)


def test_reseal_from_a_key_file_to_kms(cli: Cli, aws: Aws, key: Key) -> None:
    old_key_file = cli.folder / "old.key"
    env_file = local_sealed_file(cli.folder, old_key_file, VALUES)
    run = ok(cli.run("reseal", "--key-id", key.id, env={LOCAL_KEY_FILE: str(old_key_file)}))
    assert key.arn in run.stdout
    data_key, arn = kms_data_key(aws, _value(env_file, DATA_KEY))
    assert arn == key.arn
    assert_bytes_hidden(run, cli.folder, data_key)
    assert seen(cli, list(VALUES)) == digests(VALUES)  # no key file needed any more


def test_reseal_from_kms_to_a_key_file(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES)
    new_key_file = cli.folder / "new.key"
    master = make_key_file(new_key_file)
    run = ok(cli.run("reseal", "--local-key-file", str(new_key_file)))
    assert str(new_key_file) in run.stdout
    assert _value(env_file, DATA_KEY).startswith("local:")
    assert_bytes_hidden(run, cli.folder, master, allowed=[new_key_file])
    env = {**NO_AWS, LOCAL_KEY_FILE: str(new_key_file)}
    assert seen(cli, list(VALUES), env=env) == digests(VALUES)


def test_reseal_from_one_key_file_to_another(cli: Cli) -> None:
    old_key_file, new_key_file = cli.folder / "old.key", cli.folder / "new.key"
    env_file = local_sealed_file(cli.folder, old_key_file, VALUES)
    make_key_file(new_key_file)
    env = {**NO_AWS, LOCAL_KEY_FILE: str(old_key_file)}
    ok(cli.run("reseal", "--local-key-file", str(new_key_file), env=env))
    assert _value(env_file, DATA_KEY).startswith("local:")
    assert seen(cli, list(VALUES), env={**NO_AWS, LOCAL_KEY_FILE: str(new_key_file)}) == digests(VALUES)
    run = cli.run("exec", "--env-file", ".env", "--", sys.executable, "-c", "pass", env=env)
    assert run.returncode == 1 and "Integrity" in run.stderr, str(run)


# -- rotate the data key (ReEncrypt) ----------------------------------------------------------


def test_rotate_rewraps_the_data_key_without_touching_values(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES, head="# head\n")
    before = other_lines(env_file, DATA_KEY)
    old_key, _ = kms_data_key(aws, _value(env_file, DATA_KEY))
    other = aws.create_key()
    run = ok(cli.run("rotate", DATA_KEY, "--key-id", other.id))
    assert other_lines(env_file, DATA_KEY) == before  # every sealed line byte-identical
    new_key, arn = kms_data_key(aws, _value(env_file, DATA_KEY))
    assert (new_key, arn) == (old_key, other.arn)
    assert_bytes_hidden(run, cli.folder, new_key)
    assert seen(cli, list(VALUES)) == digests(VALUES)


def test_rotate_the_data_key_to_another_context_keeps_the_reserved_pair(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES, context={"LambdaFunctionName": "fn"})
    old_key, _ = kms_data_key(aws, _value(env_file, DATA_KEY), {"LambdaFunctionName": "fn"})
    other = aws.create_key()
    args = ["--key-id", other.id, "--lambda-function", "fn2", "--source-lambda-function", "fn"]
    run = ok(cli.run("rotate", DATA_KEY, *args))
    assert "LambdaFunctionName=fn2" in run.stdout and "secretboot:" not in run.stdout
    wrapped = _value(env_file, DATA_KEY)
    assert kms_data_key(aws, wrapped, {"LambdaFunctionName": "fn2"}) == (old_key, other.arn)
    with pytest.raises(aws.kms.exceptions.InvalidCiphertextException):  # only with the pair
        aws.decrypt(wrapped, {"LambdaFunctionName": "fn2"})
    assert seen(cli, list(VALUES), env={"AWS_LAMBDA_FUNCTION_NAME": "fn2"}) == digests(VALUES)
    assert_bytes_hidden(run, cli.folder, old_key)


def test_rotate_an_old_form_data_key_points_to_reseal(cli: Cli, aws: Aws, key: Key) -> None:
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES, old_form=True)
    before = Snapshot(env_file)
    run = cli.run("rotate", DATA_KEY, "--key-id", key.id)
    assert_usage_error(run, 1)
    assert "InvalidCiphertext" in run.stderr and "secretboot reseal" in run.stderr
    before.assert_unchanged()


# -- the data key's form before the reserved context pair -------------------------------------


@pytest.mark.parametrize("lambda_function", [None, "fn"])
def test_reseal_migrates_an_old_form_data_key(
    cli: Cli, aws: Aws, key: Key, lambda_function: str | None
) -> None:
    context = {"LambdaFunctionName": lambda_function} if lambda_function else None
    env_file = kms_sealed_file(aws, key, cli.folder, VALUES, context=context, old_form=True)
    blob = base64.b64decode(_value(env_file, DATA_KEY)[4:])
    extra = {"EncryptionContext": context} if context else {}
    old_key = aws.kms.decrypt(CiphertextBlob=blob, **extra)["Plaintext"]
    env = {"AWS_LAMBDA_FUNCTION_NAME": lambda_function} if lambda_function else {}
    options = ["--lambda-function", lambda_function] if lambda_function else []
    # bootstrap() no longer opens it, and says what to do.
    run = cli.run("exec", "--env-file", ".env", "--", sys.executable, "-c", "print('ran')", env=env)
    assert run.returncode == 1 and "ran" not in run.stdout, str(run)
    assert "InvalidCiphertext" in run.stderr and "run `secretboot reseal`" in run.stderr
    # Nor does seal, which adds to the data key as it is.
    with env_file.open("a") as handle:
        handle.write("NEW=canary-new-Zz11\n")
    before = Snapshot(env_file)
    run = cli.run("seal", "NEW", *options)
    assert_usage_error(run, 1)
    assert "secretboot reseal" in run.stderr
    before.assert_unchanged()
    # reseal opens the old form, and writes the new one.
    run = ok(cli.run("reseal", *options))
    assert "was in the old form" in run.stdout
    new_key, arn = kms_data_key(aws, _value(env_file, DATA_KEY), context)
    assert arn == key.arn and new_key != old_key
    assert seen(cli, list(VALUES), env=env) == digests(VALUES)
    assert_bytes_hidden(run, cli.folder, new_key)
    assert_bytes_hidden(run, cli.folder, old_key)
    for value in VALUES.values():
        assert_no_leak(run, cli.folder, value)
    # Once migrated, a reseal says nothing of the old form.
    assert "old form" not in ok(cli.run("reseal", *options)).stdout


def _reserved_setup(cli: Cli, aws: Aws, key: Key) -> None:
    content = f'A="{CANARY}"\nK={aws.encrypt("k-value", key)}\n'
    kms_sealed_file(aws, key, cli.folder, {"S": ONE}, head=content)


@pytest.mark.parametrize(
    "args",
    [
        ["encrypt", "--key-id", "KEY", "--context", "secretboot:purpose=sealed-data-key"],
        ["migrate", "A", "--key-id", "KEY", "--context", "app=x", "--context", "secretboot:purpose=y"],
        ["seal", "A", "--key-id", "KEY", "--context", "secretboot:purpose=sealed-data-key"],
        ["reseal", "--context", "secretboot:other=z"],
        ["rotate", "K", "--key-id", "KEY", "--context", "secretboot:purpose=sealed-data-key"],
        ["rotate", DATA_KEY, "--key-id", "KEY", "--source-context", "secretboot:purpose=sealed-data-key"],
    ],
    ids=["encrypt", "migrate", "seal", "reseal", "rotate", "rotate-source"],
)
def test_reserved_context_key_is_refused_by_every_command(
    cli: Cli, aws: Aws, key: Key, args: list[str]
) -> None:
    _reserved_setup(cli, aws, key)
    before = Snapshot(cli.folder / ".env")
    run = cli.run(*[key.id if arg == "KEY" else arg for arg in args], stdin=b"plain-input")
    assert_usage_error(run)
    assert "encryption context keys starting with secretboot: are secretboot's own" in run.stderr
    assert run.stdout == ""
    before.assert_unchanged()


# -- keygen -----------------------------------------------------------------------------------


def test_keygen_writes_a_0600_key_and_never_overwrites(cli: Cli) -> None:
    path = cli.folder / "master.key"
    assert e.git_work_tree(str(path)) is None, "tmp_path must not be inside a git work tree"
    run = ok(cli.run("keygen", "master.key"))
    assert _mode(path) == 0o600
    master = e.read_key_file(str(path))
    assert len(master) == 32
    assert_bytes_hidden(run, cli.folder, master, allowed=[path])
    before = Snapshot(path)
    for args in (["keygen", "master.key"], ["keygen", "master.key", "--force"]):
        again = cli.run(*args)
        assert_usage_error(again)
        assert "already exists" in again.stderr
        before.assert_unchanged()


def test_keygen_refuses_a_git_work_tree_unless_forced(cli: Cli) -> None:
    (cli.folder / "repo" / ".git").mkdir(parents=True)
    path = cli.folder / "repo" / "master.key"
    run = cli.run("keygen", "repo/master.key")
    assert_usage_error(run)
    assert "git work tree" in run.stderr and "--force" in run.stderr
    assert not path.exists()
    ok(cli.run("keygen", "repo/master.key", "--force"))
    assert _mode(path) == 0o600 and len(e.read_key_file(str(path))) == 32


def test_offline_flow_keygen_seal_exec_without_aws(cli: Cli) -> None:
    env_file = _env_file(cli.folder, ORIGINAL)
    ok(cli.run("keygen", "master.key", env=NO_AWS))
    run = ok(cli.run("seal", "SECRET_KEY", "API_URL", "--local-key-file", "master.key", env=NO_AWS))
    assert "key file master.key" in run.stdout and LOCAL_KEY_FILE in run.stdout
    assert _value(env_file, DATA_KEY).startswith("local:")
    assert_no_leak(run, cli.folder, CANARY)
    env = {**NO_AWS, LOCAL_KEY_FILE: "master.key"}
    check = ok(cli.run("check", "--env-file", ".env", "--json", env=env))
    assert {row["name"]: row["status"] for row in json.loads(check.stdout)} == {
        "API_URL": "resolved",
        "SECRET_KEY": "resolved",
    }
    assert seen(cli, ["SECRET_KEY", "API_URL"], env=env) == digests(
        {"SECRET_KEY": CANARY, "API_URL": "https://example.com/?a=1&b=2"}
    )
    # Without the key file setting, every sealed value is reported, and nothing runs.
    run = cli.run("exec", "--env-file", ".env", "--", sys.executable, "-c", "print('ran')", env=NO_AWS)
    assert run.returncode == 1 and "ran" not in run.stdout, str(run)
    assert "API_URL" in run.stderr and "SECRET_KEY" in run.stderr and "Missing" in run.stderr
    assert_no_leak(run, cli.folder, CANARY)


def test_seal_uses_the_key_file_named_in_the_env_file(cli: Cli) -> None:
    make_key_file(cli.folder / "master.key")
    env_file = _env_file(cli.folder, f'{LOCAL_KEY_FILE}=master.key\nA="{ONE}"\n'.encode())
    run = ok(cli.run("seal", env=NO_AWS))  # no key option: the file says which key file
    assert "key file master.key" in run.stdout
    assert _value(env_file, LOCAL_KEY_FILE) == "master.key"  # configuration is never sealed
    assert _value(env_file, DATA_KEY).startswith("local:")
    assert seen(cli, ["A"], env=NO_AWS) == digests({"A": ONE})
    assert_no_leak(run, cli.folder, ONE)


# -- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["seal", "reseal", "keygen"])
def test_help_shows_the_exit_code_table(cli: Cli, command: str) -> None:
    run = ok(cli.run(command, "--help"))
    assert run.stderr == ""
    assert run.stdout.startswith(f"usage: secretboot {command}")
    # Each command lists the exit codes it can return (keygen never 1), not exec's 126/127.
    for line in _cli.COMMAND_EXIT_CODES[command].splitlines():
        assert line in run.stdout.splitlines(), f"--help lacks {line!r}"
    assert "126" not in run.stdout and "127" not in run.stdout
