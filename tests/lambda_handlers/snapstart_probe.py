"""The example function with two SnapStart hooks of its own that report what the keyring holds.

``snapshot_restore_py`` runs before-snapshot hooks newest first and after-restore hooks in
registration order. Registered around the import of ``app`` (whose ``bootstrap()`` registers
secretboot's hooks), ours run after secretboot's in both phases, so they show the keyring as
secretboot's hooks left it: one JSON line each on stdout.

Each line also says which of boto3's and botocore's modules the process has imported
(``boto``; ``botocore`` is whether the bare package is among them: Powertools' logger imports
it, and nothing else of it, to add its user agent to botocore sessions) and how many
credential caches secretboot holds (``credential_caches``; ``None`` before it made one).
"""

from __future__ import annotations

import json
import sys

from snapshot_restore_py import register_after_restore, register_before_snapshot


def _report(phase: str) -> None:
    from app import secrets

    caches = getattr(sys.modules.get("secretboot._credentials"), "_caches", None)
    line = {
        "probe": phase,
        "values": len(secrets),
        "references": len(secrets.references),
        "id": id(secrets),
        "botocore": "botocore" in sys.modules,
        "boto": sorted(name for name in sys.modules if name.split(".")[0] in ("boto3", "botocore")),
        "credential_caches": None if caches is None else len(caches),
    }
    print(json.dumps(line), flush=True)


register_before_snapshot(_report, "before-snapshot")  # older than secretboot's: runs after it
import app  # noqa: E402 - secretboot registers its hooks during this import

register_after_restore(_report, "after-restore")  # newer than secretboot's: runs after it

handler = app.handler
