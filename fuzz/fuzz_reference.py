"""Fuzz target: detection, parsing, scanning and settings (pure: no files, no AWS).

Contract: ``is_reference`` gives a bool; ``parse_reference``, ``parse_kms`` and
``parse_sealed`` give a reference, ``None`` or ``ReferenceSyntaxError``, quickly; a parsed
reference's canonical form parses back to it; ``scan()`` (what ``bootstrap()`` runs before any
request, allowlists included) and the ``SECRETBOOT_*`` settings raise nothing but
``SecretbootError``; no message holds the planted canary.

    python fuzz/fuzz_reference.py -max_total_time=60      # with atheris
    python fuzz/fuzz_reference.py FILE...                 # without: run these inputs once
"""

from __future__ import annotations

import sys

try:
    from fuzz import _harness as h
except ImportError:  # run as a script: fuzz/ is sys.path[0]
    import _harness as h  # type: ignore[no-redef,import-not-found,unused-ignore]

from secretboot import ConfigurationError
from secretboot import _settings as s
from secretboot._environment import scan

VARIABLES = ("HOSTILE", "", "AWS_HOSTILE", "SECRETBOOT_HOSTILE", "DB_PASSWORD")
ALLOWLISTS = ("", "/app/prod", "/app/prod/", "app/prod, /other", ",", " ", "/", "arn:aws:ssm", "${A}")


def TestOneInput(data: bytes) -> None:
    reader = h.Reader(data)
    mode = reader.byte() % 3
    if mode == 0:
        value = h.hostile_value(reader)
    elif mode == 1:
        value = reader.pick(h.PREFIXES) + reader.rest().decode("utf-8", "surrogateescape")
    else:  # long runs: what a backtracking pattern would choke on
        value = reader.pick(h.PREFIXES) + h.plant(reader.text(16), reader.byte()) * reader.number(300)
    index = reader.number(len(VARIABLES) + 1)
    variable = VARIABLES[index] if index < len(VARIABLES) else None
    h.check_reference(value, variable)

    # The whole environment as bootstrap() scans it, allowlists and SECRETBOOT_KMS_VARS included.
    name = variable or "HOSTILE"
    env = {
        name: value,
        "OTHER": reader.pick(h.PREFIXES) + h.CANARY,
        s.SSM_PATHS: reader.pick(ALLOWLISTS),
        s.SECRETS_MANAGER_PATHS: reader.pick(ALLOWLISTS),
        s.KMS_VARS: reader.pick(("", name, "OTHER", f"{name},MISSING")),
    }
    allowed = h.reference_names(env.values()) | h.shown_forms(env)
    with h.timed("scan"):
        refs, failures = scan(env, s.kms_vars(env))
    for failure in failures:
        h.assert_no_echo(f"{failure.kind} {failure.reason} {failure.detail}", where="scan failure")
        h.assert_no_echo(str(failure), allowed, where="scan failure")
    assert set(refs).isdisjoint(f.variable for f in failures), "a variable both parsed and failed"

    # Every setting, set to the hostile value: a ConfigurationError at worst, never echoing it.
    for setting in (s.KMS_CONTEXT, s.KMS_KEY_ID, s.TIMEOUT, s.TRANSPORT, s.EXPORT, s.BINARY_VARS, s.KMS_VARS):
        try:
            s.Settings({setting: value})
            s.flag({setting: value}, setting, None)
        except ConfigurationError as exc:
            h.assert_no_echo(str(exc), where=f"{setting} error")


if __name__ == "__main__":
    h.fuzz_main(TestOneInput, sys.argv)
