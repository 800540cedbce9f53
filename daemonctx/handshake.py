"""The start-up handshake between the launching process and the daemon.

Every other Python daemoniser exits 0 from the launching process right after the first fork,
so the shell never learns that the daemon then failed (pidfile held, permission denied, a crash
in the application's own start-up).  Here the launcher waits, bounded, on a pipe until the
daemon reports (systemd's daemon(7), steps 14-15):

* the daemon writes ``P <pid>`` as soon as it exists, then ``R`` when it is ready, or
  ``E <status> <Type>: <message>`` when start-up failed, or ``X`` right before it ``exec``\\ s
  (the pipe is close-on-exec, so a successful ``exec`` closes it: end of file after ``X``
  means the new program is running);
* end of file with no report means the daemon died without a word;
* the launcher gives up after a timeout.

The launcher turns what it read into a :class:`StartupReport`.  Messages are one line each, with
backslashes and newlines escaped, so no parser heavier than ``str.split`` is needed here.
"""

from __future__ import annotations

import os
import select
import time

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
    exit with.
    """

    __slots__ = ("exit_status", "message", "pid", "state")

    def __init__(self, state: StartupState, pid: int | None, message: str,
                 exit_status: int) -> None:
        self.state: StartupState = state
        self.pid = pid
        self.message = message
        self.exit_status = exit_status

    def __repr__(self) -> str:
        return (f"StartupReport(state={self.state!r}, pid={self.pid!r}, "
                f"message={self.message!r}, exit_status={self.exit_status!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StartupReport):
            return NotImplemented
        return (self.state, self.pid, self.message, self.exit_status) == (
            other.state, other.pid, other.message, other.exit_status)

    __hash__ = None  # type: ignore[assignment]

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

_report_fd: int | None = None
_report_pid: int | None = None
_ready_sent = False


def announce_pid(fd: int, pid: int) -> None:
    """In the intermediate child: tell the launcher the daemon's pid (``P <pid>``).

    Sent by the process that forked the daemon, on a pipe of its own that the launcher reads
    only when it needs the pid (a timeout, a death, an error): it can then name and stop a
    daemon that is slow or outlives it, and a start that goes well wakes the launcher once.
    """
    try:
        os.write(fd, f"P {pid}\n".encode())
    except OSError:
        pass


def _start_reporting(fd: int) -> None:
    """Called by DaemonContext in the daemon, right after the second fork."""
    global _report_fd, _report_pid, _ready_sent
    _report_fd = fd
    _report_pid = os.getpid()
    _ready_sent = False


def _write(line: str) -> None:
    if _report_fd is None:
        return
    data = line.encode("utf-8", "replace")
    try:
        while data:
            written = os.write(_report_fd, data)
            data = data[written:]
    except OSError:
        pass  # the launcher is gone (killed): nobody is left to tell


def _finish() -> None:
    global _report_fd, _report_pid
    if _report_fd is not None:
        try:
            os.close(_report_fd)
        except OSError:
            pass
    _report_fd = None
    _report_pid = None


def is_pending() -> bool:
    """True in the daemon while the launcher still waits for a report."""
    return _report_fd is not None and _report_pid == os.getpid()


def notify_ready() -> None:
    """Declare the daemon ready: the launcher exits 0, and systemd gets ``READY=1``.

    Idempotent.  Called automatically at the end of :meth:`DaemonContext.open` unless the
    context was created with ``defer_ready=True``; then the application calls it (directly, as
    ``daemonctx.notify_ready()``, or as :meth:`DaemonContext.notify_ready`) once it has bound
    its sockets and loaded its configuration, so that the launcher's exit status means "serving".
    """
    global _ready_sent
    if _ready_sent:
        return
    _ready_sent = True
    if is_pending():
        _write("R\n")
        _finish()
    if "NOTIFY_SOCKET" in os.environ:
        from daemonctx import systemd

        systemd.notify_quietly(ready=True, mainpid=os.getpid())


def report_failure(exc: BaseException, exit_status: int = 1) -> None:
    """Tell the waiting launcher that start-up failed with ``exc``; a no-op if none waits."""
    if not is_pending():
        return
    if isinstance(exc, SystemExit):
        code = exc.code
        if isinstance(code, int) or code is None:
            exit_status = code or 0
            message = f"SystemExit: daemon exited with status {exit_status} before it was ready"
            exit_status = exit_status or 1
        else:
            message = f"SystemExit: {code}"
    else:
        message = f"{type(exc).__name__}: {exc}"
    _write(f"E {exit_status} {_escape(message)}\n")
    _finish()


def prepare_exec() -> None:
    """Call right before ``os.exec*`` in the daemon: a successful exec then counts as started.

    The pipe is close-on-exec, so the launcher sees end of file once the new program runs; if
    ``exec`` fails, report the error with :func:`report_failure` as usual.
    """
    if is_pending():
        _write("X\n")


def close_in_child() -> None:
    """Forget the launcher's pipe in a process forked by the daemon (a worker).

    Call right after ``fork`` in every child: a worker that kept the pipe open would keep the
    launcher waiting after the daemon itself died.  It never reports on the daemon's behalf.
    """
    global _report_fd, _report_pid, _ready_sent
    if _report_fd is not None and _report_pid != os.getpid():
        try:
            os.close(_report_fd)
        except OSError:
            pass
        _report_fd = None
        _report_pid = None
    _ready_sent = True


# --- the launcher's side -------------------------------------------------------------------


class ReportReader:
    """The launcher's side: reads and parses the daemon's lines from the pipe.

    The last report wins (``X`` followed by ``E`` means the exec failed).  ``pid_fd`` is the
    pipe on which the intermediate child announced the daemon's pid (see :func:`announce_pid`),
    read by :meth:`learn_pid` once that child has exited.
    """

    def __init__(self, read_fd: int, pid_fd: int | None = None) -> None:
        self.read_fd = read_fd
        self.pid_fd = pid_fd
        self.pid: int | None = None
        self.state: StartupState | None = None
        self.message = ""
        self.status = 1
        self.eof = False
        self._buffer = b""

    def wait(self, timeout: float | None) -> StartupReport:
        """Read until a final report, end of file, or ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.eof and self.state not in ("ready", "failed"):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.read_fd], [], [], remaining)[0]:
                return StartupReport("timeout", self.pid,
                                     f"no start-up report within {timeout:g} s", 1)
            self._feed(os.read(self.read_fd, 4096))
        return self.report()

    def learn_pid(self) -> int | None:
        """Read the intermediate child's announcement (call once it has exited); the pid."""
        fd, self.pid_fd = self.pid_fd, None
        if fd is not None:
            try:
                os.set_blocking(fd, False)
                self._feed(os.read(fd, 64), final=False)
            except OSError:
                pass
            finally:
                os.close(fd)
        return self.pid

    def drain(self) -> StartupReport:
        """Read whatever is already in the pipe, without waiting (after a timeout)."""
        os.set_blocking(self.read_fd, False)
        try:
            while not self.eof:
                self._feed(os.read(self.read_fd, 4096))
        except BlockingIOError:
            pass
        return self.report()

    def report(self) -> StartupReport:
        """What was read so far, as a report (``died`` at end of file without one)."""
        if self.state is not None:
            return StartupReport(self.state, self.pid, self.message, self.status)
        who = f"daemon (pid {self.pid})" if self.pid else "daemon"
        if self.eof:
            return StartupReport("died", self.pid,
                                 f"{who} exited during start-up without a report", 1)
        return StartupReport("timeout", self.pid, f"{who} did not report readiness in time", 1)

    def _feed(self, chunk: bytes, final: bool = True) -> None:
        if not chunk and final:
            self.eof = True
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        for raw in lines:
            kind, _, arg = raw.decode("utf-8", "replace").partition(" ")
            if kind == "P" and arg.isascii() and arg.isdigit():
                self.pid = int(arg)
            elif kind == "R":
                self.state, self.message, self.status = "ready", "daemon is ready", 0
            elif kind == "X":
                self.state, self.message, self.status = "exec", "program started", 0
            elif kind == "E":
                code, _, text = arg.partition(" ")
                self.state, self.message = "failed", _unescape(text)
                self.status = int(code) if code.isdigit() and int(code) > 0 else 1
