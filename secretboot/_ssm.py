"""SSM source: ``GetParameters`` with decryption, at most 10 names a call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from secretboot import _transport as t
from secretboot._errors import Failure
from secretboot._outcome import Outcome, Task
from secretboot._reference import SsmReference

BATCH_SIZE = 10  # the API's limit on Names

_DETAILS = {
    t.PARAMETER_NOT_FOUND: "no such parameter, version or label (or not visible to these credentials)",
    t.ACCESS_DENIED: "not allowed to call ssm:GetParameters on this parameter",
}


class SsmResolver:
    def __init__(self, transport: t.Transport) -> None:
        self._transport = transport

    def plan(self, refs: Mapping[str, SsmReference]) -> list[Task]:
        """Chunks of at most ``BATCH_SIZE`` distinct requests, one task each.

        A chunk never asks for the same parameter twice (say ``/a:1`` and
        ``/a:2``): not every endpoint reports which selector an answer is for,
        so each answer must map back to exactly one request by name.
        """
        wanted: dict[SsmReference, list[str]] = {}
        for variable, ref in refs.items():
            wanted.setdefault(ref, []).append(variable)
        chunks: list[dict[SsmReference, list[str]]] = []
        for ref, variables in wanted.items():
            for chunk in chunks:
                if len(chunk) < BATCH_SIZE and all(
                    other.parameter_name != ref.parameter_name for other in chunk
                ):
                    chunk[ref] = variables
                    break
            else:
                chunks.append({ref: variables})
        return [
            Task({v: ref for ref, names in chunk.items() for v in names}, partial(self._fetch, chunk))
            for chunk in chunks
        ]

    def _fetch(self, chunk: Mapping[SsmReference, Sequence[str]]) -> Outcome:
        outcome = Outcome()
        outcome.calls["ssm"] += 1
        try:
            answer = self._transport.get_parameters([ref.request_name for ref in chunk])
        except t.TransportError as exc:
            if exc.reason == t.ACCESS_DENIED and len(chunk) > 1:
                # IAM denies the whole call if it denies one name in it; ask
                # for each alone so the error names only the denied ones.
                for ref, variables in chunk.items():
                    outcome.merge(self._fetch({ref: variables}))
                return outcome
            detail = _DETAILS.get(exc.reason, exc.detail)
            for ref, variables in chunk.items():
                outcome.failures.extend(
                    Failure(v, ref.kind, ref.target, exc.reason, detail) for v in variables
                )
            return outcome
        index: dict[str, t.Parameter] = {}
        for parameter in answer.found:
            index[parameter.name] = parameter
            if parameter.arn:
                index[parameter.arn] = parameter
        invalid = set(answer.invalid)
        for ref, variables in chunk.items():
            found = index.get(ref.name) or index.get(ref.parameter_name)
            if found is None or ref.request_name in invalid:
                # Absent without being reported invalid would be an endpoint
                # bug; fail rather than silently drop the variable.
                reason = t.PARAMETER_NOT_FOUND if ref.request_name in invalid else t.SERVICE_ERROR
                detail = _DETAILS.get(reason, "the answer did not include this parameter")
                outcome.failures.extend(Failure(v, ref.kind, ref.target, reason, detail) for v in variables)
                continue
            for variable in variables:
                outcome.values[variable] = found.value
        return outcome
