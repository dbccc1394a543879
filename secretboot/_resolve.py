"""The resolution engine: group references by kind, run every request in parallel."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence

from secretboot._errors import ConfigurationError
from secretboot._kms import KmsResolver
from secretboot._outcome import Outcome
from secretboot._reference import Reference
from secretboot._settings import TRANSPORT, Settings
from secretboot._ssm import SsmResolver

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the cold-start path
if TYPE_CHECKING:
    from typing import Any, Protocol, TypeVar

    from secretboot._transport import Transport

    R_contra = TypeVar("R_contra", contravariant=True)

    class Resolver(Protocol[R_contra]):
        def plan(self, refs: Mapping[str, R_contra]) -> list[Callable[[], Outcome]]:
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
        lambda transport, settings: _secrets_manager_resolver(transport),
    ),
}


# These two are imported only when a reference of their kind is found (the
# sealed one brings cryptography with it).
def _sealed_resolver(transport: Transport, settings: Settings) -> Resolver[Any]:
    from secretboot._sealed import SealedResolver

    return SealedResolver(transport, settings)


def _secrets_manager_resolver(transport: Transport) -> Resolver[Any]:
    from secretboot._secretsmanager import SecretsManagerResolver

    return SecretsManagerResolver(transport)


def resolve(refs: Mapping[str, Reference], settings: Settings, transport: Transport | None = None) -> Outcome:
    """Resolve every reference. Failures are collected, never raised."""
    outcome = Outcome()
    if not refs:
        return outcome
    groups: dict[str, dict[str, Reference]] = {}
    for variable, ref in refs.items():
        groups.setdefault(ref.kind, {})[variable] = ref
    if transport is None:
        services = {service for kind in groups for service in RESOLVERS[kind][0](settings)}
        transport = default_transport(settings, services) if services else _NoTransport()
    outcome.transport = transport.name
    resolvers = {kind: RESOLVERS[kind][1](transport, settings) for kind in groups}
    tasks = [task for kind, group in groups.items() for task in resolvers[kind].plan(group)]
    for result in _run_all(tasks):
        outcome.merge(result)
    if not outcome.calls:
        outcome.transport = ""  # say, sealed values under a local key: AWS was never asked
    return outcome


class _NoTransport:
    """For references that need no AWS (sealed values under a local key): none is built."""

    name = ""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no AWS call was expected, yet {name} was called")


def _run_all(tasks: Sequence[Callable[[], Outcome]]) -> list[Outcome]:
    """Run every task, at most ``MAX_WORKERS`` at once; re-raise the first crash.

    Plain threads: concurrent.futures would add its import (and logging's) to
    every cold start for what this does in a few lines.
    """
    if len(tasks) == 1:
        return [tasks[0]()]
    results: list[Outcome] = []
    crashes: list[BaseException] = []
    pending = iter(tasks)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                task = next(pending, None)
            if task is None:
                return
            try:
                result = task()
            except BaseException as exc:  # surfaced in the calling thread below
                crashes.append(exc)
                return
            with lock:
                results.append(result)

    workers = [
        threading.Thread(target=work, name=f"secretboot-{n}", daemon=True)
        for n in range(min(MAX_WORKERS, len(tasks)))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if crashes:
        raise crashes[0]
    return results


def default_transport(settings: Settings, services: Collection[str] = ("kms", "ssm")) -> Transport:
    """The fast transport where it can serve the environment for ``services``, else boto3.

    ``SECRETBOOT_TRANSPORT`` forces one: ``fast`` is an error where it cannot serve.
    """
    if settings.transport != "boto3":
        from secretboot import _fast

        why = _fast.unsupported(settings.aws, services)
        if why is None:
            return _fast.FastTransport(settings.aws, services=services)
        if settings.transport == "fast":
            raise ConfigurationError(f"{TRANSPORT}=fast, but {why}")
    from secretboot._boto3 import Boto3Transport

    return Boto3Transport(settings.aws, max_pool_connections=MAX_WORKERS)
