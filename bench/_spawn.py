"""Starts benchmark children and measures them, from a process that stays small.

Why a separate launcher: a child's ``ru_maxrss`` (from ``wait4``) is at least the resident
size of the process it was forked from, because Linux carries the old address space's
high-water mark across ``exec``. The runner holds moto and boto3 (well over 100 MiB), which
would swamp every child's figure; this launcher, run with ``python -S -I`` and importing only
``os``, ``sys``, ``json`` and ``time``, stays near 10 MiB, below a bare interpreter's own peak.

Protocol: one JSON object per line on stdin, ``{"argv": [...], "env": {...}}``; one JSON
object per line on stdout, ``{"ms", "cpu_ms", "maxrss_kib", "status", "stdout", "stderr"}``
(``cpu_ms``: the child's user plus system time from ``wait4``, all its threads). Children run
in this process's working directory, with stdin from /dev/null and stderr to the file named by
the first argument.

CPU limits: a job with ``"cgroup": "<group>/cgroup.procs"`` is started with ``fork`` instead
of ``posix_spawn``, and the child writes its PID into that file before ``exec``, so every
instruction of the contender runs inside the group (bench/cgroup.py makes the groups).
"""

import json
import os
import sys
import time


def _forked(argv: list[str], env: dict[str, str], stderr_path: str, write_end: int, procs: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: join the group, then become the contender
        joined = os.open(procs, os.O_WRONLY)
        os.write(joined, str(os.getpid()).encode())
        os.close(joined)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(write_end, 1)
        os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        os.execve(argv[0], argv, env)  # noqa: S606 (the runner's argv, no shell wanted)
    except BaseException as exc:  # exec failed, or joining the group did
        os.write(2, f"bench/_spawn.py: cannot start {argv[0]} in {procs}: {exc}\n".encode())
    os._exit(127)


def run(
    argv: list[str], env: dict[str, str], stderr_path: str, procs: str | None = None
) -> dict[str, object]:
    read_end, write_end = os.pipe()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_end, 1),
        (os.POSIX_SPAWN_OPEN, 2, stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    started = time.perf_counter()
    if procs is None:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    else:
        pid = _forked(argv, env, stderr_path, write_end, procs)
    os.close(write_end)
    chunks = []
    while True:  # ends at EOF: the child exited (or closed stdout)
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - started
    os.close(read_end)
    with open(stderr_path, "rb") as err:
        stderr = err.read()
    return {
        "ms": elapsed * 1000,
        "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
        "maxrss_kib": usage.ru_maxrss,  # KiB on Linux
        "status": os.waitstatus_to_exitcode(status),
        "stdout": b"".join(chunks).decode(errors="replace"),
        "stderr": stderr.decode(errors="replace"),
    }


def main() -> None:
    stderr_path = sys.argv[1]
    for line in sys.stdin:
        job = json.loads(line)
        result = run(job["argv"], job["env"], stderr_path, job.get("cgroup"))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
