"""Options to one frozen plan: every value the detach will use, resolved and checked first.

:func:`resolve` turns a :class:`~daemonctx.DaemonContext`'s options into a :class:`Plan` --
the chroot and working directory, the umask, the uid, gid and supplementary groups, the signal
handlers, the descriptors to keep, the descriptors stdin/stdout/stderr will point at -- so that
no step of the detach reads an option back from the context, and every mistake is an error
raised in the calling process before anything changed.  What resolving opened or created on the
way (``/dev/null``, a log file) is tracked apart, in :class:`Opened`: closed once the streams
are in place, closed and removed if the start fails.

The resolvers for single options (a directory, a working directory inside a chroot, a user, a
group, a stream path) are shared with the ``daemonctx`` command, which names the options as its
flags (``--chdir`` instead of ``working_directory``).  :func:`host_path` and
:func:`path_in_root` (from ``daemonctx._paths``, re-exported here) map paths between the host
and a chroot.
"""

from __future__ import annotations

import os
import pwd
import sys

from daemonctx import _os, steps
from daemonctx._paths import host_path, path_in_root
from daemonctx.errors import DaemonOptionError
from daemonctx.signals import resolve_signal_map

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from typing import Any

    from daemonctx.signals import Handler

__all__ = [
    "MAX_STARTUP_TIMEOUT",
    "Opened",
    "Plan",
    "existing_directory",
    "host_path",
    "identity",
    "lookup_group",
    "lookup_user",
    "path_in_root",
    "resolve",
    "supplementary_groups",
    "working_directory",
]

#: The longest ``startup_timeout`` accepted (a year); ``None`` waits without limit.
MAX_STARTUP_TIMEOUT = 365 * 24 * 3600
_STREAM_NAMES = ("stdin", "stdout", "stderr")


class Plan:
    """Every option of a :class:`~daemonctx.DaemonContext`, resolved and checked; read-only.

    Paths are as the daemon sees them (``workdir`` inside ``chroot``); ``groups`` is the
    supplementary list to set (``None``: leave it, not being root); ``streams`` the descriptors
    fds 0-2 will be pointed at; ``keep_fds`` every descriptor the detach must not close.
    """

    __slots__ = ("activation_fds", "chroot", "defer_ready", "detach", "gid", "groups",
                 "handlers", "keep_fds", "pidfile", "prevent_core", "startup_timeout", "streams",
                 "uid", "umask", "workdir")

    chroot: str | None
    workdir: str
    umask: int
    uid: int
    gid: int
    groups: tuple[int, ...] | None
    prevent_core: bool
    detach: bool
    handlers: dict[int, Handler]
    keep_fds: frozenset[int]
    activation_fds: frozenset[int]
    streams: tuple[int, int, int]
    pidfile: Any
    startup_timeout: float | None
    defer_ready: bool

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Plan is read-only: {name} cannot be set")

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Plan({fields})"


class Opened:
    """What resolving opened or created: closed after use, closed and removed on failure."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.created: list[tuple[str, os.stat_result]] = []

    def close(self) -> None:
        """Close the descriptors opened (once stdio points at them, they are not needed)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    def undo(self) -> None:
        """Leave nothing behind after a failed start: close the fds, remove files created."""
        self.close()
        for path, st in self.created:
            _os.unlink_if_same(path, st)
        self.created.clear()


# --- resolving a DaemonContext's options ---------------------------------------------------


def resolve(context: Any, *, pidfile_holder_ok: bool = False) -> tuple[Plan, Opened]:
    """Resolve and check every option of ``context``: its :class:`Plan`, and what was opened.

    Raises a :class:`~daemonctx.DaemonError` naming the option for a bad value, with nothing
    left open or created.  ``pidfile_holder_ok``: a held pidfile lock is not an error (a
    restart checks what the new instance needs before it stops the old one).
    """
    chroot = optional_directory("chroot_directory", context.chroot_directory)
    workdir = working_directory("working_directory", context.working_directory, chroot,
                                root_option="chroot_directory")
    umask = _umask(context.umask)
    uid, gid, entry = identity(context.uid, context.gid, need_entry=bool(context.initgroups))
    groups = supplementary_groups(uid, gid, entry.pw_name if entry else None,
                                  bool(context.initgroups))
    timeout = _startup_timeout(context.startup_timeout)
    handlers = resolve_signal_map(context.signal_map, context)
    _os.preload_service_manager()  # before a chroot or a privilege drop hides Python
    activation = _activation_fds()
    keep = _preserved_fds(context.files_preserve) | _logging_fds() | activation
    command_lock = steps.daemonctx_command_lock_fd()
    if command_lock is not None:
        keep.add(command_lock)
    opened = Opened()
    try:
        _check_pidfile(context.pidfile, root=chroot, holder_ok=pidfile_holder_ok)
        streams = _streams(context, uid, gid, groups, keep, opened)
    except BaseException:
        opened.undo()
        raise
    plan = Plan(chroot=chroot, workdir=workdir, umask=umask, uid=uid, gid=gid, groups=groups,
                prevent_core=bool(context.prevent_core), detach=bool(context.detach_process),
                handlers=handlers, keep_fds=frozenset(keep),
                activation_fds=frozenset(activation), streams=streams,
                pidfile=context.pidfile, startup_timeout=timeout,
                defer_ready=bool(context.defer_ready))
    return plan, opened


def _startup_timeout(timeout: object) -> float | None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        or not 0 <= timeout <= MAX_STARTUP_TIMEOUT  # also refuses NaN
    ):
        raise DaemonOptionError(
            f"startup_timeout must be a number of seconds from 0 to {MAX_STARTUP_TIMEOUT} (a "
            f"year), or None to wait as long as it takes, not {timeout!r}")
    return None if timeout is None else float(timeout)


def _check_pidfile(pidfile: object, *, root: str | None, holder_ok: bool) -> None:
    """Check the pidfile option, for the rights of this process.

    The daemon enters the pidfile before it drops privileges (see
    :class:`~daemonctx.DaemonContext`), so whoever calls ``open()`` is who creates the file.
    """
    if pidfile is None:
        return
    if not (hasattr(pidfile, "__enter__") and hasattr(pidfile, "__exit__")):
        raise DaemonOptionError(
            f"pidfile must be a context manager (e.g. daemonctx.PIDFile(path)), not {pidfile!r}")
    preflight = getattr(pidfile, "preflight", None)
    if preflight is not None:
        extra = {"ignore_holder": True} if holder_ok else {}
        preflight(uid=os.geteuid(), gid=os.getegid(), groups=os.getgroups(), root=root, **extra)


def _streams(context: Any, uid: int, gid: int, groups: tuple[int, ...] | None, keep: set[int],
             opened: Opened) -> tuple[int, int, int]:
    """The fds that fds 0-2 will point at, opening paths and ``/dev/null`` as needed."""
    fds: list[int] = []
    null_fd: int | None = None
    for number, name in enumerate(_STREAM_NAMES):
        target = getattr(context, name)
        if target is None:
            if null_fd is None:
                # Opened now, before any chroot, so a chroot without /dev/null works.
                null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                opened.fds.append(null_fd)
            fd = null_fd
        elif isinstance(target, (str, os.PathLike)):
            fd = open_stream_path(name, target, uid, gid, groups, opened, writing=number > 0)
        else:
            fd = _fd_of(name, target)
        keep.add(fd)
        fds.append(fd)
    return fds[0], fds[1], fds[2]


# --- single options, shared with the command ------------------------------------------------


def _described(option: str, path: str) -> str:
    # A flag reads "--chdir: directory /x", a keyword argument "working_directory '/x'".
    return f"{option}: directory {path}" if option.startswith("-") else f"{option} {path!r}"


def text_path(option: str, value: object) -> str:
    """``value`` as a non-empty text path, or :class:`~daemonctx.DaemonOptionError`."""
    if not isinstance(value, (str, os.PathLike)):
        raise DaemonOptionError(f"{option} must be a path, not {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path or "\0" in path:
        raise DaemonOptionError(f"{option} must be a non-empty text path, not {value!r}")
    return path


def existing_directory(option: str, value: object) -> str:
    """The absolute path of the directory ``value``; an error naming ``option`` otherwise."""
    path = os.path.abspath(text_path(option, value))
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise DaemonOptionError(f"{_described(option, path)} {what}")
    return path


def optional_directory(option: str, value: object) -> str | None:
    """:func:`existing_directory`, or None for None."""
    return None if value is None else existing_directory(option, value)


def working_directory(option: str, value: object, root: str | None, *,
                      root_option: str) -> str:
    """The working directory as the daemon sees it (inside ``root``), checked on the host.

    Outside a chroot it is made absolute against the caller's directory; inside one it is an
    absolute path from the new root.
    """
    path = text_path(option, value)
    inside = os.path.abspath(path) if root is None else os.path.normpath(os.path.join("/", path))
    host = host_path(root, inside)
    if not os.path.isdir(host):
        what = "does not exist" if not os.path.exists(host) else "is not a directory"
        flag = option.startswith("-")
        shown = (host if root is None else inside) if flag else path
        where = f" inside {root_option} {root if flag else repr(root)}" if root else ""
        raise DaemonOptionError(f"{_described(option, shown)}{where} {what}")
    return inside


def lookup_user(option: str, name: str) -> tuple[int, pwd.struct_passwd | None]:
    """A user name or uid (text) to ``(uid, passwd entry or None)``; an error naming ``option``.

    A name is looked up first; digits with no such name are a uid, whose entry may be missing.
    """
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        if not (name.isascii() and name.isdigit()):
            raise DaemonOptionError(f"{option}: unknown user {name!r}") from None
        uid = int(name)
        try:
            return uid, pwd.getpwuid(uid)
        except KeyError:
            return uid, None
    return entry.pw_uid, entry


def lookup_group(option: str, name: str) -> int:
    """A group name or gid (text) to the gid; an error naming ``option``."""
    import grp  # only for names: the import is a measurable part of a fast start-up

    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        if not (name.isascii() and name.isdigit()):
            raise DaemonOptionError(f"{option}: unknown group {name!r}") from None
        return int(name)


def supplementary_groups(uid: int, gid: int, user_name: str | None,
                         initgroups: bool) -> tuple[int, ...] | None:
    """The supplementary groups to set: the user's with ``initgroups``, else none.

    Never the caller's: python-daemon keeps root's groups after dropping to another user.
    ``None`` (leave them alone) when not root, since only root may set them.
    """
    if os.geteuid() != 0:
        return None
    if not initgroups:
        return ()
    if user_name is None:
        return (gid,)
    return tuple(os.getgrouplist(user_name, gid))


def identity(user: object, group: object, *, user_option: str = "uid",
             group_option: str = "gid", need_entry: bool = True
             ) -> tuple[int, int, pwd.struct_passwd | None]:
    """``(uid, gid, passwd entry or None)`` for a user and a group option, checked.

    ``user`` and ``group`` are names or numbers (a text of digits that names no user is a
    number); ``group`` ``None`` means the user's primary group.  Raises
    :class:`~daemonctx.DaemonOptionError` naming ``user_option``/``group_option`` for an unknown
    name, a uid without a passwd entry to take a group from, or a switch this process may not
    make (not being root).  For a numeric uid the passwd database is read only when
    ``need_entry`` (for ``initgroups`` or a default gid): a lookup is a measurable part of a
    fast start-up.  The one resolver of identities, for :class:`~daemonctx.DaemonContext`
    (``uid=``/``gid=``) and the command (``--user``/``--group``).
    """
    uid, entry = _user_value(user_option, user, need_entry or group is None)
    if group is None:
        if entry is None:
            raise DaemonOptionError(
                f"{group_option} must be given: {user_option} {user!r} has no passwd entry to "
                f"take a group from")
        gid = entry.pw_gid
    elif isinstance(group, str):
        gid = lookup_group(group_option, group)
    elif isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < 2**32 - 1:
        raise DaemonOptionError(
            f"{group_option} must be a group name or a gid number, not {group!r}")
    else:
        gid = group
    _check_can_become(uid, gid, f"{user_option}/{group_option}")
    return uid, gid, entry


def _user_value(option: str, value: object,
                need_entry: bool) -> tuple[int, pwd.struct_passwd | None]:
    if isinstance(value, str):
        return lookup_user(option, value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise DaemonOptionError(f"{option} must be a user name or a uid number, not {value!r}")
    if not need_entry:
        return value, None
    try:
        return value, pwd.getpwuid(value)
    except KeyError:
        return value, None


def _check_can_become(uid: int, gid: int, options: str) -> None:
    """Refuse, before forking, a uid or gid this process may not switch to (not being root).

    The daemon drops privileges after the forks (once it holds the pidfile); a drop bound to
    fail must be an error here, in the caller's process, not a report from a forked daemon.
    """
    if os.geteuid() == 0:
        return
    if uid not in os.getresuid() or gid not in os.getresgid():
        raise DaemonOptionError(
            f"{options}: only root can switch to another user or group (running as uid "
            f"{os.geteuid()})")


def primary_gid_or_none(uid: int | str) -> int | None:
    """The primary gid of the user ``uid`` (a name or a number), or None without an entry."""
    try:
        entry = pwd.getpwnam(uid) if isinstance(uid, str) else pwd.getpwuid(uid)
    except (KeyError, TypeError, OverflowError, ValueError):
        return None
    return entry.pw_gid


def _umask(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise DaemonOptionError(f"umask must be an int from 0 to 0o777, not {value!r}")
    return value


# --- descriptors ----------------------------------------------------------------------------


def _fd_of(name: str, item: object) -> int:
    """The fd behind ``item`` (an int or an object with ``fileno()``), checked to be open."""
    if isinstance(item, bool):
        raise DaemonOptionError(f"{name}: {item!r} is not a file descriptor or file object")
    if isinstance(item, int):
        fd = item
    else:
        fileno = getattr(item, "fileno", None)
        if fileno is None or not callable(fileno):
            raise DaemonOptionError(
                f"{name}: {item!r} is neither a file descriptor nor has a fileno() method")
        try:
            fd = fileno()
        except (OSError, ValueError) as exc:
            raise DaemonOptionError(f"{name}: {item!r} has no file descriptor ({exc})") from None
        if not isinstance(fd, int):
            raise DaemonOptionError(f"{name}: {item!r}.fileno() returned {fd!r}, not an int")
    try:
        os.fstat(fd)
    except (OSError, OverflowError):  # OverflowError: beyond a C int, so never open
        raise DaemonOptionError(f"{name}: file descriptor {fd} ({item!r}) is not open") from None
    return fd


def _preserved_fds(files_preserve: object) -> set[int]:
    if files_preserve is None:
        return set()
    try:
        if isinstance(files_preserve, (str, bytes)):
            raise TypeError
        items = list(files_preserve)  # type: ignore[call-overload]
    except TypeError:
        raise DaemonOptionError(
            f"files_preserve must be an iterable of fds or file objects, not {files_preserve!r}"
        ) from None
    return {_fd_of("files_preserve", item) for item in items if item is not None}


def _logging_fds() -> set[int]:
    """Fds of open :mod:`logging` handlers (files, sockets), so logging survives the detach."""
    logging = sys.modules.get("logging")
    if logging is None:
        return set()
    handlers: list[Any] = []
    for ref in list(getattr(logging, "_handlerList", [])):
        handler = ref() if callable(ref) else None
        if handler is not None:
            handlers.append(handler)
    fds: set[int] = set()
    for handler in handlers:
        for attribute in ("stream", "socket"):
            obj = getattr(handler, attribute, None)
            fileno = getattr(obj, "fileno", None)
            if fileno is None:
                continue
            try:
                fd = fileno()
                os.fstat(fd)
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            if isinstance(fd, int) and fd > 2:
                fds.add(fd)
    return fds


def _activation_fds() -> set[int]:
    """Fds passed by socket activation for this pid (systemd's reader), kept open."""
    from daemonctx import systemd

    return set(systemd.passed_fd_numbers())


# --- stream paths ---------------------------------------------------------------------------


def open_stream_path(name: str, target: str | os.PathLike[str], uid: int, gid: int,
                     groups: tuple[int, ...] | None, opened: Opened, *, writing: bool) -> int:
    """Open a ``stdin``/``stdout``/``stderr`` path in the launching process, for the daemon.

    Root starting a daemon as another user opens the path with the daemon's user's rights
    wherever some user other than root could change what it names: a log directory the daemon
    may write, a symbolic link that user made anywhere on the way (as the file or as a
    directory), a name not yet taken in a sticky directory such as ``/tmp``.  That user could
    otherwise plant a link to a file or directory only root may write, and root would append
    to that file or create one there; opened as that user, links are followed with that user's
    rights only.  Where every directory on the way, through every link, is one only root can
    change (see ``daemonctx._os.only_root_can_change``; root's own links such as
    ``/var/run -> /run`` included), root opens it.  The descriptor is recorded in ``opened``
    (and the file, if this created it).
    """
    path = os.path.abspath(text_path(name, target))
    flags = os.O_CLOEXEC | os.O_NOCTTY | (
        os.O_WRONLY | os.O_APPEND | os.O_CREAT if writing else os.O_RDONLY)
    as_user = os.geteuid() == 0 and uid != 0 and not _os.only_root_can_change(path)
    try:
        if as_user:
            fd, created = _os.open_as_user(path, flags, 0o644, uid, gid, list(groups or ()))
        else:
            fd, created = _open_creating(path, flags)
    except OSError as exc:
        mode = "appending" if writing else "reading"
        if as_user:
            raise DaemonOptionError(
                f"{name}: the daemon's user (uid {uid}) cannot open {path!r} for {mode}: "
                f"{exc.strerror}; it is opened with that user's rights because a user other "
                f"than root can change its directory: give the daemon's user access to it, or "
                f"use a directory only root can write") from None
        raise DaemonOptionError(f"{name}: cannot open {path!r} for {mode}: {exc.strerror}") \
            from None
    if created:  # removed again if the start fails
        opened.created.append((path, os.fstat(fd)))
    opened.fds.append(fd)
    return fd


def _open_creating(path: str, flags: int) -> tuple[int, bool]:
    """``os.open``; with ``O_CREAT``, also whether this call created the file."""
    if not flags & os.O_CREAT:
        return os.open(path, flags), False
    try:
        return os.open(path, flags | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, flags & ~os.O_CREAT), False
