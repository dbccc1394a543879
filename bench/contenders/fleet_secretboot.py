"""secretboot in a fleet of cold starts (bench/fleet.py), with the settings it finds.

Before the common start: import everything resolution will use, read the settings and the
references from the environment, and with ``SECRETBOOT_TRANSPORT=boto3`` build the boto3
clients (about 75 ms of CPU each time): local work that every Lambda instance does on its own
cores, which 50 processes on this machine's 2 cores would otherwise queue behind one another.

After it: ``resolve()``, the call ``bootstrap()`` makes, with the same settings (its deadline,
``SECRETBOOT_TIMEOUT``, starts at that call), and one JSON line: every variable resolved or not,
the requests it retried, its API calls and the reasons of its failures.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from _fleet import digest, emit, wait_for_start

from secretboot import _environment, _settings
from secretboot._resolve import MAX_WORKERS, RESOLVERS, resolve
from secretboot._retry import RetryPolicy
from secretboot._transport import Deadline

environ = dict(os.environ)
settings = _settings.Settings(environ)
refs, failures = _environment.scan(environ, _settings.kms_vars(environ))
services = sorted({service for ref in refs.values() for service in RESOLVERS[ref.kind][0](settings)})
# FLEET_ADAPTIVE=1: the transport with its (opt-in) client-side rate limiter per service.
adaptive = environ.get("FLEET_ADAPTIVE") == "1"
transport: Any = None
if settings.transport == "boto3":
    from secretboot._boto3 import Boto3Transport

    transport = Boto3Transport(settings.aws, max_pool_connections=MAX_WORKERS, adaptive=adaptive)
    for service in services:
        transport._client(service)
else:
    from secretboot import _fast  # imported now rather than after the start

    if adaptive:
        transport = _fast.FastTransport(settings.aws, services=services, adaptive=True)
if any(ref.kind == "sealed" for ref in refs.values()):
    from secretboot import _envelope, _sealed  # noqa: F401

    _envelope.load_aead()

woke = wait_for_start()
deadline = Deadline(settings.timeout)  # starts at the release, as bootstrap()'s does at its call
if transport is not None:
    # Built before the release; the retries' deadline is this one (private, for the bench).
    transport._deadline = deadline
    transport._policy = RetryPolicy(deadline)
outcome = resolve(refs, settings, transport, deadline=deadline)
failures += outcome.failures
emit(
    ok=not failures,
    woke=woke,
    retries=outcome.retries,
    calls=sum(outcome.calls.values()),
    transport=outcome.transport,
    failures=dict(Counter(failure.reason for failure in failures)),
    digest=digest(outcome.values) if not failures else "",
)
