"""The resolution engine: group references by kind, run every request in parallel."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Collection, Mapping, Sequence

from secretboot import _transport as t
from secretboot._errors import ConfigurationError, Failure
from secretboot._kms import KmsResolver
from secretboot._outcome import Outcome, Task
from secretboot._reference import Reference, is_reference
from secretboot._settings import BINARY_VARS, TIMEOUT, TRANSPORT, Settings
from secretboot._ssm import SsmResolver
from secretboot._transport import Deadline

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from typing import Any, Protocol, TypeVar

    from secretboot._transport import Transport

    R_contra = TypeVar("R_contra", contravariant=True)

    class Resolver(Protocol[R_contra]):
        def plan(self, refs: Mapping[str, R_contra]) -> list[Task]:
            """Split the work into independent tasks, each making its own API calls."""
            ...


# Requests in flight at once: enough that 100 secrets (33 requests) go out in
# one round trip. Also the HTTP connection pool size per service.
MAX_WORKERS = 64


# One registry keyed by reference kind: adding a source means one entry here.
# Each entry: the AWS services its requests go to, and how to build it.
RESOLVERS: Mapping[
    str, tuple[Callable[[Settings], tuple[str, ...]], Callable[[Transport, Settings], Resolver[Any]]]
] = {
    "kms": (lambda settings: ("kms",), lambda transport, settings: KmsResolver(transport, settings.kms)),
    "ssm": (lambda settings: ("ssm",), lambda transport, settings: SsmResolver(transport)),
    # A data key under a local key file needs no AWS at all.
    "sealed": (
        lambda settings: ("kms",) if (settings.data_key or "").startswith("kms:") else (),
        lambda transport, settings: _sealed_resolver(transport, settings),
    ),
    "secretsmanager": (
        lambda settings: ("secretsmanager",),
        lambda transport, settings: _secrets_manager_resolver(transport, settings),
    ),
}


# These two are imported only when a reference of their kind is found (the
# sealed one brings cryptography with it).
def _sealed_resolver(transport: Transport, settings: Settings) -> Resolver[Any]:
    from secretboot._sealed import SealedResolver

    return SealedResolver(transport, settings)


def _secrets_manager_resolver(transport: Transport, settings: Settings) -> Resolver[Any]:
    from secretboot._secretsmanager import SecretsManagerResolver

    return SecretsManagerResolver(transport, settings.secrets_manager_paths)


def resolve(
    refs: Mapping[str, Reference],
    settings: Settings,
    transport: Transport | None = None,
    *,
    deadline: Deadline | None = None,
    fail_fast: bool = True,
) -> Outcome:
    """Resolve every reference within ``SECRETBOOT_TIMEOUT``. Failures are collected, never raised.

    With ``fail_fast`` (a start, which any failure fails closed) the first task that
    fails decides the outcome: requests still being retried stop, each reporting what
    it last met. Without it (``secretboot check``) every request uses the whole deadline.
    """
    outcome = Outcome()
    if not refs:
        return outcome
    if deadline is None:
        deadline = Deadline(settings.timeout)
    groups: dict[str, dict[str, Reference]] = {}
    for variable, ref in refs.items():
        groups.setdefault(ref.kind, {})[variable] = ref
    if transport is None:
        services = {service for kind in groups for service in RESOLVERS[kind][0](settings)}
        transport = default_transport(settings, services, deadline) if services else _NoTransport()
    resolvers = {kind: RESOLVERS[kind][1](transport, settings) for kind in groups}
    tasks = [task for kind, group in groups.items() for task in resolvers[kind].plan(group)]
    results, late = _run_all(tasks, deadline, fail_fast=fail_fast)
    for result in results:
        outcome.merge(result)
    detail = f"still waiting for AWS when {TIMEOUT}={settings.timeout:g} s ran out"
    for task in late:
        outcome.failures.extend(
            Failure(v, ref.kind, ref.target, t.TIMEOUT, detail) for v, ref in task.refs.items()
        )
    _text_and_bytes(outcome, refs, settings.binary_vars)
    _never_twice(outcome, refs)
    outcome.retries = transport.retries
    outcome.waited = transport.waited
    if outcome.calls:
        outcome.transport = transport.name  # not for sealed values under a local key: no AWS
    return outcome


def _text_and_bytes(outcome: Outcome, refs: Mapping[str, Reference], binary_vars: frozenset[str]) -> None:
    """Every value is valid text, or bytes for a variable listed in SECRETBOOT_BINARY_VARS.

    Anything else is a NotText failure naming the variable.
    """
    for variable in [v for v in outcome.binary if v not in binary_vars]:
        del outcome.binary[variable]
        ref = refs[variable]
        detail = f"the plaintext is not UTF-8 text; list the variable in {BINARY_VARS} to read it as bytes"
        outcome.failures.append(Failure(variable, ref.kind, ref.target, "NotText", detail))
    # JSON answers can carry lone surrogates ("\ud800"): text no encoding can write out.
    for variable in [v for v, value in outcome.values.items() if not _encodable(value)]:
        del outcome.values[variable]
        ref = refs[variable]
        detail = "the value holds characters that are not valid Unicode (lone surrogates)"
        outcome.failures.append(Failure(variable, ref.kind, ref.target, "NotText", detail))
    for variable in binary_vars & outcome.values.keys():
        outcome.binary[variable] = outcome.values[variable].encode("utf-8")
    for variable, plaintext in outcome.binary.items():
        # The mapping holds text: binary plaintext shows there as standard base64.
        outcome.values[variable] = base64.b64encode(plaintext).decode("ascii")


RESOLVED_TO_REFERENCE = "ResolvedToReference"


def _never_twice(outcome: Outcome, refs: Mapping[str, Reference]) -> None:
    """A resolved value that is itself a reference fails, naming the variable only.

    Else whoever can write one harmless parameter could plant ``kms:<someone else's
    ciphertext>`` or ``ssm:/their/secret`` there: exported, or inherited by a child of
    ``secretboot exec``, the plaintext would be read as a reference and resolved with
    this process's credentials. The test is the one a child makes on each variable
    (binary values as the base64 text the mapping and the environment hold), so nothing
    this returns is ever resolved again, here or in a child.
    """
    detail = "the resolved value is itself a reference; secretboot never resolves a value twice"
    for variable in [v for v, value in outcome.values.items() if is_reference(value)]:
        del outcome.values[variable]
        outcome.binary.pop(variable, None)
        outcome.key_ids.pop(variable, None)
        ref = refs[variable]
        outcome.failures.append(Failure(variable, ref.kind, ref.target, RESOLVED_TO_REFERENCE, detail))


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False  # the error, which holds the value, goes no further
    return True


class _NoTransport:
    """For references that need no AWS (sealed values under a local key): none is built."""

    name = ""
    retries = 0
    waited = 0.0

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no AWS call was expected, yet {name} was called")


# A task past the deadline is given this long to report its own timeout (which
# says what it was waiting for) before it is reported as still pending.
_GRACE = 0.1


def _run_all(
    tasks: Sequence[Task], deadline: Deadline, *, fail_fast: bool = True
) -> tuple[list[Outcome], list[Task]]:
    """Run every task, at most ``MAX_WORKERS`` at once, until done or past ``deadline``.

    Returns (the outcomes of finished tasks, the tasks still unfinished at the
    deadline); re-raises the first KeyboardInterrupt or other BaseException.
    Unfinished tasks' threads are daemons left to end on their own: their results
    are discarded. Plain threads: concurrent.futures would add its import (and
    logging's) to every cold start.
    """
    results: list[Outcome] = []
    crashes: list[BaseException] = []
    unfinished = set(range(len(tasks)))
    queue = iter(enumerate(tasks))
    changed = threading.Condition()

    def work() -> None:
        while True:
            with changed:
                item = next(queue, None)
            if item is None:
                return
            index, task = item
            try:
                result = task.run()
            except Exception as exc:
                # A bug, not an AWS failure. Its variables fail; the exception itself
                # is not passed on, as its arguments may hold the data it choked on.
                result = _crashed(task, type(exc).__name__)
            except BaseException as exc:  # KeyboardInterrupt and the like: re-raised below
                with changed:
                    crashes.append(exc)
                    changed.notify()
                return
            if fail_fast and result.failures:
                deadline.decide()  # the start fails closed whatever the rest do: stop their retries
            with changed:
                results.append(result)
                unfinished.discard(index)
                changed.notify()

    for n in range(min(MAX_WORKERS, len(tasks))):
        threading.Thread(target=work, name=f"secretboot-{n}", daemon=True).start()
    with changed:
        while unfinished and not crashes:
            left = deadline.left() + _GRACE
            if left <= 0:
                break
            changed.wait(left)
        if crashes:
            raise crashes[0]
        return list(results), [tasks[i] for i in sorted(unfinished)]


def _crashed(task: Task, kind: str) -> Outcome:
    outcome = Outcome()
    detail = f"{kind} inside secretboot while resolving it (a bug: please report it)"
    outcome.failures.extend(
        Failure(v, ref.kind, ref.target, "InternalError", detail) for v, ref in task.refs.items()
    )
    return outcome


def default_transport(
    settings: Settings, services: Collection[str] = ("kms", "ssm"), deadline: Deadline | None = None
) -> Transport:
    """The fast transport where it can serve the environment for ``services``, else boto3.

    ``SECRETBOOT_TRANSPORT`` forces one: ``fast`` is an error where it cannot serve.
    """
    adaptive = settings.retry_mode == "adaptive"
    if settings.transport != "boto3":
        from secretboot import _fast

        chosen = _fast.plan(settings.aws, services)
        if not isinstance(chosen, str):
            return _fast.FastTransport(
                settings.aws, services=services, deadline=deadline, adaptive=adaptive, planned=chosen
            )
        if settings.transport == "fast":
            raise ConfigurationError(f"{TRANSPORT}=fast, but {chosen}")
    from secretboot._boto3 import Boto3Transport

    return Boto3Transport(
        settings.aws, max_pool_connections=MAX_WORKERS, deadline=deadline, adaptive=adaptive
    )
