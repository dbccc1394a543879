"""What `sam build` makes of template.yaml can be imported the way Lambda will import it.

The artifacts are built with the commands `sam build` runs: the layer's own makefile
(`make build-SecretbootLayer ARTIFACTS_DIR=...`, BuildMethod: makefile) and, for the function,
pip with the runtime's platform flags on its requirements.txt plus a copy of its folder. The
handler module is then imported by python3.13 started with ``-I -S``, whose ``sys.path`` holds
only the function folder, the layer's ``python/`` and a folder with boto3 standing in for the
one the Lambda runtime ships.

The template's architecture (arm64) cannot be executed here, so the import check uses a second
layer built by the same makefile for this machine's platform, and the test checks that it holds
the same packages as the arm64 one. PyPI must be reachable; python3.13 must be installed (the
test fails, it does not skip, when it is not).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
MACHINES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "AMD64": "x86_64"}
# What the Lambda Python runtime already provides, and so must not be in the layer (it would
# shadow the runtime's copy and add 31 MB): boto3 and everything it pulls in.
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer", "urllib3", "jmespath", "dateutil", "six"}
# Before this change the layer (secretboot with all its dependencies) was about 54 MB.
MAX_LAYER_MB = 25
PIP_TIMEOUT = 600


def _template() -> dict[str, Any]:
    template: dict[str, Any] = yaml_parse((ROOT / "template.yaml").read_text())
    return template


def _python313(version: str) -> str:
    """The first python<version> that runs: on PATH (a pyenv shim may refuse), else in pyenv."""
    name = f"python{version}"
    candidates = [shutil.which(name)]
    candidates += sorted((Path.home() / ".pyenv" / "versions").glob(f"{version}.*/bin/{name}"), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [str(candidate), "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return str(candidate)
    pytest.fail(f"{name} is needed to build the Lambda artifacts (the runtime is {name}); install it")


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(args, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False, **kwargs)
    assert run.returncode == 0, f"{args} failed:\n{run.stdout}\n{run.stderr}"
    return run


def _pip_platform(python: str, version: str, plat: str, target: Path, *args: str) -> None:
    """pip as sam build runs it for a python function or layer."""
    _run(
        [
            *(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--target", str(target)),
            *("--platform", plat, "--implementation", "cp", "--python-version", version),
            *("--only-binary=:all:", *args),
        ]
    )


def _make_layer(python: str, artifacts: Path, plat: str | None = None) -> Path:
    """What sam build runs for SecretbootLayer (it passes the makefile's own path, and ARTIFACTS_DIR)."""
    args = ["make", "--makefile", str(ROOT / "layer" / "Makefile"), "build-SecretbootLayer"]
    args += [f"ARTIFACTS_DIR={artifacts}", f"PYTHON={python}"]
    if plat is not None:
        args.append(f"PLATFORM={plat}")
    scratch = artifacts.parent / f"{artifacts.name}-scratch"  # sam build runs make in a copy
    shutil.copytree(ROOT / "layer", scratch)
    _run(args, cwd=scratch)
    return artifacts / "python"


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def _top_level(folder: Path) -> set[str]:
    """Importable top-level names: packages and modules, not dist-info or scripts."""
    names = set()
    for entry in folder.iterdir():
        if entry.name.endswith((".dist-info", ".data")) or entry.name in {"bin", "__pycache__"}:
            continue
        names.add(entry.name.split(".")[0])
    return names


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    template = _template()
    function = template["Resources"]["Function"]["Properties"]
    layer = template["Resources"]["SecretbootLayer"]
    runtime = function["Runtime"]
    version = runtime.removeprefix("python")
    (arch,) = function["Architectures"]
    assert layer["Properties"]["ContentUri"].rstrip("/") == "layer"
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    python = _python313(version)
    base = tmp_path_factory.mktemp("deploy")

    # The function: its requirements.txt for the template's platform, then its folder's files.
    fn = base / "Function"
    code = ROOT / function["CodeUri"]
    _pip_platform(python, version, PLATFORMS[arch], fn, "-r", str(code / "requirements.txt"))
    for item in code.iterdir():
        if item.is_file():
            shutil.copy2(item, fn / item.name)

    host = MACHINES[platform.machine()]
    built = {
        "runtime": runtime,
        "arch": arch,
        "python": python,
        "function": fn,
        "layer": _make_layer(python, base / "SecretbootLayer"),
    }
    # The import needs a layer this machine can execute: same makefile, this machine's platform.
    built["host_layer"] = (
        built["layer"] if host == arch else _make_layer(python, base / "HostLayer", PLATFORMS[host])
    )
    # The Lambda runtime's own boto3 (it sits after /opt/python on the runtime's sys.path).
    built["runtime_boto3"] = base / "runtime"
    _pip_platform(python, version, PLATFORMS[host], built["runtime_boto3"], "boto3")
    return built


def test_layer_carries_secretboot_and_what_the_runtime_lacks(artifacts: dict[str, Any]) -> None:
    layer: Path = artifacts["layer"]
    names = _top_level(layer)
    assert {"secretboot", "dotenv", "cryptography"} <= names
    assert not names & RUNTIME_PROVIDED, f"the runtime provides {sorted(names & RUNTIME_PROVIDED)}"
    size = _size_mb(layer.parent)
    print(f"\nsecretboot layer ({artifacts['arch']}): {size:.1f} MB, holding {sorted(names)}")
    assert size < MAX_LAYER_MB, f"the layer is {size:.1f} MB"
    # secretboot is this checkout, every module of it.
    shipped = {p.relative_to(layer).as_posix() for p in (layer / "secretboot").rglob("*.py")}
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "secretboot").rglob("*.py")}
    assert shipped == source
    # cryptography's compiled code is for the template's architecture and runtime.
    (wheel,) = layer.glob("cryptography-*.dist-info/WHEEL")
    tags = [line.split(": ", 1)[1] for line in wheel.read_text().splitlines() if line.startswith("Tag: ")]
    machine = PLATFORMS[artifacts["arch"]].removeprefix("manylinux2014_")
    assert tags and all(tag.endswith(machine) for tag in tags), tags
    # The machine's own build of the layer (used for the import below) holds the same packages.
    assert _top_level(artifacts["host_layer"]) == names


def test_function_packages_its_own_dependencies(artifacts: dict[str, Any]) -> None:
    names = _top_level(artifacts["function"])
    assert {"app", "aws_lambda_powertools"} <= names
    # secretboot and its dependencies come from the layer; boto3 from the runtime.
    assert not names & ({"secretboot", "dotenv", "cryptography"} | RUNTIME_PROVIDED - {"jmespath"})


_IMPORT_CHECK = """
import json, sys
folders = json.loads(sys.argv[1])
assert sys.version_info[:2] == tuple(int(p) for p in sys.argv[2].split(".")), sys.version
assert not any("site-packages" in p for p in sys.path), sys.path  # -I -S: the standard library only
sys.path[:0] = folders  # Lambda's order: /var/task, /opt/python, then the runtime's own packages
import app
assert callable(app.handler)
# What bootstrap() imports lazily: the fast transport, .env parsing, sealed values (AESGCM).
import secretboot._fast, dotenv.parser
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.fernet import Fernet
Fernet(Fernet.generate_key())
imported_boto3 = "boto3" in sys.modules
# Where the fast transport cannot serve (SnapStart's container credentials), boto3 is used:
# the runtime's copy.
from secretboot._boto3 import Boto3Transport
import boto3, botocore
origin = {m: sys.modules[m].__file__ for m in ("app", "aws_lambda_powertools", "secretboot", "dotenv",
          "cryptography", "boto3", "botocore")}
print(json.dumps({"origin": origin, "boto3_at_import": imported_boto3}))
"""


def _import_check(artifacts: dict[str, Any], folders: list[str]) -> list[str]:
    version = artifacts["runtime"].removeprefix("python")
    return [artifacts["python"], "-I", "-S", "-c", _IMPORT_CHECK, json.dumps(folders), version]


def test_handler_imports_in_a_clean_runtime(artifacts: dict[str, Any], tmp_path: Path) -> None:
    fn, layer, boto = artifacts["function"], artifacts["host_layer"], artifacts["runtime_boto3"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AWS_LAMBDA_FUNCTION_NAME": "secretboot-example-prod",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "secretboot-example",
    }
    folders = [str(fn), str(layer), str(boto)]
    run = subprocess.run(
        _import_check(artifacts, folders),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    origin = report["origin"]
    for module in ("app", "aws_lambda_powertools"):
        assert origin[module].startswith(str(fn) + os.sep), origin
    for module in ("secretboot", "dotenv", "cryptography"):
        assert origin[module].startswith(str(layer) + os.sep), origin
    for module in ("boto3", "botocore"):
        assert origin[module].startswith(str(boto) + os.sep), origin
    # Importing the handler (bootstrap() with nothing to resolve) does not need boto3 at all.
    assert report["boto3_at_import"] is False


def test_without_the_layer_the_handler_does_not_import(artifacts: dict[str, Any], tmp_path: Path) -> None:
    """The check above can fail: the function alone misses secretboot (the layer's job)."""
    folders = [str(artifacts["function"]), str(artifacts["runtime_boto3"])]
    run = subprocess.run(
        _import_check(artifacts, folders),
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode != 0
    assert "ModuleNotFoundError: No module named" in run.stderr
