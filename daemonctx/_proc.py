"""Every reader of ``/proc`` in one place (Linux): process state, family, fds, locks, mounts.

What daemonctx learns from ``/proc`` comes from here, and nowhere else reads it:

* **Processes** (``/proc/<pid>/stat``, ``status``, ``cmdline``, ``comm``, ``statm``,
  ``environ``, ``task/*/children``): whether one is alive, its parent, session, start time,
  owner, command line and name, uptime and memory, its children and session members, the
  processes whose environment holds an entry.
* **Locks** (``/proc/locks``, ``/proc/<pid>/fd`` + ``fdinfo``): the ``flock`` locks held now
  and who took them, whether a process holds the ``flock`` of a file (or of a removed one),
  the live holders of a pidfile's lock, pidfds on them.
* **Descriptors** (``/proc/self/fd`` or ``/dev/fd``, ``/proc/self/fdinfo``,
  ``/proc/self/mountinfo``): this process's open fds, the pid a pidfd names, the device number
  the kernel gives a file's mount.

Each reader answers ``None``/empty instead of raising when the process exits meanwhile or the
information is not readable (another user's process, a chroot without ``/proc``), except where
its docstring says otherwise.  Files are read in binary: a text file needs a codec lookup,
which can import a module -- impossible after a chroot or a drop to a user who cannot read the
Python installation.  Nothing here imports more than :mod:`os`.

Pids read here are numbers, and a number can be reused as soon as its process is reaped.  The
functions that return processes to act on (:func:`descendant_pidfds`, :func:`pidfds_if`,
:func:`flock_holder_pidfds`, :func:`removed_flock_holder_pidfds`) open a pidfd first and check
the property *after* opening it: the pidfd then names a process that had the property, or one
that has exited (signalling it does nothing).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import TypeGuard

__all__ = [
    "children",
    "command_line",
    "command_name",
    "descendant_pidfds",
    "file_identity",
    "flock_holder_pidfds",
    "flock_holders",
    "flock_owners",
    "has_environment_entry",
    "holds_flock",
    "holds_removed_flock",
    "is_alive",
    "live_lock_holders",
    "mount_device",
    "open_fds",
    "parent_pid",
    "pidfd_pid",
    "pidfds_if",
    "process_ids",
    "processes_holding_flock",
    "processes_locking_removed",
    "processes_with_environment_entry",
    "read_locks",
    "real_uid",
    "removed_flock_holder_pidfds",
    "removed_pidfile_writer",
    "rss",
    "session_id",
    "session_members",
    "start_ticks",
    "thread_ids",
    "thread_name",
    "uptime",
]

#: Bound on how many processes a tree walk visits (a fork bomb must not hang a stop).
MAX_TREE_SIZE = 10_000


def _read(path: str) -> bytes | None:
    # Binary: see the module's docstring.
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


# --- processes: state, family, command, memory, environment -----------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, state, first)."""
    text = _read(f"/proc/{pid}/stat")
    try:
        return text[text.rindex(b")") + 2:].split() if text is not None else None
    except ValueError:
        return None


def _stat_number(pid: int, index: int) -> int | None:
    """Field ``index`` of :func:`_stat_fields` as a number, or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[index]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def _not_exited(fields: list[bytes] | None) -> TypeGuard[list[bytes]]:
    return fields is not None and fields[0] not in (b"Z", b"X")


def is_alive(pid: int) -> bool:
    """True if ``pid`` names a process that has not exited (a zombie has exited)."""
    return _not_exited(_stat_fields(pid))


def parent_pid(pid: int) -> int | None:
    """The parent's pid, or None if ``pid`` is gone."""
    return _stat_number(pid, 1)


def session_id(pid: int) -> int | None:
    """The session ``pid`` belongs to, or None if it is gone."""
    return _stat_number(pid, 3)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None.

    The clock is the boot-time clock (``CLOCK_BOOTTIME``) in ticks of ``SC_CLK_TCK``.
    """
    return _stat_number(pid, 19)


def _all_pids() -> list[int]:
    me = os.getpid()
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != me]


def process_ids() -> list[int] | None:
    """Every process in ``/proc`` but this one; None where ``/proc`` cannot be listed (chroot)."""
    try:
        return _all_pids()
    except OSError:
        return None


def session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` (scans /proc).

    A session's id is the pid of the process that created it, and Linux never gives that number
    to a new process while the session has members: the members of ``sid`` are exactly the
    processes that descend from its creator without having left (``setsid``).
    """
    found: list[int] = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if _not_exited(fields) and fields[3] == b"%d" % sid:
            found.append(pid)
    return found


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's ``children`` list)."""
    result: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return result
    for tid in tasks:
        listing = _read(f"/proc/{pid}/task/{tid}/children")
        if listing is not None:
            result.extend(int(x) for x in listing.split())
    return result


def descendant_pidfds(roots: Iterable[int], *, trusted_roots: bool = False,
                      skip: Callable[[int], bool] | None = None) -> list[tuple[int, int]]:
    """Pidfds on the descendants of ``roots``, as ``[(pid, pidfd), ...]``, parents first.

    Each pidfd is opened first and its parent checked after: if the pid was reused in between,
    the pidfd names the exited process and signalling it does nothing.  With
    ``trusted_roots``, the roots themselves are included (the caller knows their pids cannot
    have been reused: they are its own unreaped children).  ``skip(pid)`` prunes a subtree.
    The caller closes the pidfds.
    """
    found: list[tuple[int, int]] = []
    queue: list[tuple[int, int | None]] = [(root, None) for root in roots]
    seen: set[int] = set()
    while queue and len(found) < MAX_TREE_SIZE:
        pid, expected_parent = queue.pop(0)
        if pid in seen or (skip is not None and skip(pid)):
            continue
        seen.add(pid)
        if expected_parent is not None or trusted_roots:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            if expected_parent is not None and parent_pid(pid) != expected_parent:
                os.close(fd)
                continue
            found.append((pid, fd))
        queue.extend((child, pid) for child in children(pid))
    return found


def pidfds_if(pids: Iterable[int], check: Callable[[int], bool]) -> list[tuple[int, int]]:
    """Pidfds on those of ``pids`` for which ``check(pid)`` holds *after* the pidfd was opened."""
    found: list[tuple[int, int]] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        if check(pid):
            found.append((pid, fd))
        else:
            os.close(fd)
    return found


def thread_ids() -> list[int] | None:
    """The ids of this process's threads (``/proc/self/task``), in order; None without ``/proc``.

    Counted by the kernel: threads a C extension started are there too, not only
    :mod:`threading`'s.
    """
    try:
        return sorted(int(tid) for tid in os.listdir("/proc/self/task"))
    except OSError:
        return None


def thread_name(tid: int) -> str | None:
    """The kernel's name for this process's thread ``tid`` (its ``comm``), or None if it ended."""
    comm = _read(f"/proc/self/task/{tid}/comm")
    return None if comm is None else comm.decode("utf-8", "replace").strip()


def command_line(pid: int) -> tuple[str, ...]:
    """The arguments of ``pid`` (``[comm]`` for a kernel thread), or ``()`` if unreadable."""
    raw = _read(f"/proc/{pid}/cmdline")
    if raw is None:
        return ()
    if raw:
        return tuple(arg.decode("utf-8", "replace") for arg in raw.rstrip(b"\0").split(b"\0"))
    name = command_name(pid)
    return () if name is None else (f"[{name}]",)


def command_name(pid: int) -> str | None:
    """The name of ``pid``'s program (``/proc/<pid>/comm``: ``systemd``), or None."""
    comm = _read(f"/proc/{pid}/comm")
    return None if comm is None else comm.decode("utf-8", "replace").strip()


def real_uid(pid: int) -> int | None:
    """The real uid of ``pid`` (the ``Uid:`` line of ``/proc/<pid>/status``), or None."""
    for line in (_read(f"/proc/{pid}/status") or b"").splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started, or None."""
    started = start_ticks(pid)
    system = _read("/proc/uptime")
    if started is None or system is None:
        return None
    try:
        system_uptime = float(system.split()[0])
    except (ValueError, IndexError):
        return None
    return max(0.0, system_uptime - started / os.sysconf("SC_CLK_TCK"))


def rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, or None."""
    statm = _read(f"/proc/{pid}/statm")
    try:
        pages = int(statm.split()[1]) if statm is not None else None
    except (ValueError, IndexError):
        return None
    return None if pages is None else pages * os.sysconf("SC_PAGE_SIZE")


def has_environment_entry(pid: int, entry: bytes) -> bool:
    """True if ``pid`` was executed with ``entry`` (``NAME=value``, exact) in its environment.

    Read from ``/proc/<pid>/environ``: the environment the program was executed with, as its
    memory still holds it (a later ``unsetenv`` in the process does not remove it; a process
    forked without ``exec`` shows its parent's).  False when unreadable: another user's
    process, or one that made itself non-dumpable.
    """
    raw = _read(f"/proc/{pid}/environ")
    return raw is not None and entry in raw.split(b"\0")


def processes_with_environment_entry(entry: bytes,
                                     pids: Iterable[int] | None = None) -> list[int] | None:
    """The processes whose environment holds ``entry`` (see :func:`has_environment_entry`).

    ``pids`` limits the scan (default: every process but this one).  None if ``/proc`` cannot
    be listed.
    """
    if pids is None:
        listed = process_ids()
        if listed is None:
            return None
        pids = listed
    return [pid for pid in pids if has_environment_entry(pid, entry)]


# --- flock locks: /proc/locks, and the descriptors that carry them ----------------------------


def file_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file at ``path`` (following links), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _fdinfo(pid: int | str, fd: int | str) -> list[bytes]:
    """The lines of ``/proc/<pid>/fdinfo/<fd>`` (``pid`` may be ``"self"``); [] if unreadable."""
    info = _read(f"/proc/{pid}/fdinfo/{fd}")
    return [] if info is None else info.splitlines()


def _fd_has_flock(pid: int, name: str) -> bool:
    return any(line.startswith(b"lock:") and b"FLOCK" in line for line in _fdinfo(pid, name))


def holds_flock(pid: int, identity: tuple[int, int] | None) -> bool | None:
    """Whether ``pid`` has the file ``identity`` open with an ``flock`` on it; None: cannot tell.

    Read from ``/proc/<pid>/fd`` (which file each fd is) and ``/proc/<pid>/fdinfo`` (which locks
    it carries: every fd sharing the open file description shows the ``flock``).
    """
    if identity is None:
        return None
    base = f"/proc/{pid}"
    try:
        names = os.listdir(f"{base}/fd")
    except FileNotFoundError:
        return False
    except OSError:
        return None  # not permitted (another user's process): cannot tell
    for name in names:
        try:
            st = os.stat(f"{base}/fd/{name}")
            if (st.st_dev, st.st_ino) == identity and _fd_has_flock(pid, name):
                return True
        except OSError:
            continue
    return False


def processes_holding_flock(path: str) -> list[int]:
    """Every process with an fd carrying an ``flock`` on the file at ``path`` (scans /proc)."""
    identity = file_identity(path)
    if identity is None:
        return []
    return [pid for pid in _all_pids() if holds_flock(pid, identity)]


def flock_holder_pidfds(path: str, exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Pidfds on the processes but ``exclude`` holding the ``flock`` of the file at ``path``.

    As ``[(pid, pidfd), ...]`` by pid, each checked to hold it after its pidfd was opened (see
    the module's docstring).  The caller closes the pidfds.
    """
    identity = file_identity(path)
    holders = set(processes_holding_flock(path)).difference(exclude)
    return pidfds_if(sorted(holders), lambda pid: bool(holds_flock(pid, identity)))


def live_lock_holders(path: str, named: int | None) -> list[int]:
    """The live processes that hold the ``flock`` of the file at ``path``; ``named`` took it.

    ``/proc/locks`` names the process that called ``flock`` (``named``).  While it lives and
    still has the file open, it is the holder.  Once it has exited, the lock stays with the
    processes it forked or passed the descriptor to: those are found through every process's
    fds (:func:`processes_holding_flock`).  ``[named]`` when that cannot be told (no ``/proc``:
    a chroot), and ``[]`` when the processes holding it cannot be seen (another user's).
    """
    identity = file_identity(path)
    if named is not None and holds_flock(named, identity) is not False:
        return [named]
    try:
        return processes_holding_flock(path)
    except OSError:
        return [] if named is None else [named]


def read_locks() -> str | None:
    """The text of ``/proc/locks``; None if there is none or it is another pid namespace's.

    ``/proc`` may be the mount of another pid namespace (a container's, seen from the host, or
    the host's in a container sharing it): its pids are not ours, so it tells nothing.
    """
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
    except OSError:
        return None
    table = _read("/proc/locks")
    return None if table is None else table.decode("ascii", "replace")


def _flock_lines(table: str) -> Iterator[list[str]]:
    """The fields of each line of ``table`` (``/proc/locks``) for an ``flock`` held."""
    for line in table.splitlines():
        fields = line.split()
        # "N: FLOCK ADVISORY WRITE pid maj:min:ino start end"; a waiter has "->" at [1]
        if len(fields) > 5 and fields[1] == "FLOCK":
            yield fields


def flock_holders(table: str, inode: int) -> dict[int, list[int]]:
    """The processes that took the ``flock`` locks held on ``inode``, by kernel device number.

    Read from ``table`` (:func:`read_locks`), whose lines say ``1: FLOCK  ADVISORY WRITE 4242
    fe:00:2146607 0 EOF`` (hex major:minor of the file system, then the inode); waiters are
    left out.
    """
    found: dict[int, list[int]] = {}
    for fields in _flock_lines(table):
        try:
            major, minor, ino = fields[5].split(":")
            if int(ino) != inode:
                continue
            pid = int(fields[4])
            device = os.makedev(int(major, 16), int(minor, 16))
        except ValueError:
            continue
        if pid > 0:
            found.setdefault(device, []).append(pid)
    return found


def flock_owners() -> list[int] | None:
    """The processes but this one that took the ``flock`` locks held now (one read of
    ``/proc/locks``).

    The pid there is the process that called ``flock``; processes that only inherited its
    descriptor are not listed, nor waiters.  None where ``/proc/locks`` cannot tell (see
    :func:`read_locks`).
    """
    table = read_locks()
    if table is None:
        return None
    me = os.getpid()
    owners: dict[int, None] = {}
    for fields in _flock_lines(table):
        if fields[4].isdigit() and int(fields[4]) not in (0, me):
            owners[int(fields[4])] = None
    return list(owners)


def processes_locking_removed(path: str,
                              pids: Iterable[int] | None = None) -> list[tuple[int, str]]:
    """Processes holding an ``flock`` on a file that was at ``path`` and has been removed.

    The kernel shows such a descriptor as ``"<path> (deleted)"``, by the path it resolved when
    the file was opened: ``/run/app.pid`` for a file opened as ``/var/run/app.pid`` where
    ``/var/run -> /run``.  So ``path``'s directory is resolved the same way (symbolic links,
    ``..``) before comparing.  Returns ``[(pid, fd name), ...]``; the fd is readable as
    ``/proc/<pid>/fd/<name>`` by root or the owner.  ``pids`` limits the scan (default: every
    process).
    """
    absolute = os.path.abspath(path)
    resolved = os.path.join(os.path.realpath(os.path.dirname(absolute)),
                            os.path.basename(absolute))
    wanted = f"{resolved} (deleted)"
    found: list[tuple[int, str]] = []
    for pid in _all_pids() if pids is None else pids:
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{base}/{name}") == wanted and _fd_has_flock(pid, name):
                    found.append((pid, name))
                    break
            except OSError:
                continue
    return found


def holds_removed_flock(pid: int, path: str) -> bool:
    """True if ``pid`` holds an ``flock`` on a file that was at ``path`` and has been removed
    (see :func:`processes_locking_removed`)."""
    return bool(processes_locking_removed(path, pids=[pid]))


def removed_flock_holder_pidfds(path: str,
                                exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """As :func:`flock_holder_pidfds`, for the lock of a file that was at ``path`` and has been
    removed (see :func:`processes_locking_removed`)."""
    holders = {pid for pid, _ in processes_locking_removed(path)}.difference(exclude)
    return pidfds_if(sorted(holders), lambda pid: holds_removed_flock(pid, path))


def removed_pidfile_writer(path: str) -> int | None:
    """The daemon still locking its pidfile after the file at ``path`` was removed, or None.

    That is a process with an ``flock`` through a descriptor of the removed file (see
    :func:`processes_locking_removed`) whose file names that very process (it wrote it, under
    the lock).  A daemon takes its pidfile's lock itself, so only the processes that took the
    locks held now (:func:`flock_owners`, usually a handful) are examined -- 0.03 ms with 350
    processes running -- rather than every process's descriptors (10 ms there), so every start
    can afford it; every process where ``/proc/locks`` cannot tell.
    """
    for pid, fd_name in processes_locking_removed(path, flock_owners()):
        if _pid_in_file(f"/proc/{pid}/fd/{fd_name}") == pid:
            return pid
    return None


def _pid_in_file(path: str) -> int | None:
    # The pidfile format (daemonctx.pidfile): a pid of at most 10 digits on the first line.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        first = os.pread(fd, 64, 0).split(b"\n", 1)[0].strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(first) if first.isdigit() and len(first) <= 10 and int(first) > 0 else None


# --- this process's descriptors ---------------------------------------------------------------


_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def open_fds() -> list[int] | None:
    """This process's open fds, listed in ``/proc/self/fd`` (or ``/dev/fd``); None if neither
    can be read.

    A listing is trusted only if it shows the fd used to read it (which is then left out):
    FreeBSD's ``/dev/fd`` without fdescfs lists 0-2 whatever is open.
    """
    for directory in _FD_DIRS:
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            names = os.listdir(dir_fd)
        except OSError:
            continue
        finally:
            os.close(dir_fd)
        fds = [int(n) for n in names if n.isdigit()]
        if dir_fd in fds:
            fds.remove(dir_fd)
            return fds
    return None


def _own_fdinfo_value(fd: int, key: bytes) -> bytes | None:
    """The value on the ``key`` line (``b"mnt_id:"``) of this process's fdinfo of ``fd``."""
    for line in _fdinfo("self", fd):
        if line.startswith(key):
            fields = line.split()
            return fields[1] if len(fields) > 1 else None
    return None


def pidfd_pid(pidfd: int) -> int | None:
    """The pid the pidfd ``pidfd`` names (``/proc/self/fdinfo``), -1 once it exited; or None."""
    value = _own_fdinfo_value(pidfd, b"Pid:")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def mount_device(fd: int) -> int | None:
    """The device number the kernel gives the file system of this process's ``fd``, or None.

    From ``/proc/self/fdinfo/<fd>`` (its mount's id) and ``/proc/self/mountinfo`` (that
    mount's ``major:minor``): on btrfs a subvolume's ``stat`` device differs from the one
    ``/proc/locks`` shows, which is this.
    """
    mount_id = _own_fdinfo_value(fd, b"mnt_id:")
    if mount_id is None:
        return None
    mounts = _read("/proc/self/mountinfo")
    if mounts is None:
        return None
    try:
        for line in mounts.splitlines():
            fields = line.split(maxsplit=3)
            if fields[0] == mount_id:
                major, minor = fields[2].split(b":")
                return os.makedev(int(major), int(minor))
    except (IndexError, ValueError):
        return None
    return None
