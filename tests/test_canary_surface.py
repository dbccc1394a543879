"""The canary suite's reach: every public name and every CLI command is driven with canaries.

tests/test_canary.py drives the error paths of bootstrap(), the CLI, the Lambda runtime and
the framework integrations; tests/test_sentry.py what error reporters capture. This file adds
the public names the others reach only in passing (the reference types and their parser, the
log filter, the keyring's views), and a guard that a new public name or command cannot be
added without the canary or hostile suites naming it.
"""

# ruff: noqa: F811 - the imported fixtures are parameters of the tests below
from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

import secretboot
from secretboot import _cli
from tests.test_canary import (  # noqa: F401 - canaries, observe, temp_dir, world: fixtures
    _OUR_THREADS,
    Canaries,
    Observe,
    World,
    _full_house,
    canaries,
    observe,
    temp_dir,
    world,
)

HERE = Path(__file__).parent
# The suites that drive secretboot with hostile input or canaries.
SUITES = ("test_canary.py", "test_canary_surface.py", "test_hostile.py", "test_sentry.py")


def _suite_text() -> str:
    return "\n".join((HERE / name).read_text(encoding="utf-8") for name in SUITES)


@pytest.mark.parametrize("name", sorted(secretboot.__all__))
def test_every_public_name_is_driven_by_the_suites(name: str) -> None:
    uses = re.findall(rf"\b{re.escape(name)}\b", _suite_text())
    assert uses, f"secretboot.{name} is public but no canary or hostile test uses it"


def test_every_thread_secretboot_starts_is_observed() -> None:
    # The canary observation keeps the log records of the test's thread and of threads named
    # "secretboot...": a thread named otherwise (a refresh, a prefetch, a restore) would log unseen.
    package = Path(secretboot.__file__).parent
    source = "\n".join(path.read_text(encoding="utf-8") for path in sorted(package.rglob("*.py")))
    starts = [source[at.end() : at.end() + 200] for at in re.finditer(r"threading\.Thread\(", source)]
    names = [re.search(r"""\bname=f?["']([^"']*)["']""", call) for call in starts]
    assert len(starts) >= 5 and all(names), starts  # refresh, prefetch, restore, aead, resolve workers
    assert all(name.group(1).startswith(_OUR_THREADS) for name in names if name), names


def _commands() -> list[str]:
    parser = _cli.build_parser()
    (commands,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sorted(commands.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", _commands())
def test_every_cli_command_is_driven_by_the_canary_suite(command: str) -> None:
    text = (HERE / "test_canary.py").read_text(encoding="utf-8")
    assert re.search(rf"""["']{re.escape(command)}["']""", text), f"secretboot {command} has no canary test"


def test_the_reference_types_show_no_ciphertext(world: World) -> None:
    env = _full_house(world)
    refs = {name: secretboot.parse_reference(value, variable=name) for name, value in env.items()}
    refs = {name: ref for name, ref in refs.items() if ref is not None}
    kinds = {type(ref).__name__ for ref in refs.values()}
    assert {"KmsReference", "SsmReference", "SecretsManagerReference", "SealedReference"} <= kinds
    assert all(secretboot.is_reference(env[name]) for name in refs)
    for name, ref in refs.items():
        # str() is the canonical form (the ciphertext, by design); everything else shows none.
        assert secretboot.parse_reference(str(ref)) == ref, name
    world.canaries.assert_absent(
        {
            "repr of the references": repr(refs),
            "their targets": repr([ref.target for ref in refs.values()]),
            "their kinds": repr([ref.kind for ref in refs.values()]),
        }
    )


def _log_every_way(logger: logging.Logger, keyring: secretboot.Keyring) -> None:
    for name in keyring:
        value = keyring[name]
        logger.info("value of %s: %s", name, value)
        logger.warning(f"inline {value} in text")  # the careless way is the point
        logger.error("extra", extra={"field": {"nested": [value]}})
        try:
            raise KeyError(value)
        except KeyError:
            logger.exception("failed with %r", value)
    logger.info("views: %r %r %r", keyring.keys(), keyring.items(), keyring.values())


def test_secret_filter_masks_every_resolved_value(world: World, observe: Observe) -> None:
    env = _full_house(world)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(field)s", defaults={"field": ""}))
    handler.addFilter(secretboot.SecretFilter())
    logger = logging.getLogger("app.canary")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with observe(env) as obs:
            keyring = obs.call(secretboot.bootstrap, environ=env)
            assert obs.error is None, repr(obs.error)
            _log_every_way(logger, keyring)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert text.count("[masked:OK_SSM]") >= 4, text
    obs.assert_clean()
    world.canaries.assert_absent({"the application's log": text})


def test_the_keyring_and_its_views_show_names_only(world: World, canaries: Canaries) -> None:
    env = _full_house(world)
    keyring = secretboot.bootstrap(environ=env)
    shown = [keyring, keyring.keys(), keyring.items(), keyring.values(), keyring.references]
    canaries.assert_absent(
        {
            "repr": repr(shown),
            "str": str([str(item) for item in shown]),
            "sentry's hook": repr([getattr(item, "__sentry_repr__", lambda: "")() for item in shown]),
        }
    )
    with pytest.raises(KeyError) as missing:
        keyring["NOT_THERE"]
    canaries.assert_absent({"KeyError": repr(missing.value)})
