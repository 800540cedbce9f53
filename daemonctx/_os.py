"""One home for each operating-system primitive daemonctx needs beyond :mod:`os`.

* ``prctl`` through :mod:`ctypes` (loaded on first use: :func:`load_prctl`,
  :func:`prctl_loaded`): the parent-death signal of workers (:func:`set_parent_death_signal`)
  and the child-subreaper bit of a launcher (:func:`set_child_subreaper`).
* **Descriptors above the past.**  :class:`~daemonctx.DaemonContext` closes every inherited
  descriptor behind the back of the Python objects that own them (a socket, a file created
  before ``open()``): those objects still believe they own their numbers, and when one of them
  is collected it closes whatever that number holds by then.  :func:`record_closed_fds`
  remembers the highest number closed that way (:func:`closed_fds_ceiling`), and
  :func:`above_closed_fds` moves a descriptor daemonctx keeps (the pidfile's lock, the start-up
  pipe, the supervisor's pipes, notification sockets) above it, so no stale object can ever
  close it.
* **Signal names**, both ways: :func:`signal_name` (``SIGTERM``) and :func:`short_signal_name`
  (``TERM``, as the command writes them) from a number; :func:`signal_number` and
  :func:`parse_signal` (which raises :class:`~daemonctx.DaemonOptionError`) from a name or a
  number.  ``daemonctx.control`` re-exports the two the command's users know.
* **Wait-status text**: :func:`describe_wait_status` (``exited with status 3``, ``was killed
  by signal 9 (SIGKILL)``), the words every message about an exited process uses.
* Writing a whole buffer (:func:`write_all`); text another process chose made safe to show on
  a terminal (:func:`printable`).
* **Files and permissions** as the kernel judges them: :func:`permits` (mode bits for a user),
  :func:`walk_path` (a path resolved name by name, :class:`PathWalk` of :class:`Lookup`),
  :func:`only_root_can_change`, :func:`script_interpreter` (a ``#!`` line; with
  :data:`MAX_SYMLINKS` and :data:`MAX_SCRIPT_DEPTH`, the kernel's limits),
  :func:`open_as_user` (opened with another user's rights) and :func:`unlink_if_same` (remove
  a name only if it still links the same file).
* **Telling the service manager, if there is one**: :func:`notify_service_manager` and
  :func:`preload_service_manager` (the protocol itself is :mod:`daemonctx.systemd`'s), and
  the names of the variables ``daemonctx start`` passes to its program
  (:data:`COMMAND_PID_ENV`, :data:`COMMAND_LOCK_FD_ENV`).

Reading ``/proc`` is ``daemonctx._proc``'s.  Nothing here imports anything heavier than
:mod:`os` and :mod:`fcntl` until a function needs it.
"""

from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from typing import NoReturn

__all__ = [
    "COMMAND_LOCK_FD_ENV",
    "COMMAND_PID_ENV",
    "MAX_SCRIPT_DEPTH",
    "MAX_SYMLINKS",
    "Lookup",
    "PathWalk",
    "above_closed_fds",
    "closed_fds_ceiling",
    "describe_wait_status",
    "load_prctl",
    "notify_service_manager",
    "only_root_can_change",
    "open_as_user",
    "parse_signal",
    "permits",
    "prctl",
    "prctl_loaded",
    "preload_service_manager",
    "printable",
    "record_closed_fds",
    "script_interpreter",
    "set_child_subreaper",
    "set_parent_death_signal",
    "short_signal_name",
    "signal_name",
    "signal_number",
    "unlink_if_same",
    "walk_path",
    "write_all",
]

#: What ``daemonctx start`` passes to the program it runs, beside the lock's descriptor: the
#: program's pid (as systemd's ``LISTEN_PID``: a child that inherits the variables is not it) and
#: the number of the descriptor that holds the pidfile's lock.
COMMAND_PID_ENV = "DAEMONCTX_PID"
COMMAND_LOCK_FD_ENV = "DAEMONCTX_LOCK_FD"

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# The highest descriptor number DaemonContext closed behind live objects in this process (-1:
# none).  Inherited by fork, as are the stale objects it describes.
_closed_ceiling = -1
_prctl: Callable[[int, int], int] | None = None


def record_closed_fds(highest: int) -> None:
    """Remember that every fd up to ``highest`` may still be owned by a stale Python object."""
    global _closed_ceiling
    _closed_ceiling = max(_closed_ceiling, highest)


def closed_fds_ceiling() -> int:
    """The highest fd closed behind live objects in this process, or -1 if none was."""
    return _closed_ceiling


def above_closed_fds(fd: int) -> int:
    """Return ``fd``, moved above every number closed behind live objects; closes the original.

    The copy is close-on-exec (``F_DUPFD_CLOEXEC``).  Nothing moves when nothing was closed that
    way, or when ``fd`` is already above; if the system refuses a higher number (the soft
    ``RLIMIT_NOFILE`` is below it), ``fd`` stays where it is.
    """
    floor = _closed_ceiling
    if floor < 0 or fd > floor:
        return fd
    try:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor + 1)
    except OSError:
        return fd
    os.close(fd)
    return moved


def prctl(option: int, argument: int) -> None:
    """``prctl(option, argument, 0, 0, 0)``; raises :class:`OSError` if the kernel refuses."""
    error = load_prctl()(option, argument)
    if error:
        raise OSError(error, f"prctl({option}, {argument}): {os.strerror(error)}")


def prctl_loaded() -> bool:
    """True if ``prctl`` is loaded already, so that calling it costs no import."""
    return _prctl is not None


def load_prctl() -> Callable[[int, int], int]:
    """Load ``prctl`` through :mod:`ctypes` now (before a chroot, a privilege drop or a fork).

    Returns the call, which answers 0 or the errno; raises :class:`OSError` or
    :class:`AttributeError` where the C library has no ``prctl``.
    """
    global _prctl
    if _prctl is None:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).prctl
        function.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                             ctypes.c_ulong]
        function.restype = ctypes.c_int
        get_errno = ctypes.get_errno

        def call(option: int, argument: int) -> int:
            if function(option, argument, 0, 0, 0) == 0:
                return 0
            return get_errno() or 1

        _prctl = call
    return _prctl


def set_child_subreaper(enable: bool) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False if refused.

    A launcher sets it while it waits for a daemon it forked: the double fork orphans the daemon,
    which is then re-parented to the launcher instead of init, so the launcher can learn its exit
    status and stop whatever it left behind -- processes that are its children, whose pids
    cannot be reused while they are unreaped.
    """
    try:
        prctl(PR_SET_CHILD_SUBREAPER, int(enable))
    except (OSError, AttributeError, ImportError):  # ImportError: in a chroot, say
        return False
    return True


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent thread exits."""
    prctl(PR_SET_PDEATHSIG, signum)


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e``...).

    For text another process chose (a daemon's error message, a ``STATUS=`` line, a command
    line) that is shown on a terminal: a daemon running as another user must not send escape
    sequences, or reorder what root reads with bidirectional controls.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15; ``"signal 42"`` for a number without a name."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def short_signal_name(number: int) -> str:
    """``15`` -> ``"TERM"``: the short name used in messages and schedules (``"42"`` for a
    number without a name)."""
    name = signal_name(number)
    return name.removeprefix("SIG") if name.startswith("SIG") else str(number)


def signal_number(name: str, *, numbers: bool = True) -> int | None:
    """The signal ``name`` names -- ``TERM``, ``SIGTERM``, ``term`` and, with ``numbers``, a
    valid number such as ``15`` -- or None."""
    import signal

    upper = name.upper()
    if upper.isdigit():
        number = int(upper)
        return number if numbers and number != 0 and number in signal.valid_signals() else None
    member = getattr(signal.Signals, upper if upper.startswith("SIG") else "SIG" + upper, None)
    return None if member is None else int(member)


def parse_signal(text: str, option: str = "signal") -> int:
    """The signal number for ``text``: ``TERM``, ``SIGTERM``, ``term`` or ``15``.

    Raises :class:`~daemonctx.DaemonOptionError` naming ``option`` for anything else.
    """
    number = signal_number(text.strip())
    if number is None:
        from daemonctx.errors import DaemonOptionError

        raise DaemonOptionError(
            f"{option}: unknown signal {text!r} (use a name such as TERM, HUP, USR1 or KILL, "
            f"or a number)")
    return number


def describe_wait_status(code: int, *, verb: bool = True) -> str:
    """Words for an exit code as :func:`os.waitstatus_to_exitcode` gives it (``-N``: signal N).

    ``"exited with status 3"``, ``"was killed by signal 9 (SIGKILL)"``; without ``verb``, what
    follows "exited" in a sentence: ``"with status 3"``, ``"killed by signal 9 (SIGKILL)"``.
    """
    if code >= 0:
        how = f"with status {code}"
        return f"exited {how}" if verb else how
    how = f"killed by signal {-code} ({signal_name(-code)})"
    return f"was {how}" if verb else how


def write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to ``fd``; False if the fd is gone (EPIPE, EBADF...)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        return False
    return True


def permits(st: os.stat_result, uid: int, gid: int, groups: Sequence[int], want: int) -> bool:
    """Whether the mode bits give ``want`` (``0o4``/``0o2``/``0o1`` bits) to that user.

    Judged as the kernel does from the bits alone (ACLs are not consulted): the owner class if
    ``uid`` owns the file, else the group class if ``gid`` or one of ``groups`` is its group,
    else others.  Root may read and write anything, and execute what has any execute bit.
    """
    if uid == 0:
        return want & 0o1 == 0 or bool(st.st_mode & 0o111) or (st.st_mode & 0o170000) == 0o040000
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid or st.st_gid in groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


#: Symbolic links one path lookup follows before the kernel gives up with ``ELOOP``.
MAX_SYMLINKS = 40
#: Scripts the kernel runs in one ``execve``: a script whose ``#!`` interpreter is a script,
#: and so on, at most this many deep (Linux's ``exec_binprm``: the next one fails with
#: ``ELOOP``).  The interpreter of the last one must be a binary.
MAX_SCRIPT_DEPTH = 5
# What the kernel reads of a file to find its "#!" line (BINPRM_BUF_SIZE, Linux 5.1 and later).
_SCRIPT_HEADER_SIZE = 256


class Lookup:
    """One name looked up in one directory while a path is resolved, as the kernel does it.

    ``directory`` is the directory the name was looked up in (a path without symbolic links,
    as seen inside the walk's root), ``directory_st`` its ``lstat``, ``name`` the name and
    ``entry`` the ``lstat`` of what the name links (``None`` if there is nothing).
    """

    __slots__ = ("directory", "directory_st", "entry", "name")

    def __init__(self, directory: str, directory_st: os.stat_result, name: str,
                 entry: os.stat_result | None) -> None:
        self.directory = directory
        self.directory_st = directory_st
        self.name = name
        self.entry = entry


class PathWalk:
    """Every lookup made to resolve one path: :attr:`lookups`, in order; see :func:`walk_path`.

    ``error`` is 0 if the path names something, whose ``lstat`` is ``target`` (a file, a
    directory: never a symbolic link); else the errno the kernel would give (``ENOENT`` with
    the last lookup's ``entry`` None, ``ENOTDIR``, ``ELOOP``...) and ``target`` is None.
    """

    __slots__ = ("error", "lookups", "target")

    def __init__(self, lookups: list[Lookup], target: os.stat_result | None,
                 error: int) -> None:
        self.lookups = lookups
        self.target = target
        self.error = error


def walk_path(path: str, root: str = "/") -> PathWalk:
    """Resolve the absolute ``path`` (as seen inside ``root``) name by name, with ``lstat``.

    The walk the kernel makes, done from outside: each symbolic link met is read and its
    target resolved in its turn (an absolute one from ``root``), ``..`` goes to the parent of
    the directory reached (not of the name given), and every directory it passes through is
    in :attr:`PathWalk.lookups` with its owner and mode.  So the caller can judge who could
    change what the path names, or who could reach it, from every lookup it takes -- not only
    from where it ends (``realpath()`` forgets the links on the way and the directories they
    lie in).
    """
    import errno
    import stat

    top = os.path.abspath(root)

    def host(inside: str) -> str:
        return inside if top == "/" else top + inside

    try:
        root_st = os.lstat(top)
    except OSError as exc:
        return PathWalk([], None, exc.errno or errno.EIO)
    pending = [name for name in path.split("/") if name][::-1]  # the next name is last
    reached: list[tuple[str, os.stat_result]] = [("/", root_st)]  # directories, root first
    lookups: list[Lookup] = []
    target = root_st
    links = 0
    while pending:
        name = pending.pop()
        if name in (".", ".."):
            if name == ".." and len(reached) > 1:
                reached.pop()
            target = reached[-1][1]
            continue
        directory, directory_st = reached[-1]
        inside = os.path.join(directory, name)
        try:
            st = os.lstat(host(inside))
        except FileNotFoundError:
            lookups.append(Lookup(directory, directory_st, name, None))
            return PathWalk(lookups, None, errno.ENOENT)
        except OSError as exc:
            return PathWalk(lookups, None, exc.errno or errno.EIO)
        lookups.append(Lookup(directory, directory_st, name, st))
        if stat.S_ISLNK(st.st_mode):
            links += 1
            try:
                link = os.readlink(host(inside))
            except OSError as exc:
                return PathWalk(lookups, None, exc.errno or errno.EIO)
            if links > MAX_SYMLINKS or not link:
                return PathWalk(lookups, None, errno.ELOOP if link else errno.ENOENT)
            if link.startswith("/"):
                del reached[1:]
            pending.extend(part for part in reversed(link.split("/")) if part)
            target = reached[-1][1]
            continue
        if pending:
            if not stat.S_ISDIR(st.st_mode):
                return PathWalk(lookups, None, errno.ENOTDIR)
            reached.append((inside, st))
        target = st
    return PathWalk(lookups, target, 0)


def only_root_can_change(path: str) -> bool:
    """True if no user but root can change what ``path`` names.

    Judged on the path as given, every name on the way looked up with ``lstat`` (see
    :func:`walk_path`), through every symbolic link met and the links its target meets: each
    directory a name is looked up in must be root's and writable by no one else (group and
    others: with POSIX ACLs the group bits are the mask, so an ACL granting a user write shows
    there).  A symbolic link in such a directory can only have been made by root, and its
    target is judged the same way.  Only then may a process running as root open ``path`` for
    a less privileged daemon without opening what a local user planted there (a link to
    ``/etc/shadow`` as the file or as a directory on the way, a swapped file).  Root's own
    links, such as Debian's ``/var/run -> /run``, keep the path root's.

    A sticky directory writable by others (``/tmp``) is accepted for an entry root owns there
    (a file, a directory or a link): the sticky bit lets no one but the entry's owner and the
    directory's (root) remove, rename or replace it.  A name *missing* from such a directory is
    not root's: any user may create it -- a link to a root-only file, say -- between this check
    and root's open, and ``fs.protected_symlinks`` may be off.  So a new log file in ``/tmp``
    is created with the daemon's user's rights.  A name missing from a directory only root can
    write stays root's (root creates it).
    """
    import errno
    import stat

    walk = walk_path(os.path.abspath(path))
    for lookup in walk.lookups:
        directory = lookup.directory_st
        if directory.st_uid != 0:
            return False
        if directory.st_mode & 0o022:
            if not directory.st_mode & stat.S_ISVTX:
                return False
            if lookup.entry is None or lookup.entry.st_uid != 0:
                return False
    return walk.error in (0, errno.ENOENT)


def script_interpreter(path: str) -> str | None:
    """The interpreter a ``#!`` script at ``path`` names, as the kernel reads it; None if the
    file is no script (or cannot be read).

    The first word of the first line after ``#!`` (blanks skipped; it ends at a blank, a tab
    or the end of the line), within the 256 bytes the kernel reads: ``""`` when there is none
    (``execve`` then fails with ``ENOEXEC``).  Relative to the working directory of the
    process that runs the script if it is not absolute.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(_SCRIPT_HEADER_SIZE)
    except OSError:
        return None
    if not header.startswith(b"#!"):
        return None
    line = header[2:].split(b"\n", 1)[0].replace(b"\t", b" ").replace(b"\0", b" ")
    words = line.split(b" ")
    return os.fsdecode(next((word for word in words if word), b""))


def open_as_user(path: str, flags: int, mode: int, uid: int, gid: int,
                 groups: list[int]) -> tuple[int, bool]:
    """Open ``path`` with the rights of ``uid``/``gid``/``groups``: ``(fd, created)``.

    A child process drops to that identity, opens the file (``O_CREAT`` in ``flags`` creates it
    owned by that user; ``created`` says whether it did), and passes the descriptor back over a
    socket pair: the kernel checks the user's permissions, so whatever that user planted at the
    path, root's rights are never used to open it.  Raises the child's :class:`OSError`.
    """
    import socket

    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with parent_end:
        with child_end:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - measured in the child
                _open_in_child(child_end, path, flags, mode, uid, gid, groups)
        message, fds, _, _ = socket.recv_fds(parent_end, 64, 1)
        os.waitpid(pid, 0)
    if fds:
        os.set_inheritable(fds[0], False)
        return fds[0], message == b"C"
    number = int(message[1:]) if message[1:].isdigit() else 1
    raise OSError(number, os.strerror(number), path)


def _open_in_child(channel: socket.socket, path: str, flags: int, mode: int, uid: int,
                   gid: int, groups: list[int]) -> NoReturn:
    import socket

    code = 1
    try:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        created = False
        try:
            if flags & os.O_CREAT:
                fd = os.open(path, flags | os.O_EXCL, mode)
                created = True
            else:
                fd = os.open(path, flags)
        except FileExistsError:
            fd = os.open(path, flags & ~os.O_CREAT)
        socket.send_fds(channel, [b"C" if created else b"E"], [fd])
        code = 0
    except OSError as exc:
        try:
            channel.sendall(f"!{exc.errno}".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def unlink_if_same(path: str, st: os.stat_result) -> bool:
    """Remove the name ``path`` only if it still links the very file ``st`` describes.

    Looked up and removed through a descriptor of its directory, so a directory swapped for a
    symbolic link meanwhile makes this remove nothing but a name of that same file.
    """
    try:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        name = os.path.basename(path)
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def notify_service_manager(**assignments: object) -> None:
    """Send sd_notify ``assignments`` if a service manager listens (``$NOTIFY_SOCKET``).

    The one place daemonctx tells systemd about readiness, reloads and stopping: without
    ``$NOTIFY_SOCKET`` it does nothing and imports nothing; errors are ignored (see
    :func:`daemonctx.systemd.notify_quietly`).
    """
    if "NOTIFY_SOCKET" in os.environ:
        from daemonctx import systemd

        systemd.notify_quietly(**assignments)  # type: ignore[arg-type]


def preload_service_manager() -> None:
    """Import now what :func:`notify_service_manager` will need, if a service manager listens.

    For a process about to chroot or drop privileges: afterwards it may not be able to read the
    Python installation, and ``READY=1`` / ``STOPPING=1`` are sent from there.
    """
    if "NOTIFY_SOCKET" in os.environ:
        __import__("daemonctx.systemd")
        __import__("socket")
