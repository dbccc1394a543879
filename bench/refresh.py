"""Refresh cost in a warm process (issue 17): time and AWS calls per refresh, readers' latency.

    python bench/refresh.py                  # about 65 seconds on 2 cores
    python bench/refresh.py --quick          # about 20 seconds
    python bench/refresh.py --latency-ms 50 --readers 4 --json /tmp/refresh.json --markdown /tmp/refresh.md

Starts moto's server on 127.0.0.1 behind the delay proxy (tests/awsproxy.py, ``--latency-ms``,
default 10 ms per request, as bench/run.py) and creates bench/run.py's N=20 secret set (a
quarter KMS ciphertext, the rest SSM SecureStrings). Then, once per transport (the fast one,
``SECRETBOOT_TRANSPORT=fast`` so it can never fall back unnoticed, and ``boto3``), a fresh
process (this file again, ``--child``; nothing of one transport's state reaches the other)
boots once and measures, warm:

1. ``refresh_now()``: every name again, back to back (``SECRETBOOT_REFRESH_MIN_INTERVAL=0``
   so the per-name pacing lets each through), each timed around the call; the proxy's
   request count is read between refreshes, so every refresh has its own count.
2. A refresh by age: ``bootstrap(refresh=True, max_age=1)`` (the smallest age allowed) arms
   the background thread; each refresh is timed from the moment it was due (the refresher's
   ``due``, on the lifecycle's clock, ``time.monotonic``) to its swap, as seen by an
   ``on_refresh`` hook (called after the swap, on the refresh thread). The requests between
   two hooks are that refresh's.
3. Readers during refreshes: ``--readers`` threads loop over the names, timing each
   ``keyring[name]`` and each ``secretboot.getenv(name)`` alone (``time.perf_counter_ns``),
   while windows with ``refresh_now()`` running back to back on another thread alternate
   with windows with no refresh (ABBA order, ``--windows`` pairs of ``--window-s`` seconds).
   Reads between windows (a refresh still finishing) are not counted. Latencies go into
   histograms with 64 buckets per power of two (a quantile is its bucket's lower bound, at
   most 1/32 low); the maximum is exact. A *stall* is a read of 1 ms or more: in CPython
   that is a reader waiting for the GIL (``sys.getswitchinterval()``, 5 ms by default) while
   another thread runs Python, not a lock of secretboot's.

Medians over the refreshes are reported, with the p99 of reads during refreshes over the
p99 without as the readers' ratio. The values are checked (a digest of the sorted
``NAME=plaintext`` lines, never the values) after the boot and after each phase. No target
is stated by issue 17 beyond reporting these, so the summary lines say "reported". Every
child is killed by its PID if it runs past ``--child-timeout``; the proxy and moto are
stopped on the way out. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.awsproxy import AwsProxy

REPO = Path(__file__).resolve().parent.parent
SIZE = 20
TRANSPORTS = ("fast", "boto3")
CHILD = "--child"  # internal: this file run as one transport's measuring process
MAX_AGE = 1.0  # secretboot's smallest max_age (_settings.MIN_MAX_AGE)
STALL_NS = 1_000_000  # a read of 1 ms or more
MODES = ("refresh", "idle", "gap")  # what the readers are recording: gap is dropped
MANTISSA_BITS = 6  # histogram precision: 2**(6-1) = 32 buckets per power of two at least


# -- the child: one transport in one fresh process --------------------------------------------


class Link:
    """The child's side of the pipe to the runner: ask the proxy's counts, send the result."""

    def __init__(self, incoming: IO[str], outgoing: IO[str]) -> None:
        self._in = incoming
        self._out = outgoing

    def send(self, message: Mapping[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def calls(self) -> dict[str, int]:
        """Requests the proxy has received so far, by ``X-Amz-Target``."""
        self.send({"ask": "calls"})
        answer: dict[str, int] = json.loads(self._in.readline())["calls"]
        return answer


def digest(values: Mapping[str, str]) -> str:
    """bench/run.py's check line: the count and the SHA-256 of the sorted NAME=plaintext lines."""
    lines = sorted(f"{name}={value}" for name, value in values.items())
    return f"{len(values)} {hashlib.sha256(chr(10).join(lines).encode()).hexdigest()}"


def _diff(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


class Control:
    """What the reader threads look at on every loop: plain attributes, no lock."""

    def __init__(self) -> None:
        self.running = True
        self.mode = "gap"
        self.refreshing = False


def _reader(ring: Mapping[str, str], names: Sequence[str], control: Control, out: list[Any]) -> None:
    """Loop over ``names``, timing ``ring[name]`` and ``getenv(name)`` alone, into histograms
    per mode (bucket lower bounds, ``MANTISSA_BITS`` significant bits) and exact maxima."""
    import secretboot

    getenv = secretboot.getenv
    ns = time.perf_counter_ns
    ring_hists: dict[str, dict[int, int]] = {m: {} for m in MODES}
    getenv_hists: dict[str, dict[int, int]] = {m: {} for m in MODES}
    peaks = {m: [0, 0] for m in MODES}
    size = len(names)
    i = 0
    while control.running:
        mode = control.mode
        name = names[i % size]
        i += 1
        t0 = ns()
        ring[name]
        t1 = ns()
        getenv(name)
        t2 = ns()
        peak = peaks[mode]
        for d, hist, slot in ((t1 - t0, ring_hists[mode], 0), (t2 - t1, getenv_hists[mode], 1)):
            if d > peak[slot]:
                peak[slot] = d
            b = d.bit_length() - MANTISSA_BITS
            if b > 0:
                d = d >> b << b
            hist[d] = hist.get(d, 0) + 1
    out.append((ring_hists, getenv_hists, peaks))


def _refresh_loop(control: Control, durations: list[float], failures: list[str]) -> None:
    import secretboot

    while control.refreshing:
        started = time.perf_counter()
        try:
            secretboot.refresh_now()
        except secretboot.SecretbootError as exc:
            failures.append(type(exc).__name__)  # the type only: names and reasons stay out
            return
        durations.append((time.perf_counter() - started) * 1000)


def child_main() -> int:
    """One transport's measurements (see the module's docstring); the job on stdin's first line."""
    link = Link(sys.stdin, sys.stdout)
    job = json.loads(sys.stdin.readline())
    import secretboot
    from secretboot import _lifecycle  # the refresher's ``due``: when a refresh by age starts

    result: dict[str, Any] = {"switch_interval_s": sys.getswitchinterval()}
    started = time.perf_counter()
    ring = secretboot.bootstrap()
    result["boot_ms"] = (time.perf_counter() - started) * 1000
    checks = {"boot": digest(ring)}
    for _ in range(job["warmup"]):
        secretboot.refresh_now()

    # 1. refresh_now(), back to back; the proxy's counts read between refreshes (not timed).
    now_ms: list[float] = []
    now_calls: list[dict[str, int]] = []
    before = link.calls()
    for _ in range(job["refreshes"]):
        started = time.perf_counter()
        secretboot.refresh_now()
        now_ms.append((time.perf_counter() - started) * 1000)
        after = link.calls()
        now_calls.append(_diff(after, before))
        before = after
    result["refresh_now_ms"] = now_ms
    result["refresh_now_calls"] = now_calls
    checks["refresh_now"] = digest(ring)

    # 2. By age: from the moment due to the swap, seen by an on_refresh hook.
    swaps: queue.Queue[float] = queue.Queue()
    ring = secretboot.bootstrap(refresh=True, max_age=MAX_AGE)
    unregister = secretboot.on_refresh(lambda keyring, changed: swaps.put(time.monotonic()))
    refresher = _lifecycle._state.refresher
    assert refresher is not None, "bootstrap(max_age=) armed no refresher"
    due = refresher.due
    age_ms: list[float] = []
    age_calls: list[dict[str, int]] = []
    before = link.calls()
    for _ in range(job["ages"]):
        swapped = swaps.get(timeout=MAX_AGE * 5 + 10)
        age_ms.append((swapped - due) * 1000)
        time.sleep(0.05)  # the refresh thread schedules the next one after the hooks return
        refresher = _lifecycle._state.refresher
        assert refresher is not None
        due = refresher.due
        after = link.calls()
        age_calls.append(_diff(after, before))
        before = after
    unregister()
    result["age_ms"] = age_ms
    result["age_calls"] = age_calls
    checks["max_age"] = digest(ring)
    ring = secretboot.bootstrap(refresh=True)  # max_age off again: the timer stops
    assert _lifecycle._state.refresher is None, "the refresher did not stop"

    # 3. Readers, with refreshes back to back and with none, windows alternating ABBA.
    control = Control()
    names = sorted(ring)
    collected: list[Any] = []
    readers = [
        threading.Thread(target=_reader, args=(ring, names, control, collected), name=f"reader-{n}")
        for n in range(job["readers"])
    ]
    for reader in readers:
        reader.start()
    seconds = dict.fromkeys(MODES, 0.0)
    under_readers: list[float] = []
    failures: list[str] = []
    try:
        for pair in range(job["windows"]):
            for mode in ("refresh", "idle") if pair % 2 == 0 else ("idle", "refresh"):
                refresher_thread = None
                if mode == "refresh":
                    control.refreshing = True
                    refresher_thread = threading.Thread(
                        target=_refresh_loop, args=(control, under_readers, failures), name="refresh-loop"
                    )
                    refresher_thread.start()
                control.mode = mode
                opened = time.perf_counter()
                time.sleep(job["window_s"])
                seconds[mode] += time.perf_counter() - opened
                control.mode = "gap"
                if refresher_thread is not None:
                    control.refreshing = False
                    refresher_thread.join()
    finally:
        control.running = False
        for reader in readers:
            reader.join()
    if failures:
        raise SystemExit(f"refresh_now() failed under readers: {', '.join(failures)}")
    checks["readers"] = digest(ring)
    result["readers"] = _merge(collected, seconds)
    result["refresh_under_readers_ms"] = under_readers
    result["checks"] = checks
    link.send({"result": result})
    return 0


def _merge(collected: Sequence[Any], seconds: Mapping[str, float]) -> dict[str, Any]:
    """The readers' histograms summed per read kind and mode (gap dropped)."""
    merged: dict[str, Any] = {}
    for index, kind in enumerate(("keyring", "getenv")):
        for mode in ("refresh", "idle"):
            hist: dict[int, int] = {}
            peak = 0
            for thread_hists in collected:
                for key, count in thread_hists[index][mode].items():
                    hist[key] = hist.get(key, 0) + count
                peak = max(peak, thread_hists[2][mode][index])
            merged[f"{kind}/{mode}"] = {
                "hist": sorted(hist.items()),
                "max_ns": peak,
                "seconds": seconds[mode],
            }
    return merged


# -- the runner -------------------------------------------------------------------------------


def quantile(hist: Sequence[Sequence[int]], q: float) -> int:
    """The ``q`` quantile (0..1) of a sorted [(bucket lower bound, count)] histogram."""
    total = sum(count for _, count in hist)
    wanted = q * total
    seen = 0
    for bound, count in hist:
        seen += count
        if seen >= wanted:
            return bound
    return hist[-1][0] if hist else 0


@dataclass
class ReadRow:
    transport: str
    kind: str  # "keyring" (keyring[name]) or "getenv" (secretboot.getenv(name))
    mode: str  # "refresh" (refresh_now() back to back) or "idle"
    reads: int
    reads_per_s: float
    p50_ns: int
    p99_ns: int
    p999_ns: int
    max_ns: int
    stalls: int  # reads of STALL_NS or more
    stalls_per_s: float


@dataclass
class Row:
    transport: str
    boot_ms: float
    refreshes: int
    refresh_now_ms: float  # median
    refresh_now_iqr_ms: float
    refresh_now_calls: int  # median requests per refresh
    refresh_now_ops: dict[str, int]  # the requests of the median refresh, by operation
    ages: int
    age_ms: float  # median, due -> swap
    age_iqr_ms: float
    age_calls: int
    under_readers: int  # refresh_now() calls completed during the readers' refresh windows
    under_readers_ms: float  # their median
    keyring_p99_ratio: float | None
    getenv_p99_ratio: float | None


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def summarize(transport: str, result: Mapping[str, Any]) -> tuple[Row, list[ReadRow]]:
    reads = []
    for key, block in result["readers"].items():
        kind, mode = key.split("/")
        hist = block["hist"]
        total = sum(count for _, count in hist)
        stalls = sum(count for bound, count in hist if bound >= STALL_NS)
        seconds = block["seconds"] or 1.0
        reads.append(
            ReadRow(
                transport,
                kind,
                mode,
                total,
                total / seconds,
                quantile(hist, 0.50),
                quantile(hist, 0.99),
                quantile(hist, 0.999),
                block["max_ns"],
                stalls,
                stalls / seconds,
            )
        )

    def ratio(kind: str) -> float | None:
        p99 = {r.mode: r.p99_ns for r in reads if r.kind == kind}
        return p99["refresh"] / p99["idle"] if p99.get("idle") else None

    def median_calls(calls: Sequence[Mapping[str, int]]) -> tuple[int, dict[str, int]]:
        totals = [sum(c.values()) for c in calls]
        middle = sorted(range(len(calls)), key=lambda i: totals[i])[len(calls) // 2]
        return round(statistics.median(totals)), dict(sorted(calls[middle].items()))

    now_calls, now_ops = median_calls(result["refresh_now_calls"])
    age_calls, _ = median_calls(result["age_calls"])
    under = result["refresh_under_readers_ms"]
    row = Row(
        transport=transport,
        boot_ms=result["boot_ms"],
        refreshes=len(result["refresh_now_ms"]),
        refresh_now_ms=statistics.median(result["refresh_now_ms"]),
        refresh_now_iqr_ms=_iqr(result["refresh_now_ms"]),
        refresh_now_calls=now_calls,
        refresh_now_ops=now_ops,
        ages=len(result["age_ms"]),
        age_ms=statistics.median(result["age_ms"]),
        age_iqr_ms=_iqr(result["age_ms"]),
        age_calls=age_calls,
        under_readers=len(under),
        under_readers_ms=statistics.median(under) if under else 0.0,
        keyring_p99_ratio=ratio("keyring"),
        getenv_p99_ratio=ratio("getenv"),
    )
    return row, reads


class Child:
    """One transport's process: the job on its stdin, the proxy's counts answered on request,
    killed by its PID if it runs past ``timeout`` seconds."""

    def __init__(self, env: Mapping[str, str], timeout: float) -> None:
        self._process = subprocess.Popen(  # noqa: S603 (this file, fixed arguments)
            [sys.executable, str(Path(__file__).resolve()), CHILD],
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        self._deadline = time.monotonic() + timeout
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, name="child-stdout", daemon=True)
        self._pump.start()

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, job: Mapping[str, Any], counts: Callable[[], dict[str, int]]) -> dict[str, Any]:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(job) + "\n")
            stdin.flush()
            while True:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                line = self._lines.get(timeout=left)
                if line is None:
                    status = self._process.wait(timeout=10)
                    raise SystemExit(f"the {job['transport']} child exited with {status} before its result")
                message = json.loads(line)
                if "result" in message:
                    answer: dict[str, Any] = message["result"]
                    return answer
                stdin.write(json.dumps({"calls": counts()}) + "\n")
                stdin.flush()
        except (TimeoutError, queue.Empty):
            raise SystemExit(f"the {job['transport']} child ran past its time limit: killed") from None
        finally:
            self.stop()

    def stop(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)  # our own child, by its PID
                process.wait(timeout=10)


def run_transport(
    proxy: AwsProxy,
    env: Mapping[str, str],
    transport: str,
    job: Mapping[str, Any],
    timeout: float,
    expected: str,
) -> dict[str, Any]:
    child_env = {
        **env,
        "SECRETBOOT_TRANSPORT": transport,
        "SECRETBOOT_REFRESH_MIN_INTERVAL": "0",  # refresh_now() back to back: no name skipped
    }
    proxy.reset_counts()
    result = Child(child_env, timeout).run({**job, "transport": transport}, proxy.counts)
    wrong = {phase: line for phase, line in result["checks"].items() if line != expected}
    if wrong:
        raise SystemExit(f"{transport}: values differ from the plaintexts after {', '.join(sorted(wrong))}")
    return result


# -- reports ----------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ops(ops: Mapping[str, int]) -> str:
    return ", ".join(f"{name.split('.')[-1]}={count}" for name, count in ops.items()) or "none"


HEADERS = (
    "transport",
    "refresh_now ms",
    "IQR",
    "calls",
    "by age: due->swap ms",
    "IQR",
    "calls",
    "refresh_now ms under readers",
    "boot ms",
)
READ_HEADERS = (
    "transport",
    "read",
    "during",
    "reads/s",
    "p50 ns",
    "p99 ns",
    "p99.9 ns",
    "max ms",
    "stalls/s",
)


def _cells(row: Row) -> tuple[str, ...]:
    return (
        row.transport,
        f"{row.refresh_now_ms:.1f}",
        f"{row.refresh_now_iqr_ms:.1f}",
        str(row.refresh_now_calls),
        f"{row.age_ms:.1f}",
        f"{row.age_iqr_ms:.1f}",
        str(row.age_calls),
        f"{row.under_readers_ms:.1f} ({row.under_readers})",
        f"{row.boot_ms:.0f}",
    )


def _read_cells(read: ReadRow) -> tuple[str, ...]:
    return (
        read.transport,
        "keyring[name]" if read.kind == "keyring" else "getenv(name)",
        "refreshes" if read.mode == "refresh" else "no refresh",
        f"{read.reads_per_s / 1000:.0f}k",
        str(read.p50_ns),
        str(read.p99_ns),
        str(read.p999_ns),
        f"{read.max_ns / 1e6:.2f}",
        f"{read.stalls_per_s:.1f}",
    )


def target_lines(rows: Sequence[Row]) -> list[tuple[str, str]]:
    lines = []
    for row in rows:
        t = row.transport
        lines += [
            (
                f"{t}: refresh_now() of {SIZE} secrets",
                f"{row.refresh_now_ms:.1f} ms, {row.refresh_now_calls} AWS calls",
            ),
            (f"{t}: refresh by age, due to swap", f"{row.age_ms:.1f} ms, {row.age_calls} AWS calls"),
            (f"{t}: keyring[name] p99 during refreshes / without", _ratio(row.keyring_p99_ratio)),
            (f"{t}: getenv(name) p99 during refreshes / without", _ratio(row.getenv_p99_ratio)),
        ]
    return lines


def _caption(meta: Mapping[str, Any]) -> str:
    return (
        f"N={SIZE} secrets ({SIZE // 4} kms:, {SIZE - SIZE // 4} ssm:), {meta['latency_ms']:g} ms per AWS "
        f"request; {meta['refreshes']} refresh_now() and {meta['ages']} refreshes by age (max_age "
        f"{MAX_AGE:g} s) per transport, medians"
    )


def _read_caption(meta: Mapping[str, Any]) -> str:
    return (
        f"Readers: {meta['readers']} threads, each read timed alone; {meta['windows']} pairs of "
        f"{meta['window_s']:g} s windows (refresh_now() back to back / no refresh), ABBA; "
        f"GIL switch interval {meta['switch_interval_ms']:g} ms; a stall is a read >= 1 ms"
    )


def _columns(heads: Sequence[str], cells: Sequence[Sequence[str]], left: int) -> list[str]:
    """Aligned text rows: the first ``left`` columns to the left, the others to the right."""
    widths = [max(len(line[i]) for line in (heads, *cells)) for i in range(len(heads))]
    return [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in (heads, *cells)
    ]


def text_report(
    rows: Sequence[Row], reads: Sequence[ReadRow], lines: Sequence[tuple[str, str]], meta: Mapping[str, Any]
) -> str:
    out = ["", _caption(meta), *_columns(HEADERS, [_cells(row) for row in rows], 1)]
    out += [f"  {row.transport}: requests per refresh_now(): {_ops(row.refresh_now_ops)}" for row in rows]
    out += ["", _read_caption(meta), *_columns(READ_HEADERS, [_read_cells(read) for read in reads], 3)]
    out.append("\nTargets (issue 17 states none: reported)")
    out += [f"  {what}: {value}  (reported)" for what, value in lines]
    return "\n".join(out)


def markdown_report(
    rows: Sequence[Row], reads: Sequence[ReadRow], lines: Sequence[tuple[str, str]], meta: Mapping[str, Any]
) -> str:
    out = [
        "# secretboot refresh cost in a warm process",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, commit {meta['commit']})",
        "",
        f"Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        _caption(meta) + ".",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
    ]
    out += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    out += ["", _read_caption(meta) + ".", ""]
    out += ["| " + " | ".join(READ_HEADERS) + " |", "|---|---|---|" + "---:|" * (len(READ_HEADERS) - 3)]
    out += ["| " + " | ".join(_read_cells(read)) + " |" for read in reads]
    out += ["", "| measure (issue 17) | value | |", "|---|---:|---|"]
    out += [f"| {what} | {value} | reported |" for what, value in lines]
    return "\n".join(out) + "\n"


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from run import git_commit

    versions = {}
    for package in ("boto3", "botocore", "moto"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    return {
        "command": "python bench/refresh.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "latency_ms": args.latency_ms,
        "refreshes": args.refreshes,
        "ages": args.ages,
        "readers": args.readers,
        "windows": args.windows,
        "window_s": args.window_s,
        "switch_interval_ms": sys.getswitchinterval() * 1000,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (under 30 s)")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="ms added to every AWS request (10)")
    parser.add_argument(
        "--refreshes", type=int, help="timed refresh_now() per transport (default 20; quick 5)"
    )
    parser.add_argument(
        "--ages", type=int, help=f"refreshes by age, {MAX_AGE:g} s apart (default 8; quick 3)"
    )
    parser.add_argument("--readers", type=int, default=3, help="reader threads (3)")
    parser.add_argument("--windows", type=int, help="pairs of reader windows (default 6; quick 2)")
    parser.add_argument("--window-s", type=float, help="seconds per reader window (default 1.5; quick 1)")
    parser.add_argument(
        "--transports",
        type=lambda t: [x for x in t.split(",") if x],
        default=list(TRANSPORTS),
        help="fast,boto3",
    )
    parser.add_argument("--child-timeout", type=float, default=120.0, help="seconds before a child is killed")
    parser.add_argument("--json", metavar="PATH", help="write every raw figure and the summary")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    args = parser.parse_args(argv)
    args.refreshes = args.refreshes or (5 if args.quick else 20)
    args.ages = args.ages or (3 if args.quick else 8)
    args.windows = args.windows or (2 if args.quick else 6)
    args.window_s = args.window_s or (1.0 if args.quick else 1.5)
    if set(args.transports) - set(TRANSPORTS):
        parser.error(f"transports are {', '.join(TRANSPORTS)}")
    if min(args.refreshes, args.ages, args.readers, args.windows) < 1 or args.window_s <= 0:
        parser.error("refreshes, ages, readers and windows at least 1, a positive window")
    if args.latency_ms < 0 or args.child_timeout <= 0:
        parser.error("a latency of at least 0 and a positive child timeout")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up: children and servers stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (REPO, REPO / "bench"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from run import base_env, create_secrets, make_proxy

    from tests.localaws import moto_server

    signal.signal(signal.SIGTERM, _terminate)
    meta = metadata(args)
    started = time.perf_counter()
    job = {
        "warmup": 2,
        "refreshes": args.refreshes,
        "ages": args.ages,
        "readers": args.readers,
        "windows": args.windows,
        "window_s": args.window_s,
    }
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as cleanup:
        moto_url = cleanup.enter_context(moto_server())
        proxy = make_proxy(moto_url, replay=False)
        proxy.start()
        cleanup.callback(proxy.stop)
        _progress(f"moto at {moto_url}, proxy at {proxy.url}; creating secrets")
        secret_set = create_secrets(moto_url, [SIZE])[SIZE]
        env = {**base_env(proxy.url), **secret_set.references}
        proxy.latency = args.latency_ms / 1000
        for transport in args.transports:
            _progress(f"{transport}: measuring in a fresh process")
            results[transport] = run_transport(
                proxy, env, transport, job, args.child_timeout, secret_set.expected
            )
    rows, reads = [], []
    for transport, result in results.items():
        row, read_rows = summarize(transport, result)
        rows.append(row)
        reads += read_rows
    lines = target_lines(rows)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    print(f"# {meta['command']}")
    print(
        f"# {meta['date']} commit {meta['commit']}; Python {meta['python']} on {meta['platform']}, "
        f"{meta['cpus']} CPUs; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    )
    print("# Server: moto behind the delay proxy, every request answered by moto.")
    print(text_report(rows, reads, lines, meta))
    print(f"\n# {meta['seconds']} s in all")
    if args.json:
        document = {
            "meta": meta,
            "raw": results,
            "summary": [asdict(r) for r in rows],
            "reads": [asdict(r) for r in reads],
            "measures": [{"measure": w, "value": v} for w, v in lines],
        }
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_report(rows, reads, lines, meta))
    return 0


if __name__ == "__main__":
    sys.exit(child_main() if sys.argv[1:] == [CHILD] else main())
