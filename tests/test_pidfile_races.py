"""Concurrency of PIDFile: many real processes starting and stopping at once.

The starters are children forked from the test process (so 800 of them cost little), released
at the same instant by closing a pipe they are all blocked reading.  Every child is reaped,
with a bounded wait, before the test ends.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from daemonctx.pidfile import PIDFile, PIDFileLockedError, holder_pid
from tests.helpers import dead_pid, fork_call, wait_child_status

STARTERS = 16
ROUNDS = 50


@contextmanager
def children() -> Iterator[list[int]]:
    """A list of forked child pids; any not yet reaped at exit is killed and reaped."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def reap_all(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Wait for every child in ``pids`` (removing each from the list); their exit codes."""
    codes = []
    while pids:
        codes.append(wait_child_status(pids[0], timeout))
        pids.pop(0)
    return codes


def read_lines(fd: int, count: int, timeout: float = 30.0) -> list[str]:
    """Read ``count`` newline-terminated lines from the pipe ``fd`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while (got := data.count(b"\n")) < count:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        assert ready, f"only {got} of {count} lines after {timeout} s"
        chunk = os.read(fd, 4096)
        assert chunk, f"pipe closed after {got} of {count} lines"
        data += chunk
    return data.decode().splitlines()


def starter(path: Path, go: int, hold: int, results: int, close: list[int]) -> Callable[[], int]:
    """A child that waits for ``go`` to close, tries the pidfile once, reports, then holds."""

    def run() -> int:
        for fd in close:
            os.close(fd)
        os.read(go, 1)  # EOF for every starter at the same instant
        pidfile = PIDFile(path)
        try:
            pidfile.acquire(timeout=0)
            report = f"{os.getpid()} won {os.getpid()}\n"
        except PIDFileLockedError as exc:
            report = f"{os.getpid()} lost {exc.pid}\n"
        os.write(results, report.encode())
        os.read(hold, 1)  # keep the lock until the round is judged
        pidfile.release()
        return 0

    return run


def test_sixteen_simultaneous_starters_leave_exactly_one_holder_each_round(
        tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    with children() as pids:
        for round_number in range(ROUNDS):
            if round_number % 2:
                path.write_text(f"{dead_pid()}\n")  # odd rounds: a leftover file to take over
            go_r, go_w = os.pipe()
            hold_r, hold_w = os.pipe()
            results_r, results_w = os.pipe()
            parent_ends = [go_w, hold_w, results_r]
            try:
                for _ in range(STARTERS):
                    pids.append(fork_call(starter(path, go_r, hold_r, results_w, parent_ends)))
                for fd in (go_r, hold_r, results_w):
                    os.close(fd)
                os.close(go_w)
                parent_ends.remove(go_w)
                reports = [line.split() for line in read_lines(results_r, STARTERS)]
                winners = [int(pid) for pid, outcome, _ in reports if outcome == "won"]
                assert len(winners) == 1, f"round {round_number}: winners {winners}"
                winner = winners[0]
                # Every loser was told who holds it; the file and the lock agree.
                assert {int(named) for _, _, named in reports} == {winner}
                assert path.read_text() == f"{winner}\n"
                assert holder_pid(path) == winner
            finally:
                for fd in parent_ends:
                    os.close(fd)
            assert reap_all(pids) == [0] * STARTERS
            assert not path.exists()


def cycling_worker(path: Path, log: Path, go: int, close: list[int], style: str,
                   cycles: int) -> Callable[[], int]:
    """A child that starts and stops ``cycles`` times, logging each hold to ``log``.

    ``style`` is how it waits for the lock: "blocking" (None), "timed" (30 s, polling) or
    "eager" (timeout 0, retried).  While holding, it checks that it is the holder by every
    measure, and logs "BAD" if not.
    """

    def run() -> int:
        for fd in close:
            os.close(fd)
        os.read(go, 1)
        me = os.getpid()
        log_fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        for _ in range(cycles):
            pidfile = PIDFile(path)
            if style == "blocking":
                pidfile.acquire(timeout=None)
            elif style == "timed":
                pidfile.acquire(timeout=30)
            else:
                while True:
                    try:
                        pidfile.acquire(timeout=0)
                        break
                    except PIDFileLockedError:
                        time.sleep(0.001)  # pacing the retries, not synchronising
            os.write(log_fd, f"A {me}\n".encode())
            held = (holder_pid(path) == me and pidfile.read_pid() == me
                    and os.stat(path).st_ino == os.fstat(pidfile.fileno()).st_ino)
            if not held:
                os.write(log_fd, f"BAD {me}\n".encode())
            os.write(log_fd, f"R {me}\n".encode())
            pidfile.release()  # unlinks the file while others are trying to take it
            os.sched_yield()  # let a waiter in, so holders change often
        os.close(log_fd)
        return 0

    return run


def test_racing_stop_start_cycles_never_have_two_holders(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    log = tmp_path / "holds.log"
    log.touch()
    styles = ["blocking", "timed", "eager"] * 2
    cycles = 25
    with children() as pids:
        go_r, go_w = os.pipe()
        try:
            for style in styles:
                pids.append(fork_call(cycling_worker(path, log, go_r, [go_w], style, cycles)))
        finally:
            os.close(go_r)
            os.close(go_w)  # start them all at once
        assert reap_all(pids, timeout=60) == [0] * len(styles)
    lines = log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("BAD")]
    assert len(lines) == 2 * len(styles) * cycles
    # Holds never overlap: every acquire is followed by the same process's release.
    for acquired, released in zip(lines[::2], lines[1::2], strict=True):
        assert acquired.split()[0] == "A" and released == "R " + acquired.split()[1], (
            acquired, released)
    assert not path.exists()
