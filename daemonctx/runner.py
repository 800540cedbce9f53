"""Drive a daemon from outside: stop it, signal it, ask whether it runs; and DaemonRunner.

Everything here finds the daemon through its pidfile's *lock*, never through the pid written in
the file: the process that holds the ``flock`` (:func:`daemonctx.pidfile.holder_pid`) is the
daemon, and a file whose lock nobody holds belongs to no running daemon, even when the pid it
names is alive (that pid was recycled by an unrelated process).  Signals go through a pidfd
opened on the holder and checked to still hold the lock afterwards, so the process signalled is
the lock's holder, never a process that took over its pid in between.

* :func:`stop_daemon` -- signal the holder along a :class:`StopSchedule` (``TERM/30/KILL/5``,
  start-stop-daemon's ``--retry``), wait until the lock is released;
* :func:`signal_daemon` -- send one signal to the holder (``reload`` is ``SIGHUP``);
* :func:`daemon_status` -- a :class:`DaemonStatus` with the LSB status code, the pid, command
  line, uptime, memory and the tree of child processes.

:class:`DaemonRunner` is python-daemon 2.x's ``daemon.runner.DaemonRunner`` (removed from
python-daemon 3.0) built on these, with its defects fixed: it works on Python 3 (the original
opened an unbuffered text stream and raised ``ValueError``), appends to the logs instead of
truncating them on every invocation, ignores leftover pidfiles of dead daemons, waits for the
old process to be gone in ``stop`` and ``restart``, accepts ``pidfile_path = None`` and adds a
``status`` action.  The ``daemonctx`` command (:mod:`daemonctx.cli`) uses the same functions.

Linux only (pidfds, ``/proc``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from daemonctx import _proc
from daemonctx._os import signal_name as _full_signal_name
from daemonctx.errors import DaemonError, DaemonOptionError, DaemonOSEnvironmentError

if TYPE_CHECKING:
    from daemonctx.context import DaemonContext
    from daemonctx.handshake import StartupReport
    from daemonctx.pidfile import TimeoutPIDLockFile

__all__ = [
    "DEFAULT_STOP_SCHEDULE",
    "DaemonRunner",
    "DaemonRunnerError",
    "DaemonRunnerInvalidActionError",
    "DaemonRunnerStartFailureError",
    "DaemonRunnerStopFailureError",
    "DaemonStatus",
    "ProcessInfo",
    "StopResult",
    "StopSchedule",
    "daemon_status",
    "emit_message",
    "is_pidfile_stale",
    "make_pidlockfile",
    "parse_signal",
    "process_info",
    "remove_stale_pidfile",
    "signal_daemon",
    "signal_name",
    "stop_daemon",
]

# LSB init-script status codes (``status`` action).
STATUS_RUNNING = 0
STATUS_DEAD_PIDFILE_EXISTS = 1
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4

_MAX_POLL_PAUSE = 0.05


# --- errors ---------------------------------------------------------------------------------


class DaemonRunnerError(DaemonError):
    """Base class of :class:`DaemonRunner`'s errors (python-daemon: an ``Exception``)."""


class DaemonRunnerInvalidActionError(DaemonRunnerError, DaemonOptionError):
    """The requested action is not one of :attr:`DaemonRunner.action_funcs` (a ValueError)."""


class DaemonRunnerStartFailureError(DaemonRunnerError, RuntimeError):
    """``start`` failed before forking: already running, or an invalid option (a RuntimeError)."""


class DaemonRunnerStopFailureError(DaemonRunnerError, RuntimeError):
    """``stop`` failed: not running, not permitted, or still running after the schedule."""


# --- signals and schedules ------------------------------------------------------------------


def parse_signal(text: str, option: str = "signal") -> int:
    """The signal number for ``text``: ``TERM``, ``SIGTERM``, ``term`` or ``15``.

    Raises :class:`~daemonctx.DaemonOptionError` naming ``option`` for anything else.
    """
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if number in signal.valid_signals() and number != 0:
            return number
    else:
        if not name.startswith("SIG"):
            name = "SIG" + name
        member = getattr(signal.Signals, name, None)
        if member is not None:
            return int(member)
    raise DaemonOptionError(
        f"{option}: unknown signal {text!r} (use a name such as TERM, HUP, USR1 or KILL, "
        f"or a number)")


def signal_name(number: int) -> str:
    """``15`` -> ``"TERM"``: the short name used in messages and schedules."""
    name = _full_signal_name(number)
    return name.removeprefix("SIG") if name.startswith("SIG") else str(number)


@dataclass(frozen=True)
class StopSchedule:
    """What ``stop`` sends and how long it waits after each signal (start-stop-daemon's --retry).

    ``steps`` is a sequence of ``(signal number, seconds to wait)``: each signal is sent, then
    ``stop`` waits up to that long for the daemon to be gone before going on to the next step.
    With ``repeat`` (written ``/forever`` at the end) the steps start over until it is gone.
    Build one with :meth:`parse`.
    """

    steps: tuple[tuple[int, float], ...]
    repeat: bool = False

    @classmethod
    def parse(cls, text: str, *, default_signal: int = signal.SIGTERM,
              option: str = "--retry") -> StopSchedule:
        """Parse ``SIGNAL/SECONDS[/SIGNAL/SECONDS...][/forever]`` or a single ``SECONDS``.

        Signals are names (``TERM``, ``-TERM``, ``SIGTERM``) or ``-N``; seconds may be
        fractional.  A lone number ``N`` means ``<default_signal>/N/KILL/N``, as in
        start-stop-daemon.  Raises :class:`~daemonctx.DaemonOptionError` naming ``option``.
        """
        items = [item.strip() for item in text.split("/")]
        if len(items) == 1 and _is_seconds(items[0]):
            seconds = _seconds(items[0], option)
            return cls(((default_signal, seconds), (int(signal.SIGKILL), seconds)))
        steps: list[tuple[int, float]] = []
        pending: int | None = None
        repeat = False
        for index, item in enumerate(items):
            if item.lower() == "forever":
                if index != len(items) - 1 or pending is not None or not steps:
                    raise DaemonOptionError(
                        f"{option} {text!r}: 'forever' must come last, after a "
                        f"SIGNAL/SECONDS pair (e.g. TERM/30/KILL/5/forever)")
                repeat = True
            elif _is_seconds(item):
                if pending is None:
                    raise DaemonOptionError(
                        f"{option} {text!r}: the wait {item!r} must follow a signal "
                        f"(e.g. TERM/30/KILL/5)")
                steps.append((pending, _seconds(item, option)))
                pending = None
            else:
                if pending is not None:
                    raise DaemonOptionError(
                        f"{option} {text!r}: signal {items[index - 1]!r} must be followed by "
                        f"a number of seconds to wait (e.g. TERM/30/KILL/5)")
                pending = parse_signal(item.removeprefix("-"), option)
        if pending is not None:
            raise DaemonOptionError(
                f"{option} {text!r}: signal {items[-1]!r} must be followed by a number of "
                f"seconds to wait (e.g. TERM/30/KILL/5)")
        if not steps:
            raise DaemonOptionError(f"{option}: empty schedule {text!r} (e.g. TERM/30/KILL/5)")
        return cls(tuple(steps), repeat)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        while True:
            yield from self.steps
            if not self.repeat:
                return

    def __str__(self) -> str:
        text = "/".join(f"{signal_name(sig)}/{wait:g}" for sig, wait in self.steps)
        return text + ("/forever" if self.repeat else "")


def _is_seconds(item: str) -> bool:
    return item.replace(".", "", 1).isdigit()


def _seconds(item: str, option: str) -> float:
    value = float(item)
    if value > 10**9:
        raise DaemonOptionError(f"{option}: wait {item!r} is too long (use 'forever')")
    return value


DEFAULT_STOP_SCHEDULE = StopSchedule(((int(signal.SIGTERM), 30.0), (int(signal.SIGKILL), 5.0)))
"""SIGTERM, up to 30 s for the daemon to exit, then SIGKILL and up to 5 s more."""


# --- finding the lock holder ----------------------------------------------------------------


@dataclass
class _Target:
    """The daemon as found through the lock: ``pidfd`` is None if ``pid`` exited already.

    ``removed``: the daemon holds the lock of a pidfile that was removed from under it.
    """

    pid: int
    pidfd: int | None
    removed: bool = False

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _holder_pid(path: str) -> int | None:
    from daemonctx.pidfile import holder_pid

    return holder_pid(path)


#: Seconds a lock holder gets to write its pid before it is taken for an impostor.
IMPOSTOR_GRACE = 1.0


def _impostor(path: str, pid: int) -> str | None:
    """Why the lock holder ``pid`` is not the process that wrote the pidfile, if it is not.

    PIDFile writes the holder's own pid under the lock, so a holder whose pid the file does not
    name took the lock of a file it did not write: any user who can read a pidfile can
    ``flock`` it (after a crash, say).  Such a process is never signalled.  A daemon caught
    between its ``flock`` and its pid write (a stop racing a start) gets a second to write.
    """
    import time

    from daemonctx.pidfile import PIDFile

    deadline = time.monotonic() + IMPOSTOR_GRACE
    delay = 0.001
    while (named := PIDFile(path).read_pid()) != pid and time.monotonic() < deadline:
        if _holder_pid(path) != pid:
            return None  # the lock changed hands: the caller looks again
        time.sleep(delay)  # nothing to wait on: the holder writes the file, then nothing
        delay = min(delay * 2, 0.05)
    if named == pid:
        return None
    said = f"names pid {named}" if named is not None else "names no pid"
    return (f"pidfile {path} {said} but its lock is held by pid {pid} ({_owner_of(pid)}), "
            f"which did not write it: not the daemon; refusing to signal it (make the pidfile "
            f"mode 0600 if other users can read it)")


def _owner_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    return f"uid {line.split()[1]}"
    except OSError:
        pass
    return "uid unknown"


def _open_holder(path: str) -> _Target | None:
    """The lock holder with a pidfd on it, checked to still hold the lock after opening."""
    for _ in range(5):
        pid = _holder_pid(path)
        if pid is None:
            return _open_removed_holder(path)
        why_not = _impostor(path, pid)
        if why_not is not None:
            raise DaemonError(why_not)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            if _holder_pid(path) == pid:
                return _Target(pid, None)  # exited; processes it forked still hold the lock
            continue
        except OSError as exc:
            raise DaemonOSEnvironmentError(
                exc.errno, f"cannot open a pidfd for pid {pid}: {exc.strerror}") from exc
        if _holder_pid(path) == pid:
            if _proc.holds_flock(pid, _proc.file_identity(path)) is not False:
                return _Target(pid, pidfd)
            # The lock names a pid that exited and was recycled by an unrelated process;
            # processes the daemon left behind still hold the lock.
            os.close(pidfd)
            return _Target(pid, None)
        os.close(pidfd)
    raise DaemonError(
        f"the lock of pidfile {path} changed hands five times while looking for its holder: "
        f"something keeps starting and stopping the daemon; retry")


def _lock_holder_pidfds_closed(target: _Target, path: str) -> list[tuple[int, int]]:
    found = _lock_holder_pidfds(target, path, set())
    for _, fd in found:
        os.close(fd)
    return found


def _pidfd_exited(pidfd: int | None) -> bool:
    import select

    return pidfd is None or bool(select.select([pidfd], [], [], 0)[0])


def _send(pidfd: int, pid: int, signum: int) -> bool:
    """Send ``signum`` through ``pidfd``; False if the process is gone already."""
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise DaemonOSEnvironmentError(
            exc.errno, f"cannot send SIG{signal_name(signum)} to pid {pid}: permission denied; "
            f"run as root or as the daemon's user") from exc
    return True


def _lock_holder_pidfds(target: _Target, path: str,
                        exclude: set[int]) -> list[tuple[int, int]]:
    """Pidfds on every other process still holding the daemon's lock (checked after opening)."""
    if target.removed:
        holders = {pid for pid, _ in _proc.processes_locking_removed(path)} - exclude
        return _proc.pidfds_if(sorted(holders), lambda pid: _locks_removed(pid, path))
    identity = _proc.file_identity(path)
    holders = set(_proc.processes_holding_flock(path)) - exclude
    return _proc.pidfds_if(sorted(holders), lambda pid: bool(_proc.holds_flock(pid, identity)))


def _locks_removed(pid: int, path: str) -> bool:
    return any(p == pid for p, _ in _proc.processes_locking_removed(path, pids=[pid]))


def find_removed_pidfile_holder(pidfile_path: str | os.PathLike[str]) -> int | None:
    """The daemon still holding the lock of its pidfile after the file at the path was removed.

    Someone deleted ``/run/app.pid`` (a clean-up script, a careless ``rm``) while the daemon
    ran: its descriptor still holds the lock, on a file nobody can open by name any more.  The
    kernel shows that descriptor as ``"<path> (deleted)"``; the process holding an ``flock``
    through one, whose file names that process's own pid (so it wrote it), is the daemon.  None
    if there is none.  Scans ``/proc`` (every process's fds): a few milliseconds.
    """
    path = os.path.abspath(os.fspath(pidfile_path))
    for pid, fd_name in _proc.processes_locking_removed(path):
        if _removed_file_names(pid, fd_name) == pid:
            return pid
    return None


def _removed_file_names(pid: int, fd_name: str) -> int | None:
    from daemonctx.pidfile import _parse_pid

    try:
        fd = os.open(f"/proc/{pid}/fd/{fd_name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return _parse_pid(os.pread(fd, 64, 0))
    except OSError:
        return None
    finally:
        os.close(fd)


def _open_removed_holder(path: str) -> _Target | None:
    pid = find_removed_pidfile_holder(path)
    if pid is None:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if not _locks_removed(pid, path):  # checked after opening: the pidfd is that process
        os.close(pidfd)
        return None
    return _Target(pid, pidfd, removed=True)


# --- stop and signal ------------------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    """How :func:`stop_daemon` ended.

    ``outcome``: ``"stopped"`` (the daemon was running and is gone: its lock is released),
    ``"not-running"`` (no process held the lock; nothing was signalled) or
    ``"still-running"`` (the schedule ran out while the lock was still held).  ``pid`` is the
    daemon's pid, ``message`` one line for humans, ``stale_removed`` whether a leftover pidfile
    nobody held was removed.  :attr:`exit_status` is start-stop-daemon's: 0, 1 or 2.
    """

    outcome: Literal["stopped", "not-running", "still-running"]
    pid: int | None
    message: str
    stale_removed: bool = False

    @property
    def exit_status(self) -> int:
        """0 stopped, 1 was not running, 2 still running after the schedule."""
        return {"stopped": 0, "not-running": 1, "still-running": 2}[self.outcome]


def remove_stale_pidfile(path: str) -> bool:
    """Remove the pidfile at ``path`` if nobody holds its lock; True if it was removed.

    The file is locked for the removal (``flock`` on a read-only descriptor, then a check that
    it is still the file at ``path``), so a file a daemon holds is never removed, and a starter
    that opened the old file notices it was removed and starts over on a new one.  Unlike
    :meth:`~daemonctx.pidfile.PIDFile.break_lock` this never writes to the file, so it also
    removes a file owned by the daemon's (other) user.  Failures (not permitted, a read-only
    directory) leave the file: an unlocked pidfile is harmless, the next start takes it over.
    """
    import fcntl
    import stat

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases our lock


def stop_daemon(pidfile_path: str | os.PathLike[str],
                schedule: StopSchedule = DEFAULT_STOP_SCHEDULE) -> StopResult:
    """Stop the daemon holding the lock of ``pidfile_path``; return once it is gone.

    Each step of ``schedule`` sends its signal to the lock's holder (through a pidfd, so never
    to a recycled pid) and waits up to its time for the daemon to exit *and* the lock to be
    released.  A ``KILL`` step also kills the holder's descendants, and any process still
    holding the lock through an inherited descriptor (workers left behind), so that the lock
    is free afterwards.  When the lock is released the leftover file is removed.

    Raises :class:`~daemonctx.DaemonOSEnvironmentError` when a signal is not permitted and
    :class:`~daemonctx.pidfile.PIDFileError` when the pidfile cannot be examined.
    """
    path = os.path.abspath(os.fspath(pidfile_path))
    target = _open_holder(path)
    if target is None:
        removed = remove_stale_pidfile(path)
        note = "; removed its leftover pidfile" if removed else ""
        return StopResult("not-running", None, f"not running (no process holds the lock of "
                                               f"{path}){note}", removed)
    try:
        for signum, wait in schedule:
            _signal_target(target, path, signum)
            if _wait_released(target, path, wait):
                remove_stale_pidfile(path)
                how = " (its pidfile had been removed)" if target.removed else ""
                return StopResult("stopped", target.pid, f"stopped pid {target.pid}{how}")
        if _pidfd_exited(target.pidfd):
            left = [pid for pid, _ in _lock_holder_pidfds_closed(target, path)]
            message = (f"pid {target.pid} exited, but its pidfile {path} is still locked by "
                       f"processes it left behind (pids {', '.join(map(str, left)) or '?'}) "
                       f"after the schedule {schedule}")
        else:
            message = f"pid {target.pid} is still running after the schedule {schedule}"
        return StopResult("still-running", target.pid, message)
    finally:
        target.close()


def _signal_target(target: _Target, path: str, signum: int) -> None:
    extra: list[tuple[int, int]] = []
    try:
        main_alive = target.pidfd is not None and not _pidfd_exited(target.pidfd)
        if main_alive and signum == signal.SIGKILL:
            extra = _proc.descendant_pidfds([target.pid])  # before the kill re-parents them
        if main_alive:
            assert target.pidfd is not None
            _send(target.pidfd, target.pid, signum)
        if not main_alive or signum == signal.SIGKILL:
            seen = {target.pid, *(pid for pid, _ in extra)}
            extra += _lock_holder_pidfds(target, path, seen)
        for pid, fd in extra:
            _send(fd, pid, signum)
    finally:
        for _, fd in extra:
            os.close(fd)


def _wait_released(target: _Target, path: str, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the holder to exit and the lock to be released."""
    import select

    deadline = time.monotonic() + timeout
    if target.pidfd is not None and not select.select([target.pidfd], [], [], timeout)[0]:
        return False
    # The kernel releases the lock when the holder's files are closed, before it is seen to
    # exit, unless processes it forked keep the descriptor: nothing signals that, so poll.
    pause = 0.001
    while True:
        if target.removed:
            if not _proc.processes_locking_removed(path):
                return True
        elif _holder_pid(path) != target.pid:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _MAX_POLL_PAUSE)


def signal_daemon(pidfile_path: str | os.PathLike[str], signum: int) -> int | None:
    """Send ``signum`` to the daemon holding the lock of ``pidfile_path``.

    Returns the pid signalled, or None if no process holds the lock (nothing was sent).  If the
    holder exited and processes it left behind still hold the lock, they get the signal and
    the exited holder's pid is returned.  Raises as :func:`stop_daemon`.
    """
    path = os.path.abspath(os.fspath(pidfile_path))
    target = _open_holder(path)
    if target is None:
        return None
    try:
        _signal_target(target, path, signum)
    finally:
        target.close()
    return target.pid


# --- status ---------------------------------------------------------------------------------


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
    from daemonctx.pidfile import PIDFile, PIDFileError

    path = os.path.abspath(os.fspath(pidfile_path))
    try:
        pid = _holder_pid(path)
        exists = os.path.lexists(path)
    except (PIDFileError, OSError) as exc:
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", None,
                            f"status unknown: {exc}")
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
    why_not = _impostor(path, pid)
    if why_not is not None:
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", pid, f"status unknown: {why_not}")
    holds = _proc.holds_flock(pid, _proc.file_identity(path))
    if holds is False:
        holders = tuple(_proc.processes_holding_flock(path))
        listed = ", ".join(map(str, holders)) or "?"
        return DaemonStatus(path, STATUS_UNKNOWN, "unknown", pid,
                            f"pid {pid} named by the lock of {path} has exited, but processes "
                            f"it left behind still hold the lock (pids {listed}); "
                            f"'stop' ends them", holders=holders)
    info = process_info(pid)
    return DaemonStatus(path, STATUS_RUNNING, "running", pid,
                        f"running: pid {pid} holds the lock of {path}", info)


# --- DaemonRunner (python-daemon 2.x) -------------------------------------------------------


def emit_message(message: str, stream: IO[str] | None = None) -> None:
    """Write ``message`` and a newline to ``stream`` (default ``sys.stderr``) and flush it."""
    if stream is None:
        stream = sys.stderr
    stream.write(f"{message}\n")
    stream.flush()


def make_pidlockfile(path: object, acquire_timeout: float | None) -> TimeoutPIDLockFile:
    """A :class:`~daemonctx.pidfile.TimeoutPIDLockFile` for ``path`` (python-daemon's helper).

    As in python-daemon, ``path`` must be an absolute ``str`` path (a ValueError --
    :class:`~daemonctx.DaemonOptionError` -- otherwise): a relative path would be resolved
    against the daemon's working directory, not the caller's.
    """
    from daemonctx.pidfile import TimeoutPIDLockFile

    if not isinstance(path, str):
        raise DaemonOptionError(f"Not a filesystem path: {path!r}")
    if not os.path.isabs(path):
        raise DaemonOptionError(f"Not an absolute path: {path!r}")
    return TimeoutPIDLockFile(path, acquire_timeout)


def is_pidfile_stale(pidfile: Any) -> bool:
    """True if ``pidfile``'s file exists but no process holds its lock.

    python-daemon asked ``kill(pid, 0)``, which calls a pidfile stale or live depending on
    whether *some* process has that pid.  Here the lock decides: a leftover file naming a
    recycled pid is stale.
    """
    path = os.path.abspath(os.fspath(pidfile.path))
    return os.path.lexists(path) and _holder_pid(path) is None


class DaemonRunner:
    """python-daemon 2.x's ``DaemonRunner``: ``start``/``stop``/``restart``/``status`` an app.

    ``app`` provides ``run()`` (the daemon's main function) and the attributes
    ``stdin_path``, ``stdout_path``, ``stderr_path`` (``None`` or missing: ``/dev/null``),
    ``pidfile_path`` (``None``: no pidfile, then only ``start`` works) and
    ``pidfile_timeout`` (seconds to wait for the lock; ``None`` or ``0``: fail at once).
    The constructor reads the action from ``argv`` (default ``sys.argv``): ``argv[1]`` must be
    an action, else the usage line is written to stderr and the program exits with status 2.
    :meth:`do_action` then performs it:

    * ``start``: detach (``self.daemon_context``, a :class:`~daemonctx.DaemonContext` that may
      be configured further before :meth:`do_action`), then call ``app.run()`` in the daemon.
      The launching process prints ``started with pid N`` once the daemon is up and exits 0,
      or prints the daemon's start-up error and exits 1; an error found before forking
      (already running, a bad option) raises :class:`DaemonRunnerStartFailureError`.
    * ``stop``: SIGTERM, wait up to :attr:`stop_timeout` seconds for the daemon to exit, then
      SIGKILL; returns once the pidfile's lock is released.  Not running: a leftover pidfile is
      removed silently (as python-daemon did for stale ones); no pidfile at all raises
      :class:`DaemonRunnerStopFailureError`.
    * ``restart``: ``stop`` if running (waiting until the old daemon is gone), then ``start``.
    * ``status``: prints one line (and the process tree) and exits with the LSB status code
      (0 running, 1 dead but pidfile exists, 3 not running, 4 unknown).

    Differences from python-daemon's: the streams are opened by the daemon context in append
    mode (python-daemon opened ``w+t``, truncating the running daemon's logs on every
    invocation, and ``buffering=0`` text, which fails on Python 3); relative ``pidfile_path``
    values are made absolute against the current directory; leftover pidfiles of dead daemons
    never block a start (kernel locks).
    """

    start_message = "started with pid {pid:d}"
    stop_timeout: float = 30.0
    kill_timeout: float = 5.0
    action_funcs: ClassVar[dict[str, Callable[[DaemonRunner], object]]]

    def __init__(self, app: Any, argv: Sequence[str] | None = None) -> None:
        self.parse_args(argv)
        self.app = app
        self.daemon_context: DaemonContext = _runner_context(self)
        self.daemon_context.stdin = _stream_path(app, "stdin_path")
        self.daemon_context.stdout = _stream_path(app, "stdout_path")
        self.daemon_context.stderr = _stream_path(app, "stderr_path")
        self.pidfile: TimeoutPIDLockFile | None = None
        path = getattr(app, "pidfile_path", None)
        if path is not None:
            if isinstance(path, (str, os.PathLike)):
                path = os.path.abspath(os.fspath(path))
            self.pidfile = make_pidlockfile(path, getattr(app, "pidfile_timeout", None))
        self.daemon_context.pidfile = self.pidfile

    def _usage_exit(self, argv: Sequence[str]) -> NoReturn:
        progname = os.path.basename(argv[0]) if argv else "daemon"
        actions = "|".join(self.action_funcs)
        emit_message(f"usage: {progname} {actions}")
        sys.exit(2)

    def parse_args(self, argv: Sequence[str] | None = None) -> None:
        """Read the action from ``argv[1]`` (default ``sys.argv``); usage and exit 2 if bad."""
        if argv is None:
            argv = sys.argv
        if len(argv) < 2 or argv[1] not in self.action_funcs:
            self._usage_exit(argv)
        self.action = str(argv[1])

    def _pidfile_path(self, action: str) -> str:
        if self.pidfile is None:
            raise DaemonRunnerStopFailureError(
                f"cannot {action}: the app has no pidfile_path, so the running daemon cannot "
                f"be found; give the app a pidfile_path")
        return os.path.abspath(self.pidfile.path)

    def _start(self) -> None:
        from daemonctx.pidfile import PIDFileLockedError, PIDFileTimeoutError

        try:
            self.daemon_context.open()
        except (PIDFileLockedError, PIDFileTimeoutError) as exc:
            where = self.pidfile.path if self.pidfile is not None else "?"
            holder = f" by pid {exc.pid}" if exc.pid is not None else ""
            raise DaemonRunnerStartFailureError(
                f"PID file {where!r} already locked{holder}") from exc
        except DaemonError as exc:
            raise DaemonRunnerStartFailureError(f"cannot start: {exc}") from exc
        self.app.run()

    def _stop(self) -> None:
        path = self._pidfile_path("stop")
        schedule = StopSchedule(((int(signal.SIGTERM), float(self.stop_timeout)),
                                 (int(signal.SIGKILL), float(self.kill_timeout))))
        try:
            result = stop_daemon(path, schedule)
        except DaemonError as exc:
            raise DaemonRunnerStopFailureError(str(exc)) from exc
        if result.outcome == "not-running" and not result.stale_removed:
            raise DaemonRunnerStopFailureError(f"PID file {path!r} not locked")
        if result.outcome == "still-running":
            raise DaemonRunnerStopFailureError(result.message)

    def _restart(self) -> None:
        if self.pidfile is not None and _holder_pid(self._pidfile_path("restart")) is not None:
            self._stop()
        self._start()

    def _status(self) -> NoReturn:
        if self.pidfile is None:
            emit_message("status unknown: the app has no pidfile_path", sys.stdout)
            sys.exit(STATUS_UNKNOWN)
        status = daemon_status(self.pidfile.path)
        emit_message(status.summary(), sys.stdout)
        sys.exit(status.code)

    def _get_action_func(self) -> Callable[[DaemonRunner], object]:
        try:
            return self.action_funcs[self.action]
        except KeyError:
            raise DaemonRunnerInvalidActionError(f"Unknown action: {self.action!r}") from None

    def do_action(self) -> None:
        """Perform the action read from the command line (see the class documentation)."""
        func = self._get_action_func()
        func(self)


DaemonRunner.action_funcs = {
    "start": DaemonRunner._start,
    "stop": DaemonRunner._stop,
    "restart": DaemonRunner._restart,
    "status": DaemonRunner._status,
}


def _stream_path(app: Any, name: str) -> str | None:
    value = getattr(app, name, None)
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise DaemonOptionError(f"app.{name} must be a path or None, not {value!r}")
    return os.fspath(value)


def _runner_context(runner: DaemonRunner) -> DaemonContext:
    from daemonctx.context import DaemonContext

    class _RunnerContext(DaemonContext):
        """Prints the start message in the launching process, where the user sees it."""

        def on_startup_report(self, report: StartupReport) -> NoReturn:
            if report.ok and report.pid is not None:
                try:
                    emit_message(runner.start_message.format(pid=report.pid))
                except (OSError, ValueError):
                    pass
            super().on_startup_report(report)

    return _RunnerContext()
