"""The keyring: a read-only mapping of variable name to resolved plaintext."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from types import MappingProxyType

from secretboot._errors import StaleError
from secretboot._reference import Reference

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import NoReturn

    from cryptography.fernet import Fernet, MultiFernet


class Keyring(Mapping[str, str]):
    """Resolved secrets by variable name. Shows names, never values.

    Only variables that held a reference are here; ``references`` maps each to
    the reference it was resolved from (their ``repr`` is safe to log).

    Error reporters capture frame locals, and some walk any ``Mapping`` item by item:
    Sentry asks ``__sentry_repr__`` first, and every error a method raises leaves
    from a frame that no longer holds the keyring (``del self`` before ``raise``).
    """

    # One attribute holding everything, replaced whole: a reader during a refresh
    # sees the old contents or the new, never half of each.
    __slots__ = ("_contents",)

    def __init__(
        self,
        values: Mapping[str, str],
        references: Mapping[str, Reference],
        binary: Mapping[str, bytes] | None = None,
    ) -> None:
        self._contents = _Contents({}, MappingProxyType({}), {})
        self._replace(values, references, binary)

    def _replace(
        self,
        values: Mapping[str, str],
        references: Mapping[str, Reference],
        binary: Mapping[str, bytes] | None = None,
    ) -> None:
        """Swap in new contents (a refresh, a SnapStart restore): holders see them."""
        if set(values) != set(references):
            raise ValueError("values and references must name the same variables")
        self._contents = _Contents(dict(values), MappingProxyType(dict(references)), dict(binary or {}))

    def _drop_values(self, *, stale: bool = False) -> None:
        """Forget the plaintext, keep the references (before a SnapStart snapshot; with
        ``stale``, past the stale bound: reading a name then raises ``StaleError``)."""
        self._contents = _Contents({}, self._contents.references, {}, stale=stale)

    @property
    def _stale(self) -> bool:
        return self._contents.stale

    @property
    def _values(self) -> dict[str, str]:
        return self._contents.values

    @property
    def references(self) -> Mapping[str, Reference]:
        return self._contents.references

    def as_bytes(self, name: str) -> bytes:
        """The plaintext of ``name`` as bytes.

        For a variable listed in ``SECRETBOOT_BINARY_VARS`` these are the bytes
        as stored (``keyring[name]`` is their standard base64); for any other, its
        text encoded as UTF-8. Raises ``KeyError`` for a name not in the keyring.
        """
        contents = self._contents
        raw = contents.binary.get(name)
        if raw is not None:
            return raw
        if name in contents.values:
            return contents.values[name].encode("utf-8")
        stale = contents.stale and name in contents.references
        del self, contents  # error reporters capture frame locals
        raise StaleError(name) if stale else KeyError(name)

    def __getitem__(self, name: str) -> str:
        contents = self._contents
        if name in contents.values:
            return contents.values[name]
        # Not a KeyError: Mapping.get() would turn a stale value into its default, silently.
        stale = contents.stale and name in contents.references
        del self, contents  # error reporters capture frame locals
        raise StaleError(name) if stale else KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._contents.values)

    # Views of one generation's dict (a refresh builds a new one and never edits
    # the old): iterating them across a refresh never mixes old and new values.
    # ``dict(keyring.items())`` is therefore a consistent copy; ``dict(keyring)``,
    # which looks up each key again, is not. Unlike a dict's views, their repr
    # shows names only.
    def keys(self) -> KeysView[str]:
        return _Keys(self._contents.values)

    def items(self) -> ItemsView[str, str]:
        return _Items(self._contents.values)

    def values(self) -> ValuesView[str]:
        return _Values(self._contents.values)

    def __len__(self) -> int:
        return len(self._contents.values)

    def __contains__(self, name: object) -> bool:
        return name in self._contents.values

    def fernet(self, name: str, *, fallbacks: Sequence[str] = ()) -> Fernet | MultiFernet:
        """A ``Fernet`` for the key in ``name``, or a ``MultiFernet`` with fallbacks.

        The first key encrypts; every key decrypts (``MultiFernet``), so data made
        with an old key (the startup edition's static ``SECRET_KEY``) stays readable
        during a rotation. Fallbacks not in the keyring are skipped, so removing
        ``SECRET_KEY_FALLBACK`` at the end of a rotation needs no code change.
        Raises ``KeyError`` for a missing ``name`` and ``ValueError`` naming the
        variable (never the value) for material that is not a Fernet key.
        """
        contents = self._contents
        made = _fernet(contents.values, name, fallbacks)
        stale = contents.stale and name in contents.references
        del self, contents  # error reporters capture frame locals
        if stale and isinstance(made, KeyError):
            made = StaleError(name)  # not "absent": a caller's missing-key branch must not take it
        if isinstance(made, Exception):
            raise made
        return made

    def __repr__(self) -> str:
        return f"<Keyring {sorted(self._values)}>"

    __str__ = __repr__

    def __sentry_repr__(self) -> str:
        # Sentry's serializer walks any Mapping item by item unless this says otherwise.
        return repr(self)

    def __reduce__(self) -> NoReturn:
        # Pickling would put plaintext on disk or on the wire.
        del self
        raise TypeError("a Keyring cannot be pickled or copied")


def _fernet(
    values: Mapping[str, str], name: str, fallbacks: Sequence[str]
) -> Fernet | MultiFernet | Exception:
    """``Keyring.fernet``'s work: the Fernet, or the error for the caller to raise.

    Returned, not raised, so that the caller raises it from a frame holding no key.
    """
    if isinstance(fallbacks, str):
        return TypeError("fallbacks must be a sequence of names, not one str")
    if name not in values:
        return KeyError(name)
    from cryptography.fernet import Fernet, MultiFernet

    names = [name, *(variable for variable in fallbacks if variable in values)]
    keys: list[Fernet] = []
    for variable in names:
        try:
            keys.append(Fernet(values[variable]))
        except (ValueError, TypeError):
            # The caller raises it outside any except block: no __context__, which holds the key.
            return ValueError(f"{variable} is not a Fernet key (32 url-safe base64-encoded bytes)")
    return MultiFernet(keys) if len(keys) > 1 else keys[0]


class _View:
    """A keyring view's repr: the names, never a value."""

    __slots__ = ()
    _mapping: dict[str, str]

    def __repr__(self) -> str:
        return f"<{type(self).__name__.lstrip('_')} of Keyring {sorted(self._mapping)}>"

    __str__ = __repr__

    def __sentry_repr__(self) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Keyring's view cannot be pickled or copied")

    def __len__(self) -> int:
        return len(self._mapping)


class _Keys(_View, KeysView[str]):
    __slots__ = ()

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping)


class _Items(_View, ItemsView[str, str]):
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._mapping.items())


class _Values(_View, ValuesView[str]):
    __slots__ = ()

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping.values())


class _Contents:
    __slots__ = ("binary", "references", "stale", "values")

    def __init__(
        self,
        values: dict[str, str],
        references: Mapping[str, Reference],
        binary: dict[str, bytes],
        *,
        stale: bool = False,
    ) -> None:
        self.values = values
        self.references = references
        self.binary = binary  # variable -> plaintext bytes, for SECRETBOOT_BINARY_VARS
        self.stale = stale  # values dropped past the stale bound: reads raise StaleError

    def __repr__(self) -> str:
        return f"<contents {sorted(self.values)}>"
