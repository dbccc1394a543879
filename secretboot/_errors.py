"""Exceptions. Every message names variables and reasons, never a value."""

from __future__ import annotations

from collections.abc import Iterable


class SecretbootError(Exception):
    """Base class of every error secretboot raises on purpose."""

    __module__ = "secretboot"  # tracebacks say secretboot.SecretbootError, the public name


class ConfigurationError(SecretbootError):
    """A ``SECRETBOOT_*`` setting or a ``bootstrap()`` option is unusable."""

    __module__ = "secretboot"  # tracebacks say secretboot.ConfigurationError, the public name


class InputError(SecretbootError):
    """What a CLI workflow was given cannot be protected as asked (empty, too large, expanded)."""


class VerificationError(SecretbootError):
    """A value just written (wrapped, stored, sealed) did not read back as itself: nothing was
    written where the app reads it."""


class ReferenceSyntaxError(SecretbootError, ValueError):
    """A value looks like a reference but does not follow the grammar.

    ``variable`` is the environment variable it came from (``None`` when the
    caller parsed a bare value), ``kind`` the reference kind it was read as
    (``kms``, ``ssm``, ``sealed``, ``secretsmanager`` or ``dynamic``) and
    ``reason`` what is wrong with it. The value itself is deliberately not kept.
    """

    __module__ = "secretboot"  # tracebacks say secretboot.ReferenceSyntaxError, the public name

    def __init__(self, reason: str, *, variable: str | None = None, kind: str = "reference") -> None:
        self.variable = variable
        self.reason = reason
        self.kind = kind
        where = f"{variable}: " if variable else ""
        super().__init__(f"{where}malformed reference: {reason}")


class StaleError(SecretbootError):
    """A value is past ``SECRETBOOT_MAX_AGE`` + ``SECRETBOOT_MAX_STALE`` and no refresh has
    succeeded: it is no longer served. Names the variable, never a value."""

    __module__ = "secretboot"  # tracebacks say secretboot.StaleError, the public name

    def __init__(self, variable: str) -> None:
        self.variable = variable
        super().__init__(
            f"{variable} is stale: refreshing it has failed for longer than SECRETBOOT_MAX_STALE "
            "allows past SECRETBOOT_MAX_AGE; it is served again after the next successful refresh"
        )


class Failure:
    """Why one variable could not be resolved.

    ``target`` is the SSM parameter name for SSM references and a size
    description for KMS ciphertext: the ciphertext itself never appears.
    ``reason`` is a short code such as ``AccessDenied``, ``ParameterNotFound``
    or ``InvalidCiphertext``; ``detail`` is a human explanation.
    """

    __module__ = "secretboot"  # tracebacks say secretboot.Failure, the public name

    __slots__ = ("detail", "kind", "reason", "target", "variable")

    def __init__(self, variable: str, kind: str, target: str, reason: str, detail: str = "") -> None:
        self.variable = variable
        self.kind = kind
        self.target = target
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.variable} ({self.kind} {self.target}): {self.reason}{detail}"

    def __repr__(self) -> str:
        return (
            f"Failure(variable={self.variable!r}, kind={self.kind!r}, "
            f"target={self.target!r}, reason={self.reason!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, a) for a in self.__slots__))


class BootstrapError(SecretbootError):
    """One or more references could not be resolved; nothing was applied.

    ``failures`` lists every failing variable, sorted by name.
    """

    __module__ = "secretboot"  # tracebacks say secretboot.BootstrapError, the public name

    def __init__(self, failures: Iterable[Failure]) -> None:
        self.failures = tuple(sorted(failures, key=lambda f: f.variable))
        count = len(self.failures)
        lines = "\n".join(f"  {f}" for f in self.failures)
        noun = "variable" if count == 1 else "variables"
        super().__init__(f"secretboot could not resolve {count} {noun}:\n{lines}")

    def __reduce__(self) -> tuple[type[BootstrapError], tuple[tuple[Failure, ...]]]:
        # Rebuilt from the failures (say, across processes), not from the message.
        return (BootstrapError, (self.failures,))

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(f.variable for f in self.failures)
