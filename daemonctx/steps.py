"""One small function per step of the detach sequence.

Each function changes one aspect of the calling process and says why that matters for a daemon.
They know nothing of :class:`~daemonctx.DaemonContext`, which calls them in order (see its
``open()``), and they wrap operating-system failures in
:class:`~daemonctx.DaemonOSEnvironmentError` / :class:`~daemonctx.DaemonProcessDetachError` with
a message naming what was attempted.  What a step needs to know comes from the primitives
below: the open fds from ``daemonctx._proc`` (:func:`highest_open_fd`), whether a service
manager started the process from :mod:`daemonctx.systemd` (:func:`detach_needed`), the
variables ``daemonctx start`` sets from ``daemonctx._os`` (``daemonctx_command_lock_fd``).
"""

from __future__ import annotations

import os
import resource
import stat
import sys

from daemonctx import _os, _proc
from daemonctx._signal_module import signal
from daemonctx.errors import DaemonOSEnvironmentError, DaemonProcessDetachError

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import NoReturn

__all__ = [
    "change_file_creation_mask",
    "change_process_owner",
    "change_root_directory",
    "change_working_directory",
    "close_inherited_fds",
    "detach_process_context",
    "detach_needed",
    "ensure_standard_fds_open",
    "flush_standard_streams",
    "highest_open_fd",
    "ignored_signals",
    "is_socket_fd",
    "prevent_core_dump",
    "redirect_stream",
    "reset_inherited_signal_state",
]

# Signals whose disposition CPython itself sets at start-up; resetting them would change
# Python's documented behaviour (BrokenPipeError instead of death by SIGPIPE).
_PYTHON_MANAGED_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)


def _unable(what: str, exc: OSError) -> DaemonOSEnvironmentError:
    """The error of a step that failed to ``what``: the errno and the system's words for it."""
    return DaemonOSEnvironmentError(exc.errno, f"unable to {what}: {exc.strerror}")


def change_root_directory(directory: str) -> None:
    """Make ``directory`` the process's root, so the daemon cannot see files outside it.

    ``chdir`` comes first so the working directory is inside the new root: a process whose cwd
    is outside its root can walk back out with ``..``.
    """
    try:
        os.chdir(directory)
        os.chroot(directory)
    except OSError as exc:
        raise _unable(f"change root directory to {directory!r}", exc) from exc


def prevent_core_dump() -> None:
    """Set RLIMIT_CORE to zero, so a crash cannot write the daemon's memory (secrets) to disk."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        raise DaemonOSEnvironmentError(f"unable to disable core dumps: {exc}") from exc


def change_file_creation_mask(mask: int) -> None:
    """Set the umask, so files the daemon creates get the permissions it asks for."""
    os.umask(mask)


def change_working_directory(directory: str) -> None:
    """Change to ``directory``, so the daemon does not keep a filesystem busy (unmountable)."""
    try:
        os.chdir(directory)
    except OSError as exc:
        raise _unable(f"change working directory to {directory!r}", exc) from exc


def change_process_owner(uid: int, gid: int, groups: Sequence[int] | None) -> None:
    """Drop privileges: supplementary groups, then the gid, then the uid (the only safe order).

    ``groups`` is the complete supplementary list to set, ``[]`` for none; it is applied only
    when running as root (only root may set it).  The gid is set before the uid because after
    ``setuid`` an unprivileged process may no longer change its gid.  Real, effective and saved
    ids are all set, so the daemon cannot regain the old ones.

    When the process already has exactly these ids (real, effective and saved) and groups --
    the common case of a daemon that keeps its user -- nothing is changed: three reads instead
    of three writes of the credentials, on the daemon's path after the fork.
    """
    if (os.getresuid() == (uid, uid, uid) and os.getresgid() == (gid, gid, gid)
            and (groups is None or sorted(os.getgroups()) == sorted(groups))):
        return
    try:
        if groups is not None and os.geteuid() == 0:
            os.setgroups(list(groups))
        if (os.getgid(), os.getegid()) != (gid, gid) or os.geteuid() == 0:
            os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise _unable(f"change process owner to uid {uid}, gid {gid}", exc) from exc


def flush_standard_streams() -> None:
    """Flush Python's stdout/stderr, so text printed before forking is written exactly once.

    Without this, buffered output is copied into every forked process and lost with the
    redirected streams, or written twice.
    """
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def ensure_standard_fds_open() -> None:
    """Open ``/dev/null`` on any of fds 0-2 that is closed.

    A launcher started with a closed stdio fd would otherwise hand that number to the next file
    the library opens (a pipe, the pidfile), which redirecting stdio would then clobber.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd, inheritable=True)
                os.close(null)
            else:
                os.set_inheritable(fd, True)


def detach_process_context(
    launcher: Callable[[int], NoReturn], announce: Callable[[int], None] | None = None
) -> None:
    """Fork, ``setsid``, fork again: on return the caller is the daemon, in a new session.

    The first fork makes a child that is not a process-group leader, so it may call ``setsid``
    and lose the controlling terminal.  The second fork makes the daemon a non-leader of that
    session, so it can never acquire a terminal again, and orphans it so init adopts it.

    In the original process ``launcher(child_pid)`` is called and must not return: it waits for
    the daemon's start-up report.  In the intermediate child, ``announce(daemon_pid)`` is called
    right after the second fork, before it exits: the launcher learns the daemon's pid at
    once, off the daemon's own path, and while the intermediate child has not exited (it may
    wait in ``announce``) that pid is its unreaped child's, so it cannot have been reused.
    SIGHUP is blocked across the first fork and ``setsid`` so
    that a launcher that leads a pty session (``ssh -t``, ``script``) cannot kill the child
    with the hang-up sent when it exits; the daemon resets the mask later.
    """
    hup = {signal.SIGHUP}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, hup)
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise DaemonProcessDetachError(exc.errno, f"failed first fork: {exc.strerror}") from exc
    if pid > 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        launcher(pid)
    try:
        os.setsid()
        pid = os.fork()
    except OSError as exc:
        # The intermediate child cannot raise into the caller's code: the launcher is waiting
        # for a report on the pipe and sees it closed without a word.
        os.write(2, f"daemonctx: failed second fork or setsid: {exc}\n".encode())
        os._exit(1)
    if pid > 0:
        if announce is not None:
            announce(pid)
        os._exit(0)


def ignored_signals(keep: Iterable[int] = ()) -> list[int]:
    """The signals currently ignored (``SIG_IGN``), but those in ``keep`` and CPython's own.

    Computed before forking (reading dispositions is cheap there; after a fork every page the
    loop touches is copied), for :func:`reset_inherited_signal_state` to reset in the daemon.
    """
    skip = set(keep) | _PYTHON_MANAGED_SIGNALS | {signal.SIGKILL, signal.SIGSTOP}
    found: list[int] = []
    for signum in signal.valid_signals():
        if signum in skip:
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                found.append(signum)
        except (OSError, ValueError):
            continue  # real-time signals reserved by the C library
    return found


def reset_inherited_signal_state(ignored: Iterable[int]) -> None:
    """Unblock every signal and reset the ``ignored`` ones to their default action.

    A launcher (a shell, nohup, a CI runner) may have blocked or ignored signals; without this
    the daemon would silently ignore SIGTERM or SIGHUP.  ``ignored`` comes from
    :func:`ignored_signals`, which leaves out the signals the signal map sets next and the ones
    CPython manages itself (SIGPIPE, SIGXFSZ).
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for signum in ignored:
        signal.signal(signum, signal.SIG_DFL)


def highest_open_fd() -> int | None:
    """The highest open fd, so that closing them costs O(open fds); None if it cannot be known.

    Read from the listing of this process's fds (``/proc/self/fd``, or ``/dev/fd``: see
    ``daemonctx._proc.open_fds``, which trusts a listing only if it shows the fd used to read
    it -- FreeBSD's ``/dev/fd`` without fdescfs lists 0-2 whatever is open, and trusting it
    would close nothing).
    """
    fds = _proc.open_fds()
    return None if fds is None else max(fds, default=-1)  # -1: not even 0-2 are open


def close_inherited_fds(keep: Iterable[int], highest_fd: int | None = None) -> int:
    """Close every fd above 2 that is not in ``keep``, in O(open fds); the highest fd examined.

    The top of the range is the highest fd actually open, not RLIMIT_NOFILE: the limit may be
    huge (2**20 in containers), may have been lowered below an open fd, or may have changed
    since import.  ``highest_fd`` is that fd when the caller knows it (DaemonContext lists
    ``/proc/self/fd`` before the chroot and the forks); otherwise it is read here.
    ``os.closerange`` uses the ``close_range`` system call where the kernel has it.
    """
    highest = highest_fd if highest_fd is not None else highest_open_fd()
    if highest is None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(soft, hard if hard != resource.RLIM_INFINITY else soft, 1024) - 1
    low = 3
    for fd in sorted(set(keep)):
        if fd < low:
            continue
        if fd > highest:
            break
        os.closerange(low, fd)
        low = fd + 1
    if low <= highest:
        os.closerange(low, highest + 1)
    return highest


def redirect_stream(target_fd: int, stream_fd: int) -> None:
    """Point standard stream ``stream_fd`` (0, 1 or 2) at ``target_fd``.

    Done on the fd, not by rebinding ``sys.stdout``, so output from C extensions and child
    processes goes to the same place.
    """
    if target_fd != stream_fd:
        os.dup2(target_fd, stream_fd, inheritable=True)


def is_socket_fd(fd: int) -> bool:
    """True if ``fd`` is an open socket; False if it is closed or anything else."""
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def daemonctx_command_lock_fd() -> int | None:
    """The pidfile lock fd handed over by ``daemonctx start``, if this process got one.

    The command daemonizes, then execs the program with ``DAEMONCTX_PID`` (the program's pid,
    like systemd's ``LISTEN_PID``) and ``DAEMONCTX_LOCK_FD`` set.  A program that uses
    :class:`~daemonctx.DaemonContext` itself must then neither detach again (it would leave
    the lock behind) nor close that fd.
    """
    env = os.environ
    fd = env.get(_os.COMMAND_LOCK_FD_ENV, "")
    if env.get(_os.COMMAND_PID_ENV) != str(os.getpid()) or not fd.isdigit():
        return None
    return int(fd)


def detach_needed() -> bool:
    """Decide whether the process should detach, for ``detach_process=None``.

    It should not when something already supervises it in the foreground: init or systemd (ppid
    1, or ``INVOCATION_ID``/``NOTIFY_SOCKET`` set by a service manager that is our parent), a
    superserver such as inetd (stdin is a socket), or when it is pid 1 of a container (pid 1,
    or ppid 0: its parent is outside the pid namespace), or when the ``daemonctx start``
    command already made it a daemon.  Forking there would make the service
    manager lose track of the main process.
    """
    if os.getpid() == 1 or daemonctx_command_lock_fd() is not None:
        return False
    if os.getppid() in (0, 1):
        return False
    from daemonctx.systemd import started_by_service_manager

    if started_by_service_manager():
        return False
    return not is_socket_fd(0)
