"""Fleet simulation: N cold starts at once against per-account API quotas.

    python bench/fleet.py                       # 50 cold starts per contender (about a minute)
    python bench/fleet.py --quick               # 8 cold starts per contender (about 15 seconds)
    python bench/fleet.py --replay              # repeated requests answered by the proxy, not moto
    python bench/fleet.py --n 50 --ssm-rate 0 --kms-rate 0   # the same fleet with no quotas
    python bench/fleet.py --json /tmp/fleet.json --markdown /tmp/fleet.md

A deploy or a traffic spike starts many instances of one function at once, and every one of
them resolves its secrets against the same account- and region-wide quotas. This starts moto's
server on 127.0.0.1 behind the fault-injecting proxy (tests/awsproxy.py), creates one
application's secrets (5 KMS ciphertexts and 15 SSM SecureStrings, and the same 20 plaintexts
sealed under one KMS data key), puts a token-bucket quota on each API (``AmazonSSM.`` and
``TrentService.``: a throttled request is answered ThrottlingException and takes no token), and
for each contender in turn starts N processes (bench/contenders/fleet_*.py) and releases them
together. Quotas are fresh (full buckets) and counts zero at each release.

The common start: every process imports what it needs and builds its clients, then waits on a
pipe; once all N are waiting the pipe is closed and they all start resolving at the same
instant. Start-up time is from that release to the process's result, so it measures the
requests, the throttling and the retries, not 50 interpreters queueing for 2 cores (the
single-process costs of imports and clients are in docs/performance.md). N is bounded (at most
200; 50 by default): boto3 processes take about 50 MiB and a quarter of a second of CPU each
to get ready, and the launcher also hosts moto (about 2 ms of CPU per request) and the proxy.

Every child is started and killed by PID. Waiting is bounded: for readiness by READY_TIMEOUT,
for results by ``--wait``; children still running after it are killed and counted as failures. Each
successful child's values are checked against the plaintexts created here.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import SecretSet

    from tests.awsproxy import AwsProxy

REPO = Path(__file__).resolve().parent.parent
CONTENDERS_DIR = REPO / "bench" / "contenders"
MAX_N = 200
QUICK_N = 8
KMS_SECRETS = 5
SSM_SECRETS = 15
# Real default quotas, per account and region, for the arithmetic in docs/reliability.md.
REAL_SSM_TPS = 40
REAL_KMS_TPS = 10_000
READY_TIMEOUT = 180.0  # seconds for N processes to import and build their clients
# The proxy listens with a backlog of 128 (tests/keepalive.py): enough for one process, not for
# 50 opening 7 connections each in the same millisecond. Beyond it the kernel drops the SYN and
# the client retries it a second later, which real endpoints do not do to a few hundred clients.
BACKLOG = 2048


@dataclass(frozen=True)
class FleetContender:
    name: str
    script: str
    env: Mapping[str, str] = field(default_factory=dict)
    sealed: bool = False  # the same plaintexts as sealed values under one KMS data key
    default: bool = True  # run when --contenders is not given


CONTENDERS = (
    FleetContender("secretboot", "fleet_secretboot.py"),
    FleetContender("secretboot-boto3", "fleet_secretboot.py", {"SECRETBOOT_TRANSPORT": "boto3"}),
    # The fast transport with its opt-in rate limiter (not in the default set: see docs/reliability.md).
    FleetContender("secretboot-adaptive", "fleet_secretboot.py", {"FLEET_ADAPTIVE": "1"}, default=False),
    FleetContender("secretboot-sealed", "fleet_secretboot.py", sealed=True),
    FleetContender("boto3_loop", "fleet_boto3_loop.py"),
)


@dataclass
class Start:
    ok: bool
    ms: float  # release to result (or to the kill)
    retries: int
    calls: int
    failures: dict[str, int]


@dataclass
class FleetResult:
    contender: str
    n: int
    succeeded: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    retries: int
    requests: dict[str, int]  # per X-Amz-Target, as the proxy received them
    throttled: dict[str, int]  # ThrottlingException answers per target
    failures: dict[str, int]  # failure reason -> starts
    ready_s: float  # spawn to all N waiting at the common start
    syn_drops: int | None  # connections the kernel dropped at a full listen queue meanwhile
    starts: list[Start]

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_throttled(self) -> int:
        return sum(self.throttled.values())


def create_app(moto_url: str) -> SecretSet:
    """5 KMS ciphertexts and 15 SSM SecureStrings, and the same plaintexts sealed.

    bench/run.py's secret set for N=20 (a quarter KMS), straight to moto: set-up is neither
    throttled nor counted.
    """
    from run import create_secrets

    app = create_secrets(moto_url, [KMS_SECRETS + SSM_SECRETS])[KMS_SECRETS + SSM_SECRETS]
    # moto's first call of each operation is slow (about 150 ms): pay it here, not in a fleet.
    from tests.localaws import client

    kms, ssm = client(moto_url, "kms"), client(moto_url, "ssm")
    blob = next(v for v in app.references.values() if v.startswith("kms:"))
    kms.decrypt(CiphertextBlob=base64.b64decode(blob[4:]))
    name = next(v for v in app.references.values() if v.startswith("ssm:"))[4:]
    ssm.get_parameters(Names=[name], WithDecryption=True)
    ssm.get_parameter(Name=name, WithDecryption=True)
    return app


@dataclass(frozen=True)
class Quotas:
    ssm_rate: float  # 0: no quota
    ssm_burst: float
    kms_rate: float
    kms_burst: float

    def apply(self, proxy: AwsProxy) -> None:
        """Fresh, full buckets: every contender meets the same quotas."""
        proxy.clear_faults()
        if self.ssm_rate > 0:
            proxy.quota("AmazonSSM.", rate=self.ssm_rate, burst=self.ssm_burst)
        if self.kms_rate > 0:
            proxy.quota("TrentService.", rate=self.kms_rate, burst=self.kms_burst)

    def describe(self) -> str:
        def one(api: str, rate: float, burst: float) -> str:
            return f"{api} {rate:g}/s burst {burst:g}" if rate > 0 else f"{api} unlimited"

        return (
            one("SSM (AmazonSSM.*)", self.ssm_rate, self.ssm_burst)
            + ", "
            + one("KMS (TrentService.*)", self.kms_rate, self.kms_burst)
        )


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped at a full listen queue (Linux), or None."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return None


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class Fleet:
    """N children of one contender: started, held at the common start, released, collected."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    def kill_all(self) -> None:
        """Kill every child still running, by PID, and reap it."""
        for pid, child in list(self.children.items()):
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
            self.children.pop(pid, None)

    def run(
        self,
        proxy: AwsProxy,
        quotas: Quotas,
        contender: FleetContender,
        env: Mapping[str, str],
        n: int,
        expected: str,
        wait_s: float,
    ) -> FleetResult:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        spawned = time.monotonic()
        outputs: dict[int, str] = {}
        released = False
        try:
            child_env = {**env, **contender.env, "FLEET_FDS": f"{ready_w},{go_r}"}
            argv = [sys.executable, str(CONTENDERS_DIR / contender.script)]
            for i in range(n):
                out = os.path.join(self.workdir, f"{contender.name}-{i}.out")
                with open(out, "wb") as stdout, open(out + ".err", "wb") as stderr:
                    child = subprocess.Popen(  # noqa: S603 (our own script, fixed arguments)
                        argv,
                        env=child_env,
                        cwd=REPO,
                        stdin=subprocess.DEVNULL,
                        stdout=stdout,
                        stderr=stderr,
                        pass_fds=(ready_w, go_r),
                    )
                self.children[child.pid] = child
                outputs[child.pid] = out
            os.close(ready_w)
            os.close(go_r)
            ready_w = go_r = -1
            self._wait_ready(ready_r, n, contender.name, outputs)
            ready_s = time.monotonic() - spawned
            quotas.apply(proxy)
            proxy.reset_counts()
            overflows = listen_overflows()
            t0 = time.monotonic()
            os.close(go_w)  # every child's read ends: the common start
            go_w = -1
            released = True
            ended = self._wait_all(t0 + wait_s)
            requests, throttled = proxy.counts(), proxy.throttled()
            after = listen_overflows()
            dropped = None if overflows is None or after is None else after - overflows
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                if fd >= 0:
                    os.close(fd)
            if not released:
                self.kill_all()
        starts = [self._start(pid, outputs[pid], ended.get(pid), t0, wait_s, expected) for pid in outputs]
        self.kill_all()
        failures: Counter[str] = Counter()
        for start in starts:
            failures.update(start.failures)
        times = [s.ms for s in starts]
        return FleetResult(
            contender=contender.name,
            n=n,
            succeeded=sum(s.ok for s in starts),
            p50_ms=percentile(times, 0.50),
            p99_ms=percentile(times, 0.99),
            max_ms=max(times),
            retries=sum(s.retries for s in starts),
            requests=dict(sorted(requests.items())),
            throttled=dict(sorted(throttled.items())),
            failures=dict(failures),
            ready_s=ready_s,
            syn_drops=dropped,
            starts=starts,
        )

    def _wait_ready(self, ready_r: int, n: int, name: str, outputs: Mapping[int, str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        count = 0
        while count < n:
            for pid, child in self.children.items():
                if child.poll() is not None:
                    err = Path(outputs[pid] + ".err").read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"{name}: a child exited (status {child.returncode}) before the start\n{err}"
                    )
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{name}: only {count} of {n} children were ready after {READY_TIMEOUT:g} s"
                )
            readable, _, _ = select.select([ready_r], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(ready_r, 4096)
                if not chunk:
                    raise RuntimeError(f"{name}: every child closed the ready pipe, {count} of {n} ready")
                count += len(chunk)

    def _wait_all(self, deadline: float) -> dict[int, float]:
        """Wait for every child until ``deadline``; kill the rest. PID -> when it was seen to end."""
        ended: dict[int, float] = {}
        while len(ended) < len(self.children) and time.monotonic() < deadline:
            for pid, child in self.children.items():
                if pid not in ended and child.poll() is not None:
                    ended[pid] = time.monotonic()
            time.sleep(0.05)  # the times come from the children's own stamps
        self.kill_all()
        return ended

    def _start(
        self, pid: int, out: str, ended: float | None, t0: float, wait_s: float, expected: str
    ) -> Start:
        if ended is None:
            return Start(False, wait_s * 1000, 0, 0, {"Killed": 1})
        lines = Path(out).read_text(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            return Start(False, (ended - t0) * 1000, 0, 0, {"Crashed": 1})
        failures = {str(k): int(v) for k, v in result["failures"].items()}
        ok = bool(result["ok"])
        if ok and result["digest"] != expected:
            ok, failures = False, {"WrongValue": 1}
        # A failing start counts each distinct reason once.
        return Start(
            ok,
            (result["done"] - t0) * 1000,
            int(result["retries"]),
            int(result["calls"]),
            dict.fromkeys(failures, 1),
        )


def _short(target: str) -> str:
    return target.replace("TrentService.", "kms:").replace("AmazonSSM.", "ssm:")


def _breakdown(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{_short(t)} {c}" for t, c in counts.items() if c) or "-"


HEADERS = (
    "contender",
    "succeeded",
    "p50 ms",
    "p99 ms",
    "retries",
    "requests",
    "per success",
    "throttled",
    "failures",
)


def _cells(r: FleetResult) -> tuple[str, ...]:
    failures = ", ".join(f"{reason} {count}" for reason, count in sorted(r.failures.items())) or "-"
    return (
        r.contender,
        f"{r.succeeded}/{r.n}",
        f"{r.p50_ms:.0f}",
        f"{r.p99_ms:.0f}",
        str(r.retries),
        str(r.total_requests),
        _per_success(r),
        str(r.total_throttled),
        failures,
    )


def _per_success(r: FleetResult) -> str:
    """Requests per successful start, and that over a start's own calls (what it makes with no fault)."""
    ok = [s for s in r.starts if s.ok]
    if not ok:
        return "-"
    per = r.total_requests / len(ok)
    calls = statistics.mean(s.calls for s in ok)
    return f"{per:.1f} ({per / calls:.2f}x)" if calls else f"{per:.1f}"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """Names and failures left-aligned, numbers right-aligned."""
    left = (0, len(HEADERS) - 1)
    return "  ".join(
        c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def text_report(results: Sequence[FleetResult]) -> str:
    rows = [_cells(r) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADERS)]
    out = [_row(HEADERS, widths)] + [_row(row, widths) for row in rows]
    out.append("")
    for r in results:
        out.append(
            f"{r.contender}: requests {_breakdown(r.requests)}; throttled {_breakdown(r.throttled)}; "
            f"slowest {r.max_ms:.0f} ms; all {r.n} ready {r.ready_s:.1f} s after spawning; "
            f"SYNs dropped at a full listen queue: {'n/a' if r.syn_drops is None else r.syn_drops}"
        )
    return "\n".join(out)


def markdown_report(results: Sequence[FleetResult], meta: Mapping[str, Any]) -> str:
    out = [
        f"Command: `{meta['command']}`; {meta['date']}, commit {meta['commit']}, "
        f"load average {meta['load_average_1m']:g} at the start; "
        f"{meta['n']} cold starts per contender; {meta['quotas']}; "
        f"{meta['latency_ms']:g} ms per request; {meta['server']}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 2) + "---|",
    ]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    out += ["", "| contender | requests by API | throttled by API | slowest ms |", "|---|---|---|---:|"]
    out += [
        f"| {r.contender} | {_breakdown(r.requests)} | {_breakdown(r.throttled)} | {r.max_ms:.0f} |"
        for r in results
    ]
    return "\n".join(out) + "\n"


def metadata(args: argparse.Namespace, quotas: Quotas) -> dict[str, Any]:
    from importlib.metadata import version

    from run import git_commit

    return {
        "command": "python bench/fleet.py " + " ".join(args.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Other work on the machine shares its cores with the fleet: say how busy it was.
        "load_average_1m": round(os.getloadavg()[0], 1),
        "versions": {p: version(p) for p in ("boto3", "botocore", "moto")},
        "n": args.n,
        "latency_ms": args.latency_ms,
        "quotas": quotas.describe(),
        "secrets": {"kms": KMS_SECRETS, "ssm": SSM_SECRETS},
        "server": _server_note(args.replay),
    }


def _server_note(replay: bool) -> str:
    if replay:
        return "repeated requests answered by the proxy from memory (--replay), the first by moto"
    return "every request answered by moto"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, help=f"cold starts per contender (default 50; quick {QUICK_N}; at most {MAX_N})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: {QUICK_N} cold starts per contender"
    )
    parser.add_argument("--latency-ms", type=float, default=10.0, help="added to every request (default 10)")
    parser.add_argument(
        "--ssm-rate",
        type=float,
        default=40.0,
        help="SSM requests per second, all operations (default 40; 0: none)",
    )
    parser.add_argument("--ssm-burst", type=float, help="SSM bucket size (default: one second's worth)")
    parser.add_argument(
        "--kms-rate",
        type=float,
        default=100.0,
        help="KMS requests per second (default 100: the real 10,000 scaled by 1/100; 0: none)",
    )
    parser.add_argument("--kms-burst", type=float, help="KMS bucket size (default: one second's worth)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="SECRETBOOT_TIMEOUT for the secretboot contenders, in seconds (default: secretboot's own)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds after the start before stragglers are killed (default 120)",
    )
    parser.add_argument(
        "--contenders",
        type=lambda text: [c for c in text.split(",") if c],
        help="names to run, in order; default all: " + ",".join(c.name for c in CONTENDERS),
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="the proxy answers repeated requests itself instead of moto (see bench/run.py's make_proxy)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every start and the summary")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.n is None:
        args.n = QUICK_N if args.quick else 50
    if not 1 <= args.n <= MAX_N:
        parser.error(f"--n is between 1 and {MAX_N}: this machine starts every one as a process")
    if args.latency_ms < 0 or args.ssm_rate < 0 or args.kms_rate < 0 or args.wait <= 0:
        parser.error("latency and rates are at least 0, --wait above 0")
    if args.timeout is not None and not args.timeout > 0:
        parser.error("--timeout is above 0 seconds")
    for api in ("ssm", "kms"):
        rate, burst = getattr(args, f"{api}_rate"), getattr(args, f"{api}_burst")
        if burst is None:
            setattr(args, f"{api}_burst", max(1.0, rate))
        elif burst < 1:
            parser.error(f"--{api}-burst is at least 1")
    known = {c.name for c in CONTENDERS}
    unknown = set(args.contenders or ()) - known
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up below: children are killed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    by_name = {c.name: c for c in CONTENDERS}
    chosen = args.contenders or [c.name for c in CONTENDERS if c.default]
    contenders = [by_name[name] for name in chosen]
    quotas = Quotas(args.ssm_rate, args.ssm_burst, args.kms_rate, args.kms_burst)
    for path in (REPO, REPO / "bench"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from run import base_env, make_proxy

    from tests.localaws import moto_server

    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    meta = metadata(args, quotas)
    results: list[FleetResult] = []
    with contextlib.ExitStack() as cleanup:
        moto_url = cleanup.enter_context(moto_server())
        proxy = make_proxy(moto_url, replay=args.replay)
        proxy.latency = args.latency_ms / 1000
        proxy.start()
        cleanup.callback(proxy.stop)
        assert proxy._server is not None
        proxy._server.socket.listen(BACKLOG)  # Linux takes a second listen() as a new backlog
        fleet = Fleet(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="secretboot-fleet-")))
        cleanup.callback(fleet.kill_all)
        _progress(f"moto at {moto_url}, proxy at {proxy.url}; {quotas.describe()}; creating secrets")
        app = create_app(moto_url)
        env = base_env(proxy.url)
        if args.timeout is not None:
            env["SECRETBOOT_TIMEOUT"] = f"{args.timeout:g}"  # read by secretboot only
        for contender in contenders:
            secrets_env = app.sealed if contender.sealed else app.references
            contender_env = {**env, **secrets_env}
            result = fleet.run(proxy, quotas, contender, contender_env, args.n, app.expected, args.wait)
            results.append(result)
            _progress(
                f"{contender.name}: {result.succeeded}/{result.n} succeeded, p50 {result.p50_ms:.0f} ms, "
                f"p99 {result.p99_ms:.0f} ms"
            )
    meta["seconds"] = round(time.monotonic() - started, 1)
    print(f"# {meta['command']}")
    print(
        f"# {meta['date']} commit {meta['commit']}; Python {meta['python']}, {meta['cpus']} CPUs "
        f"(load average {meta['load_average_1m']:g} at the start); "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    )
    print(
        f"# {args.n} cold starts per contender, released together; {quotas.describe()}; "
        f"{args.latency_ms:g} ms per request; {KMS_SECRETS} kms: + {SSM_SECRETS} ssm: secrets each; "
        + meta["server"]
    )
    print(text_report(results))
    print(f"\n# {meta['seconds']} s in all")
    if args.json:
        document = {
            "meta": meta,
            "results": [
                {**asdict(r), "total_requests": r.total_requests, "total_throttled": r.total_throttled}
                for r in results
            ],
            "median_ms_of_successes": {
                r.contender: statistics.median([s.ms for s in r.starts if s.ok]) if r.succeeded else None
                for r in results
            },
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_report(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
