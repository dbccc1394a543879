"""What the fleet contenders share (bench/fleet.py): the common start and the result line.

The launcher passes two inherited pipe ends in ``FLEET_FDS`` (``"ready,go"``). A contender does
everything local first (imports, clients), writes one byte to *ready*, then blocks reading *go*
until the launcher closes its end: every contender of a run is released at the same instant,
however long the machine took to start them all. It then prints one JSON line whose ``woke`` and
``done`` are ``time.monotonic()`` stamps; ``CLOCK_MONOTONIC`` is one clock for every process on
Linux, so the launcher subtracts its own release stamp from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping


def wait_for_start() -> float:
    """Report ready, block until released; the monotonic time of the release as seen here."""
    ready, go = (int(fd) for fd in os.environ["FLEET_FDS"].split(","))
    os.write(ready, b"r")
    os.close(ready)
    while os.read(go, 1):  # nothing is ever written: EOF is the signal
        pass
    os.close(go)
    return time.monotonic()


def digest(values: Mapping[str, str]) -> str:
    """``<count> <sha256 of the sorted NAME=plaintext lines>``, as _common.report prints it."""
    lines = sorted(f"{name}={value}" for name, value in values.items())
    return f"{len(values)} {hashlib.sha256(chr(10).join(lines).encode()).hexdigest()}"


def emit(**fields: object) -> None:
    """Print the result line, stamped with the time the work ended."""
    fields["done"] = time.monotonic()
    print(json.dumps(fields), flush=True)
