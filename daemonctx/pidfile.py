"""PID files locked by the kernel: one instance, no stale locks, never the wrong pid signalled.

A :class:`PIDFile` is held with an exclusive ``flock(2)`` on the pidfile itself, for as long as
the daemon lives.  The kernel drops the lock when the last descriptor of the open file goes
away, so a daemon killed by ``SIGKILL``, the OOM killer or a power cut leaves at most an
*unlocked* file behind, which the next start simply takes over.  "Is the daemon running?" is
answered by :func:`holder_pid` from the lock, never from ``kill(pid, 0)``: a pid that was
recycled by an unrelated process is never reported as the daemon.

Here: :class:`PIDFile` and python-daemon's :class:`TimeoutPIDLockFile`, their exceptions
(``PIDFile*Error``), :func:`holder_pid`, and :func:`remove_stale_pidfile` for a leftover file
nobody holds.  What ``/proc`` says about locks (``/proc/locks``, a mount's device) is read by
``daemonctx._proc``; finding and stopping a daemon through its lock is
:mod:`daemonctx.control`'s.

Guarantees
----------
* **One holder.**  Two starters can never both believe they hold the lock, including when a
  stopping daemon removes the file while a starter has it open: after locking, the starter
  checks that the file it locked is still the one at the path (same device and inode) and
  otherwise starts over on the new file.
* **Never a torn or truncated pid while locked.**  The pid is written only after the lock is
  held, as one ``pwrite`` of ``"<pid>\\n"`` at offset 0 followed by ``ftruncate`` to that length:
  a reader sees either the old first line or the new one, never an empty file (a file that did
  not exist before is empty only between its creation and that write).  A file whose lock
  someone else holds is never written to or truncated.
* **Release removes the file while still holding the lock**, then unlocks and closes it, so a
  starter cannot lock the old file and believe it owns the new one.
* **Safety against planted files.**  The file is opened with ``O_NOFOLLOW | O_CLOEXEC |
  O_NOCTTY | O_NONBLOCK``.  A symbolic link, a FIFO, a device, a socket, a directory or a
  hard-linked file at the path is refused (:class:`PIDFileUnsafeError`), checked with
  ``lstat`` before opening (so nothing unusual is even opened) and with ``fstat`` after (so a
  swap in between is caught).  A world-writable directory without the sticky bit is refused,
  because any user could replace the pidfile there; in a sticky shared directory such as
  ``/tmp``, a file owned by another (non-root) user is refused.  A new file gets exactly
  ``mode`` (default ``0644``), whatever the umask.

What ``flock`` does not cover
-----------------------------
* **NFS.**  Since Linux 2.6.12 the NFS client emulates ``flock`` with a ``fcntl`` byte-range
  lock over the whole file, held on the server.  It then conflicts with ``fcntl``/``lockf``
  locks that other programs take on the same file, and it depends on the NFS lock manager: a
  client that cannot reclaim its locks after a server reboot or a network partition loses
  them, and another client may then start a second instance.  (With the ``local_lock=flock``
  mount option the lock is local to each client and protects nothing across machines.)  Keep
  pidfiles on a local file system (``/run`` is a tmpfs).
* **Other systems.**  The BSDs and macOS implement ``flock`` natively with the same
  open-file-description semantics.  Some other systems emulate it with ``fcntl`` locks, which
  belong to the *process*, are not inherited by ``fork``, and are dropped when the process
  closes *any* descriptor of the file.  daemonctx targets Linux and the BSDs.
* **Pid namespaces.**  ``/proc/locks`` shows only locks whose owner is visible in the pid
  namespace of the ``/proc`` mount: a daemon in a parent namespace (the host, seen from a
  container sharing the directory) is not reported by :func:`holder_pid`, although its lock
  still stops a second start.
* **Advisory only.**  Programs that do not use ``flock`` (``echo > app.pid``) are not stopped;
  they are not daemons competing for the lock.

How the lock survives ``exec``
------------------------------
A ``flock`` lock belongs to the *open file description*, not to a process or a descriptor
number: every descriptor that refers to it (inherited by ``fork``, copied by ``dup``) shares
the lock, and the lock is released only when the last of them is closed (or when ``LOCK_UN``
is applied to any of them).  The descriptor is opened ``O_CLOEXEC``, so by default an
``exec`` closes it and drops the lock.  A launcher that wants the exec'd program to keep the
lock (the ``daemonctx`` command does this) makes the descriptor inheritable just before
``exec``: ``os.set_inheritable(pidfile.fileno(), True)``.  The program then holds the lock
for its whole life without knowing about it, as long as it does not close that descriptor.
The pid in the file stays right because ``exec`` keeps the pid.  Nobody removes the file
when that program exits; that is harmless, since an unlocked file is taken over by the next
start and :func:`holder_pid` reports ``None`` for it.

For the same reason a worker forked by the daemon shares the daemon's lock.
:meth:`PIDFile.release` in such a worker only closes the worker's copy of the descriptor: an
``flock(LOCK_UN)`` there would drop the daemon's lock.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import stat
import time
from collections.abc import Callable, Sequence
from types import EllipsisType, TracebackType
from typing import Any

import lockfile  # type: ignore[import-untyped]

from daemonctx import _os, _proc
from daemonctx._paths import host_path
from daemonctx._proc import flock_holders as _flock_holders
from daemonctx.errors import DaemonError, DaemonOptionError

__all__ = [
    "PIDFile",
    "PIDFileError",
    "PIDFileLockFailedError",
    "PIDFileLockedError",
    "PIDFileTimeoutError",
    "PIDFileUnsafeError",
    "TimeoutPIDLockFile",
    "holder_pid",
    "remove_stale_pidfile",
]

_OPEN_FLAGS = (
    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
# Waiting with a timeout retries a non-blocking flock with a growing pause, capped here: the
# extra delay after the holder lets go is at most this long.
_MAX_RETRY_PAUSE = 0.05
# Each start-over is caused by another process removing the file we opened; this many in a
# row means something keeps deleting it.
_MAX_START_OVERS = 1000
_PID_READ_LIMIT = 64


# --- errors ---------------------------------------------------------------------------------


class PIDFileError(DaemonError):
    """Base class of the pidfile errors.

    Attributes: ``path`` (the pidfile's absolute path), ``pid`` (the pid holding the lock,
    when that is what the error is about and it is known) and ``errno`` (the ``errno`` of the
    failed system call, if one failed).
    """

    def __init__(self, message: str, path: str, pid: int | None = None,
                 error_number: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid
        self.errno = error_number

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (str(self), self.path, self.pid, self.errno))


class PIDFileLockedError(PIDFileError, lockfile.AlreadyLocked):  # type: ignore[misc]
    """Another process holds the pidfile's lock: the daemon is already running.

    Also a :class:`lockfile.AlreadyLocked`, so code written for python-daemon keeps working.
    The message names the holder: ``pidfile /run/app.pid is held by pid 4242: already
    running``.
    """


class PIDFileTimeoutError(PIDFileError, lockfile.LockTimeout):  # type: ignore[misc]
    """The pidfile's lock was still held by another process when the wait timed out.

    Also a :class:`lockfile.LockTimeout`; ``pid`` and ``path`` as for
    :class:`PIDFileLockedError`.
    """


class PIDFileLockFailedError(PIDFileError, lockfile.LockFailed):  # type: ignore[misc]
    """The pidfile could not be opened, created, locked or written.

    Also a :class:`lockfile.LockFailed`.  ``errno`` keeps the system call's error number
    (the message drops nothing: it names the path, the reason and what to change).
    """


class PIDFileUnsafeError(PIDFileLockFailedError):
    """The pidfile's path is unsafe to use, so it was left untouched.

    Raised for a symbolic link, a non-regular or hard-linked file at the path, a file owned by
    another user in a shared directory, or a world-writable directory without the sticky bit.
    """


def _held_message(path: str, pid: int | None, what: str) -> str:
    holder = f"pid {pid}" if pid is not None else "another process (pid unknown)"
    return f"pidfile {path} is held by {holder}: {what}"


# --- PIDFile --------------------------------------------------------------------------------


class PIDFile:
    """An exclusive, kernel-held lock on a pidfile that contains the holder's pid.

    ``PIDFile(path)`` does nothing until :meth:`acquire` (or ``with``): it then opens or
    creates ``path`` (mode ``mode``, whatever the umask), takes an exclusive ``flock`` on it
    and writes ``"<pid>\\n"``.  The lock lasts until :meth:`release` or until the process (and
    every process that inherited the descriptor) is gone; the kernel releases it even after
    ``SIGKILL``, so a leftover file never blocks a later start.  See the module documentation
    for the races this closes and the limits of ``flock``.

    ``acquire_timeout`` is the wait used by ``with`` and by :meth:`acquire` without argument:
    ``None`` waits as long as it takes, ``0`` (the default) or a negative number fails at once
    with :class:`PIDFileLockedError`, a positive number waits that many seconds and then
    fails with :class:`PIDFileTimeoutError`.

    A relative ``path`` is made absolute against the current working directory when the
    object is created, so ``PIDFile("run/app.pid")`` means the same file in the program that
    creates it, in its daemon (whose working directory is ``/``) and for the ``daemonctx``
    command run from the same directory.  (python-daemon resolves it in the daemon, after the
    change of directory: usually ``/run/app.pid`` for ``run/app.pid``.)  With
    :class:`~daemonctx.DaemonContext`'s ``chroot_directory``, give the path as the daemon sees
    it inside the new root.  One object holds one lock; it is not meant to be shared between
    threads.

    The lock is held on a read-only descriptor (:meth:`fileno`); the pid is written through a
    second one, closed right after.  So a daemon that took its pidfile as root and then dropped
    privileges (as :class:`~daemonctx.DaemonContext` does with ``uid=``) cannot rewrite that
    root-owned file.
    """

    def __init__(self, path: str | os.PathLike[str], *, acquire_timeout: float | None = 0,
                 mode: int = 0o644) -> None:
        given = _text_path(path)
        #: The pidfile's absolute path (a relative one is resolved when the object is created).
        self.path: str = os.path.abspath(given)
        self.given_relative: bool = not os.path.isabs(given)
        self.acquire_timeout: float | None = _checked_timeout("acquire_timeout", acquire_timeout)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise DaemonOptionError(
                f"PIDFile mode must be permission bits such as 0o644, not {mode!r}"
            )
        self.mode: int = mode
        self._fd: int | None = None  # read-only, holds the lock
        self._owner_pid: int | None = None
        self._locked_path: str = ""  # absolute, as resolved when acquiring

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path!r}, "
                f"acquire_timeout={self.acquire_timeout!r}, mode={self.mode:#o})")

    # --- lockfile-style API -----------------------------------------------------------------

    def acquire(self, timeout: float | EllipsisType | None = ...) -> None:
        """Take the lock and write this process's pid into the file.

        ``timeout`` defaults to ``acquire_timeout``; ``None`` waits until the holder lets go,
        ``0`` or less fails at once, more waits that many seconds.  Raises
        :class:`PIDFileLockedError` (held, no waiting), :class:`PIDFileTimeoutError` (still
        held after waiting), :class:`PIDFileUnsafeError` (refused path) or
        :class:`PIDFileLockFailedError` (cannot open, create, lock or write), each naming the
        path, and the holder's pid when another process holds the lock.  Acquiring a lock this
        object already holds raises :class:`PIDFileLockedError` naming this process.

        Waiting forever uses a blocking ``flock``: the kernel wakes the waiter when the lock is
        released, at no cost meanwhile.  A bounded wait retries a non-blocking ``flock`` with a
        pause that grows from 1 ms to 50 ms: a blocking ``flock`` cannot be given a deadline
        without a timer signal (``SIGALRM`` is process-wide, may be the application's own,
        and only interrupts the main thread), nor cancelled from a helper thread.
        """
        wait = self.lock_wait if timeout is ... else _checked_timeout("timeout", timeout)
        self._forget_inherited_lock()
        path = self.path
        if self._fd is not None:
            raise PIDFileLockedError(
                _held_message(path, os.getpid(), "already held by this PIDFile object"),
                path, os.getpid())
        deadline = None if wait is None else time.monotonic() + max(wait, 0.0)
        for _ in range(_MAX_START_OVERS):
            # Numbered above every fd DaemonContext closed behind the back of Python objects
            # made before open(): collecting one of those must never close the lock.
            writer = _os.above_closed_fds(_open_for_locking(path, self.mode))
            fd: int | None = None
            try:
                fd = _os.above_closed_fds(_read_only_twin(writer, path))
                if not _lock(fd, path, deadline):
                    raise _held_error(path, wait)
                st = os.fstat(fd)
                if not _is_file_at(path, st):
                    # A stopping daemon removed the file after we opened it: the lock we got
                    # is on a file nobody will look at any more.  Start over on the new one.
                    _close_quietly(fd)
                    _close_quietly(writer)
                    continue
                try:
                    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != self.mode:
                        os.fchmod(writer, self.mode)
                    _claim_locked_file(writer, path)
                except BaseException:
                    # The lock is ours, so is the file: remove it rather than leave an empty
                    # or stale pidfile behind (a full disk, say) for `status` to misread.
                    _remove_if_at(path, st)
                    raise
            except BaseException:
                if fd is not None:
                    _close_quietly(fd)
                _close_quietly(writer)
                raise
            # Only the read-only descriptor stays: a daemon that took its pidfile as root and
            # then dropped privileges cannot rewrite root's file (systemd trusts a root-owned
            # PIDFile= to name the service's main process).
            _close_quietly(writer)
            self._fd = fd
            self._owner_pid = os.getpid()
            self._locked_path = path
            return
        raise PIDFileLockFailedError(
            f"pidfile {path} was removed {_MAX_START_OVERS} times while this process was "
            f"locking it: another program keeps deleting it; stop that program",
            path)

    def release(self) -> None:
        """Give up the lock; in the process that acquired it, also remove the file.

        In the acquiring process: remove the file (only if it is still the locked file: one
        put there since by someone else is left alone), then unlock, then close.  Removing
        first means no starter can lock the old file and believe it holds the pidfile.  A
        removal that fails (the directory is not writable by the daemon's user, e.g. root's
        ``/run`` after a privilege drop) is ignored: the file is unlocked, so the next start
        takes it over and :func:`holder_pid` reports ``None``; ``daemonctx stop`` and
        systemd (``PIDFile=``) remove such a leftover.

        In any other process (a worker forked by the daemon, which inherited the descriptor):
        only close this process's copy of the descriptor.  The lock belongs to the open file
        description shared with the daemon, which keeps holding it, and the file stays.

        Does nothing if the lock is not held (so it is safe in ``finally`` and ``atexit``).
        """
        fd = self._fd
        if fd is None:
            return
        owner = self._owner_pid
        self._fd = None
        self._owner_pid = None
        if owner != os.getpid():
            _close_quietly(fd)
            return
        try:
            if _is_file_at(self._locked_path, os.fstat(fd)):
                os.unlink(self._locked_path)
        except OSError:
            pass  # an unlocked leftover file is harmless (see the docstring)
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass  # closing below releases it anyway
            _close_quietly(fd)

    def is_locked(self) -> bool:
        """True if some process holds the lock of the file at ``path`` (this one included).

        Answered from the lock (see :func:`holder_pid`), not from the file's existence or its
        contents: a leftover file naming a dead or recycled pid is not locked.
        """
        return self.i_am_locking() or holder_pid(self.path) is not None

    def i_am_locking(self) -> bool:
        """True if this process acquired the lock and the locked file is still at ``path``.

        False in a forked worker (which shares the daemon's lock but did not acquire it) and
        after someone removed or replaced the file the lock is on.
        """
        if self._fd is None or self._owner_pid != os.getpid():
            return False
        try:
            return _is_file_at(self._locked_path, os.fstat(self._fd))
        except OSError:
            return False

    def read_pid(self) -> int | None:
        """The pid written in the file, or ``None`` if it is missing, unreadable or not a pid.

        This is what the file says, not who holds the lock; use :func:`holder_pid` to find a
        running daemon.
        """
        return _read_pid_file(self.path)

    def break_lock(self) -> None:
        """Remove a leftover pidfile whose lock nobody holds (for lockfile compatibility).

        A held lock cannot be broken, and removing its file would let a second instance start,
        so a lock held by another process raises :class:`PIDFileLockedError`.  If this process
        holds the lock, this is :meth:`release`.
        """
        if self.i_am_locking():
            self.release()
            return
        probe = PIDFile(self.path, acquire_timeout=0, mode=self.mode)
        probe.acquire()
        probe.release()

    def fileno(self) -> int:
        """The descriptor that holds the lock (``O_CLOEXEC``).

        For a launcher that ``exec``\\s the daemon's program and wants it to keep the lock:
        ``os.set_inheritable(pidfile.fileno(), True)`` right before ``exec`` (the module
        documentation explains why the lock then survives).  Raises :class:`PIDFileError` if
        this object does not hold the lock.
        """
        if self._fd is None:
            raise PIDFileError(
                f"pidfile {self.path} is not locked by this PIDFile object: call acquire() "
                f"first", self.path)
        return self._fd

    def preflight(self, *, uid: int, gid: int, groups: Sequence[int], root: str | None,
                  cwd: str = "/", wait: float | EllipsisType | None = ...,
                  ignore_holder: bool = False) -> None:
        """Check, before forking, that this pidfile can be taken; change nothing.

        ``uid``/``gid``/``groups`` is who will open the file: with
        :class:`~daemonctx.DaemonContext`, whoever calls ``open()``, since the daemon takes the
        pidfile before it drops privileges.
        ``root`` is the chroot directory, inside which the (absolute) path is seen; ``cwd`` is
        accepted for compatibility and unused (the path is absolute).  Raises
        :class:`PIDFileLockFailedError` if the directory is missing, or if it (or an existing
        file) is not writable by that identity (judged from the permission bits; uid 0 may
        write anywhere, ACLs are not consulted), or if the file system is read-only;
        :class:`PIDFileUnsafeError` for a path :meth:`acquire` would refuse;
        :class:`~daemonctx.DaemonOptionError` for a path given relative (resolved against the
        caller's directory) together with ``root``; and :class:`PIDFileLockedError` naming the
        holder's pid if the lock is held (answered by :func:`holder_pid`, without taking the
        lock).

        A held lock is waited for as :meth:`acquire` would: ``wait`` seconds (default: this
        object's own timeout, see :attr:`lock_wait`), then :class:`PIDFileTimeoutError` names
        the holder.  ``ignore_holder=True`` skips the lock (a restart checks before it stops
        the holder).

        Symbolic links among the directories inside a chroot are followed from the host's
        root, not the chroot's, by this check; :meth:`acquire` is exact.
        """
        if root is not None and self.given_relative:
            raise DaemonOptionError(
                f"pidfile path was given relative, so it was resolved against the current "
                f"directory to {self.path}; with chroot_directory {root!r} give the path as the "
                f"daemon sees it inside the new root (e.g. '/run/app.pid')")
        path = host_path(root, self.path)
        directory = os.path.dirname(path)
        dir_st = _stat_directory(path, directory)
        _check_directory(path, directory, dir_st)
        if uid != 0:
            _check_search_permission(path, directory, root, uid, gid, groups)
            if not _os.permits(dir_st, uid, gid, groups, 0o3):
                raise PIDFileLockFailedError(
                    f"pidfile {path} cannot be created: directory {directory} (owner uid "
                    f"{dir_st.st_uid}, gid {dir_st.st_gid}, mode "
                    f"{stat.S_IMODE(dir_st.st_mode):04o}) is not writable by uid {uid} gid "
                    f"{gid}; start the daemon as a user who may write there (root may, and "
                    f"keeps the lock across a privilege drop), or use a directory that user "
                    f"can write (e.g. /run/<name>/ owned by it)",
                    path, None, errno.EACCES)
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            raise PIDFileLockFailedError(
                f"pidfile {path} cannot be created: {directory} is on a read-only file system",
                path, None, errno.EROFS)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            _check_file(path, st, dir_st, uid)
            if uid != 0 and not _os.permits(st, uid, gid, groups, 0o2):
                raise PIDFileLockFailedError(
                    f"pidfile {path} (owner uid {st.st_uid}, mode "
                    f"{stat.S_IMODE(st.st_mode):04o}) is not writable by uid {uid} gid {gid}; "
                    f"remove it or give it to the daemon's user",
                    path, None, errno.EACCES)
        if not ignore_holder:
            self._wait_until_released(path, self.lock_wait if wait is ... else wait)

    @property
    def lock_wait(self) -> float | None:
        """How long :meth:`acquire` without argument waits for a held lock (None: forever)."""
        return self.acquire_timeout

    def _wait_until_released(self, path: str, wait: float | None) -> None:
        """Poll until no process holds the lock or ``wait`` s passed; raise if one still does.

        The lock of the file at ``path`` (:func:`holder_pid`), or that of a file that was at
        ``path`` and was removed by hand while its daemon ran: that daemon still runs, and a
        new file would lock, so two would (``daemonctx._proc.removed_pidfile_writer``: a
        read of ``/proc/locks`` and the lockers' descriptors, well under a millisecond).

        Polled, not locked: taking the lock, even briefly, in the launching process could make
        a concurrent start fail.  The pause grows from 1 ms to 50 ms, like :meth:`acquire`'s.
        """
        deadline = None if wait is None else time.monotonic() + max(wait, 0.0)
        pause = 0.001
        while True:
            removed = None
            if holder_pid(path) is None:
                removed = _proc.removed_pidfile_writer(path)
                if removed is None:
                    return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if removed is None:
                    raise _held_error(path, wait)
                what = (f"already running, although the file was removed (the daemon still "
                        f"holds the lock of the removed file); stop it first ('daemonctx stop "
                        f"--pidfile {path}' finds it)")
                if wait is not None and wait > 0:
                    raise PIDFileTimeoutError(_held_message(
                        path, removed, f"still locked after waiting {wait:g} s: {what}"),
                        path, removed)
                raise PIDFileLockedError(_held_message(path, removed, what), path, removed)
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, _MAX_RETRY_PAUSE)

    # --- context manager --------------------------------------------------------------------

    def __enter__(self) -> PIDFile:
        """Acquire with ``acquire_timeout``; the daemon's pid is what ends up in the file."""
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Release (see :meth:`release`); never suppresses an exception."""
        self.release()

    # --- internals --------------------------------------------------------------------------

    def _forget_inherited_lock(self) -> None:
        # Acquiring in a process forked after the parent acquired: the descriptor copy shares
        # the parent's lock, so it must not be used, only closed.
        if self._fd is not None and self._owner_pid != os.getpid():
            self.release()


class TimeoutPIDLockFile(PIDFile):
    """python-daemon's ``daemon.pidfile.TimeoutPIDLockFile``, built on :class:`PIDFile`.

    Same signature and timeout semantics: ``acquire_timeout`` is used when :meth:`acquire`
    gets no timeout; ``None``, ``0`` or a negative value fails at once with an
    ``AlreadyLocked`` (:class:`PIDFileLockedError`), a positive value waits that long and then
    raises a ``LockTimeout`` (:class:`PIDFileTimeoutError`).  The remaining arguments are
    lockfile's ``PIDLockFile(path, threaded=False, timeout=None)``: ``threaded`` is ignored (as
    there) and ``timeout`` is the fallback when ``acquire_timeout`` is ``None``.

    Unlike python-daemon's, the lock is a kernel lock: a pidfile left by a dead daemon does
    not block the next start, and :meth:`~PIDFile.release` of an unheld lock does nothing
    instead of raising ``NotLocked``.
    """

    def __init__(self, path: str | os.PathLike[str], acquire_timeout: float | None = None,
                 *args: Any, **kwargs: Any) -> None:
        lock_args = _lockbase_arguments(args, kwargs)
        super().__init__(path, acquire_timeout=0)
        self.acquire_timeout = _checked_timeout("acquire_timeout", acquire_timeout)
        self.timeout: float | None = _checked_timeout("timeout", lock_args)

    def acquire(self, timeout: float | EllipsisType | None = None, *args: Any,
                **kwargs: Any) -> None:
        """Take the lock as python-daemon does (see the class documentation)."""
        wait = None if timeout is ... else _checked_timeout("timeout", timeout)
        super().acquire(self.lock_wait if wait is None else max(wait, 0.0))

    @property
    def lock_wait(self) -> float:
        """``acquire_timeout``, else lockfile's ``timeout``; 0 (no wait) when neither is > 0."""
        wait = self.acquire_timeout if self.acquire_timeout is not None else self.timeout
        return 0.0 if wait is None or wait <= 0 else wait


# --- removing a leftover ------------------------------------------------------------------


def remove_stale_pidfile(path: str) -> bool:
    """Remove the pidfile at ``path`` if nobody holds its lock; True if it was removed.

    The file is locked for the removal (``flock`` on a read-only descriptor, then a check that
    it is still the file at ``path``), so a file a daemon holds is never removed, and a starter
    that opened the old file notices it was removed and starts over on a new one.  Unlike
    :meth:`~daemonctx.pidfile.PIDFile.break_lock` this never writes to the file, so it also
    removes a file owned by the daemon's (other) user.  Failures (not permitted, a read-only
    directory) leave the file: an unlocked pidfile is harmless, the next start takes it over.
    """
    opened = _open_regular_for_reading(path)
    if opened is None:
        return False
    fd, st = opened
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _is_file_at(path, st):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases our lock



# --- holder_pid -----------------------------------------------------------------------------


def holder_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the process holding the ``flock`` of the pidfile at ``path``, or ``None``.

    Answered from the lock itself, never from ``kill(pid, 0)`` and never by taking the lock
    on Linux: ``None`` for a missing file, a non-regular file or symbolic link (which no
    :class:`PIDFile` locks), and for a file nobody has locked, *even if the pid it names is
    alive* (a recycled pid is not the daemon).

    On Linux the answer comes from ``/proc/locks``, whose lines read ``1: FLOCK  ADVISORY
    WRITE 4242 fe:00:2146607 0 EOF`` (hex major:minor of the file system, then the inode);
    waiting processes (``->`` lines) are skipped.  A line matches on the file's inode and on
    its device, taken from ``stat`` or, when that differs from the kernel's (btrfs subvolumes
    report a per-subvolume device), from ``/proc/self/mountinfo`` for the file's mount.  If
    neither device matches, a lock on the same inode number is accepted only when the file
    also names that pid, so a lock on another file system's inode is never taken for ours.
    The pid is the process that called ``flock``: if it exited while a process it forked
    still holds the descriptor, that (stale) pid is reported.  See the module documentation
    for pid namespaces.  (``/proc`` is read by ``daemonctx._proc``.)

    Where ``/proc/locks`` is not available (other systems, a chroot without ``/proc``), a
    non-blocking shared ``flock`` probe tells whether the lock is held (it is held for
    microseconds, and can make a concurrent ``acquire(timeout=0)`` fail), and the pid comes
    from the file, which the holder wrote after locking.

    Raises :class:`PIDFileLockFailedError` if the path cannot be examined (e.g. a directory
    on it is not searchable).
    """
    text = _text_path(path)
    try:
        st = os.lstat(text)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PIDFileLockFailedError(
            f"cannot examine pidfile {text}: {exc.strerror}", text, None, exc.errno) from exc
    if not stat.S_ISREG(st.st_mode):
        return None
    table = _proc.read_locks()
    if table is None:
        return _holder_pid_by_probe(text)
    by_device = _flock_holders(table, st.st_ino)
    if not by_device:
        return None
    if st.st_dev in by_device:
        return by_device[st.st_dev][0]
    return _holder_on_other_device(text, st, by_device)


def _holder_on_other_device(path: str, st: os.stat_result,
                            by_device: dict[int, list[int]]) -> int | None:
    """Match a lock whose device is not ``st_dev``: by the mount's device, else by content."""
    opened = _open_regular_for_reading(path)
    if opened is None:
        return None
    fd, now = opened
    try:
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None  # replaced meanwhile: the lock we saw was on the old file
        pids = by_device.get(_proc.mount_device(fd) or -1)
        if pids:
            return pids[0]
        named = _pid_at(fd)
    finally:
        os.close(fd)
    same_inode = {pid for pids in by_device.values() for pid in pids}
    return named if named in same_inode else None


def _holder_pid_by_probe(path: str) -> int | None:
    """Fallback without /proc/locks: a non-blocking shared flock tells whether it is held."""
    return _using_regular_file(path, _probed_holder)


def _probed_holder(fd: int) -> int | None:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_at(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None


# --- helpers --------------------------------------------------------------------------------


def _text_path(path: object) -> str:
    if isinstance(path, (str, os.PathLike)):
        text = os.fspath(path)
        if isinstance(text, str) and text and "\0" not in text:
            return text
    raise DaemonOptionError(f"pidfile path must be a non-empty text path, not {path!r}")


def _checked_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DaemonOptionError(
            f"pidfile {name} must be a number of seconds or None, not {value!r}")
    return float(value)


def _lockbase_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    """lockfile's PIDLockFile(path, threaded=False, timeout=None): return ``timeout``."""
    names = ("threaded", "timeout")
    if len(args) > len(names) or set(kwargs) - set(names):
        raise DaemonOptionError(
            f"TimeoutPIDLockFile takes (path, acquire_timeout=None, threaded=False, "
            f"timeout=None), not extra arguments {args!r} {kwargs!r}")
    values = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in values:
            raise DaemonOptionError(f"TimeoutPIDLockFile got {key!r} twice")
        values[key] = value
    return values.get("timeout")


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _is_file_at(path: str, st: os.stat_result) -> bool:
    """True if ``path`` names the very file ``st`` describes (not a replacement)."""
    try:
        now = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _remove_if_at(path: str, st: os.stat_result) -> None:
    """Remove ``path`` if it still names the file ``st`` describes; errors are ignored."""
    try:
        if _is_file_at(path, st):
            os.unlink(path)
    except OSError:
        pass


def _parse_pid(data: bytes) -> int | None:
    first = data.split(b"\n", 1)[0].strip()
    if not first.isdigit() or len(first) > 10:
        return None
    pid = int(first)
    return pid if pid > 0 else None


def _pid_at(fd: int) -> int | None:
    """The pid the pidfile open as ``fd`` names; raises :class:`OSError` if unreadable."""
    return _parse_pid(os.pread(fd, _PID_READ_LIMIT, 0))


def _open_regular_for_reading(path: str) -> tuple[int, os.stat_result] | None:
    """An fd on ``path`` and its ``fstat`` if it is a regular file (never following a link)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return fd, st
    except OSError:
        pass
    os.close(fd)
    return None


def _using_regular_file(path: str, use: Callable[[int], int | None]) -> int | None:
    """``use(fd)`` on the regular file at ``path``, closed after; None if there is none."""
    opened = _open_regular_for_reading(path)
    if opened is None:
        return None
    try:
        return use(opened[0])
    finally:
        os.close(opened[0])


def _read_pid_file(path: str) -> int | None:
    return _using_regular_file(path, _pid_at_or_none)


def _pid_at_or_none(fd: int) -> int | None:
    try:
        return _pid_at(fd)
    except OSError:
        return None


def file_kind(mode: int) -> str:
    """``"directory"``, ``"FIFO"``, ``"symbolic link"``... for ``st_mode`` (for messages)."""
    kinds = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
             (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _shared_directory(dir_st: os.stat_result) -> bool:
    return bool(dir_st.st_mode & stat.S_IWOTH)


def _stat_directory(path: str, directory: str) -> os.stat_result:
    try:
        dir_st = os.stat(directory)
    except OSError as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise PIDFileLockFailedError(
            f"pidfile {path} cannot be created: directory {directory} {reason}; create it "
            f"before starting the daemon (e.g. systemd's RuntimeDirectory=, or mkdir -p)",
            path, None, exc.errno) from exc
    if not stat.S_ISDIR(dir_st.st_mode):
        raise PIDFileLockFailedError(
            f"pidfile {path} cannot be created: {directory} is not a directory",
            path, None, errno.ENOTDIR)
    return dir_st


def _check_directory(path: str, directory: str, dir_st: os.stat_result) -> None:
    if _shared_directory(dir_st) and not dir_st.st_mode & stat.S_ISVTX:
        raise PIDFileUnsafeError(
            f"pidfile {path} is refused: its directory {directory} is world-writable "
            f"without the sticky bit, so any user could replace the pidfile; use a directory "
            f"only the daemon's user can write (e.g. /run/<name>/), or chmod +t {directory}",
            path)


def _check_file(path: str, st: os.stat_result, dir_st: os.stat_result, uid: int) -> None:
    """Refuse what must never be opened or written as a pidfile (see the module docs)."""
    if not stat.S_ISREG(st.st_mode):
        raise PIDFileUnsafeError(
            f"pidfile {path} is refused: it is a {file_kind(st.st_mode)}, not a regular file; "
            f"remove it or choose another path", path)
    if st.st_nlink > 1:
        raise PIDFileUnsafeError(
            f"pidfile {path} is refused: it has {st.st_nlink} hard links, so writing it would "
            f"change another file too; remove it or choose another path", path)
    if st.st_uid not in (uid, 0) and (
        _shared_directory(dir_st) or st.st_mode & stat.S_IWOTH
    ):
        raise PIDFileUnsafeError(
            f"pidfile {path} is refused: it belongs to uid {st.st_uid}, who could rewrite it "
            f"(it is in a shared directory or world-writable); remove it or choose a "
            f"directory only the daemon's user can write", path)


def _open_for_locking(path: str, mode: int) -> int:
    """Open (creating if needed) the pidfile for locking, refusing anything unsafe."""
    directory = os.path.dirname(path)
    dir_st = _stat_directory(path, directory)
    _check_directory(path, directory, dir_st)
    uid = os.geteuid()
    try:
        existing: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise _open_error(path, directory, exc) from exc
    if existing is not None:
        _check_file(path, existing, dir_st, uid)
    try:
        fd = os.open(path, _OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            # Linux's protected_symlinks / protected_regular answer EACCES, even to root, for
            # a link or another user's file planted in a sticky directory since the lstat:
            # name the real reason, not a permission problem.
            try:
                _check_file(path, os.lstat(path), dir_st, uid)
            except FileNotFoundError:
                pass
        raise _open_error(path, directory, exc) from exc
    try:
        _check_file(path, os.fstat(fd), dir_st, uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_error(path: str, directory: str, exc: OSError) -> PIDFileLockFailedError:
    number = exc.errno
    if number == errno.ELOOP:
        return PIDFileUnsafeError(
            f"pidfile {path} is refused: it is a symbolic link, which is never followed; "
            f"remove it or choose another path", path, None, number)
    if number in (errno.EACCES, errno.EPERM):
        return PIDFileLockFailedError(
            f"cannot open pidfile {path}: permission denied for uid {os.geteuid()}; the "
            f"directory {directory} (or the existing file) must be writable by the daemon's "
            f"user", path, None, number)
    if number == errno.EROFS:
        return PIDFileLockFailedError(
            f"cannot create pidfile {path}: {directory} is on a read-only file system",
            path, None, number)
    return PIDFileLockFailedError(
        f"cannot open pidfile {path}: {exc.strerror}", path, None, number)


def _lock(fd: int, path: str, deadline: float | None) -> bool:
    """Take ``LOCK_EX`` on ``fd`` by ``deadline`` (None: however long it takes).

    False if another process still held it at the deadline.
    """
    try:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _MAX_RETRY_PAUSE)
    except OSError as exc:
        hint = " (NFS without a lock manager?)" if exc.errno == errno.ENOLCK else ""
        raise PIDFileLockFailedError(
            f"cannot lock pidfile {path}: {exc.strerror}{hint}", path, None, exc.errno
        ) from exc


def _held_error(path: str, wait: float | None) -> PIDFileError:
    pid = holder_pid(path)
    if pid is None:
        pid = _read_pid_file(path)  # the lock is held but its owner is not visible here
    if wait is not None and wait > 0:
        return PIDFileTimeoutError(
            _held_message(path, pid, f"still locked after waiting {wait:g} s"), path, pid)
    return PIDFileLockedError(_held_message(path, pid, "already running"), path, pid)


def _claim_locked_file(writer: int, path: str) -> None:
    """Now that the file is locked: write ``"<pid>\\n"`` through ``writer``, never torn."""
    data = f"{os.getpid()}\n".encode("ascii")
    try:
        if os.pwrite(writer, data, 0) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.ftruncate(writer, len(data))
    except OSError as exc:
        raise PIDFileLockFailedError(
            f"cannot write pidfile {path}: {exc.strerror}", path, None, exc.errno) from exc


def _read_only_twin(writer: int, path: str) -> int:
    """A read-only descriptor on the file ``writer`` is open on, to hold the lock.

    Opened by path and checked to be the same file; where the file cannot be read (a ``mode``
    without read permission) or was swapped meanwhile, a duplicate of ``writer`` instead.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return os.dup(writer)
    try:
        same = (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (
            os.fstat(writer).st_ino, os.fstat(writer).st_dev)
    except OSError:
        same = False
    if same:
        return fd
    os.close(fd)
    return os.dup(writer)


def _check_search_permission(path: str, directory: str, root: str | None, uid: int, gid: int,
                             groups: Sequence[int]) -> None:
    top = os.path.abspath(root) if root is not None else "/"
    ancestors: list[str] = []
    current = directory
    while current != top and os.path.dirname(current) != current:
        current = os.path.dirname(current)
        ancestors.append(current)
    for ancestor in reversed(ancestors):
        st = os.stat(ancestor)
        if not _os.permits(st, uid, gid, groups, 0o1):
            raise PIDFileLockFailedError(
                f"pidfile {path} cannot be reached: directory {ancestor} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}) is not searchable by "
                f"uid {uid} gid {gid}", path, None, errno.EACCES)
