"""Installable as documented: build the sdist and the wheel, install the wheel into a fresh
virtual environment, and use the installed package from there, out of process.

The build runs on a copy of what a clone of this working tree holds (tracked files plus
untracked ones that are not ignored), so no stale ``*.egg-info`` or ``build/`` of the checkout
can leak into the artefacts, and the checkout is never written to. ``python -m build`` builds
the sdist first and the wheel from the unpacked sdist, so a file missing from the sdist makes
the wheel (and these tests) fail. setuptools comes from PyPI into build's isolated
environment; the wheel's dependencies (and Flask and Django, for the framework tests) come from
PyPI too, through pip's default cache, so a second run is fast.

Every command runs with a minimal environment (no ``PYTHONPATH``, no ``AWS_*`` or
``SECRETBOOT_*``) from a directory outside the repository, so the checkout cannot be imported
by accident.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

import secretboot

REPO = Path(__file__).resolve().parent.parent
NAME = "secretboot"
VERSION = secretboot.__version__

BUILD_TIMEOUT = 600  # first run: setuptools and the dependencies are downloaded
STEP_TIMEOUT = 300
RUN_TIMEOUT = 60


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment a fresh shell would give: nothing that points Python at the checkout."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    # pip's own configuration (index, cache) lives in files and PIP_* variables: keep those.
    env.update({name: value for name, value in os.environ.items() if name.startswith("PIP_")})
    env.update(extra)
    return env


def _run(
    args: Sequence[str | Path], *, cwd: Path, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(arg) for arg in args]
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=_clean_env() if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[:4]} did not finish within {timeout} s")
    assert done.returncode == 0, (
        f"{argv} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _clone_copy(dest: Path) -> None:
    """Copy what a clone of the working tree would hold: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=RUN_TIMEOUT,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = REPO / relative
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)


def _dev_requirement(wheel: Path, name: str) -> str:
    """The wheel's own dev-extra requirement for ``name`` (bounds as in pyproject.toml), unmarked."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{NAME}-{VERSION}.dist-info/METADATA").decode()
    for line in metadata.splitlines():
        requirement, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        if (
            line.startswith("Requires-Dist: ")
            and marker.strip() == 'extra == "dev"'
            and re.match(rf"{name}(?![\w.-])", requirement.strip(), re.IGNORECASE)
        ):
            return requirement.strip()
    raise AssertionError(f"{name} is not in the dev extra")


@dataclass(frozen=True)
class Installed:
    src: Path  # the copy that was built
    sdist: Path
    wheel: Path
    python: Path  # the fresh venv's interpreter
    bin: Path
    purelib: Path  # the venv's site-packages
    outside: Path  # a working directory outside the repository

    def python_c(self, code: str) -> str:
        return _run([self.python, "-c", code], cwd=self.outside).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build once, make one venv, install the wheel alone (no extras) into it."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("packaging")
    src, dist, venv, outside = root / "src", root / "dist", root / "venv", root / "outside"
    outside.mkdir()
    _clone_copy(src)

    build_env = _clean_env()
    if importlib.util.find_spec("build") is None:
        # Not in the dev extra (yet): bring the build frontend into a side directory.
        tools = root / "tools"
        _run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", tools, "build"],
            cwd=root,
            timeout=STEP_TIMEOUT,
        )
        build_env["PYTHONPATH"] = str(tools)
    _run(
        [sys.executable, "-m", "build", "--outdir", dist, src], cwd=root, timeout=BUILD_TIMEOUT, env=build_env
    )
    built = time.monotonic()

    # --without-pip: ensurepip costs about 5 s; the test run's pip installs into the venv instead.
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, timeout=STEP_TIMEOUT)
    python = venv / "bin" / "python"
    wheel = dist / f"{NAME}-{VERSION}-py3-none-any.whl"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel],
        cwd=outside,
        timeout=BUILD_TIMEOUT,
    )
    purelib = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=outside
        ).stdout.strip()
    )
    print(f"\npackaging: built in {built - started:.1f} s, installed in {time.monotonic() - built:.1f} s")
    return Installed(
        src=src,
        sdist=dist / f"{NAME}-{VERSION}.tar.gz",
        wheel=wheel,
        python=python,
        bin=venv / "bin",
        purelib=purelib,
        outside=outside,
    )


@pytest.fixture(scope="module")
def with_frameworks(installed: Installed) -> Installed:
    """The same venv with Flask and Django added (the wheel has no extras for them)."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            installed.python,
            "install",
            "--quiet",
            _dev_requirement(installed.wheel, "flask"),
            _dev_requirement(installed.wheel, "django"),
        ],
        cwd=installed.outside,
        timeout=BUILD_TIMEOUT,
    )
    return installed


def _package_files(src: Path) -> set[str]:
    """Every file the package consists of in the source: its modules and py.typed."""
    package = src / NAME
    return {
        path.relative_to(src).as_posix()
        for path in package.rglob("*")
        if path.is_file() and (path.suffix == ".py" or path.name == "py.typed")
    }


def test_sdist_holds_the_package_readme_pyproject_and_license(installed: Installed) -> None:
    prefix = f"{NAME}-{VERSION}/"
    with tarfile.open(installed.sdist) as sdist:
        names = {member.name.removeprefix(prefix) for member in sdist.getmembers() if member.isfile()}
        pkg_info = sdist.extractfile(prefix + "PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    assert {"PKG-INFO", "pyproject.toml", "README.md"} <= names
    assert _package_files(installed.src) <= names, sorted(_package_files(installed.src) - names)
    # Whatever licence text the repository has is shipped (none exists today: see the report).
    licenses = {path.name for path in installed.src.glob("LICEN[CS]E*")}
    assert licenses <= names
    assert f"Name: {NAME}\n" in metadata
    assert f"Version: {VERSION}\n" in metadata
    # Nothing from a developer's machine.
    assert not [
        name
        for name in names
        if PurePosixPath(name).parts[0] in {".venv", ".git", ".env", "dist", "build"}
        or "__pycache__" in name
        or name.endswith(".pyc")
    ]


def test_wheel_holds_exactly_the_package_and_its_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"{NAME}-{VERSION}.dist-info/entry_points.txt").decode()
    dist_info = {name for name in names if name.startswith(f"{NAME}-{VERSION}.dist-info/")}
    assert names - dist_info == _package_files(installed.src)
    assert f"{NAME}-{VERSION}.dist-info/METADATA" in dist_info
    licenses = {path.name for path in installed.src.glob("LICEN[CS]E*")}
    assert {f"{NAME}-{VERSION}.dist-info/licenses/{name}" for name in licenses} <= dist_info
    assert "secretboot = secretboot._cli:entry_point" in entry_points
    assert "[flask.commands]\nsecretboot = secretboot.contrib.flask:cli" in entry_points


def test_console_script_and_python_m_help(installed: Installed) -> None:
    script = installed.bin / NAME
    assert script.is_file()
    by_script = _run([script, "--help"], cwd=installed.outside).stdout
    by_module = _run([installed.python, "-m", NAME, "--help"], cwd=installed.outside).stdout
    assert by_script.startswith("usage: secretboot ")
    assert by_module.startswith("usage: ")
    assert by_script.split("\n", 1)[1] == by_module.split("\n", 1)[1]  # same parser past the prog name
    version = _run([script, "--version"], cwd=installed.outside).stdout
    assert VERSION in version
    # A real command, offline, in an environment that holds no reference.
    checked = _run([script, "check", "--offline"], cwd=installed.outside).stdout
    assert "no references found" in checked.lower()


def test_import_from_outside_the_repository_is_the_installed_copy(installed: Installed) -> None:
    facts = json.loads(
        installed.python_c(
            "import json, importlib.metadata, secretboot;"
            "print(json.dumps({'all': secretboot.__all__, 'file': secretboot.__file__,"
            " 'version': secretboot.__version__, 'dist': importlib.metadata.version('secretboot')}))"
        )
    )
    assert Path(facts["file"]).resolve() == (installed.purelib / NAME / "__init__.py").resolve()
    assert REPO not in Path(facts["file"]).resolve().parents
    assert facts["all"] == list(secretboot.__all__)
    assert facts["version"] == facts["dist"] == VERSION


def test_py_typed_is_installed_next_to_the_package(installed: Installed) -> None:
    assert (installed.purelib / NAME / "py.typed").is_file()
    recorded = installed.python_c(
        "import importlib.metadata as m; print([str(f) for f in m.files('secretboot')])"
    )
    assert "'secretboot/py.typed'" in recorded


def test_core_and_contrib_django_import_no_framework(installed: Installed) -> None:
    """A plain install (no Flask, no Django) runs the CLI and imports the Django settings helper."""
    out = installed.python_c(
        "import runpy, sys\n"
        "import secretboot.contrib.django\n"
        "from secretboot.contrib.django import fallbacks\n"
        "sys.argv = ['secretboot', '--help']\n"
        "try:\n"
        "    runpy.run_module('secretboot', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'click', 'django', 'werkzeug'}))\n"
    )
    assert "usage: secretboot" in out
    assert out.splitlines()[-1] == "[]"


def test_flask_entry_point_resolves_and_loads(with_frameworks: Installed) -> None:
    out = with_frameworks.python_c(
        "from importlib.metadata import entry_points\n"
        "(ep,) = [ep for ep in entry_points(group='flask.commands') if ep.name == 'secretboot']\n"
        "group = ep.load()\n"
        "print(ep.value, ep.dist.name, type(group).__name__, group.name, sorted(group.commands))\n"
    )
    assert out.split() == ["secretboot.contrib.flask:cli", NAME, "Group", NAME, "['check']"]
    # And the way Flask users reach it: the flask command finds the plugin by itself.
    help_text = _run(
        [with_frameworks.bin / "flask", "secretboot", "--help"], cwd=with_frameworks.outside
    ).stdout
    assert "check" in help_text


def test_django_app_loads_with_its_check_and_command(with_frameworks: Installed) -> None:
    out = with_frameworks.python_c(
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['secretboot.contrib.django'], SECRET_KEY='k' * 50)\n"
        "django.setup()\n"
        "from django.apps import apps\n"
        "from django.core.management import call_command\n"
        "config = apps.get_app_config('secretboot')\n"
        "print(type(config).__module__, type(config).__name__)\n"
        "call_command('check')\n"
        "call_command('secretboot_check', '--offline')\n"
    )
    assert "secretboot.contrib.django.apps SecretbootConfig" in out
    assert "no references found" in out.lower()
