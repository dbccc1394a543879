"""The resolution engine: group references by kind, run every request in parallel."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from secretboot._kms import KmsResolver
from secretboot._outcome import Outcome
from secretboot._reference import Reference
from secretboot._settings import kms_settings
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
RESOLVERS: Mapping[str, Callable[[Transport, Mapping[str, str]], Resolver[Any]]] = {
    "kms": lambda transport, env: KmsResolver(transport, kms_settings(env)),
    "ssm": lambda transport, env: SsmResolver(transport),
}


def resolve(
    refs: Mapping[str, Reference], env: Mapping[str, str], transport: Transport | None = None
) -> Outcome:
    """Resolve every reference. Failures are collected, never raised."""
    outcome = Outcome()
    if not refs:
        return outcome
    groups: dict[str, dict[str, Reference]] = {}
    for variable, ref in refs.items():
        groups.setdefault(ref.kind, {})[variable] = ref
    # Settings are read (and may fail) before any request is made.
    if transport is None:
        transport = default_transport(env)
    resolvers = {kind: RESOLVERS[kind](transport, env) for kind in groups}
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


def default_transport(env: Mapping[str, str]) -> Transport:
    from secretboot._boto3 import Boto3Transport

    aws = {k: v for k, v in env.items() if k.startswith("AWS_")}
    return Boto3Transport(aws, max_pool_connections=MAX_WORKERS)
