"""Controlling a running daemon from outside: find it through its pidfile's lock, signal it,
stop it.

Everything here finds the daemon through its pidfile's *lock*, never through the pid written in
the file: the process that holds the ``flock`` (:func:`daemonctx.pidfile.holder_pid`) is the
daemon, and a file whose lock nobody holds belongs to no running daemon, even when the pid it
names is alive (that pid was recycled by an unrelated process).  Signals go through a pidfd
opened on the holder and checked to still hold the lock afterwards, so the process signalled is
the lock's holder, never a process that took over its pid in between.  A holder whose pid the
file does not name did not write it (any user who can read a pidfile can ``flock`` it): it is
never signalled.  A daemon whose pidfile was removed by hand is found by the lock it still holds
on the removed file.

* :func:`stop_daemon` -- signal the holder along a :class:`StopSchedule` (``TERM/30/KILL/5``,
  start-stop-daemon's ``--retry``; ``DEFAULT_STOP_SCHEDULE`` is the one default), wait
  until the lock is released;
* :func:`signal_daemon` -- send one signal to the holder (``reload`` is ``SIGHUP``);
* :func:`find_removed_pidfile_holder` -- the daemon whose pidfile was removed;
* :func:`impostor` -- why a lock holder is not the daemon, when it is not;
* :func:`parse_signal` and :func:`signal_name` -- signals as the command writes them
  (``TERM``, ``15``), defined with the other signal names in ``daemonctx._os`` and
  re-exported here.

The ``daemonctx`` command, :class:`~daemonctx.runner.DaemonRunner` and
:mod:`daemonctx.status` use these.  Linux only (pidfds, ``/proc``): what ``/proc`` says about
processes and their locks is read by ``daemonctx._proc``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from daemonctx import _proc
from daemonctx._os import parse_signal
from daemonctx._os import short_signal_name as signal_name
from daemonctx.errors import DaemonError, DaemonOptionError, DaemonOSEnvironmentError
from daemonctx.pidfile import holder_pid as _holder_pid
from daemonctx.pidfile import remove_stale_pidfile

__all__ = [
    "DEFAULT_KILL_TIMEOUT",
    "DEFAULT_STOP_SCHEDULE",
    "DEFAULT_STOP_TIMEOUT",
    "IMPOSTOR_GRACE",
    "StopResult",
    "StopSchedule",
    "find_removed_pidfile_holder",
    "impostor",
    "parse_signal",
    "signal_daemon",
    "signal_name",
    "stop_daemon",
]

_MAX_POLL_PAUSE = 0.05


# --- schedules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopSchedule:
    """What ``stop`` sends and how long it waits after each signal (start-stop-daemon's --retry).

    ``steps`` is a sequence of ``(signal number, seconds to wait)``: each signal is sent, then
    ``stop`` waits up to that long for the daemon to be gone before going on to the next step.
    With ``repeat`` (written ``/forever`` at the end) the steps start over until it is gone.
    Build one with :meth:`parse`, or :meth:`signal_then_kill` for the usual shape.
    """

    steps: tuple[tuple[int, float], ...]
    repeat: bool = False

    @classmethod
    def signal_then_kill(cls, signum: int = signal.SIGTERM, wait: float = 30.0,
                         kill_wait: float = 5.0) -> StopSchedule:
        """``signum``, up to ``wait`` s for the daemon to go, then SIGKILL and up to
        ``kill_wait`` s more (``TERM/30/KILL/5`` by default); just one step if ``signum`` is
        SIGKILL already."""
        if signum == signal.SIGKILL:
            return cls(((int(signum), float(wait)),))
        return cls(((int(signum), float(wait)), (int(signal.SIGKILL), float(kill_wait))))

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
            return cls.signal_then_kill(default_signal, seconds, seconds)
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


#: Seconds the default schedule waits for the daemon to exit after SIGTERM.
DEFAULT_STOP_TIMEOUT = 30.0
#: Seconds it then waits after SIGKILL (the whole default: TERM/30/KILL/5).
DEFAULT_KILL_TIMEOUT = 5.0
DEFAULT_STOP_SCHEDULE = StopSchedule.signal_then_kill(signal.SIGTERM, DEFAULT_STOP_TIMEOUT,
                                                      DEFAULT_KILL_TIMEOUT)
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


#: Seconds a lock holder gets to write its pid before it is taken for an impostor.
IMPOSTOR_GRACE = 1.0


def impostor(path: str, pid: int) -> str | None:
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
    uid = _proc.real_uid(pid)
    return "uid unknown" if uid is None else f"uid {uid}"


def _open_holder(path: str) -> _Target | None:
    """The lock holder with a pidfd on it, checked to still hold the lock after opening."""
    for _ in range(5):
        pid = _holder_pid(path)
        if pid is None:
            return _open_removed_holder(path)
        why_not = impostor(path, pid)
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
        return _proc.removed_flock_holder_pidfds(path, exclude)
    return _proc.flock_holder_pidfds(path, exclude)


def find_removed_pidfile_holder(pidfile_path: str | os.PathLike[str]) -> int | None:
    """The daemon still holding the lock of its pidfile after the file at the path was removed.

    Someone deleted ``/run/app.pid`` (a clean-up script, a careless ``rm``) while the daemon
    ran: its descriptor still holds the lock, on a file nobody can open by name any more.  The
    kernel shows that descriptor as ``"<path> (deleted)"``, with the directory resolved
    (``/run/app.pid`` for ``/var/run/app.pid`` where ``/var/run -> /run``); the process holding
    an ``flock`` through one, whose file names that process's own pid (so it wrote it), is the
    daemon.  None if there is none.  Cheap enough for every start (a read of ``/proc/locks``
    and the descriptors of the processes that took a lock: see
    ``daemonctx._proc.removed_pidfile_writer``).
    """
    return _proc.removed_pidfile_writer(os.fspath(pidfile_path))


def _open_removed_holder(path: str) -> _Target | None:
    pid = find_removed_pidfile_holder(path)
    if pid is None:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if not _proc.holds_removed_flock(pid, path):  # checked after opening: the pidfd is that one
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
