"""DaemonContext: the PEP 3143 detach sequence, compatible with python-daemon 3.x.

``open()`` reads as the sequence itself: check every option (in the launching process, before
anything changes), then the steps of :mod:`daemonctx.steps` in order, then the start-up report
to the launcher (:mod:`daemonctx.handshake`).
"""

from __future__ import annotations

import atexit
import os
import sys

from daemonctx import _os, _proc, handshake, options, steps
from daemonctx._signal_module import signal
from daemonctx.errors import (
    DaemonAlreadyOpenError,
    DaemonError,
    DaemonThreadWarning,
)
from daemonctx.launcher import Launch, keep_the_verdict
from daemonctx.options import MAX_STARTUP_TIMEOUT
from daemonctx.signals import default_signal_map, install_signal_handlers

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from types import FrameType, TracebackType
    from typing import IO, Any, NoReturn

    from daemonctx.launcher import StartupPolicy

    StreamTarget = IO[Any] | str | os.PathLike[str] | int | None

__all__ = ["MAX_STARTUP_TIMEOUT", "DaemonContext"]

#: The longest ``startup_timeout`` accepted (a year); ``None`` waits without limit.
# The context open in this process, with the pid that opened it (a forked child is another
# process: it may open a context of its own).
_open_context: tuple[int, DaemonContext] | None = None


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
    5. flush Python's stdio buffers;
    6. fork, ``setsid``, fork (``detach_process``): the caller's process becomes the
       *launcher*, which waits for the daemon's start-up report and exits with a truthful
       status (0 once ready; otherwise the error on stderr and a non-zero status);
    7. unblock signals, reset inherited ignored signals, install ``signal_map``;
    8. close every fd except 0-2, ``files_preserve``, the stdio targets, the files of
       :mod:`logging` handlers and socket-activation fds;
    9. point fds 0-2 at ``stdin``/``stdout``/``stderr`` (``None`` means ``/dev/null``);
    10. enter ``pidfile`` (so the pid written is the daemon's final pid);
    11. supplementary groups, gid, uid (``uid``, ``gid``, ``initgroups``);
    12. report readiness (unless ``defer_ready``) and register :meth:`close` with atexit.

    Steps 1-5 run in the calling process, so their errors are ordinary exceptions there; errors
    after the fork reach the launcher through the start-up pipe.  Unlike python-daemon, which
    drops privileges before it detaches, the daemon enters the pidfile while it still has the
    caller's rights and drops them right after: ``PIDFile("/run/app.pid")`` in root's ``/run``
    works with ``uid="app"``, the lock is kept across the drop, and the daemon keeps only a
    read-only descriptor on the file (it cannot rewrite it).  At exit it removes the file
    where it may; otherwise the file stays, unlocked, which no start and no ``status``
    mistakes for a running daemon.

    Options (also plain attributes, settable until :meth:`open`) follow python-daemon 3.x, with
    these extensions: ``uid``/``gid`` accept names; when ``uid`` is given without ``gid`` the
    user's primary group is used (not the caller's, which would keep root's group);
    ``stdin``/``stdout``/``stderr`` accept paths (opened for append in the calling process);
    ``startup_timeout`` bounds the launcher's wait (``None`` waits forever; ``0`` does not
    wait at all: the launcher exits 0 right after the first fork, as python-daemon's does),
    ``defer_ready=True`` makes readiness wait for :meth:`notify_ready`, and ``startup_policy``
    replaces what the launching process does with the daemon's report: a callable
    ``policy(report, launch)`` that must exit (``launch`` is the
    :class:`daemonctx.launcher.Launch` that waited; the ``daemonctx`` command waits for
    ``READY=1`` this way).  ``None`` (the default) calls :meth:`on_startup_report`.
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
        startup_policy: StartupPolicy | None = None,
    ) -> None:
        self.chroot_directory = chroot_directory
        self.working_directory = working_directory
        self.umask = umask
        self.uid: int | str = os.getuid() if uid is None else uid
        self.gid: int | str | None = gid
        if gid is None:
            self.gid = os.getgid() if uid is None else options.primary_gid_or_none(uid)
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
        self.startup_policy = startup_policy
        self._is_open = False
        self._opener_pid: int | None = None
        self._atexit_registered = False
        self._launch: Launch | None = None

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
        _refuse_nested(self)
        steps.ensure_standard_fds_open()
        plan, opened = options.resolve(self)
        # Read now: before a chroot hides /proc, and before forking (after a fork each page
        # the daemon touches is copied).  Every fd open now may be owned by a Python object
        # the daemon keeps; the fds daemonctx keeps in the daemon are numbered above them.
        hint = steps.highest_open_fd()
        ignored = steps.ignored_signals(keep=plan.handlers)
        waits = plan.detach and plan.startup_timeout != 0
        as_init = not plan.detach and os.getpid() == 1
        if as_init:  # a container's pid 1 only; imported before a chroot can hide it
            from daemonctx._pid1 import become_init
        try:
            if plan.detach or os.getpid() == 1:
                _warn_about_threads()
            if waits and plan.chroot is not None:
                _load_prctl_for_chroot()
            self._run_steps_before_fork(plan)
        except BaseException:
            opened.undo()
            raise
        keep = plan.keep_fds
        if plan.detach and not waits:
            steps.detach_process_context(lambda child_pid: os._exit(0))
        elif plan.detach:
            launch = self._launch = Launch(plan.startup_timeout, plan.pidfile)
            keep |= {launch.report_w}
            try:
                steps.detach_process_context(self._run_launcher, announce=launch.announce)
            except BaseException:
                launch.abandon()  # the first fork failed: the caller goes on as it was
                raise
            launch.daemon_side()
        elif as_init:
            become_init(plan.uid, plan.gid, plan.groups)
        try:
            self._run_steps_after_fork(plan, opened, keep, hint, ignored)
        except BaseException as exc:
            if not plan.detach:
                raise
            handshake.report_failure(exc)
            os._exit(1)
        if not plan.defer_ready:
            handshake.notify_ready()

    def close(self) -> None:
        """Exit the pidfile context (release and remove it); idempotent.

        Acts only in the process that opened the context: a worker forked by the daemon that
        exits (and runs atexit) must never remove the daemon's pidfile.
        """
        global _open_context
        if not self._is_open or self._opener_pid != os.getpid():
            return
        if _open_context is not None and _open_context[1] is self:
            _open_context = None
        if handshake.is_pending():
            handshake.report_failure(
                DaemonError("the daemon closed its context before it reported readiness")
            )
        try:
            if self.pidfile is not None:
                self.pidfile.__exit__(None, None, None)
        finally:
            self._is_open = False
            _os.notify_service_manager(stopping=True)

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
        the daemon is ready).  To wait for more, pass a ``startup_policy`` (the ``daemonctx``
        command waits for ``READY=1`` that way); a subclass may also override this.
        """
        keep_the_verdict()  # judged: a SIGTERM now changes nothing
        if not report.ok:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "daemon"
            line = f"{prog}: daemon failed to start: {report.message}\n"
            try:
                os.write(2, line.encode("utf-8", "replace"))
            except OSError:
                pass
        os._exit(report.exit_status)

    # --- the sequence -------------------------------------------------------------------

    def _run_steps_before_fork(self, plan: options.Plan) -> None:
        if plan.chroot is not None:
            steps.change_root_directory(plan.chroot)
        if plan.prevent_core:
            steps.prevent_core_dump()
        steps.change_file_creation_mask(plan.umask)
        steps.change_working_directory(plan.workdir)
        steps.flush_standard_streams()

    def _run_steps_after_fork(self, plan: options.Plan, opened: options.Opened,
                              keep: frozenset[int], highest_fd: int | None,
                              ignored_signals: list[int]) -> None:
        global _open_context
        steps.reset_inherited_signal_state(ignored_signals)
        install_signal_handlers(plan.handlers)
        closed_up_to = steps.close_inherited_fds(keep, highest_fd)
        # Python objects made before open() may still believe they own the numbers just
        # closed; what daemonctx keeps from here on (the report pipe, the pidfile's lock) is
        # numbered above them, so that collecting such an object cannot close it.
        _os.record_closed_fds(closed_up_to)
        handshake.daemon_end.keep_above_closed_fds()
        for stream_fd, target in enumerate(plan.streams):
            steps.redirect_stream(target, stream_fd)
        opened.close()
        if plan.activation_fds:
            # The sockets systemd passed are ours still: keep daemonctx.systemd.listen_fds()
            # (and any sd_listen_fds) working in the daemon, whose pid changed.
            os.environ["LISTEN_PID"] = str(os.getpid())
        if plan.pidfile is not None:
            # With the caller's rights still: root may create it in /run; the lock is held
            # by the open file, which the privilege drop does not touch.
            plan.pidfile.__enter__()
        try:
            steps.change_process_owner(plan.uid, plan.gid, plan.groups)
        except BaseException:
            if plan.pidfile is not None:
                plan.pidfile.__exit__(None, None, None)
            raise
        self._is_open = True
        self._opener_pid = os.getpid()
        _open_context = (self._opener_pid, self)
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True

    def _run_launcher(self, intermediate_pid: int) -> NoReturn:
        """In the launching process: the launch runs to its verdict and exits (never returns)."""
        assert self._launch is not None
        self._launch.run(intermediate_pid, self.startup_policy, self.on_startup_report)

    # --- option checking ----------------------------------------------------------------

    def check_options(self, *, running: bool = False) -> None:
        """Check every option as :meth:`open` would, without changing or leaving anything.

        Raises the :class:`~daemonctx.DaemonError` :meth:`open` would raise before forking
        (a bad value, a pidfile the daemon's user could not create, a log file it could not
        open...).  ``running=True`` does not count a held pidfile lock as an error: a restart
        checks what the new instance needs before it stops the old one.  Files the check
        created are removed again.
        """
        options.resolve(self, pidfile_holder_ok=running)[1].undo()


# --- helpers: nesting, threads ----------------------------------------------------------------


def _refuse_nested(context: DaemonContext) -> None:
    """Refuse to open a context while another one is open in this very process."""
    if _open_context is None:
        return
    pid, other = _open_context
    if pid != os.getpid() or other is context or not other.is_open:
        return
    pidfile = getattr(other.pidfile, "path", None)
    holding = f" (holding pidfile {pidfile})" if pidfile is not None else ""
    raise DaemonAlreadyOpenError(
        f"a DaemonContext is already open in this process (pid {pid}){holding}: opening "
        f"another one inside it would detach again and leave the first one's pidfile with the "
        f"process that exits; the process is already a daemon, so use the open context (or "
        f"close it first)")


def _load_prctl_for_chroot() -> None:
    """Load ``prctl`` before changing root, for the launcher to become a subreaper.

    In a chroot ``/proc`` is usually missing, so the launcher could not find what a failed
    start left through the daemon's session, and nothing can be imported any more: loaded now
    (a few milliseconds), ``prctl`` makes the launcher a subreaper before it forks, so that such
    processes are re-parented to it.
    """
    try:
        _os.load_prctl()
    except (OSError, AttributeError):
        pass


def _warn_about_threads() -> None:
    """Warn (once per call site) that the threads running now will not exist in the daemon.

    The threads are counted by the kernel (``/proc/self/task``), not only by :mod:`threading`:
    a thread a C extension started (OpenBLAS's, when numpy is imported) or one started with
    ``_thread`` vanishes as silently.  Each is named by its :mod:`threading` name when it has
    one, else by the kernel's name for it and its thread id.
    """
    others = _other_thread_names()
    if not others:
        return
    import warnings

    names = ", ".join(others)
    level = 2  # 1 is this function, 2 its caller
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1  # point at the caller's line, not ours
    warnings.warn(DaemonThreadWarning(
        f"{len(others)} other thread{'s' if len(others) > 1 else ''} running when "
        f"DaemonContext.open() forks ({names}): only the thread calling open() continues in "
        f"the daemon, the others will not exist there; start threads after open()"),
        stacklevel=level)


def _other_thread_names() -> list[str]:
    """The threads of this process other than the calling one, named for a message."""
    threading = sys.modules.get("threading")
    known: dict[int, str] = {}
    if threading is not None:
        for thread in threading.enumerate():
            if thread.native_id is not None and thread.is_alive():
                known[thread.native_id] = repr(thread.name)
    import _thread

    me = _thread.get_native_id()
    tids = _proc.thread_ids()
    if tids is None:  # no /proc: only what threading knows
        return [name for tid, name in sorted(known.items()) if tid != me]
    names: list[str] = []
    for tid in tids:
        if tid == me:
            continue
        name = known.get(tid)
        if name is None:
            kernel_name = _proc.thread_name(tid)
            if kernel_name is None:
                continue  # it ended meanwhile
            name = f"{kernel_name!r} (thread {tid}, not started by threading)"
        names.append(name)
    return names
