"""The fleet simulation (bench/fleet.py) runs, and its request counts say what docs/reliability.md says.

Small fleets (4 cold starts per contender) so the whole file stays under about 30 seconds.
Assertions are on request counts, which are fixed by how each contender batches, never on times.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "bench" / "fleet.py"
N = 4


def _fleet_module() -> ModuleType:
    """bench/fleet.py as a module (registered first: its dataclasses look themselves up)."""
    name = "bench_fleet"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FLEET)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _run(tmp_path: Path, *args: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """Run bench/fleet.py with ``args``; (its stdout, results by contender)."""
    report = tmp_path / "fleet.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SECRETBOOT_"))}
    run = subprocess.run(
        [sys.executable, str(FLEET), "--n", str(N), "--latency-ms", "0", "--json", str(report), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["contender"]: r for r in json.loads(report.read_text())["results"]}
    return run.stdout, results


def test_every_cold_start_succeeds_without_quotas(tmp_path: Path) -> None:
    stdout, results = _run(tmp_path, "--ssm-rate", "0", "--kms-rate", "0")
    names = [c.name for c in _fleet_module().CONTENDERS if c.default]
    assert list(results) == names
    table = stdout.split("\ncontender", 1)[1]
    for name in names:
        assert f"\n{name} " in table
    for name, result in results.items():
        assert result["succeeded"] == N, (name, result["failures"])
        assert result["total_throttled"] == 0
        assert result["retries"] == 0
    # 5 kms: and 15 ssm: secrets per start: what each contender asks for, exactly.
    per_start = {
        "secretboot": {"TrentService.Decrypt": 5, "AmazonSSM.GetParameters": 2},
        "secretboot-boto3": {"TrentService.Decrypt": 5, "AmazonSSM.GetParameters": 2},
        "secretboot-sealed": {"TrentService.Decrypt": 1},
        "boto3_loop": {"TrentService.Decrypt": 5, "AmazonSSM.GetParameter": 15},
    }
    for name, calls in per_start.items():
        assert results[name]["requests"] == {target: N * count for target, count in calls.items()}, name


def test_the_opt_in_rate_limiter_contender_runs_when_named(tmp_path: Path) -> None:
    _, results = _run(tmp_path, "--ssm-rate", "0", "--kms-rate", "0", "--contenders", "secretboot-adaptive")
    [result] = results.values()
    assert result["succeeded"] == N
    assert result["requests"] == {"TrentService.Decrypt": 5 * N, "AmazonSSM.GetParameters": 2 * N}


def test_a_tight_ssm_quota_throttles_the_loop_not_secretboot(tmp_path: Path) -> None:
    # A bucket of 10 SSM requests refilled at 10/s: secretboot's 4 x 2 GetParameters fit in it,
    # the loop's 4 x 15 GetParameter do not.
    _, results = _run(
        tmp_path,
        *("--ssm-rate", "10", "--ssm-burst", "10", "--kms-rate", "0"),
        *("--contenders", "secretboot,boto3_loop", "--wait", "60"),
    )
    secretboot, loop = results["secretboot"], results["boto3_loop"]
    assert secretboot["succeeded"] == N
    assert secretboot["requests"]["AmazonSSM.GetParameters"] == 2 * N
    assert secretboot["total_throttled"] == 0
    loop_ssm = loop["requests"]["AmazonSSM.GetParameter"]
    assert loop["throttled"]["AmazonSSM.GetParameter"] >= 1
    # Every throttled answer is one more request; the bucket lets 10 through at once.
    assert loop_ssm > 10 > secretboot["requests"]["AmazonSSM.GetParameters"]
    assert loop_ssm >= loop["throttled"]["AmazonSSM.GetParameter"] + 10
    assert loop["retries"] >= 1


def test_percentile_is_nearest_rank() -> None:
    percentile = _fleet_module().percentile
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 51)], 0.99) == 50.0  # of 50 starts: the slowest
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


BAD_OPTIONS = [["--n", "0"], ["--n", "201"], ["--contenders", "nope"], ["--ssm-burst", "0.5"]]


@pytest.mark.parametrize("args", BAD_OPTIONS)
def test_bad_options_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit):
        _fleet_module().parse_args(args)
