"""Cold starts under faults: random throttling and 503s, and a black hole.

    python bench/faults.py              # 50 cold starts per transport (about two minutes)
    python bench/faults.py --quick      # 5 per transport (about 20 seconds)
    python bench/faults.py --throttle 0.2 --unavailable 0.1 --timeout 5 --json /tmp/faults.json

Starts moto's server on 127.0.0.1 behind the fault-injecting proxy (tests/awsproxy.py), creates
the fleet's application (5 ``kms:`` and 15 ``ssm:`` secrets, bench/fleet.py), and answers a share
of every request ``ThrottlingException`` (``--throttle``, default 20 %) and another share 503
``ServiceUnavailable`` (``--unavailable``, default 10 %), drawn independently for each request
from a seeded generator. Then, for each transport, N cold starts one after another: each a new
process calling ``secretboot.bootstrap()`` (bench/contenders/faults_secretboot.py) with the
default settings, its values checked against the plaintexts. Requests per start are counted by
the proxy and compared with a fault-free start's.

Then the black hole: every request is held unanswered, and each transport's start must fail
within ``SECRETBOOT_TIMEOUT`` plus 10 %. Every child is waited for with a timeout and killed by
PID if it overruns; the servers are stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHILD = REPO / "bench" / "contenders" / "faults_secretboot.py"
QUICK_N = 5
MAX_N = 500
PAUSED = re.compile(r"and (\d+) retr(?:y|ies)(?: \(one request paused (\d+) ms at most\))?")


@dataclass
class Start:
    ok: bool
    ms: float  # bootstrap() alone, measured in the child
    requests: int
    retries: int
    paused_ms: int
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class Summary:
    transport: str
    n: int
    succeeded: int
    p50_ms: float
    max_ms: float
    requests_per_start: float
    most_requests: int
    fault_free_requests: int
    longest_pause_ms: int
    failures: dict[str, int]


def run_child(env: Mapping[str, str], wait: float) -> dict[str, Any]:
    """One cold start; killed by PID if it overruns ``wait`` seconds."""
    child = subprocess.Popen(  # noqa: S603 (our own script, fixed arguments)
        [sys.executable, str(CHILD)],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO / "bench" / "contenders",
        text=True,
    )
    try:
        out, err = child.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"ok": False, "ms": wait * 1000, "failures": {"KilledAfterWait": 1}, "line": ""}
    if child.returncode != 0 or not out.strip():
        raise RuntimeError(f"the child failed (exit {child.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def one_start(proxy: Any, env: Mapping[str, str], expected: str, wait: float) -> Start:
    proxy.reset_counts()
    result = run_child(env, wait)
    requests = sum(proxy.counts().values())
    found = PAUSED.search(result.get("line", ""))
    retries, paused = (int(found[1]), int(found[2] or 0)) if found else (0, 0)
    ok = bool(result["ok"]) and result.get("digest") == expected
    failures = dict(result.get("failures", {}))
    if result["ok"] and not ok:
        failures["WrongValues"] = 1
    return Start(ok, float(result["ms"]), requests, retries, paused, failures)


def summarize(transport: str, starts: Sequence[Start], fault_free: int) -> Summary:
    times = sorted(s.ms for s in starts)
    ok = [s for s in starts if s.ok]
    failures: Counter[str] = Counter()
    for s in starts:
        failures.update(s.failures)
    return Summary(
        transport=transport,
        n=len(starts),
        succeeded=len(ok),
        p50_ms=statistics.median(times),
        max_ms=times[-1],
        requests_per_start=sum(s.requests for s in starts) / len(ok) if ok else float("inf"),
        most_requests=max(s.requests for s in starts),
        fault_free_requests=fault_free,
        longest_pause_ms=max(s.paused_ms for s in starts),
        failures=dict(failures),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, help=f"cold starts per transport (default 50; quick {QUICK_N})")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_N} starts per transport")
    parser.add_argument(
        "--throttle", type=float, default=0.2, help="share of requests throttled (default 0.2)"
    )
    parser.add_argument("--unavailable", type=float, default=0.1, help="share answered 503 (default 0.1)")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="added to every request (default 10)")
    parser.add_argument("--timeout", type=float, help="SECRETBOOT_TIMEOUT (default: secretboot's own)")
    parser.add_argument(
        "--black-holes", type=int, default=2, help="black-hole starts per transport (default 2)"
    )
    parser.add_argument("--seed", type=int, default=13, help="for the fault draws (default 13)")
    parser.add_argument("--transports", default="fast,boto3", help="default fast,boto3")
    parser.add_argument("--json", metavar="PATH", help="write every start and the summary")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else 50
    if not 1 <= args.n <= MAX_N:
        parser.error(f"--n is between 1 and {MAX_N}")
    if not (args.throttle >= 0 and args.unavailable >= 0 and args.throttle + args.unavailable < 1):
        parser.error("--throttle and --unavailable are shares that add up to less than 1")
    if args.timeout is not None and not args.timeout > 0:
        parser.error("--timeout is above 0 seconds")
    args.transports = [name for name in args.transports.split(",") if name]
    if not set(args.transports) <= {"fast", "boto3"} or not args.transports:
        parser.error("--transports names fast, boto3 or both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (REPO, REPO / "bench"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from fleet import create_app
    from run import base_env, git_commit, make_proxy

    from secretboot._settings import DEFAULT_TIMEOUT
    from tests.awsproxy import black_hole, server_error, throttle
    from tests.localaws import moto_server

    deadline = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    wait = deadline * 3 + 10  # a child still running then is killed and counted as a failure
    rng = random.Random(args.seed)  # noqa: S311 (reproducible fault draws, not secrets)
    report: dict[str, Any] = {
        "command": "python bench/faults.py " + " ".join(args.argv),
        "commit": git_commit(),
    }
    summaries: list[Summary] = []
    holes: dict[str, list[float]] = {}
    every: dict[str, list[Start]] = {}
    started = time.monotonic()
    with moto_server() as moto_url:
        proxy = make_proxy(moto_url, replay=False)
        proxy.latency = args.latency_ms / 1000
        proxy.start()
        try:
            app = create_app(moto_url)
            env = {**base_env(proxy.url), **app.references}
            if args.timeout is not None:
                env["SECRETBOOT_TIMEOUT"] = f"{args.timeout:g}"
            for transport in args.transports:
                contender = {**env, "SECRETBOOT_TRANSPORT": transport}
                proxy.clear_faults()
                clean = one_start(proxy, contender, app.expected, wait)
                if not clean.ok:
                    raise RuntimeError(f"{transport}: a fault-free start failed: {clean.failures}")
                if args.throttle:
                    proxy.add_fault(throttle(), rate=args.throttle, rng=rng)
                if args.unavailable:
                    # The second rule sees only what the first let through.
                    share = args.unavailable / (1 - args.throttle)
                    proxy.add_fault(server_error(503), rate=share, rng=rng)
                starts = []
                for i in range(args.n):
                    starts.append(one_start(proxy, contender, app.expected, wait))
                    print(f"{transport} {i + 1}/{args.n}: {asdict(starts[-1])}", file=sys.stderr, flush=True)
                every[transport] = starts
                summaries.append(summarize(transport, starts, clean.requests))
                proxy.clear_faults()
                proxy.add_fault(black_hole())
                holes[transport] = []
                for _ in range(args.black_holes):
                    hole = one_start(proxy, contender, app.expected, wait)
                    if hole.ok:
                        raise RuntimeError("a start succeeded with every request held unanswered")
                    holes[transport].append(hole.ms)
                proxy.clear_faults()
        finally:
            proxy.stop()
    seconds = time.monotonic() - started
    print(f"# {report['command']}")
    print(
        f"# commit {report['commit']}; {args.throttle:.0%} throttled + {args.unavailable:.0%} 503 "
        "on every request; "
        f"{args.latency_ms:g} ms per request; 5 kms: + 15 ssm: secrets; SECRETBOOT_TIMEOUT={deadline:g} s"
    )
    header = (
        "transport",
        "succeeded",
        "p50 ms",
        "max ms",
        "requests/start",
        "vs fault-free",
        "longest pause",
    )
    print("  ".join(f"{h:>14}" for h in header))
    for s in summaries:
        ratio = s.requests_per_start / s.fault_free_requests
        cells = (
            s.transport,
            f"{s.succeeded}/{s.n}",
            f"{s.p50_ms:.0f}",
            f"{s.max_ms:.0f}",
            f"{s.requests_per_start:.1f} (max {s.most_requests})",
            f"{ratio:.2f}x of {s.fault_free_requests}",
            f"{s.longest_pause_ms} ms",
        )
        print("  ".join(f"{c:>14}" for c in cells) + (f"  failures {s.failures}" if s.failures else ""))
    limit = deadline * 1.1 * 1000
    for transport, times in holes.items():
        verdict = "within" if max(times) <= limit else "PAST"
        print(
            f"black hole, {transport}: failed after {', '.join(f'{ms:.0f}' for ms in times)} ms; "
            f"{verdict} the deadline + 10 % ({limit:.0f} ms)"
        )
    print(f"# {seconds:.0f} s in all")
    if args.json:
        document = {
            **report,
            "summaries": [asdict(s) for s in summaries],
            "starts": {k: [asdict(s) for s in v] for k, v in every.items()},
            "black_hole_ms": holes,
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
