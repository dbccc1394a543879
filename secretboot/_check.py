"""``secretboot check``: every reference, its target and whether it resolves. Never values."""

from __future__ import annotations

import os
from collections.abc import Mapping

from secretboot import _settings as s
from secretboot._environment import near_misses, scan
from secretboot._lifecycle import read_environment
from secretboot._outcome import Outcome
from secretboot._reference import KmsReference, Reference

RESOLVED = "resolved"
PARSED = "parsed"  # --offline: the grammar holds, nothing was asked of AWS


class Row:
    """One variable's report. ``status`` is ``resolved``, ``parsed`` or a failure reason."""

    __slots__ = ("detail", "kind", "name", "status", "target")

    def __init__(self, name: str, kind: str, target: str, status: str, detail: str = "") -> None:
        self.name = name
        self.kind = kind
        self.target = target
        self.status = status
        self.detail = detail

    @property
    def ok(self) -> bool:
        return self.status in (RESOLVED, PARSED)

    def as_dict(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ("name", "kind", "target", "status", "detail")}


def check(
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    offline: bool = False,
) -> list[Row]:
    """Report on every reference the way ``bootstrap()`` would see it, sorted by name."""
    from secretboot._resolve import resolve

    _, _, merged = read_environment(environ, env_file)
    kms_vars = s.kms_vars(merged)
    settings = s.Settings(merged)
    refs, failures = scan(merged, kms_vars)
    failures += near_misses(merged, kms_vars, refs)  # errors here, whatever SECRETBOOT_STRICT says
    outcome = Outcome() if offline else resolve(refs, settings, fail_fast=False)
    failed = {f.variable: f for f in [*failures, *outcome.failures]}
    rows = [
        Row(
            f.variable,
            f.kind,
            _target(refs[f.variable], outcome) if f.variable in refs else f.target,
            f.reason,
            f.detail,
        )
        for f in failed.values()
    ]
    rows += [
        Row(name, ref.kind, _target(ref, outcome, name), PARSED if offline else RESOLVED)
        for name, ref in refs.items()
        if name not in failed
    ]
    return sorted(rows, key=lambda row: row.name)


def _target(ref: Reference, outcome: Outcome, name: str = "") -> str:
    if not isinstance(ref, KmsReference):
        return ref.target
    key = outcome.key_ids.get(name)
    return f"KMS blob, {len(ref.ciphertext)} bytes" + (f", key {key}" if key else "")
