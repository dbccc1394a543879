"""What one resolution task produces: values, failures, and API calls made."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from secretboot._errors import Failure

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from secretboot._reference import Reference


class Outcome:
    __slots__ = ("binary", "calls", "failures", "key_ids", "retries", "transport", "values", "waited")

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.failures: list[Failure] = []
        self.calls: Counter[str] = Counter()
        self.transport = ""  # which transport made the calls, if any
        self.key_ids: dict[str, str] = {}  # KMS variable -> the ARN of the key that decrypted it
        self.retries = 0  # requests the transport retried
        self.waited = 0.0  # the longest time one request spent paused before retrying, seconds
        # Plaintext that is not UTF-8: variable -> bytes. Kept for SECRETBOOT_BINARY_VARS,
        # a NotText failure for any other variable (decided by resolve()).
        self.binary: dict[str, bytes] = {}

    def merge(self, other: Outcome) -> None:
        self.values.update(other.values)
        self.failures.extend(other.failures)
        self.calls.update(other.calls)
        self.key_ids.update(other.key_ids)
        self.binary.update(other.binary)


class Task:
    """One independent piece of a resolution: the variables it serves, and the work."""

    __slots__ = ("refs", "run")

    def __init__(self, refs: Mapping[str, Reference], run: Callable[[], Outcome]) -> None:
        self.refs = refs  # variable -> reference: what to report if it never finishes
        self.run = run


def decode(outcome: Outcome, plaintext: bytes, variables: Sequence[str]) -> None:
    """Record ``plaintext`` as text for every variable, or as bytes if it is not UTF-8."""
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        for variable in variables:
            outcome.binary[variable] = plaintext
        return
    for variable in variables:
        outcome.values[variable] = text
