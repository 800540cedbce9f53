"""The launching process: what it does between the first fork and its exit.

When :class:`~daemonctx.DaemonContext` detaches, the caller's process becomes the *launcher*:
it does not return into the caller's code, it waits (bounded) for the daemon's start-up report
and exits with a truthful status.  :class:`Launch` is that wait and what follows it:

* **Knowing the daemon for sure.**  The intermediate child announces the daemon's pid on a
  pipe of its own and stays the daemon's parent until the launcher's verdict.  While it waits
  the daemon is *its* unreaped child, so the pid cannot have been reused: the launcher opens a
  pidfd on it then, and only ever signals the daemon through that pidfd.  If the daemon dies
  first, the intermediate child reaps it and passes its exit status on.
* **Orphans.**  When ``prctl`` is loaded already (always for the ``daemonctx`` command, and
  before a chroot), the launcher becomes a child subreaper before it forks, so the processes
  the daemon orphans are re-parented to it: its own unreaped children.  Loading ``prctl``
  otherwise would cost milliseconds on the daemon's path; such processes are then found
  through the daemon's session instead, and those that left it (``setsid``) through the lock
  they hold: ``/proc/locks`` names the daemon as the process that took the lock of its
  pidfile, so whoever shares that lock got the daemon's open file (found only after a
  failure, off the daemon's path).
* **Reading the report** (:mod:`daemonctx.handshake` is the wire format) while watching the
  pidfd: a daemon that dies without a word is seen at once, even when a process it forked keeps
  the report pipe open.
* **Leaving nothing behind when a start fails** (:meth:`Launch.stop_all`): a daemon that timed
  out, and whatever a failed daemon left running (a helper process, a child in a session of
  its own), is stopped (SIGTERM, then SIGKILL after a grace) and reaped -- only processes that
  are provably this start's (``Launch._processes_of_this_start``); then the daemon's pidfile,
  if it still names the daemon and nobody holds its lock, is removed.  A lock holder that is
  not this start's is named -- the live processes holding it, not the pid that took it.
* **Readiness over sd_notify** for the ``daemonctx`` command (:class:`NotifyListener`): the
  ``NOTIFY_SOCKET`` a program reports ``READY=1`` on, with barriers honoured, and handed over to
  a small keeper process once it is ready, which answers it as long as any process has the
  address in its environment (see ``daemonctx._notify_keeper``).

Linux first: pidfds and ``PR_SET_CHILD_SUBREAPER``.  Where they are missing, the launcher still
waits and reports, but never signals a process it cannot prove is the daemon.
"""

from __future__ import annotations

import os
import select
import time

from daemonctx import _os, _proc, handshake
from daemonctx._signal_module import signal
from daemonctx.errors import DaemonError

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import NoReturn

    #: What the launching process does once the daemon reported (see DaemonContext's
    #: ``startup_policy``): it must exit.
    StartupPolicy = Callable[[handshake.StartupReport, "Launch"], NoReturn]

__all__ = ["STOP_GRACE", "Launch", "LaunchInterrupted", "NotifyListener", "keep_the_verdict",
           "lock_holders_phrase", "parse_notification"]

#: Seconds a process gets to exit after SIGTERM before SIGKILL, when a failed start is cleaned
#: up; and how long a daemon that reported a failure gets to exit on its own.
STOP_GRACE = 5.0
# Bound on how many kill rounds a clean-up makes (each round catches processes forked, or
# re-parented to the launcher, since the previous one).
_MAX_ROUNDS = 20


class LaunchInterrupted(BaseException):
    """SIGTERM or SIGINT reached the launching process while it waited: the start is abandoned.

    A :class:`BaseException`, so that nothing on the way swallows it; the launcher then stops
    what it started, like any failed start, and exits with ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name (``SIGTERM``)."""
        return _os.signal_name(self.signum)


def _abandon(signum: int, frame: object) -> None:
    keep_the_verdict()  # a second signal must not cut the clean-up short
    raise LaunchInterrupted(signum)


def keep_the_verdict() -> None:
    """Once the launcher has judged the start: SIGTERM and SIGINT no longer change it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Launch:
    """One start, as the launching process sees it.

    Created before the first fork: it makes the pipes.  Then, in the daemon,
    :meth:`daemon_side` hands the report pipe to :mod:`daemonctx.handshake`; in the intermediate
    child, :meth:`announce` sends the daemon's pid and stays the daemon's parent until the
    launcher's verdict (reaping it, and passing on its exit status, if it dies first); in the
    launcher, :meth:`begin` learns the daemon for sure, :meth:`wait` reads the report,
    :meth:`conclude` cleans up after a failed start and :meth:`release` lets the intermediate
    child go.
    """

    def __init__(self, timeout: float | None, pidfile: object = None) -> None:
        self.timeout = timeout  # how long wait() waits for the report (None: no limit)
        # Read only after a failed start: the daemon's pidfile (DaemonContext's ``pidfile``),
        # and when this start began, on the clock of /proc's process start times.
        self.pidfile = pidfile
        self.began = _boot_clock()
        self.report_r, self.report_w = os.pipe()  # close-on-exec, as every fd Python makes
        self.pid_r, self.pid_w = os.pipe()  # the intermediate child's: the pid, then a status
        self.go_r, self.go_w = os.pipe()  # the launcher's verdict: the intermediate may go
        # Children the caller's process had before: never this start's, never touched (read
        # by begin(), after the fork, off the daemon's path).
        self.children_before: frozenset[int] = frozenset()
        # Loading prctl costs milliseconds the daemon would share two cores with: a subreaper
        # only when it is loaded already (the command loads it; so does a chroot).
        self.subreaper = _os.prctl_loaded() and _os.set_child_subreaper(True)
        self.intermediate_pid: int | None = None  # its pid is the daemon's session id too
        self.daemon_pid: int | None = None
        self.daemon_pidfd: int | None = None
        self.daemon_status: int | None = None  # os.waitstatus_to_exitcode, once known
        self.reader = handshake.ReportReader(self.report_r)
        self._pid_lines = b""

    # --- the other processes' sides ----------------------------------------------------------

    def announce(self, daemon_pid: int) -> None:
        """In the intermediate child: send the daemon's pid, stay its parent until the verdict.

        While it waits, the daemon is its unreaped child: the pid cannot be anybody else's, so
        the launcher's pidfd on it is the daemon's.  If the daemon dies first, it sends ``exit
        <status>``, as only a parent can learn it, and leaves it a zombie until the verdict:
        however late the launcher opens its pidfd, and whatever it checks against the daemon's
        pid meanwhile (the lock it took), that pid is still the daemon's.  The launcher's word
        (a byte, or the end of file if the launcher is gone) ends the wait; a dead daemon is
        reaped then.
        """
        _os.write_all(self.pid_w, f"{daemon_pid}\n".encode())
        for fd in (self.go_w, self.report_r, self.report_w):  # the end of file is not ours
            os.close(fd)
        try:
            daemon = os.pidfd_open(daemon_pid)
        except OSError:
            daemon = None
        watched = [self.go_r] + ([daemon] if daemon is not None else [])
        try:
            if daemon in select.select(watched, [], [])[0]:
                ended = os.waitid(os.P_PID, daemon_pid, os.WEXITED | os.WNOWAIT)
                if ended is not None:  # None only with WNOHANG
                    code = ended.si_status if ended.si_code == os.CLD_EXITED \
                        else -ended.si_status
                    _os.write_all(self.pid_w, f"exit {code}\n".encode())
                select.select([self.go_r], [], [])
                os.waitpid(daemon_pid, 0)
        except OSError:
            pass

    def daemon_side(self) -> None:
        """In the daemon, right after the fork: keep only the report pipe's write end."""
        for fd in (self.report_r, self.pid_r, self.pid_w, self.go_r, self.go_w):
            try:
                os.close(fd)
            except OSError:
                pass
        handshake.daemon_end.start(self.report_w)

    # --- the launcher's side -----------------------------------------------------------------

    def run(self, intermediate_pid: int, policy: StartupPolicy | None,
            default: Callable[[handshake.StartupReport], NoReturn]) -> NoReturn:
        """The launching process from the first fork to its exit; never returns.

        Learns the daemon (:meth:`begin`), waits for its report (:meth:`wait`), cleans up after
        a failed start (:meth:`conclude`) -- also when SIGTERM/SIGINT abandon the wait, or the
        launcher itself fails -- lets the intermediate child go (:meth:`release`), then hands
        the report to ``policy(report, launch)`` (the command waits for ``READY=1`` there), or
        else to ``default(report)``; both must exit.  Whatever happens, the process exits with
        the report's status: it never returns into the caller's code.
        """
        try:
            self.begin(intermediate_pid)
            report = self.conclude(self.wait(self.timeout))
        except LaunchInterrupted as stop:
            report = self._concluded_anyway(
                f"interrupted by {stop.name} while waiting for the daemon's start-up report",
                128 + stop.signum)
        except BaseException as exc:  # the launcher must exit, whatever happens
            report = self._concluded_anyway(f"launcher error: {exc!r}", 1)
        try:
            self.release()
        except BaseException:
            pass
        try:
            if policy is not None:
                policy(report, self)  # exits, maybe after waiting for more
            default(report)  # exits
        except LaunchInterrupted as stop:
            try:
                self.stop_all()
            finally:
                os._exit(128 + stop.signum)
        finally:
            os._exit(report.exit_status)

    def _concluded_anyway(self, message: str, status: int) -> handshake.StartupReport:
        """A failed report for a wait that ended abnormally, cleaned up as well as it can be."""
        report = handshake.StartupReport("failed", self.daemon_pid, message, status)
        try:
            return self.conclude(report)  # nobody else would report this start's failure
        except BaseException:
            return report

    def begin(self, intermediate_pid: int) -> None:
        """In the launcher, right after the first fork: learn the daemon's pid for sure.

        Reads the pid the intermediate child announces and opens a pidfd on it while the
        intermediate child (our unreaped child, waiting for our word) is its parent.

        From here on SIGTERM and SIGINT abandon the start (:class:`LaunchInterrupted`: whoever
        sent them gets no daemon, and none is left running), and SIGHUP is ignored: a terminal
        that goes away does not decide whether the daemon starts.
        """
        signal.signal(signal.SIGTERM, _abandon)
        signal.signal(signal.SIGINT, _abandon)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for fd in (self.report_w, self.pid_w, self.go_r):
            os.close(fd)
        self.intermediate_pid = intermediate_pid
        self.children_before = frozenset(_proc.children(os.getpid())) - {intermediate_pid}
        pid_line = self._read_pid_line(None)
        if pid_line.isdigit():
            self.daemon_pid = int(pid_line)
            try:
                self.daemon_pidfd = os.pidfd_open(self.daemon_pid)
            except OSError:
                self.daemon_pidfd = None  # no pidfds here: the daemon is never signalled
        self.reader.pid = self.daemon_pid

    def wait(self, timeout: float | None) -> handshake.StartupReport:
        """Read the daemon's report until it is final, the daemon dies, or ``timeout`` s pass.

        ``ready`` and ``failed`` are final; ``exec`` (the daemon ran ``exec``) is confirmed by
        the end of file on the close-on-exec pipe.  A daemon that exits before it reported is
        ``died``, whoever else still holds the pipe.
        """
        reader = self.reader
        deadline = None if timeout is None else time.monotonic() + timeout
        watched = [self.report_r] + ([self.daemon_pidfd] if self.daemon_pidfd is not None else [])
        while not reader.eof and reader.state not in ("ready", "failed"):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable = select.select(watched, [], [], remaining)[0]
            if not readable:
                return _timeout_report(reader.drain(), timeout)
            if self.report_r in readable:
                reader.feed(os.read(self.report_r, 4096))
            elif self.daemon_pidfd in readable:
                reader.drain()
                if reader.state in ("ready", "failed"):
                    break
                self.collect_daemon_status()
                return self._death_report()
        if reader.eof and reader.state is None:
            if self.daemon_pidfd is None or self.wait_daemon_exit(STOP_GRACE):
                return self._death_report()
            return handshake.StartupReport(
                "died", self.daemon_pid, f"daemon (pid {self.daemon_pid}) closed its start-up "
                f"pipe without a report (did it close every file descriptor?)", 1)
        return reader.report()

    def conclude(self, report: handshake.StartupReport) -> handshake.StartupReport:
        """After a failed start, leave nothing of it running; the report, completed.

        A daemon that reported a failure gets :data:`STOP_GRACE` seconds to exit on its own; a
        daemon that timed out is stopped; then every process the start left (the daemon's
        descendants, its session, orphans re-parented to the launcher, holders of the lock it
        took) is stopped and reaped.  Then the daemon's pidfile, if it is a
        :class:`~daemonctx.PIDFile` naming the daemon, is removed once nobody holds its lock; a
        lock the daemon took that is still held is named in the report.  A good report is
        returned unchanged.
        """
        if report.ok:
            return report
        if report.state == "failed":
            self.wait_daemon_exit(STOP_GRACE)
        stopped = self.stop_all()
        if report.state == "died" and self.daemon_status is not None:
            report = self._death_report()  # its exit status is known by now
        note = self.stopped_note(stopped) + self._free_daemon_pidfile()
        return report.replace(message=report.message + note)

    def stopped_note(self, stopped: list[int]) -> str:
        """``"; stopped it; stopped 2 processes it left running (pid 8, 9)"``, or ``""``."""
        note = "; stopped it" if self.daemon_pid is not None and self.daemon_pid in stopped \
            else ""
        left = [pid for pid in stopped if pid != self.daemon_pid]
        if left:
            listed = ", ".join(map(str, left))
            note += (f"; stopped {len(left)} process{'es' if len(left) > 1 else ''} it left "
                     f"running (pid {listed})")
        return note

    def clean_up(self, pidfile: str | None, shown: str | None = None) -> str:
        """After a start judged failed later (the command's): leave nothing of it; a note.

        Stops everything this start left (:meth:`stop_all`), then frees ``pidfile`` (as this
        process sees it; ``shown`` as the user named it): a lock still held by processes this
        start did not begin is named (the live ones, as ``lock_holders_phrase`` names them),
        not signalled; a leftover unlocked file is removed.
        """
        from daemonctx.pidfile import holder_pid, remove_stale_pidfile

        note = self.stopped_note(self.stop_all())
        if pidfile is None:
            return note
        try:
            holder = holder_pid(pidfile)
        except DaemonError:
            holder = None
        if holder is not None:
            return note + _left_holding_note(pidfile, holder, shown or pidfile)
        remove_stale_pidfile(pidfile)
        return note

    def how_it_ended(self) -> str:
        """``"with status 3"`` or ``"killed by signal 9 (SIGKILL)"`` for the exited daemon."""
        self.wait_daemon_exit(0)
        code = self.daemon_status
        if code is None:
            return "(exit status unknown)"
        return _os.describe_wait_status(code, verb=False)

    def await_settle(self, seconds: float, who: str) -> str | None:
        """None if the daemon is still running ``seconds`` from now, else why not.

        For a program ``exec``\\ ed without a readiness protocol: surviving a moment is the
        only sign of a good start (``daemonctx start --wait``).  ``who`` names it in the
        message.
        """
        assert self.daemon_pidfd is not None
        if seconds > 0 and select.select([self.daemon_pidfd], [], [], seconds)[0]:
            return f"{who} exited during start-up {self.how_it_ended()}"
        return None

    def await_ready(self, notify: NotifyListener, timeout: float, who: str) -> str | None:
        """None once the daemon sent ``READY=1`` on ``notify``, else why it did not.

        ``EXTEND_TIMEOUT_USEC=`` extends the wait; ``ERRNO=``, or the daemon exiting, fails it
        at once; so does ``timeout`` seconds without ``READY=1``.  ``who`` names it.
        """
        pidfd = self.daemon_pidfd
        assert pidfd is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([notify.fileno(), pidfd], [], [], remaining)
            notify.receive()
            status = _status_hint(notify.last_status)
            if notify.errno_text is not None:
                return (f"{who} reported a start-up failure: "
                        f"ERRNO={describe_errno(notify.errno_text)}{status}")
            if notify.extension is not None:
                deadline = max(deadline, time.monotonic() + notify.extension)
                notify.extension = None
            if select.select([pidfd], [], [], 0)[0]:
                return (f"{who} exited during start-up {self.how_it_ended()} before sending "
                        f"READY=1{status}")
            if notify.ready:
                return None
        return f"{who} sent no READY=1 within {timeout:g} s{_status_hint(notify.last_status)}"

    def release(self) -> None:
        """The verdict is in: let the intermediate child exit, and reap it.

        A running daemon is then re-parented to init (or the nearest subreaper): the launcher is
        about to exit, or, for the command, still watches it through its pidfd.
        """
        if self.go_w < 0:
            return
        _os.write_all(self.go_w, b"g")
        os.close(self.go_w)
        self.go_w = -1
        if self.intermediate_pid is not None:
            # It exits at once; waited for, so that when the start command returns nothing of
            # the detach sequence is left but the daemon (an init that reaps late would show
            # it as a zombie).
            try:
                os.waitpid(self.intermediate_pid, 0)
            except ChildProcessError:
                pass

    def collect_daemon_status(self, timeout: float = 2.0) -> None:
        """Learn the exited daemon's status: from its parent, the intermediate child, or by
        reaping it when it has become the launcher's child (subreaper)."""
        pid = self.daemon_pid
        if pid is None or self.daemon_status is not None:
            return
        line = self._read_pid_line(timeout)
        if line.startswith("exit ") and line[5:].lstrip("-").isdigit():
            self.daemon_status = int(line[5:])
            return
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped == pid:
            self.daemon_status = os.waitstatus_to_exitcode(status)

    def wait_daemon_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the daemon to exit; True (status collected) if it has."""
        if self.daemon_pidfd is None:
            return False
        if not select.select([self.daemon_pidfd], [], [], timeout)[0]:
            return False
        self.collect_daemon_status()
        return True

    def stop_all(self, grace: float = STOP_GRACE) -> list[int]:
        """Stop the daemon and everything this start left running; the pids that got a signal.

        SIGTERM first, SIGKILL to whatever is still running ``grace`` seconds later, then again
        for processes forked or re-parented meanwhile, until none is left (bounded).  Only
        provable processes are signalled, through pidfds (see
        ``_processes_of_this_start``).  Every child of the launcher that exits is reaped.
        """
        signalled: list[int] = []
        signum = signal.SIGTERM
        for _ in range(_MAX_ROUNDS):
            targets = self._processes_of_this_start()
            try:
                alive = [(pid, fd) for pid, fd in targets if not _exited(fd)]
                if not alive:
                    break
                for pid, fd in alive:
                    if _send(fd, signum) and pid not in signalled:
                        signalled.append(pid)
                _wait_all([fd for _, fd in alive], grace)
            finally:
                for _, fd in targets:
                    os.close(fd)
            self._reap_children()
            signum = signal.SIGKILL
        self.collect_daemon_status(0.5 if self.daemon_pid in signalled else 0.0)
        self._reap_children()
        return signalled

    def abandon(self) -> None:
        """The first fork failed: close the pipes and stop being a subreaper."""
        for fd in (self.report_r, self.report_w, self.pid_r, self.pid_w, self.go_r, self.go_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.subreaper:
            _os.set_child_subreaper(False)
            self.subreaper = False

    # --- internals -----------------------------------------------------------------------------

    def _read_pid_line(self, timeout: float | None) -> str:
        """The next line from the intermediate child (``""`` at end of file or after timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pid_lines:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.pid_r], [], [], remaining)[0]:
                return ""
            chunk = os.read(self.pid_r, 64)
            if not chunk:
                return ""
            self._pid_lines += chunk
        line, _, self._pid_lines = self._pid_lines.partition(b"\n")
        return line.decode("ascii", "replace").strip()

    def _processes_of_this_start(self) -> list[tuple[int, int]]:
        """Pidfds on every live process provably of this start (the caller closes them).

        * the daemon, through the pidfd taken while it was provably the daemon;
        * the launcher's own children but those it had before and the intermediate child,
          which only waits (the daemon once re-parented, orphans re-parented to the launcher as
          subreaper);
        * the members of the daemon's session, checked after opening (a session's id is never
          given to a new process while the session has members);
        * the holders of the lock the daemon took on its pidfile (``_lock_holders_of_this_start``:
          what a helper in a session of its own still holds when the launcher is no subreaper);
        * and the descendants of all these, each checked to be its parent's child after
          opening.
        """
        skip = self.children_before | {self.intermediate_pid}
        mine = [pid for pid in _proc.children(os.getpid()) if pid not in skip]
        found = _proc.descendant_pidfds(mine, trusted_roots=True, skip=skip.__contains__)
        seen = {pid for pid, _ in found}
        if self.daemon_pidfd is not None and self.daemon_pid not in seen:
            daemon = self.daemon_pid
            assert daemon is not None
            found.append((daemon, os.dup(self.daemon_pidfd)))
            seen.add(daemon)
        if self.intermediate_pid is not None:
            session = self.intermediate_pid
            members = [pid for pid in _proc.session_members(session)
                       if pid not in seen and pid != session]
            found += _proc.pidfds_if(members, lambda pid: _proc.session_id(pid) == session)
            seen.update(pid for pid, _ in found)
        found += self._lock_holders_of_this_start(seen)
        for pid, fd in _proc.descendant_pidfds([pid for pid, _ in found]):
            if pid in seen:
                os.close(fd)
            else:
                found.append((pid, fd))
                seen.add(pid)
        return found

    def _pidfile_path(self) -> str | None:
        """The daemon's pidfile, if it is a :class:`~daemonctx.PIDFile` (an ``flock`` to read)."""
        if self.pidfile is None:
            return None
        from daemonctx.pidfile import PIDFile

        return self.pidfile.path if isinstance(self.pidfile, PIDFile) else None

    def _lock_taken_by_daemon(self, path: str) -> bool:
        """Whether the lock of ``path`` is held, and was taken by this start's daemon.

        ``/proc/locks`` names the process that called ``flock``: the daemon's pid.  While the
        daemon lives (its pidfd says so) that pid is the daemon; once it has exited, the pid is
        still the daemon's only if no live process has taken it over (which might have taken a
        lock of its own).
        """
        from daemonctx.pidfile import holder_pid

        daemon = self.daemon_pid
        if daemon is None or self.daemon_pidfd is None:
            return False
        try:
            if holder_pid(path) != daemon:
                return False
        except DaemonError:
            return False
        return not _exited(self.daemon_pidfd) or not _proc.is_alive(daemon)

    def _lock_holders_of_this_start(self, seen: set[int]) -> list[tuple[int, int]]:
        """Pidfds on the processes that hold the lock the daemon took (checked after opening).

        They share the daemon's open file description: the daemon forked them, or passed them
        its descriptor.  One that already ran before this start began (to the clock tick) was
        passed it, and is not this start's: never signalled, only named.  Empty where the
        pidfile is not a :class:`~daemonctx.PIDFile` or the daemon's lock is gone.
        """
        path = self._pidfile_path()
        if path is None or self.began is None or not self._lock_taken_by_daemon(path):
            return []
        identity = _proc.file_identity(path)
        earliest = int(self.began * os.sysconf("SC_CLK_TCK"))

        def of_this_start(pid: int) -> bool:
            started = _proc.start_ticks(pid)
            return (started is not None and started >= earliest
                    and _proc.holds_flock(pid, identity) is True
                    and self._lock_taken_by_daemon(path))

        holders = [pid for pid in _proc.live_lock_holders(path, None) if pid not in seen]
        found = _proc.pidfds_if(holders, of_this_start)
        seen.update(pid for pid, _ in found)
        return found

    def _free_daemon_pidfile(self) -> str:
        """After a failed start's stop: remove the daemon's pidfile, or name who holds it.

        Removed only if it names the daemon and nobody holds its lock (the removal takes the
        lock first).  A lock the daemon took that is still held gets a note; a lock another
        process took (a running instance that won the race for it) is none of this start's.
        """
        path = self._pidfile_path()
        if path is None or self.daemon_pid is None:
            return ""
        from daemonctx.pidfile import PIDFile, holder_pid, remove_stale_pidfile

        try:
            holder = holder_pid(path)
        except DaemonError:
            return ""
        if holder is not None:
            return _left_holding_note(path, holder, path) if holder == self.daemon_pid else ""
        if PIDFile(path).read_pid() == self.daemon_pid:
            remove_stale_pidfile(path)
        return ""

    def _reap_children(self) -> None:
        for pid in _proc.children(os.getpid()):
            if pid in self.children_before:
                continue
            if pid == self.intermediate_pid:
                continue  # release() reaps it; until then it may pass on the daemon's status
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if reaped == pid and pid == self.daemon_pid and self.daemon_status is None:
                self.daemon_status = os.waitstatus_to_exitcode(status)

    def _death_report(self) -> handshake.StartupReport:
        pid = self.daemon_pid
        who = f"daemon (pid {pid})" if pid is not None else "daemon"
        code = self.daemon_status
        if code is None:
            return handshake.StartupReport(
                "died", pid, f"{who} exited during start-up without a report", 1)
        status = 128 - code if code < 0 else code
        return handshake.StartupReport(
            "died", pid, f"{who} {_os.describe_wait_status(code)} during start-up", status or 1)


def lock_holders_phrase(path: str, named: int | None) -> str:
    """Who holds the lock of the pidfile at ``path``, for a message: ``"pid 42"``, ``"pids 4, 5"``.

    ``named`` is the pid ``/proc/locks`` gives (:func:`daemonctx.pidfile.holder_pid`): the
    process that took the lock.  Once it has exited, the live processes still holding the lock
    (those it forked, or passed the descriptor to) are named instead
    (``daemonctx._proc.live_lock_holders``), never the dead pid alone.
    """
    return _lock_holders(path, named)[0]


def _lock_holders(path: str, named: int | None) -> tuple[str, bool]:
    """(``lock_holders_phrase(path, named)``, whether it names more than one process)."""
    holders = _proc.live_lock_holders(path, named)
    if len(holders) == 1:
        return f"pid {holders[0]}", False
    if holders:
        return f"pids {', '.join(map(str, holders))}", True
    if named is None:
        return "another process", False
    return f"processes left by pid {named} (exited)", True


def _left_holding_note(path: str, named: int, shown: str) -> str:
    holders, several = _lock_holders(path, named)
    return (f"; {holders} still hold{'' if several else 's'} the lock of {shown} and "
            f"{'are not processes' if several else 'is not a process'} this start began: "
            f"left running")


def _boot_clock() -> float | None:
    clock = getattr(time, "CLOCK_BOOTTIME", None)  # Linux: what /proc's start times count
    return None if clock is None else time.clock_gettime(clock)


def _status_hint(status: str) -> str:
    return f" (last STATUS: {status})" if status else ""


def _timeout_report(report: handshake.StartupReport,
                    timeout: float | None) -> handshake.StartupReport:
    """The report after the wait ran out: a final report that arrived meanwhile wins."""
    if report.state in ("ready", "failed"):
        return report
    who = f"daemon (pid {report.pid})" if report.pid is not None else "daemon"
    limit = f" ({timeout:g} s)" if timeout is not None else ""
    return handshake.StartupReport("timeout", report.pid,
                                   f"{who} did not report readiness in time{limit}", 1)


def _exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


def _send(pidfd: int, signum: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_all(pidfds: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(pidfds)
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ready = select.select(waiting, [], [], remaining)[0]
        waiting = [fd for fd in waiting if fd not in ready]


# --- sd_notify: the command's readiness ---------------------------------------------------------

#: The largest EXTEND_TIMEOUT_USEC honoured, in seconds (systemd's "infinity" is 2**64-1 µs).
MAX_EXTENSION = 365 * 24 * 3600
_MAX_EXTENSION_USEC = MAX_EXTENSION * 1_000_000


class Notification:
    """What one sd_notify datagram said, parsed defensively (any byte string is accepted)."""

    __slots__ = ("errno_text", "extend", "ready", "sender_pid", "sender_uid", "status")

    def __init__(self) -> None:
        self.ready = False
        self.status: str | None = None
        self.errno_text: str | None = None
        self.extend: float | None = None  # seconds
        self.sender_pid: int | None = None
        self.sender_uid: int | None = None


def parse_notification(data: bytes) -> Notification:
    """Parse ``KEY=VALUE`` lines as sd_notify(3) sends them; never raises.

    Numbers outside what the launcher can use are clamped (``EXTEND_TIMEOUT_USEC`` to a year)
    or kept as text (``ERRNO``), never turned into an exception.
    """
    note = Notification()
    # Lines end at "\n" (systemd's reader also accepts "\r"), never at the other characters
    # str.splitlines() knows: a STATUS= text holding a U+2028 or a form feed before
    # "READY=1" must stay text, not become a command.
    for line in data.decode("utf-8", "replace").replace("\r", "\n").split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        if key == "READY":
            note.ready = note.ready or value.strip() == "1"
        elif key == "STATUS":
            note.status = value
        elif key == "ERRNO" and value.strip():
            note.errno_text = value.strip()
        elif key == "EXTEND_TIMEOUT_USEC":
            usec = value.strip()
            if usec.isascii() and usec.isdigit():
                note.extend = _clamped_count(usec, _MAX_EXTENSION_USEC) / 1e6
    return note


def _clamped_count(digits: str, limit: int) -> int:
    """The ASCII decimal ``digits`` as an int no larger than ``limit``, however many there are.

    Clamped before any conversion: ``int()`` refuses more than 4300 digits, and dividing a
    310-digit integer into a float overflows.
    """
    significant = digits.lstrip("0")
    if len(significant) > len(str(limit)):
        return limit
    return min(int(significant or "0"), limit)


def describe_errno(text: str) -> str:
    """``"2 (ENOENT: No such file or directory)"`` for ERRNO=2; any text survives."""
    import errno as errno_codes

    if not (text.isascii() and text.isdigit()):
        return f"{_os.printable(text)} (not an errno number)"
    number = _clamped_count(text, 2**63)  # past any errno: shown as given, "unknown error"
    shown = text.lstrip("0") or "0"
    name = errno_codes.errorcode.get(number, "")
    try:
        reason = os.strerror(number) if 0 < number < 2**31 else ""
    except (ValueError, OverflowError):
        reason = ""
    if not reason or reason.startswith("Unknown error"):
        reason = "unknown error"
    return f"{shown} ({name + ': ' if name else ''}{reason})"


class NotifyListener:
    """The ``NOTIFY_SOCKET`` a program started by the command reports readiness on.

    A datagram socket in the abstract namespace: reachable from inside a chroot, no file to
    clean up.  Anyone in the network namespace can send to it, so the sender's credentials
    (``SO_PASSCRED``) are checked: only root and the program's user are listened to.  Every file
    descriptor a message carries is closed once the messages before it are handled -- that
    honours ``BARRIER=1`` (sd_notify_barrier(3), which ``systemd-notify`` uses after each
    message) and drops ``FDSTORE=1`` descriptors, which nobody stores here.

    Once the program is ready, :meth:`hand_over` passes the socket to a keeper process that
    answers it as a service manager would, for as long as any process (the program, a worker it
    forked that outlives it) has the address in its environment: later messages (``STATUS=``,
    ``WATCHDOG=1``, barriers) succeed, and the name, which other local users can read in
    ``/proc/net/unix``, is never free for one of them to bind while a process may send to it.
    """

    def __init__(self, allowed_uids: set[int]) -> None:
        import secrets
        import socket

        self._socket_module = socket
        self.allowed_uids = allowed_uids
        self.sock: socket.socket = socket.socket(socket.AF_UNIX,
                                                 socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            name = f"daemonctx-notify/{os.getpid()}/{secrets.token_hex(8)}"
            self.sock.bind("\0" + name)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.address = "@" + name
        self.ready = False
        self.last_status = ""
        self.errno_text: str | None = None
        self.extension: float | None = None  # the latest EXTEND_TIMEOUT_USEC, in seconds

    def fileno(self) -> int:
        """The socket's fd, for ``select``."""
        return self.sock.fileno()

    def receive(self) -> int:
        """Handle every pending message; return how many came from accepted senders."""
        import struct

        socket = self._socket_module
        credentials_size = struct.calcsize("iII")
        handled = 0
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(credentials_size) + socket.CMSG_SPACE(253 * 4),
                    socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return handled
            passed: list[int] = []
            note = Notification()
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _ = struct.unpack("iII", payload[:credentials_size])
                    note.sender_pid, note.sender_uid = pid, uid
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    count = len(payload) // 4
                    passed.extend(struct.unpack(f"{count}i", payload[:count * 4]))
            try:
                if note.sender_uid in self.allowed_uids:
                    self._handle(parse_notification(data))
                    handled += 1
            finally:
                for fd in passed:  # after handling: this is what completes a BARRIER=1
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def _handle(self, note: Notification) -> None:
        if note.status:
            self.last_status = _os.printable(note.status)
        if note.errno_text is not None:
            self.errno_text = note.errno_text
        if note.extend is not None:
            self.extension = note.extend
        if note.ready:
            self.ready = True

    def forget(self) -> None:
        """In the daemon: the detach closed the fd; never close the number again (reused)."""
        self.sock.detach()

    def hand_over(self, program_pidfd: int, uid: int | None, gid: int | None) -> int | None:
        """Start the keeper that answers the socket while it may be used; its pid or None.

        The keeper (``daemonctx._notify_keeper``) gets the socket and a pidfd on the program,
        runs in a session of its own with stdio on ``/dev/null``, drops to ``uid``/``gid`` when
        started by root, and exits once neither the program nor any other process has the
        address in its environment.
        """
        from daemonctx import _notify_keeper

        try:
            return _notify_keeper.spawn(self.sock.fileno(), program_pidfd, uid, gid)
        except OSError:
            return None

    def close(self) -> None:
        """Close the socket in this process (the keeper, if any, keeps its own copy)."""
        self.sock.close()

