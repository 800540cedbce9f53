"""python-daemon 2.x's ``daemon.runner.DaemonRunner``, on daemonctx.

:class:`DaemonRunner` (removed from python-daemon 3.0) built on :mod:`daemonctx.control` and
:mod:`daemonctx.status`, with its defects fixed: it works on Python 3 (the original opened an
unbuffered text stream and raised ``ValueError``), appends to the logs instead of truncating
them on every invocation, ignores leftover pidfiles of dead daemons, waits for the old process
to be gone in ``stop`` and ``restart``, accepts ``pidfile_path = None`` and adds a ``status``
action.

What used to live here -- stopping, signalling and asking the status of a daemon through its
pidfile -- moved to :mod:`daemonctx.control` and :mod:`daemonctx.status`; those names are still
importable from here, so existing ``from daemonctx.runner import stop_daemon`` keeps working.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar, NoReturn

from daemonctx.control import (  # re-exported: they lived here before
    DEFAULT_KILL_TIMEOUT,
    DEFAULT_STOP_SCHEDULE,
    DEFAULT_STOP_TIMEOUT,
    IMPOSTOR_GRACE,
    StopResult,
    StopSchedule,
    find_removed_pidfile_holder,
    parse_signal,
    signal_daemon,
    signal_name,
    stop_daemon,
)
from daemonctx.errors import DaemonError, DaemonOptionError
from daemonctx.pidfile import holder_pid, remove_stale_pidfile
from daemonctx.status import (  # re-exported: they lived here before
    STATUS_DEAD_PIDFILE_EXISTS,
    STATUS_NOT_RUNNING,
    STATUS_RUNNING,
    STATUS_UNKNOWN,
    DaemonStatus,
    ProcessInfo,
    daemon_status,
    process_info,
)

if TYPE_CHECKING:
    from daemonctx.context import DaemonContext
    from daemonctx.handshake import StartupReport
    from daemonctx.pidfile import TimeoutPIDLockFile

__all__ = [
    "DaemonRunner",
    "DaemonRunnerError",
    "DaemonRunnerInvalidActionError",
    "DaemonRunnerStartFailureError",
    "DaemonRunnerStopFailureError",
    "emit_message",
    "is_pidfile_stale",
    "make_pidlockfile",
    # moved to daemonctx.control, daemonctx.status and daemonctx.pidfile, importable from here
    "DEFAULT_KILL_TIMEOUT",
    "DEFAULT_STOP_SCHEDULE",
    "DEFAULT_STOP_TIMEOUT",
    "IMPOSTOR_GRACE",
    "STATUS_DEAD_PIDFILE_EXISTS",
    "STATUS_NOT_RUNNING",
    "STATUS_RUNNING",
    "STATUS_UNKNOWN",
    "DaemonStatus",
    "ProcessInfo",
    "StopResult",
    "StopSchedule",
    "daemon_status",
    "find_removed_pidfile_holder",
    "parse_signal",
    "process_info",
    "remove_stale_pidfile",
    "signal_daemon",
    "signal_name",
    "stop_daemon",
]

# --- errors ---------------------------------------------------------------------------------


class DaemonRunnerError(DaemonError):
    """Base class of :class:`DaemonRunner`'s errors (python-daemon: an ``Exception``)."""


class DaemonRunnerInvalidActionError(DaemonRunnerError, DaemonOptionError):
    """The requested action is not one of :attr:`DaemonRunner.action_funcs` (a ValueError)."""


class DaemonRunnerStartFailureError(DaemonRunnerError, RuntimeError):
    """``start`` failed before forking: already running, or an invalid option (a RuntimeError)."""


class DaemonRunnerStopFailureError(DaemonRunnerError, RuntimeError):
    """``stop`` failed: not running, not permitted, or still running after the schedule."""


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
    return os.path.lexists(path) and holder_pid(path) is None


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
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    kill_timeout: float = DEFAULT_KILL_TIMEOUT
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
        schedule = StopSchedule.signal_then_kill(signal.SIGTERM, self.stop_timeout,
                                                 self.kill_timeout)
        try:
            result = stop_daemon(path, schedule)
        except DaemonError as exc:
            raise DaemonRunnerStopFailureError(str(exc)) from exc
        if result.outcome == "not-running" and not result.stale_removed:
            raise DaemonRunnerStopFailureError(f"PID file {path!r} not locked")
        if result.outcome == "still-running":
            raise DaemonRunnerStopFailureError(result.message)

    def _restart(self) -> None:
        if self.pidfile is not None and holder_pid(self._pidfile_path("restart")) is not None:
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
    """A DaemonContext whose launcher prints the start message where the user sees it."""
    from daemonctx.context import DaemonContext

    context = DaemonContext()

    def announce_start(report: StartupReport, launch: object) -> NoReturn:
        if report.ok and report.pid is not None:
            try:
                emit_message(runner.start_message.format(pid=report.pid))
            except (OSError, ValueError):
                pass
        context.on_startup_report(report)

    context.startup_policy = announce_start
    return context
