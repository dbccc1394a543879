"""One cold start under faults (bench/faults.py): ``bootstrap()`` as an application calls it.

Prints one JSON line: whether every variable resolved (and the checksum of the values, so the
runner can check them), how long ``bootstrap()`` took, the reasons of any failures, and
secretboot's own log line (which names variables and counts, never values).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

from _fleet import digest

import secretboot

lines: list[str] = []


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines.append(record.getMessage())


logger = logging.getLogger("secretboot")
logger.addHandler(_Keep())
logger.setLevel(logging.INFO)

started = time.monotonic()
try:
    keyring = secretboot.bootstrap()
except secretboot.BootstrapError as exc:
    ms = (time.monotonic() - started) * 1000
    failures = dict(Counter(f.reason for f in exc.failures))
    print(json.dumps({"ok": False, "ms": ms, "failures": failures, "line": lines[-1] if lines else ""}))
else:
    ms = (time.monotonic() - started) * 1000
    values = dict(keyring.items())
    print(json.dumps({"ok": True, "ms": ms, "digest": digest(values), "line": lines[-1] if lines else ""}))
