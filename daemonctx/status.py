"""What ``status`` knows about a daemon, and how it is said: LSB codes, the process tree.

:func:`daemon_status` answers "is it running?" from the pidfile's lock (see
:mod:`daemonctx.control` for why never from the pid in the file) and returns a
:class:`DaemonStatus`: the LSB status code, the pid, and the process with its command line,
uptime, memory and children (a supervisor's workers).  :meth:`DaemonStatus.summary` is the
text the command prints, :meth:`DaemonStatus.as_dict` its ``--json``, and the ``STATUS_*``
constants are the LSB codes, defined here only.  Nothing here reads ``/proc`` itself: the
process tree and the lock's live holders come from ``daemonctx._proc``, the holder and the
impostor check from :mod:`daemonctx.control`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from daemonctx import _proc
from daemonctx.control import find_removed_pidfile_holder, impostor
from daemonctx.pidfile import PIDFile, PIDFileError, file_kind, holder_pid

__all__ = [
    "STATUS_DEAD_PIDFILE_EXISTS",
    "STATUS_NOT_RUNNING",
    "STATUS_RUNNING",
    "STATUS_UNKNOWN",
    "DaemonStatus",
    "ProcessInfo",
    "daemon_status",
    "process_info",
]

#: LSB status 0: the daemon runs (a process holds the pidfile's lock).
STATUS_RUNNING = 0
#: LSB status 1: not running, but the pidfile exists (the daemon died).
STATUS_DEAD_PIDFILE_EXISTS = 1
#: LSB status 3: not running (no pidfile).
STATUS_NOT_RUNNING = 3
#: LSB status 4: unknown (the pidfile cannot be examined, or is no regular file).
STATUS_UNKNOWN = 4


@dataclass(frozen=True)
class ProcessInfo:
    """One process as seen in ``/proc``: pid, command line, uptime (s), RSS (bytes), children.

    Fields that cannot be read (permissions, the process exiting meanwhile) are None/empty.
    """

    pid: int
    command: tuple[str, ...]
    uptime: float | None
    rss: int | None
    children: tuple[ProcessInfo, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``uptime_seconds``, ``rss_bytes``, nested ``children``)."""
        return {"pid": self.pid, "command": list(self.command),
                "uptime_seconds": None if self.uptime is None else round(self.uptime, 3),
                "rss_bytes": self.rss, "children": [c.as_dict() for c in self.children]}


def process_info(pid: int, *, with_children: bool = True) -> ProcessInfo:
    """Read :class:`ProcessInfo` for ``pid`` (and, recursively, its children) from /proc."""
    budget = [_proc.MAX_TREE_SIZE]
    return _process_info(pid, with_children, budget)


def _process_info(pid: int, with_children: bool, budget: list[int]) -> ProcessInfo:
    budget[0] -= 1
    children: tuple[ProcessInfo, ...] = ()
    if with_children and budget[0] > 0:
        children = tuple(_process_info(c, True, budget) for c in _proc.children(pid)
                         if budget[0] > 0)
    return ProcessInfo(pid, _proc.command_line(pid), _proc.uptime(pid), _proc.rss(pid),
                       children)


@dataclass(frozen=True)
class DaemonStatus:
    """What :func:`daemon_status` found.

    ``code`` is the LSB status code: 0 running, 1 not running but the pidfile exists (the
    daemon died), 3 not running, 4 unknown.  ``state`` says the same in a word (``running``,
    ``dead``, ``stopped``, ``unknown``); ``pid`` is the lock holder's pid (or, when dead, the
    pid the file names), ``process`` its details when running, ``holders`` the processes
    holding the lock when the pid it names has exited, ``message`` one line for humans.
    """

    pidfile: str
    code: int
    state: Literal["running", "dead", "stopped", "unknown"]
    pid: int | None
    message: str
    process: ProcessInfo | None = None
    holders: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (``process`` nested, or None)."""
        return {"pidfile": self.pidfile, "code": self.code, "state": self.state,
                "pid": self.pid, "message": self.message,
                "process": None if self.process is None else self.process.as_dict(),
                "holders": list(self.holders)}

    def summary(self) -> str:
        """A few lines for humans: the message, then the command, uptime, memory and tree."""
        lines = [self.message]
        process = self.process
        if process is not None:
            lines.append(f"  command: {_quote_command(process.command)}")
            lines.append(f"  uptime:  {_format_duration(process.uptime)}")
            lines.append(f"  memory:  {_format_bytes(process.rss)} resident")
            if process.children:
                lines.append("  children:")
                lines.extend(_tree_lines(process.children, "    "))
        return "\n".join(lines)


def _tree_lines(children: Sequence[ProcessInfo], indent: str) -> list[str]:
    lines: list[str] = []
    for child in children:
        lines.append(f"{indent}{child.pid} {_quote_command(child.command)} "
                     f"({_format_bytes(child.rss)}, up {_format_duration(child.uptime)})")
        lines.extend(_tree_lines(child.children, indent + "  "))
    return lines


def _quote_command(command: Sequence[str]) -> str:
    import shlex

    return shlex.join(command) if command else "?"


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown)


def _format_bytes(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def daemon_status(pidfile_path: str | os.PathLike[str]) -> DaemonStatus:
    """Is the daemon of ``pidfile_path`` running?  Answered from the pidfile's lock.

    Running (0) means a process holds the lock; a pidfile whose lock nobody holds is "dead"
    (1) whatever pid it names -- that pid may be alive, recycled by an unrelated process --
    and a missing pidfile is "stopped" (3).  "unknown" (4): the pidfile cannot be examined
    (a directory on its path is not searchable), or the pid the lock names has exited while
    processes it left behind still hold the lock.  Never raises for a readable situation.
    """
    path = os.path.abspath(os.fspath(pidfile_path))
    try:
        pid = holder_pid(path)
        st = os.lstat(path) if os.path.lexists(path) else None
    except (PIDFileError, OSError) as exc:
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", None,
                            f"status unknown: {exc}")
    exists = st is not None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # No PIDFile ever locks or writes such a thing: whatever is there, it says nothing.
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", None,
                            f"status unknown: {path} is a {file_kind(st.st_mode)}, not a "
                            f"pidfile; remove it, or give the daemon's pidfile")
    if pid is None:
        removed_holder = find_removed_pidfile_holder(path)
        if removed_holder is not None:
            return DaemonStatus(path, STATUS_RUNNING, "running", removed_holder,
                                f"running: pid {removed_holder} holds the lock of its pidfile "
                                f"{path}, which was removed from under it; 'stop' finds it "
                                f"the same way", process_info(removed_holder))
        if not exists:
            return DaemonStatus(path, STATUS_NOT_RUNNING, "stopped", None,
                                f"not running (no pidfile {path})")
        named = PIDFile(path).read_pid()
        if named is None:
            detail = "names no pid"
        elif _proc.is_alive(named):
            detail = (f"names pid {named}, which is alive but does not hold the lock: an "
                      f"unrelated process that reused the pid")
        else:
            detail = f"names pid {named}, which has exited"
        return DaemonStatus(path, STATUS_DEAD_PIDFILE_EXISTS, "dead", named,
                            f"not running, but pidfile {path} exists ({detail}; nobody "
                            f"holds its lock)")
    why_not = impostor(path, pid)
    if why_not is not None:
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", pid, f"status unknown: {why_not}")
    holders = tuple(_proc.live_lock_holders(path, pid))
    if pid not in holders:
        listed = ", ".join(map(str, holders)) or "?"
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", pid,
                            f"pid {pid} named by the lock of {path} has exited, but processes "
                            f"it left behind still hold the lock (pids {listed}); "
                            f"'stop' ends them", holders=holders)
    info = process_info(pid)
    return DaemonStatus(path, STATUS_RUNNING, "running", pid,
                        f"running: pid {pid} holds the lock of {path}", info)
