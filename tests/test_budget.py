"""The byte budget in docs/envelope.md: how many secrets fit in Lambda's 4 KB of variables.

Lambda allows 4 KB for all of a function's environment variables together and does not
say how it counts them. This test assumes it counts the sum, over the variables, of
``len(name) + len(value)`` in UTF-8 bytes, against 4096 bytes. If Lambda also counts
separators or quoting, fewer fit in every column alike.

Every variable has a 12-character name (``APP_KEY_0001``); every secret is that many
bytes of text. The columns:

- ``kms:`` values. KMS ciphertext is modelled, not measured: real AWS KMS symmetric
  ciphertext is the plaintext plus about 150 bytes. moto's blobs are the plaintext plus
  64 bytes (a 36-byte key id, an IV and a tag), so measuring moto would flatter ``kms:``.
- ``ssm:`` references to ``/myapp/prod/`` + the variable's name. Their size does not
  depend on the secret's size.
- sealed values, made by secretboot's own code (``_envelope.aead`` and ``seal``), plus
  the one ``SECRETBOOT_DATA_KEY`` line: a 32-byte data key wrapped by KMS, modelled
  like the ``kms:`` values.

The test builds each environment one variable at a time until the next one would not
fit, renders the table, and fails if docs/envelope.md shows anything else. No AWS.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

import secretboot
from secretboot import _envelope
from secretboot._reference import KmsReference, SealedReference, SsmReference

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "envelope.md"
TABLE_MARK = "<!-- budget-table: tests/test_budget.py computes this table and fails if it differs -->"

LAMBDA_ENV_BYTES = 4096  # "4 KB" for all of a function's environment variables together
KMS_OVERHEAD = 150  # real AWS KMS symmetric ciphertext: plaintext + about 150 bytes
KMS_HEADER = b"\x01\x02\x02\x00\x78"  # how genuine KMS symmetric ciphertext begins
SIZES = (32, 64, 256, 1024)  # secret sizes, bytes
NAME_LENGTH = 12
SSM_PATH = "/myapp/prod/"

DATA_KEY = os.urandom(_envelope.DATA_KEY_SIZE)
CIPHER = _envelope.aead(DATA_KEY)


def variable(n: int) -> str:
    name = f"APP_KEY_{n:04d}"
    assert len(name) == NAME_LENGTH
    return name


def secret(size: int) -> str:
    text = secrets.token_hex(size)[:size]
    assert len(text.encode("utf-8")) == size
    return text


def kms_model(plaintext_size: int) -> bytes:
    """A blob the size real KMS would return for ``plaintext_size`` bytes."""
    return KMS_HEADER + os.urandom(plaintext_size + KMS_OVERHEAD - len(KMS_HEADER))


def cost(env: Mapping[str, str]) -> int:
    """The assumed count: names plus values, in UTF-8 bytes."""
    return sum(len(name.encode("utf-8")) + len(value.encode("utf-8")) for name, value in env.items())


def data_key_line() -> dict[str, str]:
    return {"SECRETBOOT_DATA_KEY": str(_envelope.WrappedKey("kms", kms_model(_envelope.DATA_KEY_SIZE)))}


def fill(make: Callable[[str], str], fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """``fixed``, then as many variables made by ``make`` as fit in the budget."""
    env = dict(fixed or {})
    assert cost(env) <= LAMBDA_ENV_BYTES
    while True:
        name = variable(len(env) - len(fixed or {}))
        candidate = {**env, name: make(name)}
        if cost(candidate) > LAMBDA_ENV_BYTES:
            return env
        env = candidate


def kms_values(size: int) -> dict[str, str]:
    return fill(lambda name: str(KmsReference(kms_model(size))))


def ssm_references(size: int) -> dict[str, str]:
    return fill(lambda name: str(SsmReference(SSM_PATH + name)))


def sealed_values(size: int) -> dict[str, str]:
    return fill(lambda name: str(_envelope.seal(CIPHER, name, secret(size).encode())), data_key_line())


def each(env: Mapping[str, str]) -> int:
    """Bytes per secret variable (they are all the same size)."""
    sizes = {cost({k: v}) for k, v in env.items() if k.startswith("APP_KEY_")}
    assert len(sizes) == 1
    return sizes.pop()


def count(env: Mapping[str, str]) -> int:
    return sum(1 for name in env if name.startswith("APP_KEY_"))


def table() -> str:
    line = cost(data_key_line())
    rows = [
        "| secret size | `kms:` values | `ssm:` references | "
        f"sealed values (after the {line}-byte `SECRETBOOT_DATA_KEY` line) |",
        "|---|---|---|---|",
    ]
    for size in SIZES:
        cells = [f"{size} bytes"]
        for env in (kms_values(size), ssm_references(size), sealed_values(size)):
            cells.append(f"{count(env)} ({each(env)} bytes each)")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_the_documented_table_is_the_measured_one() -> None:
    lines = DOC.read_text().split(TABLE_MARK, 1)[1].lstrip("\n").splitlines()
    rows = []
    for row in lines:
        if not row.startswith("|"):
            break
        rows.append(row)
    computed = table()
    assert "\n".join(rows) == computed, f"docs/envelope.md's budget table drifted; it should be:\n{computed}"


@pytest.mark.parametrize("size", SIZES)
def test_what_the_doc_says_about_the_table(size: int) -> None:
    kms, ssm, sealed = kms_values(size), ssm_references(size), sealed_values(size)
    # ssm: references fit the most, whatever the secret's size.
    assert count(ssm) > count(sealed) >= count(kms)
    assert count(ssm) == count(ssm_references(SIZES[0]))
    # Sealed values fit strictly more than kms: values up to 256 bytes, as many at 1024.
    if size <= 256:
        assert count(sealed) > count(kms)
    else:
        assert count(sealed) == count(kms)
    # With one secret the data key line makes sealing dearer; from the second on it is cheaper.
    line = cost(data_key_line())
    assert line + each(sealed) > each(kms)
    assert line + 2 * each(sealed) < 2 * each(kms)


def largest_alone(make: Callable[[str, int], str], fixed: Mapping[str, str] | None = None) -> int:
    """The largest secret that fits on its own (with ``fixed``), in bytes."""
    name = variable(0)
    size = 1
    while cost({**(fixed or {}), name: make(name, size + 1)}) <= LAMBDA_ENV_BYTES:
        size += 1
    return size


def test_the_largest_secret_that_fits_alone() -> None:
    kms = largest_alone(lambda name, size: str(KmsReference(kms_model(size))))
    sealed = largest_alone(
        lambda name, size: str(_envelope.seal(CIPHER, name, secret(size).encode())), data_key_line()
    )
    sentence = f"up to {kms} bytes as a `kms:` value and {sealed} bytes sealed"
    assert sentence in " ".join(DOC.read_text().split()), sentence


def test_the_values_measured_are_real(tmp_path: Path) -> None:
    """The sealed environment is one bootstrap() opens: no value was sized by guesswork."""
    key_file = tmp_path / "budget.key"
    _envelope.write_key_file(str(key_file))
    master = _envelope.read_key_file(str(key_file))
    env = sealed_values(64)
    # The same data key, wrapped locally so that no AWS is needed to open it.
    env["SECRETBOOT_DATA_KEY"] = str(_envelope.wrap_local(master, DATA_KEY))
    env["SECRETBOOT_LOCAL_KEY_FILE"] = str(key_file)
    keyring = secretboot.bootstrap(environ=env)
    assert sorted(keyring) == sorted(name for name in env if name.startswith("APP_KEY_"))
    assert all(len(value) == 64 for value in keyring.values())
    for name, value in env.items():
        if name.startswith("APP_KEY_"):
            ref = secretboot.parse_reference(value)
            assert isinstance(ref, SealedReference)
            # version + nonce + ciphertext + tag: 29 bytes more than the plaintext.
            assert len(ref.blob) == 64 + 29
    # The KMS model stays inside what KmsReference (and KMS) accept.
    assert isinstance(secretboot.parse_reference(kms_values(SIZES[-1])["APP_KEY_0000"]), KmsReference)
