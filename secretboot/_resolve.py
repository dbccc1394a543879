"""The resolution engine: group references by kind, run every request in parallel."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from secretboot._errors import ConfigurationError
from secretboot._kms import KmsResolver
from secretboot._outcome import Outcome
from secretboot._reference import Reference
from secretboot._settings import TRANSPORT, Settings
from secretboot._ssm import SsmResolver
from secretboot._transport import Transport

# Requests in flight at once; also the HTTP connection pool size per service.
MAX_WORKERS = 16

R_contra = TypeVar("R_contra", contravariant=True)


class Resolver(Protocol[R_contra]):
    def plan(self, refs: Mapping[str, R_contra]) -> list[Callable[[], Outcome]]:
        """Split the work into independent tasks, each making its own API calls."""
        ...


# One registry keyed by reference kind: adding a source means one entry here.
RESOLVERS: Mapping[str, Callable[[Transport, Settings], Resolver[Any]]] = {
    "kms": lambda transport, settings: KmsResolver(transport, settings.kms),
    "ssm": lambda transport, settings: SsmResolver(transport),
}


def resolve(refs: Mapping[str, Reference], settings: Settings, transport: Transport | None = None) -> Outcome:
    """Resolve every reference. Failures are collected, never raised."""
    outcome = Outcome()
    if not refs:
        return outcome
    groups: dict[str, dict[str, Reference]] = {}
    for variable, ref in refs.items():
        groups.setdefault(ref.kind, {})[variable] = ref
    if transport is None:
        transport = default_transport(settings)
    outcome.transport = transport.name
    resolvers = {kind: RESOLVERS[kind](transport, settings) for kind in groups}
    tasks = [task for kind, group in groups.items() for task in resolvers[kind].plan(group)]
    if len(tasks) == 1:
        outcome.merge(tasks[0]())
        return outcome
    from concurrent.futures import ThreadPoolExecutor

    workers = min(MAX_WORKERS, len(tasks))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="secretboot") as pool:
        for result in pool.map(lambda task: task(), tasks):
            outcome.merge(result)
    return outcome


def default_transport(settings: Settings) -> Transport:
    """The fast transport where it can serve the environment, else boto3.

    ``SECRETBOOT_TRANSPORT`` forces one: ``fast`` is an error where it cannot serve.
    """
    if settings.transport != "boto3":
        from secretboot import _fast

        why = _fast.unsupported(settings.aws)
        if why is None:
            return _fast.FastTransport(settings.aws)
        if settings.transport == "fast":
            raise ConfigurationError(f"{TRANSPORT}=fast, but {why}")
    from secretboot._boto3 import Boto3Transport

    return Boto3Transport(settings.aws, max_pool_connections=MAX_WORKERS)
