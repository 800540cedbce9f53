"""The start-up handshake between the launching process and the daemon.

Every other Python daemoniser exits 0 from the launching process right after the first fork,
so the shell never learns that the daemon then failed (pidfile held, permission denied, a crash
in the application's own start-up).  Here the launcher waits, bounded, on a pipe until the
daemon reports (systemd's daemon(7), steps 14-15):

* the daemon writes ``R`` when it is ready, or ``E <status> <Type> <message>`` when start-up
  failed (``Type`` is the exception's class name, so the launcher judges an error by its type,
  as :mod:`subprocess` does with a child's exception, never by its text), or ``X`` right before
  it ``exec``\\ s (the pipe is close-on-exec, so a successful ``exec`` closes it: end of file
  after ``X`` means the new program is running);
* end of file with no report means the daemon died without a word.

Here live both ends of that wire and nothing else: the daemon's end is one object,
``daemon_end`` (a ``DaemonEnd``: which process reports, on which descriptor, whether it
did), behind :func:`notify_ready`, :func:`report_failure`, :func:`prepare_exec` and
:func:`close_in_child`; ``ReportReader`` parses the launcher's end into a
:class:`StartupReport`.  :func:`notify_ready` also tells a service manager, when there is one
(``daemonctx._os.notify_service_manager``), since "ready" means the same to both.  Waiting,
watching the daemon and judging the report are the launching process's, in
``daemonctx.launcher``.  Messages are one line each, with backslashes and newlines escaped, so
no parser heavier than ``str.split`` is needed here.
"""

from __future__ import annotations

import os

from daemonctx import _os

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from typing import Literal

    StartupState = Literal["ready", "exec", "failed", "died", "timeout"]

__all__ = [
    "StartupReport",
    "close_in_child",
    "notify_ready",
    "prepare_exec",
    "report_failure",
]


class StartupReport:
    """What the launcher learned about the daemon's start-up.

    ``state`` is ``"ready"`` (the daemon reported readiness), ``"exec"`` (it ``exec``\\ ed a new
    program successfully), ``"failed"`` (it reported an error), ``"died"`` (it exited without a
    report) or ``"timeout"`` (no report in time).  ``pid`` is the daemon's pid once known,
    ``message`` a one-line human explanation, and ``exit_status`` the status the launcher should
    exit with.  For ``"failed"``, ``error_type`` is the name of the exception's class (such as
    ``"PIDFileLockedError"``), carried as a field of its own so that nobody has to recognise an
    error by its message; ``message`` then reads ``"<error_type>: <text>"``.
    """

    __slots__ = ("error_type", "exit_status", "message", "pid", "state")

    def __init__(self, state: StartupState, pid: int | None, message: str,
                 exit_status: int, error_type: str | None = None) -> None:
        self.state: StartupState = state
        self.pid = pid
        self.message = message
        self.exit_status = exit_status
        self.error_type = error_type

    def __repr__(self) -> str:
        return (f"StartupReport(state={self.state!r}, pid={self.pid!r}, "
                f"message={self.message!r}, exit_status={self.exit_status!r}, "
                f"error_type={self.error_type!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StartupReport):
            return NotImplemented
        return (self.state, self.pid, self.message, self.exit_status, self.error_type) == (
            other.state, other.pid, other.message, other.exit_status, other.error_type)

    def replace(self, *, message: str | None = None,
                state: StartupState | None = None) -> StartupReport:
        """A copy with ``message`` and/or ``state`` changed."""
        return StartupReport(self.state if state is None else state, self.pid,
                             self.message if message is None else message, self.exit_status,
                             self.error_type)

    __hash__ = None  # type: ignore[assignment]

    @property
    def detail(self) -> str:
        """The message without the ``"<error_type>: "`` it starts with for a failure.

        For a reader who already knows the type (the ``daemonctx`` command words a held lock
        as "already running" and its own start-up errors without their class name).
        """
        if self.error_type is None:
            return self.message
        return self.message.removeprefix(f"{self.error_type}: ")

    @property
    def ok(self) -> bool:
        """True when the daemon is running: ready, or its ``exec`` succeeded."""
        return self.state in ("ready", "exec")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append("\n" if nxt == "n" else nxt)
        else:
            out.append(ch)
    return "".join(out)


# --- the daemon's side ---------------------------------------------------------------------


class DaemonEnd:
    """The daemon's end of the report pipe: one per process, :data:`daemon_end`.

    ``start(fd)`` (DaemonContext, right after the second fork) makes this process the one that
    reports; :meth:`ready`, :meth:`failure` and :meth:`before_exec` write the one report the
    launcher waits for, and the first two close the pipe.  A process forked from the daemon
    never reports on its behalf: the pipe belongs to the pid that started it, and
    :meth:`forget_in_child` closes a child's copy.
    """

    __slots__ = ("fd", "pid", "ready_sent")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.pid: int | None = None
        self.ready_sent = False

    def start(self, fd: int) -> None:
        """In the daemon, right after the second fork: report on ``fd``."""
        self.fd, self.pid, self.ready_sent = fd, os.getpid(), False

    def keep_above_closed_fds(self) -> None:
        """Once the inherited fds are closed: move the pipe out of reach of stale objects.

        A Python object created before ``open()`` may still believe it owns the number the
        pipe has; moved above every number closed behind such objects, it cannot be closed by
        them.
        """
        if self.pending:
            assert self.fd is not None
            self.fd = _os.above_closed_fds(self.fd)

    @property
    def pending(self) -> bool:
        """True in the daemon while the launcher still waits for a report."""
        return self.fd is not None and self.pid == os.getpid()

    def ready(self) -> bool:
        """Report readiness (once); True if this call was the first."""
        if self.ready_sent:
            return False
        self.ready_sent = True
        if self.pending:
            self._write("R\n")
            self._finish()
        return True

    def failure(self, exc: BaseException, exit_status: int = 1) -> None:
        """Report that start-up failed with ``exc`` (no-op if nobody waits)."""
        if not self.pending:
            return
        if isinstance(exc, SystemExit):
            code = exc.code
            if isinstance(code, int) or code is None:
                exit_status = code or 0
                message = f"daemon exited with status {exit_status} before it was ready"
                exit_status = exit_status or 1
            else:
                message = str(code)
        else:
            message = str(exc)
        error_type = type(exc).__name__ or "Exception"
        self._write(f"E {exit_status} {error_type} {_escape(message)}\n")
        self._finish()

    def before_exec(self) -> None:
        """Right before ``exec``: a successful one closes the pipe (close-on-exec)."""
        if self.pending:
            self._write("X\n")

    def forget_in_child(self) -> None:
        """In a process forked by the daemon: close its copy, never report."""
        if self.fd is not None and self.pid != os.getpid():
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = self.pid = None
        self.ready_sent = True

    def _write(self, line: str) -> None:
        if self.fd is not None:
            # False when the launcher is gone (killed): nobody is left to tell
            _os.write_all(self.fd, line.encode("utf-8", "replace"))

    def _finish(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = self.pid = None


#: This process's end of the report pipe (it has one only while it is a starting daemon).
daemon_end = DaemonEnd()


def is_pending() -> bool:
    """True in the daemon while the launcher still waits for a report."""
    return daemon_end.pending


def notify_ready() -> None:
    """Declare the daemon ready: the launcher exits 0, and systemd gets ``READY=1``.

    Idempotent.  Called automatically at the end of :meth:`DaemonContext.open` unless the
    context was created with ``defer_ready=True``; then the application calls it (directly, as
    ``daemonctx.notify_ready()``, or as :meth:`DaemonContext.notify_ready`) once it has bound
    its sockets and loaded its configuration, so that the launcher's exit status means "serving".
    """
    if daemon_end.ready():
        _os.notify_service_manager(ready=True, mainpid=os.getpid())


def report_failure(exc: BaseException, exit_status: int = 1) -> None:
    """Tell the waiting launcher that start-up failed with ``exc``; a no-op if none waits."""
    daemon_end.failure(exc, exit_status)


def prepare_exec() -> None:
    """Call right before ``os.exec*`` in the daemon: a successful exec then counts as started.

    The pipe is close-on-exec, so the launcher sees end of file once the new program runs; if
    ``exec`` fails, report the error with :func:`report_failure` as usual.
    """
    daemon_end.before_exec()


def close_in_child() -> None:
    """Forget the launcher's pipe in a process forked by the daemon (a worker).

    Call right after ``fork`` in every child: a worker that kept the pipe open would keep the
    launcher waiting after the daemon itself died.  It never reports on the daemon's behalf.
    """
    daemon_end.forget_in_child()


# --- the launcher's side -------------------------------------------------------------------


class ReportReader:
    """The launcher's side: parses the daemon's lines from the report pipe.

    :class:`daemonctx.launcher.Launch` reads the pipe and feeds it here.  The last report wins
    (``X`` followed by ``E`` means the exec failed).  ``pid`` is the daemon's pid, which the
    launcher learns from the intermediate child.
    """

    def __init__(self, read_fd: int) -> None:
        self.read_fd = read_fd
        self.pid: int | None = None
        self.state: StartupState | None = None
        self.message = ""
        self.status = 1
        self.error_type: str | None = None
        self.eof = False
        self._buffer = b""

    def drain(self) -> StartupReport:
        """Read whatever is already in the pipe, without waiting."""
        os.set_blocking(self.read_fd, False)
        try:
            while not self.eof:
                self.feed(os.read(self.read_fd, 4096))
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self.read_fd, True)
        return self.report()

    def report(self) -> StartupReport:
        """What was read so far, as a report (``died`` at end of file without one)."""
        if self.state is not None:
            return StartupReport(self.state, self.pid, self.message, self.status,
                                 self.error_type)
        who = f"daemon (pid {self.pid})" if self.pid else "daemon"
        if self.eof:
            return StartupReport("died", self.pid,
                                 f"{who} exited during start-up without a report", 1)
        return StartupReport("timeout", self.pid, f"{who} did not report readiness in time", 1)

    def feed(self, chunk: bytes) -> None:
        """Parse ``chunk``; an empty chunk is the end of file."""
        if not chunk:
            self.eof = True
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for raw in lines:
            kind, _, arg = raw.decode("utf-8", "replace").partition(" ")
            if kind == "R":
                self.state, self.message, self.status = "ready", "daemon is ready", 0
            elif kind == "X":
                self.state, self.message, self.status = "exec", "program started", 0
            elif kind == "E":
                code, _, rest = arg.partition(" ")
                error_type, _, text = rest.partition(" ")
                self.state, self.error_type = "failed", error_type
                # shown on the launcher's terminal: the daemon may run as another user
                self.message = _os.printable(f"{error_type}: {_unescape(text)}")
                self.status = int(code) if code.isdigit() and 0 < int(code) < 256 else 1
