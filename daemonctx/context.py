"""DaemonContext: the PEP 3143 detach sequence, compatible with python-daemon 3.x.

``open()`` reads as the sequence itself: check every option (in the launching process, before
anything changes), then the steps of :mod:`daemonctx.steps` in order, then the start-up report
to the launcher (:mod:`daemonctx.handshake`).
"""

from __future__ import annotations

import atexit
import os
import pwd
import sys

from daemonctx import handshake, steps
from daemonctx._signal_module import signal
from daemonctx.errors import DaemonError, DaemonOptionError
from daemonctx.signals import default_signal_map, install_signal_handlers
from daemonctx.signals import resolve_signal_map as _resolve_signal_map

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import FrameType, TracebackType
    from typing import IO, Any, NoReturn

    from daemonctx.signals import Handler

    StreamTarget = IO[Any] | str | os.PathLike[str] | int | None

__all__ = ["MAX_STARTUP_TIMEOUT", "DaemonContext"]

#: The longest ``startup_timeout`` accepted (a year); ``None`` waits without limit.
MAX_STARTUP_TIMEOUT = 365 * 24 * 3600
_STREAM_NAMES = ("stdin", "stdout", "stderr")
# Signals the pid-1 reaper passes on to the application (see _run_as_init).
_FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


class _Plan:
    """Every option resolved and checked, before the first step changes anything."""

    def __init__(self, chroot: str | None, workdir: str, umask: int, uid: int, gid: int,
                 groups: list[int] | None, detach: bool, handlers: dict[int, Handler],
                 keep_fds: set[int], activation_fds: set[int]) -> None:
        self.chroot = chroot
        self.workdir = workdir
        self.umask = umask
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.detach = detach
        self.handlers = handlers
        self.keep_fds = keep_fds
        self.activation_fds = activation_fds
        self.stream_fds: list[int | None] = []
        self.opened_fds: list[int] = []
        self.created_files: list[str] = []

    def close_opened(self) -> None:
        for fd in self.opened_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.opened_fds.clear()

    def undo(self) -> None:
        """Leave nothing behind after a failed start: close our fds, remove files we created."""
        self.close_opened()
        for path in self.created_files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.created_files.clear()


class DaemonContext:
    """Turn the current program into a Unix daemon; a drop-in for python-daemon's class.

    ``with DaemonContext(...):`` (or :meth:`open`) performs the whole detach sequence, in this
    order:

    0. check every option, in the calling process, raising :class:`~daemonctx.DaemonError`
       subclasses that name the option (nothing has changed yet);
    1. ``chroot_directory``;
    2. core dumps off (``prevent_core``);
    3. ``umask``;
    4. ``working_directory``;
    5. supplementary groups, gid, uid (``uid``, ``gid``, ``initgroups``);
    6. flush Python's stdio buffers;
    7. fork, ``setsid``, fork (``detach_process``): the caller's process becomes the
       *launcher*, which waits for the daemon's start-up report and exits with a truthful
       status (0 once ready; otherwise the error on stderr and a non-zero status);
    8. unblock signals, reset inherited ignored signals, install ``signal_map``;
    9. close every fd except 0-2, ``files_preserve``, the stdio targets, the files of
       :mod:`logging` handlers and socket-activation fds;
    10. point fds 0-2 at ``stdin``/``stdout``/``stderr`` (``None`` means ``/dev/null``);
    11. enter ``pidfile`` (so the pid written is the daemon's final pid);
    12. report readiness (unless ``defer_ready``) and register :meth:`close` with atexit.

    Steps 1-6 run in the calling process, so their errors are ordinary exceptions there; errors
    after the fork reach the launcher through the start-up pipe.

    Options (also plain attributes, settable until :meth:`open`) follow python-daemon 3.x, with
    these extensions: ``uid``/``gid`` accept names; when ``uid`` is given without ``gid`` the
    user's primary group is used (not the caller's, which would keep root's group);
    ``stdin``/``stdout``/``stderr`` accept paths (opened for append in the calling process);
    ``startup_timeout`` bounds the launcher's wait (``None`` waits forever; ``0`` does not
    wait at all: the launcher exits 0 right after the first fork, as python-daemon's does) and
    ``defer_ready=True`` makes readiness wait for :meth:`notify_ready`.
    """

    def __init__(
        self,
        chroot_directory: str | os.PathLike[str] | None = None,
        working_directory: str | os.PathLike[str] = "/",
        umask: int = 0,
        uid: int | str | None = None,
        gid: int | str | None = None,
        initgroups: bool = False,
        prevent_core: bool = True,
        detach_process: bool | None = None,
        files_preserve: Iterable[Any] | None = None,
        pidfile: Any = None,
        stdin: StreamTarget = None,
        stdout: StreamTarget = None,
        stderr: StreamTarget = None,
        signal_map: Mapping[Any, object] | None = None,
        *,
        startup_timeout: float | None = 60.0,
        defer_ready: bool = False,
    ) -> None:
        self.chroot_directory = chroot_directory
        self.working_directory = working_directory
        self.umask = umask
        self.uid: int | str = os.getuid() if uid is None else uid
        self.gid: int | str | None = gid
        if gid is None:
            self.gid = os.getgid() if uid is None else _primary_gid_or_none(uid)
        self.initgroups = initgroups
        self.prevent_core = prevent_core
        self.detach_process = steps.detach_needed() if detach_process is None else detach_process
        self.files_preserve = files_preserve
        self.pidfile = pidfile
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.signal_map: Mapping[Any, object] = (
            default_signal_map() if signal_map is None else signal_map
        )
        self.startup_timeout = startup_timeout
        self.defer_ready = defer_ready
        self._is_open = False
        self._opener_pid: int | None = None
        self._atexit_registered = False

    # --- public API ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True after :meth:`open` and before :meth:`close` (read-only)."""
        return self._is_open

    def __enter__(self) -> DaemonContext:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._opener_pid == os.getpid():
            # An error in the application before it declared readiness is a start-up failure:
            # the launcher must hear about it, not exit 0.
            handshake.report_failure(exc)
        self.close()

    def open(self) -> None:
        """Become a daemon (see the class docstring for the steps); idempotent.

        In the launching process this does not return: the process exits with the daemon's
        start-up status.  Raises a :class:`~daemonctx.DaemonError` subclass, before changing
        anything, when an option is invalid.
        """
        if self._is_open:
            return
        steps.ensure_standard_fds_open()
        plan = self._prepare()
        # Read now: before a chroot hides /proc, and before forking (after a fork each page
        # the daemon touches is copied).  The daemon inherits these fds plus the pipes made
        # below (and, in a multi-threaded program, what another thread opens meanwhile).
        hint = steps.highest_open_fd()
        ignored = steps.ignored_signals(keep=plan.handlers)
        try:
            self._run_steps_before_fork(plan)
        except BaseException:
            plan.undo()
            raise
        if plan.detach and self.startup_timeout == 0:
            steps.detach_process_context(lambda child_pid: os._exit(0))
        elif plan.detach:
            read_fd, write_fd = os.pipe()  # close-on-exec, as every fd Python creates
            pid_read, pid_write = os.pipe()  # the daemon's pid, from the intermediate child
            plan.keep_fds.add(write_fd)
            if hint is not None:
                hint = max(hint, read_fd, write_fd, pid_read, pid_write)

            def launcher(child_pid: int) -> NoReturn:
                os.close(write_fd)
                os.close(pid_write)
                self._run_launcher(read_fd, pid_read, child_pid)

            steps.detach_process_context(
                launcher, announce=lambda pid: handshake.announce_pid(pid_write, pid))
            os.close(read_fd)  # pid_read and pid_write go with the inherited fds
            handshake._start_reporting(write_fd)
        elif os.getpid() == 1:
            _run_as_init()
        try:
            self._run_steps_after_fork(plan, hint, ignored)
        except BaseException as exc:
            if not plan.detach:
                raise
            handshake.report_failure(exc)
            os._exit(1)
        if not self.defer_ready:
            handshake.notify_ready()

    def close(self) -> None:
        """Exit the pidfile context (release and remove it); idempotent.

        Acts only in the process that opened the context: a worker forked by the daemon that
        exits (and runs atexit) must never remove the daemon's pidfile.
        """
        if not self._is_open or self._opener_pid != os.getpid():
            return
        if handshake.is_pending():
            handshake.report_failure(
                DaemonError("the daemon closed its context before it reported readiness")
            )
        try:
            if self.pidfile is not None:
                self.pidfile.__exit__(None, None, None)
        finally:
            self._is_open = False
            if "NOTIFY_SOCKET" in os.environ:
                from daemonctx import systemd

                systemd.notify_quietly(stopping=True)

    def terminate(self, signal_number: int, stack_frame: FrameType | None) -> None:
        """Signal handler for SIGTERM: exit cleanly, with status 0.

        Raises :class:`SystemExit` (0), so ``finally`` blocks, ``with`` exits and atexit
        handlers run: the pidfile is released and removed.  (python-daemon exits with status 1
        here, which service managers report as a failure.)  Further deliveries of the same
        signal are ignored from here on, so a second SIGTERM cannot cut that clean-up short;
        SIGKILL still ends the process.
        """
        signal.signal(signal_number, signal.SIG_IGN)
        raise SystemExit(0)

    def notify_ready(self) -> None:
        """Declare the daemon ready (see :func:`daemonctx.notify_ready`)."""
        handshake.notify_ready()

    def on_startup_report(self, report: handshake.StartupReport) -> NoReturn:
        """Called in the launching process once the daemon reported; must not return.

        The default prints a failure on stderr and exits with ``report.exit_status`` (0 when
        the daemon is ready).  Subclasses may wait for more (the CLI waits for ``READY=1``).
        """
        if not report.ok:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "daemon"
            line = f"{prog}: daemon failed to start: {report.message}\n"
            try:
                os.write(2, line.encode("utf-8", "replace"))
            except OSError:
                pass
        os._exit(report.exit_status)

    # --- the sequence -------------------------------------------------------------------

    def _run_steps_before_fork(self, plan: _Plan) -> None:
        if plan.chroot is not None:
            steps.change_root_directory(plan.chroot)
        if self.prevent_core:
            steps.prevent_core_dump()
        steps.change_file_creation_mask(plan.umask)
        steps.change_working_directory(plan.workdir)
        steps.change_process_owner(plan.uid, plan.gid, plan.groups)
        steps.flush_standard_streams()

    def _run_steps_after_fork(self, plan: _Plan, highest_fd: int | None,
                              ignored_signals: list[int]) -> None:
        steps.reset_inherited_signal_state(ignored_signals)
        install_signal_handlers(plan.handlers)
        steps.close_inherited_fds(plan.keep_fds, highest_fd)
        for stream_fd, target in enumerate(plan.stream_fds):
            if target is not None:
                steps.redirect_stream(target, stream_fd)
        plan.close_opened()
        if plan.activation_fds:
            # The sockets systemd passed are ours still: keep daemonctx.systemd.listen_fds()
            # (and any sd_listen_fds) working in the daemon, whose pid changed.
            os.environ["LISTEN_PID"] = str(os.getpid())
        if self.pidfile is not None:
            self.pidfile.__enter__()
        self._is_open = True
        self._opener_pid = os.getpid()
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True

    def _run_launcher(self, read_fd: int, pid_fd: int, child_pid: int) -> NoReturn:
        reader = handshake.ReportReader(read_fd, pid_fd)
        try:
            report = reader.wait(self.startup_timeout)
            _reap(child_pid)  # the intermediate child exits right after announcing the pid
            reader.learn_pid()
            # after a timeout, a report may have arrived meanwhile
            report = reader.drain() if report.state == "timeout" else reader.report()
            if report.state == "timeout":
                report = _stop_slow_daemon(report)
            elif report.state == "died" and report.pid is not None:
                report = _explain_death(report)
        except BaseException as exc:  # the launcher must exit, whatever happens
            try:
                reader.learn_pid()
            except BaseException:
                pass
            report = handshake.StartupReport("failed", reader.pid, f"launcher error: {exc!r}", 1)
            if reader.pid is not None and not reader.eof:
                report = _stop_slow_daemon(report)  # nobody would report its failure
        self.on_startup_report(report)

    # --- option checking ----------------------------------------------------------------

    def _prepare(self) -> _Plan:
        chroot = _optional_directory("chroot_directory", self.chroot_directory)
        workdir = _working_directory(self.working_directory, chroot)
        umask = _umask(self.umask)
        uid, user_name, user_gid = _resolve_user(
            self.uid, need_entry=self.gid is None or bool(self.initgroups))
        gid = _resolve_group(self.gid if self.gid is not None else user_gid, self.uid)
        groups = _supplementary_groups(uid, gid, user_name, bool(self.initgroups))
        detach = bool(self.detach_process)
        timeout = self.startup_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not 0 <= timeout <= MAX_STARTUP_TIMEOUT  # also refuses NaN
        ):
            raise DaemonOptionError(
                f"startup_timeout must be a number of seconds from 0 to "
                f"{MAX_STARTUP_TIMEOUT} (a year), or None to wait as long as it takes, "
                f"not {timeout!r}"
            )
        handlers = _resolve_signal_map(self.signal_map, self)
        if "NOTIFY_SOCKET" in os.environ:
            # Loaded now: after a chroot or a privilege drop the daemon may not be able to
            # read the Python installation, and READY=1 / STOPPING=1 are sent from there.
            __import__("daemonctx.systemd")
            __import__("socket")
        activation = _socket_activation_fds()
        keep = _preserved_fds(self.files_preserve) | _logging_fds() | activation
        command_lock = steps.daemonctx_command_lock_fd()
        if command_lock is not None:
            keep.add(command_lock)
        plan = _Plan(chroot, workdir, umask, uid, gid, groups, detach, handlers, keep,
                     activation)
        try:
            self._check_pidfile(plan)
            self._prepare_streams(plan)
        except BaseException:
            plan.undo()
            raise
        return plan

    def _prepare_streams(self, plan: _Plan) -> None:
        null_fd: int | None = None
        for number, name in enumerate(_STREAM_NAMES):
            target = getattr(self, name)
            if target is None:
                if null_fd is None:
                    # Opened now, before any chroot, so a chroot without /dev/null works.
                    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    plan.opened_fds.append(null_fd)
                    plan.keep_fds.add(null_fd)
                plan.stream_fds.append(null_fd)
            elif isinstance(target, (str, os.PathLike)):
                fd = _open_stream_path(name, target, plan, writing=number > 0)
                plan.stream_fds.append(fd)
            else:
                fd = _fd_of(name, target)
                plan.keep_fds.add(fd)
                plan.stream_fds.append(fd)

    def _check_pidfile(self, plan: _Plan) -> None:
        pidfile = self.pidfile
        if pidfile is None:
            return
        if not (hasattr(pidfile, "__enter__") and hasattr(pidfile, "__exit__")):
            raise DaemonOptionError(
                f"pidfile must be a context manager (e.g. daemonctx.PIDFile(path)), "
                f"not {pidfile!r}"
            )
        preflight = getattr(pidfile, "preflight", None)
        if preflight is not None:
            groups = plan.groups if plan.groups is not None else os.getgroups()
            preflight(uid=plan.uid, gid=plan.gid, groups=groups, root=plan.chroot,
                      cwd=plan.workdir)


# --- helpers: option resolution ----------------------------------------------------------


def _fspath_option(name: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise DaemonOptionError(f"{name} must be a path, not {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path or "\0" in path:
        raise DaemonOptionError(f"{name} must be a non-empty text path, not {value!r}")
    return path


def _optional_directory(name: str, value: object) -> str | None:
    if value is None:
        return None
    path = os.path.abspath(_fspath_option(name, value))
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise DaemonOptionError(f"{name} {path!r} {what}")
    return path


def _working_directory(value: object, chroot: str | None) -> str:
    path = _fspath_option("working_directory", value)
    if chroot is None:
        seen = os.path.abspath(path)
        outside = seen
    else:
        seen = os.path.normpath(os.path.join("/", path))
        outside = os.path.join(chroot, seen.lstrip("/"))
    if not os.path.isdir(outside):
        what = "does not exist" if not os.path.exists(outside) else "is not a directory"
        where = f" inside chroot_directory {chroot!r}" if chroot else ""
        raise DaemonOptionError(f"working_directory {path!r}{where} {what}")
    return seen


def _umask(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise DaemonOptionError(f"umask must be an int from 0 to 0o777, not {value!r}")
    return value


def _primary_gid_or_none(uid: int | str) -> int | None:
    try:
        entry = pwd.getpwnam(uid) if isinstance(uid, str) else pwd.getpwuid(uid)
    except (KeyError, TypeError, OverflowError, ValueError):
        return None
    return entry.pw_gid


def _resolve_user(value: object, need_entry: bool = True) -> tuple[int, str | None, int | None]:
    """Return (uid, user name or None, primary gid or None) for a uid or user name.

    For a numeric uid the passwd database is read only when ``need_entry`` (for
    ``initgroups`` or a default gid): a lookup is a measurable part of a fast start-up.
    """
    if isinstance(value, str):
        try:
            entry = pwd.getpwnam(value)
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            if value.isascii() and value.isdigit():
                return _resolve_user(int(value), need_entry)
            raise DaemonOptionError(f"uid: unknown user {value!r}") from None
        return entry.pw_uid, entry.pw_name, entry.pw_gid
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise DaemonOptionError(f"uid must be a user name or a uid number, not {value!r}")
    if not need_entry:
        return value, None, None
    try:
        entry = pwd.getpwuid(value)
    except KeyError:
        return value, None, None
    return value, entry.pw_name, entry.pw_gid


def _resolve_group(value: object, uid_option: object) -> int:
    if value is None:
        raise DaemonOptionError(
            f"gid must be given: uid {uid_option!r} has no passwd entry to take a group from"
        )
    if isinstance(value, str):
        import grp  # only for names: the import is a measurable part of a fast start-up

        try:
            return grp.getgrnam(value).gr_gid
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            if value.isascii() and value.isdigit():
                return _resolve_group(int(value), uid_option)
            raise DaemonOptionError(f"gid: unknown group {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise DaemonOptionError(f"gid must be a group name or a gid number, not {value!r}")
    return value


def _supplementary_groups(
    uid: int, gid: int, user_name: str | None, initgroups: bool
) -> list[int] | None:
    """The supplementary groups to set: the user's with ``initgroups``, else none.

    Never the caller's: python-daemon keeps root's groups after dropping to another user.
    ``None`` (leave them alone) when not root, since only root may set them.
    """
    if os.geteuid() != 0:
        return None
    if not initgroups:
        return []
    if user_name is None:
        return [gid]
    return os.getgrouplist(user_name, gid)


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
                f"{name}: {item!r} is neither a file descriptor nor has a fileno() method"
            )
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


def _socket_activation_fds() -> set[int]:
    """Fds passed by systemd socket activation (LISTEN_FDS, for this pid), kept open."""
    env = os.environ
    count = env.get("LISTEN_FDS", "")
    if env.get("LISTEN_PID") != str(os.getpid()) or not count.isdigit():
        return set()
    return set(range(3, 3 + int(count)))


def _open_stream_path(name: str, target: str | os.PathLike[str], plan: _Plan,
                      writing: bool) -> int:
    path = _fspath_option(name, target)
    flags = os.O_CLOEXEC | (os.O_WRONLY | os.O_APPEND if writing else os.O_RDONLY)
    try:
        if writing:
            try:  # remember whether we created it, to remove it if the start fails
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                plan.created_files.append(os.path.abspath(path))
            except FileExistsError:
                fd = os.open(path, flags)
        else:
            fd = os.open(path, flags)
    except OSError as exc:
        mode = "appending" if writing else "reading"
        raise DaemonOptionError(
            f"{name}: cannot open {path!r} for {mode}: {exc.strerror}"
        ) from None
    plan.opened_fds.append(fd)
    plan.keep_fds.add(fd)
    return fd


# --- helpers: the launcher and pid 1 -------------------------------------------------------


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _stop_slow_daemon(report: handshake.StartupReport) -> handshake.StartupReport:
    """Stop a daemon whose start-up the launcher gave up on, so nothing half-started remains.

    The pipe is still open at the daemon's end (no end of file), so the pid it was announced
    with is still the daemon's: it cannot have been recycled.
    """
    if report.pid is None:
        return report
    try:
        os.kill(report.pid, signal.SIGTERM)
        note = f"; sent SIGTERM to pid {report.pid}"
    except OSError:
        note = ""
    if report.state == "timeout":
        message = f"daemon (pid {report.pid}) did not report readiness in time{note}"
    else:
        message = f"{report.message}{note}"
    return handshake.StartupReport(report.state, report.pid, message, report.exit_status)


def _explain_death(report: handshake.StartupReport) -> handshake.StartupReport:
    """Add the daemon's exit status when the launcher can reap it (it is a subreaper)."""
    pid = report.pid
    assert pid is not None
    if not hasattr(os, "waitid") or not hasattr(os, "pidfd_open"):
        return report  # not Linux: a daemon is never the launcher's child there anyway
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return report
    if result is None:
        import select

        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return report
        try:
            if not select.select([pidfd], [], [], 2.0)[0]:
                return report
        finally:
            os.close(pidfd)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return report
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        text = f"killed by signal {sig} ({signal.strsignal(sig)})"
        code = 128 + sig
    else:
        code = os.waitstatus_to_exitcode(status)
        text = f"exited with status {code}"
    message = f"daemon (pid {pid}) {text} during start-up"
    return handshake.StartupReport("died", pid, message, code or 1)


def _run_as_init() -> None:
    """As pid 1 (a container), fork: pid 1 reaps every orphan and forwards signals.

    The kernel re-parents orphans to pid 1 and delivers no default-action signal to it, so an
    application running as pid 1 would collect zombies and ignore SIGINT.  Like ``tini``, the
    original process stays pid 1 as a minimal init: it passes termination signals on to the
    application, reaps everything, and exits with the application's status.  In the child (the
    application) this returns.
    """
    child = os.fork()
    if child == 0:
        return
    highest = steps.highest_open_fd()
    if highest is not None and highest >= 3:
        os.closerange(3, highest + 1)

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for name in _FORWARDED_SIGNALS:
        signal.signal(getattr(signal, name), forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            if os.WIFSIGNALED(status):
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.waitstatus_to_exitcode(status))

