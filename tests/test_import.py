"""Importing secretboot is cheap and inert; AWS code loads only when needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
before = set(sys.modules)
import secretboot
loaded = set(sys.modules) - before
keyring = secretboot.bootstrap(environ={"PLAIN": "https://example.com", "HEX": "deadbeef" * 8})
after_boot = set(sys.modules) - before
print(json.dumps({"import": sorted(loaded), "boot": sorted(after_boot), "len": len(keyring)}))
"""


def _run(code: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_import_and_plain_bootstrap_load_no_aws_code() -> None:
    result = _run(PROBE)
    heavy = ("boto3", "botocore", "dotenv", "concurrent", "urllib3", "logging", "json", "ssl", "_ssl", "http")
    for phase in ("import", "boot"):
        modules = result[phase]
        assert isinstance(modules, list)
        assert "secretboot" in modules
        if phase == "import":
            assert not [m for m in modules if m.split(".")[0] in heavy], modules
            # The envelope code (sealed values, key files) loads only when something is sealed.
            assert "secretboot._envelope" not in modules, modules
        else:
            assert not [m for m in modules if m.split(".")[0] in heavy[:5]], modules
    assert result["len"] == 0


def test_import_changes_nothing() -> None:
    code = (
        "import os, json, logging; before = dict(os.environ); handlers = logging.getLogger().handlers[:];"
        "import secretboot; print(json.dumps({'env': dict(os.environ) == before,"
        " 'log': logging.getLogger().handlers == handlers}))"
    )
    assert _run(code) == {"env": True, "log": True}
