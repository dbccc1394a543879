"""CPU shares for benchmark children: cgroup v1 ``cpu`` groups, made for a run and removed after it.

    with CpuLimits([0.5, 0.25]) as limits:
        limits.procs(0.25)   # /sys/fs/cgroup/cpu/secretboot-bench-<pid>-0.25/cgroup.procs
        limits.check()       # {0.5: 0.49, 0.25: 0.25}: what a busy loop in each group got

Each group has ``cpu.cfs_period_us`` = 10 ms (with the default 100 ms, a short process's CPU
time moves in steps of tens of milliseconds) and ``cpu.cfs_quota_us`` = fraction x period, so
a fraction of 1 is one whole CPU, 0.25 a quarter. Only processes written into a group's
``cgroup.procs`` are limited: bench/_spawn.py's children join it between fork and exec;
the runner, moto and the proxies stay outside.

Removal: ``close()`` (called by ``with``, and registered with ``atexit`` in case a caller
forgets) moves any process still inside back to the parent group and removes the directory;
the kernel refuses ``rmdir`` on a group with processes, so that order always succeeds. Groups
left by a run that was killed outright (SIGKILL) are named after its PID: the next run removes
those whose PID is gone (``remove_stale``). Run this file to check the machine:

    python bench/cgroup.py 1,0.5,0.25
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # the kernel's floor for cpu.cfs_quota_us
PREFIX = "secretboot-bench-"
_STALE = re.compile(re.escape(PREFIX) + r"(\d+)-")

# A busy loop that joins the group itself, then reports its CPU time over wall time.
_BUSY = """
import os, sys, time
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
seconds = float(sys.argv[2])
wall0, cpu0 = time.perf_counter(), time.process_time()
while time.perf_counter() - wall0 < seconds:
    pass
print((time.process_time() - cpu0) / (time.perf_counter() - wall0))
"""


def available(root: Path = ROOT) -> str | None:
    """None when cgroup v1 CPU limits can be made here, else the reason they cannot."""
    if not (root / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {root}"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (run as root)"
    return None


def remove_stale(root: Path = ROOT) -> list[str]:
    """Remove empty groups left by earlier runs whose process is gone; returns their names."""
    removed = []
    for path in root.glob(PREFIX + "*"):
        match = _STALE.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            _evacuate(path, root)
            path.rmdir()
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _evacuate(group: Path, parent: Path) -> None:
    """Move every process in ``group`` to ``parent`` (rmdir needs an empty group)."""
    for line in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):  # it exited meanwhile
            (parent / "cgroup.procs").write_text(line)


class CpuLimits:
    """One cgroup v1 ``cpu`` group per fraction; see the module docstring."""

    def __init__(self, fractions: Iterable[float], *, root: Path = ROOT, period_us: int = PERIOD_US) -> None:
        reason = available(root)
        if reason is not None:
            raise RuntimeError(f"CPU limits need cgroup v1: {reason}")
        self._root = root
        self._groups: dict[float, Path] = {}
        remove_stale(root)
        atexit.register(self.close)
        try:
            for fraction in dict.fromkeys(fractions):
                quota = round(fraction * period_us)
                if not fraction > 0 or quota < MIN_QUOTA_US:
                    raise ValueError(f"CPU fraction {fraction}: the quota must be at least {MIN_QUOTA_US} us")
                group = root / f"{PREFIX}{os.getpid()}-{fraction:g}"
                group.mkdir()
                self._groups[fraction] = group
                # Period first: a quota above the old period's would be refused by some kernels.
                (group / "cpu.cfs_period_us").write_text(str(period_us))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
        except BaseException:
            self.close()
            raise

    @property
    def groups(self) -> dict[float, str]:
        return {fraction: os.fspath(path) for fraction, path in self._groups.items()}

    def procs(self, fraction: float) -> str:
        """The ``cgroup.procs`` file a process writes its PID into to join ``fraction``'s group."""
        return os.fspath(self._groups[fraction] / "cgroup.procs")

    def check(self, seconds: float = 0.4) -> dict[float, float]:
        """CPU time over wall time of a one-thread busy loop in each group (about the fraction)."""
        shares = {}
        for fraction in self._groups:
            out = subprocess.run(  # noqa: S603 (this interpreter, fixed code)
                [sys.executable, "-S", "-I", "-c", _BUSY, self.procs(fraction), str(seconds)],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            shares[fraction] = float(out)
        return shares

    def close(self) -> None:
        """Remove every group (moving out any process still inside first); safe to call twice."""
        deadline = time.monotonic() + 10
        while self._groups:
            fraction, group = next(iter(self._groups.items()))
            try:
                _evacuate(group, self._root)
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.01)  # a process was moved in meanwhile: move it out again
                    continue
                raise
            del self._groups[fraction]

    def __enter__(self) -> CpuLimits:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    fractions = [float(part) for part in (argv[0] if argv else "1,0.5,0.25").split(",")]
    with CpuLimits(fractions) as limits:
        groups = limits.groups
        shares = limits.check()
    left = sorted(p.name for p in ROOT.glob(PREFIX + "*"))
    print(
        json.dumps(
            {
                "groups": groups,
                "busy_loop_cpu_share": shares,
                "removed": not any(os.path.exists(g) for g in groups.values()),
                "bench_groups_left": left,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
