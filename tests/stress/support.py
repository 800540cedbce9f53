"""Scaffolding for the stress tests (no tests here): the launcher farm's client, process census.

Candidates for ``tests/helpers.py``: :func:`tagged_processes` and :func:`proc_locks_holders`.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.helpers import (
    PYTHON,
    REPO,
    WaitTimeoutError,
    proc_stat,
    proc_state,
    proc_status,
    wait_for,
)

FLEET = REPO / "tests" / "stress" / "fleet.py"
Figures = Callable[..., None]
"""The type of the ``figures`` fixture (tests/stress/conftest.py)."""


class Fleet:
    """A running tests/stress/fleet.py: send it a command, get its JSON reply (bounded wait)."""

    def __init__(self, tmp: Path, spawned: list[int]) -> None:
        self.tmp = tmp
        self.process = subprocess.Popen([PYTHON, str(FLEET), str(tmp)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        spawned.append(self.process.pid)
        self.adopted: dict[int, int] = {}  # every pid the farm reaped, with its exit code

    @property
    def pid(self) -> int:
        return self.process.pid

    def request(self, cmd: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **fields}``; return the reply (AssertionError on an error reply)."""
        self.send(cmd, **fields)
        reply = self.receive(timeout)
        if reply is None:
            raise WaitTimeoutError(f"the farm did not answer {cmd!r} within {timeout} s")
        return reply

    def send(self, cmd: str, **fields: Any) -> None:
        """Send a command without waiting for its reply (see :meth:`receive`)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The reply to the last command sent, or ``None`` if none came within ``timeout``."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        assert line, f"the farm exited (status {self.process.poll()})"
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, reply.get("trace", reply["error"])
        return reply

    def reap(self, wait: Iterable[int] = (), timeout: float = 15.0) -> dict[int, int]:
        """Reap what the farm adopted; wait for ``wait`` pids. ``{pid: exit code}`` reaped now."""
        reply = self.request("reap", wait=list(wait), timeout=timeout)
        assert not reply["missing"], f"pids never ended: {reply['missing']}"
        reaped = {int(pid): code for pid, code in reply["reaped"].items()}
        self.adopted.update(reaped)
        return reaped

    def children(self) -> list[int]:
        """The farm's children right now (after reaping what had exited)."""
        reply = self.request("reap", wait=[])
        self.adopted.update({int(pid): code for pid, code in reply["reaped"].items()})
        return list(reply["children"])

    def wait_childless(self, timeout: float = 15.0) -> None:
        """Wait until the farm has reaped every child; fail naming those still there.

        A process that is exiting has already lost its command line (so the census no longer
        sees it) but is not a zombie yet: give it the moment it needs.
        """
        try:
            wait_for(lambda: not self.children(), timeout, "the farm's children to end")
        except WaitTimeoutError:
            left = {pid: describe_process(pid) for pid in self.children()}
            raise WaitTimeoutError(f"the farm has children left: {left}") from None


def tagged_processes(tag: str | os.PathLike[str], exclude: Iterable[int] = ()) -> dict[int, str]:
    """Live processes whose command line contains ``tag``, with their one-letter state.

    Every process of a test's farm (forked, never exec'd) carries the test's tmp path in its
    command line, so this finds all of them, whoever their parent is now.  A zombie, or a
    process in the middle of exiting, has an empty command line and is not listed: zombies are
    found as children (every process of the farm descends from it, a subreaper, so once no
    tagged process is alive any zombie left is the farm's child: see ``Fleet.children``).
    """
    needle = os.fsencode(os.fspath(tag))
    skip = set(exclude) | {os.getpid()}
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            found[int(name)] = proc_state(int(name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def census(tag: str | os.PathLike[str], exclude: Iterable[int] = ()) -> dict[int, str]:
    """:func:`tagged_processes`, scanned until two scans in a row agree.

    One scan of /proc can miss a hand-off: the intermediate child forks the daemon after the
    directory was listed and exits before its entry is read, and both are missed.  Each run of
    a test has one such hand-off, so two equal scans in a row see everything.
    """
    excluded = list(exclude)
    previous = tagged_processes(tag, excluded)
    while True:
        current = tagged_processes(tag, excluded)
        if set(current) == set(previous):
            return current
        previous = current


def descends_from(pid: int, ancestor: int) -> bool:
    """True if ``ancestor`` is ``pid``'s parent, grandparent... (False once ``pid`` is gone).

    Unlike the command line, which reads empty once an exiting process released its memory,
    the parent link lasts until the process is reaped.  An ancestor reaped while the chain is
    read (a launcher exiting: its children were re-parented first) means reading it again.
    """
    for _ in range(100):
        current = pid
        try:
            while current > 1:
                parent = proc_stat(current).ppid
                if parent == 0:
                    # The kernel reads 0 for a process being released as /proc answers: an
                    # ancestor reaped mid-read, as above (only pid 1 has no parent here).
                    raise ProcessLookupError(current)
                current = parent
                if current == ancestor:
                    return True
            return False
        except (FileNotFoundError, ProcessLookupError):
            if current == pid:
                return False  # pid itself is gone
    return False


def ancestry(pid: int) -> list[tuple[int, str]]:
    """``[(pid, state), (parent, state), ...]`` up to init, for failure messages."""
    chain: list[tuple[int, str]] = []
    while pid > 1 and len(chain) < 64:
        try:
            stat = proc_stat(pid)
        except (OSError, ValueError):
            chain.append((pid, "gone"))
            break
        chain.append((pid, stat.state))
        pid = stat.ppid
    return chain


def wait_tagged_settle(tag: str | os.PathLike[str], allowed: set[int], exclude: Iterable[int],
                       timeout: float = 15.0) -> dict[int, str]:
    """Wait until the live tagged processes are a subset of ``allowed``; return them.

    Processes that have just reported (a losing daemon, an intermediate child) need a moment
    to exit; anything still there at the deadline is a leak, and the error lists it.
    """
    excluded = list(exclude)

    def settled() -> list[dict[int, str]] | None:
        alive = {p: s for p, s in census(tag, excluded).items() if s != "Z"}
        return [alive] if set(alive) <= allowed else None  # a list: truthy even if empty

    try:
        result = wait_for(settled, timeout, "tagged processes to settle")
    except WaitTimeoutError:
        left = tagged_processes(tag, excluded)
        raise WaitTimeoutError(f"processes left behind (pid: state): {left}; "
                               f"allowed {sorted(allowed)}") from None
    assert isinstance(result, list)
    alive: dict[int, str] = result[0]
    return alive


def proc_locks_holders(path: str | os.PathLike[str]) -> list[int]:
    """Distinct pids holding (not waiting for) an flock on the inode now at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    # One large read: /proc/locks is generated in pieces, and a lock released between two
    # reads can shift the list so that one entry is shown twice.
    fd = os.open("/proc/locks", os.O_RDONLY)
    try:
        text = os.read(fd, 1 << 22).decode("ascii", "replace")
    finally:
        os.close(fd)
    holders = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = fields[5].split(":")
        if int(inode) == st.st_ino and os.makedev(int(major, 16), int(minor, 16)) == st.st_dev:
            holders.add(int(fields[4]))
    return sorted(holders)


def read_events(path: Path) -> list[tuple[str, int, int, str]]:
    """The daemons' O_APPEND event log: ``(kind, pid, monotonic ns, ok|nolock)`` per line."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        kind, pid, ns, verdict = line.split()
        events.append((kind, int(pid), int(ns), verdict))
    return events


def assert_events_alternate(events: list[tuple[str, int, int, str]]) -> None:
    """The log must read start A, stop A, start B, stop B...: never two holders at once.

    A daemon logs ``start`` after it acquired the pidfile and ``stop`` before it releases it,
    so two overlapping holders would show as two ``start`` lines in a row.  A daemon stopped
    before it logged ``start`` logs only ``stop``, which must then come while nobody else is
    in.  Each line also carries the daemon's own check that it holds the lock on the file at
    the path.
    """
    holder: int | None = None
    for index, (kind, pid, _, verdict) in enumerate(events):
        assert verdict == "ok", f"line {index}: daemon {pid} {kind} without its lock"
        if kind == "start":
            assert holder is None, f"line {index}: {pid} started while {holder} held the pidfile"
            holder = pid
        else:
            assert holder in (pid, None), f"line {index}: {pid} stopped while {holder} was in"
            holder = None
    assert holder is None, f"{holder} never logged its stop"


def describe_process(pid: int) -> str:
    """A one-line post-mortem of a process a test waited for in vain (state, signals, wchan)."""
    try:
        status = proc_status(pid)
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return f"pid {pid}: gone"
    fields = ("State", "PPid", "SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd")
    return f"pid {pid}: " + ", ".join(f"{k}={status.get(k)}" for k in fields) + f", wchan={wchan}"


def fresh_scratch(base: Path) -> Path:
    """An empty working directory ``base/scratch`` for one fuzzing example.

    It holds what the strategies name: a directory ``scratch-dir``, a file ``a-file`` and a
    readable ``in.txt``.  The previous example's directory is removed first, whatever it left.
    """
    scratch = base / "scratch"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    (scratch / "scratch-dir").mkdir()
    (scratch / "a-file").write_text("x")
    (scratch / "in.txt").write_text("input")
    return scratch
