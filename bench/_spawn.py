"""Starts benchmark children and measures them, from a process that stays small.

Why a separate launcher: a child's ``ru_maxrss`` (from ``wait4``) is at least the resident
size of the process it was forked from, because Linux carries the old address space's
high-water mark across ``exec``. The runner holds moto and boto3 (well over 100 MiB), which
would swamp every child's figure; this launcher, run with ``python -S -I`` and importing only
``os``, ``sys``, ``json`` and ``time``, stays near 10 MiB, below a bare interpreter's own peak.

Protocol: one JSON object per line on stdin, ``{"argv": [...], "env": {...}}``; one JSON
object per line on stdout, ``{"ms", "maxrss_kib", "status", "stdout", "stderr"}``. Children
run in this process's working directory, with stdin from /dev/null and stderr to the file
named by the first argument.
"""

import json
import os
import sys
import time


def run(argv: list[str], env: dict[str, str], stderr_path: str) -> dict[str, object]:
    read_end, write_end = os.pipe()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_end, 1),
        (os.POSIX_SPAWN_OPEN, 2, stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
    ]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
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
        "maxrss_kib": usage.ru_maxrss,  # KiB on Linux
        "status": os.waitstatus_to_exitcode(status),
        "stdout": b"".join(chunks).decode(errors="replace"),
        "stderr": stderr.decode(errors="replace"),
    }


def main() -> None:
    stderr_path = sys.argv[1]
    for line in sys.stdin:
        job = json.loads(line)
        result = run(job["argv"], job["env"], stderr_path)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
