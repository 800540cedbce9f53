"""One detach sample, run in a fresh interpreter by benchmarks/detach.py.

    python benchmarks/detach_launcher.py CONTENDER FIFO TOKEN NOFILE SCRATCH

Sets RLIMIT_NOFILE's soft limit to NOFILE first (python-daemon reads the limit when it is
imported), imports CONTENDER's library, builds its context object, then reads CLOCK_MONOTONIC
just before the call that detaches ("open").  The daemon's main reads the clock again first
thing, writes ``TOKEN <delta ns> <pid>`` to the FIFO (opened by name: every inherited fd has
been closed by then) and waits to be killed by the harness.  SCRATCH is a directory the harness
removes afterwards (daemonize insists on a pidfile).

CONTENDER is one of: ``reference`` (the minimal floor written for the benchmark: double fork,
setsid, chdir, umask, closerange(3, soft limit), dup2 of /dev/null), ``reference-handshake``
(the same, with a launcher that waits for one byte from the daemon), ``daemonctx`` (default
DaemonContext: its launcher waits for the start-up report), ``daemonctx-nowait`` (the same with
``startup_timeout=0``: no handshake, the launcher exits right after the first fork),
``python-daemon``, ``daemonize``, or ``daemonctx@PATH``: the default DaemonContext of the
checkout at PATH (``compare_revisions.py``).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK = time.CLOCK_MONOTONIC


def report_and_wait(fifo: str, token: str, started_ns: int) -> NoReturn:
    """The daemon's main: report the detach latency, then idle until the harness kills it."""
    now = time.clock_gettime_ns(CLOCK)
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, f"{token} {now - started_ns} {os.getpid()}\n".encode())
    os.close(fd)
    while True:
        signal.pause()


def reference_detach() -> None:
    """The floor: the classic daemon(7) sequence in plain Python, nothing checked or reported."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def reference_detach_with_handshake() -> None:
    """The floor plus the smallest start-up handshake: the launcher waits for one byte.

    Shows what waiting for readiness costs by itself: the launcher stays alive while the
    daemon starts, so the daemon's first writes to memory copy pages still shared with it.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        ready = os.read(read_fd, 1)
        os.waitpid(pid, 0)
        os._exit(0 if ready == b"R" else 1)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    os.closerange(3, write_fd)
    os.closerange(write_fd + 1, soft)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.write(write_fd, b"R")
    os.close(write_fd)


def make_opener(contender: str, main: Callable[[], NoReturn], scratch: str) -> Callable[[], None]:
    """Import the contender's library and build its context; return the call that detaches."""
    if contender == "reference":
        return reference_detach
    if contender == "reference-handshake":
        return reference_detach_with_handshake
    if contender in ("daemonctx", "daemonctx-nowait"):
        sys.path.insert(0, REPO)
        from daemonctx import DaemonContext

        # startup_timeout=0: no handshake at all, the launcher exits right after the first
        # fork (python-daemon's behaviour)
        timeout = 0 if contender == "daemonctx-nowait" else 60.0
        return DaemonContext(startup_timeout=timeout).open
    if contender.startswith("daemonctx@"):  # another checkout (compare_revisions.py)
        sys.path.insert(0, contender.partition("@")[2])
        from daemonctx import DaemonContext

        return DaemonContext(startup_timeout=60.0).open
    if contender == "python-daemon":
        import daemon

        return daemon.DaemonContext().open  # type: ignore[no-any-return]
    if contender == "daemonize":
        from daemonize import Daemonize

        pidfile = os.path.join(scratch, f"daemonize-{os.getpid()}.pid")
        return Daemonize(app="bench", pid=pidfile, action=main).start  # type: ignore[no-any-return]
    raise SystemExit(f"unknown contender {contender!r}")


def run() -> None:
    contender, fifo, token, nofile, scratch = sys.argv[1:6]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), hard))
    started = [0]

    def main() -> NoReturn:
        report_and_wait(fifo, token, started[0])

    opener = make_opener(contender, main, scratch)
    started[0] = time.clock_gettime_ns(CLOCK)
    opener()
    main()  # daemonize calls main itself and never returns here


if __name__ == "__main__":
    run()
