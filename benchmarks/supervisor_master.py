"""A pre-fork master for the supervisor benchmark, run in a fresh interpreter.

    python benchmarks/supervisor_master.py CONTENDER FIFO TOKEN WORKERS

Imports CONTENDER's library, reads CLOCK_MONOTONIC, then forks WORKERS workers.  Each worker,
first thing once it runs (also after a restart), writes ``TOKEN <task id> <pid> <now ns> <now -
start ns>`` to the FIFO, then idles until it is signalled.  Workers keep the default SIGTERM
disposition, so a graceful stop measures the master's work, not the workers'.

CONTENDER is ``minimal-loop`` (fork N, block in ``os.wait()``, fork a replacement for each
death, forward SIGTERM to the workers and wait for them: written for the benchmark),
``daemonctx`` (``daemonctx.fork_processes``, tornado's restart policy), ``tornado``
(``tornado.process.fork_processes``), or ``daemonctx@PATH``: ``daemonctx.fork_processes`` of
the checkout at PATH (``compare_revisions.py``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK = time.CLOCK_MONOTONIC
MAX_RESTARTS = 1_000_000


def minimal_fork_processes(num_processes: int) -> int:
    """The floor: fork, wait, refork on death; SIGTERM is forwarded and the workers awaited."""
    children: dict[int, int] = {}
    stopping = False

    def start(task: int) -> bool:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return True
        children[pid] = task
        return False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    for task in range(num_processes):
        if start(task):
            return task
    while children:
        pid, _ = os.wait()
        task = children.pop(pid)
        if not stopping and start(task):
            return task
    sys.exit(0)


def load(contender: str) -> Callable[[int], int]:
    """Import the contender's library; return ``fork(n) -> task id`` (in the workers)."""
    if contender == "minimal-loop":
        return minimal_fork_processes
    if contender == "daemonctx":
        sys.path.insert(0, REPO)
        from daemonctx.supervisor import fork_processes as daemonctx_fork

        return lambda n: daemonctx_fork(n, max_restarts=MAX_RESTARTS)
    if contender.startswith("daemonctx@"):  # another checkout (compare_revisions.py)
        sys.path.insert(0, contender.partition("@")[2])
        from daemonctx.supervisor import fork_processes as checkout_fork

        return lambda n: checkout_fork(n, max_restarts=MAX_RESTARTS)
    if contender == "tornado":
        from tornado.process import fork_processes as tornado_fork

        return lambda n: tornado_fork(n, max_restarts=MAX_RESTARTS)
    raise SystemExit(f"unknown contender {contender!r}")


def run() -> None:
    contender, fifo, token, workers = sys.argv[1:5]
    fork = load(contender)
    started = time.clock_gettime_ns(CLOCK)
    task = fork(int(workers))
    now = time.clock_gettime_ns(CLOCK)
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, f"{token} {task} {os.getpid()} {now} {now - started}\n".encode())
    os.close(fd)
    while True:
        signal.pause()


if __name__ == "__main__":
    run()
