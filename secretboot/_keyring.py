"""The keyring: a read-only mapping of variable name to resolved plaintext."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from secretboot._reference import Reference


class Keyring(Mapping[str, str]):
    """Resolved secrets by variable name. Shows names, never values.

    Only variables that held a reference are here; ``references`` maps each to
    the reference it was resolved from (their ``repr`` is safe to log).
    """

    __slots__ = ("_references", "_values")

    def __init__(self, values: Mapping[str, str], references: Mapping[str, Reference]) -> None:
        self._values: dict[str, str] = {}
        self._references: Mapping[str, Reference] = MappingProxyType({})
        self._replace(values, references)

    def _replace(self, values: Mapping[str, str], references: Mapping[str, Reference]) -> None:
        """Swap in new contents (a refresh, a SnapStart restore): holders see them."""
        if set(values) != set(references):
            raise ValueError("values and references must name the same variables")
        self._values = dict(values)
        self._references = MappingProxyType(dict(references))

    def _drop_values(self) -> None:
        """Forget the plaintext, keep the references (before a SnapStart snapshot)."""
        self._values = {}

    @property
    def references(self) -> Mapping[str, Reference]:
        return self._references

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __repr__(self) -> str:
        return f"<Keyring {sorted(self._values)}>"

    __str__ = __repr__

    def __reduce__(self) -> str:
        # Pickling would put plaintext on disk or on the wire.
        raise TypeError("a Keyring cannot be pickled or copied")
