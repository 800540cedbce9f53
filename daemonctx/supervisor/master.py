"""The master: the loop that keeps the workers running, and what each signal means to it.

:class:`Supervisor` forks the workers (from one place, at the top of its loop), reaps every child,
hands each worker exit to :class:`~daemonctx.supervisor.policy.RestartBudget` for a decision,
drives a :class:`~daemonctx.supervisor.rolling.RollingRestart` on SIGHUP, and reports readiness
once every worker is ready.  :func:`fork_processes` is tornado's entry point over it.  The master
blocks in ``poll`` on a signal wake-up fd and the workers' readiness pipe; signal handlers only
record the signal, and the loop dispatches it to one ``handle_<signal>`` method (gunicorn's
arbiter model).
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from types import FrameType
from typing import Any

from daemonctx import _os, handshake, steps
from daemonctx._signal_module import signal as c_signal  # no enum conversions on hot paths
from daemonctx.errors import DaemonError, DaemonOptionError
from daemonctx.supervisor import worker as worker_side
from daemonctx.supervisor.policy import (
    RestartBudget,
    RestartPolicy,
    SlotHistory,
    WorkerExit,
    _check_seconds,
    _option_error,
)
from daemonctx.supervisor.rolling import Finished, Retire, RollingRestart, StartSuccessor

__all__ = ["Supervisor", "SupervisorError", "fork_processes"]

WorkerStartHook = Callable[[int], object]
WorkerExitHook = Callable[[int, int, int], object]
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None

_HANDLED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
)

_fork_processes_called = False
_running: Supervisor | None = None

# prctl (through ctypes: about 2 ms) is loaded with this module, not when run() starts the
# workers: a fork_processes() call then costs no import, and a master that chroots or drops
# privileges before it runs could not load it any more.  run() then only looks it up.
if sys.platform.startswith("linux"):
    try:
        _os.load_prctl()
    except (OSError, AttributeError):
        pass


class SupervisorError(DaemonError, RuntimeError):
    """The supervisor gave up, or was used in a way that cannot work.

    When it gives up (restart budget exhausted, a worker failing to boot), every worker has already
    been stopped -- gracefully, then killed after the graceful timeout -- so no worker outlives the
    exception.  The message names the worker, its pid and its last exit status;
    ``task_id``, ``pid`` and ``exit_status`` carry them (``exit_status`` as in
    :attr:`subprocess.Popen.returncode`: the exit status, or ``-N`` after signal N).  Also a
    :class:`RuntimeError`, because tornado's ``fork_processes`` raises that when it gives up.
    """

    def __init__(self, message: str, *, task_id: int | None = None, pid: int | None = None,
                 exit_status: int | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.pid = pid
        self.exit_status = exit_status


@dataclass(eq=False)
class _Worker:
    """A forked worker process the master has not reaped yet."""

    task_id: int
    pid: int
    started: float
    ready: bool
    retiring: bool = False                # stopped on purpose: its exit is not restarted
    kill_at: float | None = None          # when SIGKILL follows the SIGTERM it was sent


@dataclass(eq=False)
class _Slot:
    """A task id the service wants a worker for, with its restart history."""

    task_id: int
    history: SlotHistory
    current: _Worker | None = None
    restart_due: float | None = None


class _BecomeWorker(BaseException):
    """Unwinds the master's loop in a freshly forked worker, up to :meth:`Supervisor.run`."""

    def __init__(self, task_id: int) -> None:
        super().__init__(task_id)
        self.task_id = task_id


def fork_processes(num_processes: int | None = None, max_restarts: int | None = None, *,
                   policy: RestartPolicy | None = None,
                   graceful_timeout: float = 30.0,
                   on_worker_start: WorkerStartHook | None = None,
                   on_worker_exit: WorkerExitHook | None = None,
                   proc_title: str | None = None,
                   parent_death_signal: int = signal.SIGKILL,
                   logger: str | Any | None = None,
                   **policy_fields: Any) -> int:
    """Fork ``num_processes`` workers; return the task id in each, never return in the master.

    Tornado 6's contract, unchanged by default:

    * ``num_processes`` ``None`` or <= 0 means ``os.cpu_count()`` workers.
    * In each worker the call returns its task id, 0 to n-1 (also given by :func:`task_id`).
    * A worker killed by a signal or exiting non-zero is restarted at once with the same task id;
      one exiting 0 is not restarted.
    * When every worker has exited normally, the master calls ``sys.exit(0)``, so that the caller
      does not go on to run worker code in the master.
    * Each restart counts against ``max_restarts`` (default 100, over all workers, however soon the
      worker died); exceeding it raises a :class:`RuntimeError` whose message begins with
      tornado's ``"Too many child restarts, giving up"`` and goes on with the last exit
      (a :class:`SupervisorError`) -- after the other workers were stopped, unlike tornado.

    Unlike tornado, the master also handles signals (module docstring): SIGTERM stops every worker
    and then ``sys.exit(0)``, HUP restarts them one at a time, TTIN/TTOU scale; and workers die
    with their master.  Create no event loop, thread or child before calling it.

    Its log says what tornado's says, word for word (``Starting 4 processes``, ``child 1 (pid
    4242) exited with status 3, restarting``, ``child 1 (pid 4242) exited normally``), on
    ``logger``: by default tornado's own ``tornado.general`` when tornado is loaded (where
    tornado's users and tornado's tests look for it), otherwise ``daemonctx.supervisor``.

    The richer policy is opt-in: pass a whole ``policy`` or any :class:`RestartPolicy` field as a
    keyword (``fork_processes(4, restart_burst=5, backoff_initial=0.5)``), applied over
    :meth:`RestartPolicy.tornado`.  The other keywords are :class:`Supervisor`'s.  Calling it a
    second time in a process raises :class:`SupervisorError`.
    """
    global _fork_processes_called
    current_task = worker_side.task_id()
    if _fork_processes_called or current_task is not None:
        raise SupervisorError(
            "fork_processes() was already called in this process"
            + (f" (this is worker {current_task})" if current_task is not None else "")
            + ": call it once, in the process that becomes the master")
    base = policy if policy is not None else RestartPolicy.tornado()
    known = {f.name for f in fields(RestartPolicy)}
    unknown = sorted(set(policy_fields) - known)
    if unknown:
        raise DaemonOptionError(
            f"fork_processes() got unknown option {unknown[0]!r}: expected a RestartPolicy field"
            f" ({', '.join(sorted(known))}) or a Supervisor option")
    if max_restarts is not None:
        policy_fields["max_restarts"] = max_restarts
    effective = replace(base, **policy_fields) if policy_fields else base
    if logger is None:
        logger = "tornado.general" if "tornado.log" in sys.modules else "daemonctx.supervisor"
    supervisor = Supervisor(num_processes, policy=effective, graceful_timeout=graceful_timeout,
                            on_worker_start=on_worker_start, on_worker_exit=on_worker_exit,
                            proc_title=proc_title, parent_death_signal=parent_death_signal,
                            logger=logger)
    supervisor._wording = _TornadoWording()
    # tornado's lines on ``logger``, and nothing else: code that watches them (and tornado's own
    # tests) sees exactly tornado's log; the master's other events go to daemonctx's logger.
    supervisor._events_logger = "daemonctx.supervisor"
    _fork_processes_called = True
    worker = supervisor.run()
    if worker is None:
        # Every worker has ended and the master must not fall through into worker code.
        sys.exit(0)
    return worker


class Supervisor:
    """A master process that keeps ``num_workers`` forked workers running under a restart policy.

    :meth:`run` forks the workers and returns each one's task id in that worker; the master
    stays inside :meth:`run` until the service stops.  The master's guarantees:

    * a worker that ends is restarted with the same task id according to ``policy`` (default
      :class:`RestartPolicy` ()); when the policy gives up, every worker is stopped first, then
      :class:`SupervisorError` is raised;
    * TERM / INT stop every worker (TERM, then KILL after ``graceful_timeout`` seconds) and
      :meth:`run` returns ``None``; a second TERM / INT, or QUIT, kills them at once;
    * HUP replaces the workers one at a time, starting each replacement and waiting until it is
      ready before stopping the old one, so the service never has fewer workers than it had; if a
      replacement fails to boot, the rolling restart is abandoned and the old workers keep
      serving.  A replacement is forked from the master, so it sees what the worker loads after
      the fork; during the switch two processes briefly share a task id;
    * TTIN adds a worker, TTOU retires the highest task id (never the last one);
    * every child is reaped, known or not, so no zombie accumulates;
    * each worker gets ``parent_death_signal`` (default SIGKILL) when the master dies, however it
      dies -- SIGKILL because a worker's own TERM handler may delay or ignore TERM, and nobody is
      left to escalate; the graceful path is TERM to the master.  On Linux this is
      ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked exits: workers are forked
      by the main thread, which lives as long as the master.  A worker that finds its master
      already gone right after the fork (before the setting took effect) exits at once;
    * once every worker is ready, the master calls :func:`daemonctx.handshake.notify_ready`
      (the :class:`~daemonctx.DaemonContext` launcher's report and systemd's READY=1).

    In each worker, right after the fork: signal handlers and the wake-up fd are those the master
    had before :meth:`run`, the master's internal fds are closed,
    :func:`daemonctx.handshake.close_in_child` has run, then ``on_worker_start(task_id)``; an
    exception there ends the worker with status 1.  In the master, after each reaped worker,
    ``on_worker_exit(task_id, pid, exit_status)`` (``exit_status`` like
    :attr:`subprocess.Popen.returncode`).  With ``proc_title`` and the optional ``setproctitle``
    package, processes are titled ``"<proc_title> master"`` and ``"<proc_title> worker <id>"``.
    The master logs its events on ``logger`` (a :class:`logging.Logger` or a logger's name,
    default ``"daemonctx.supervisor"``).

    The ``handle_<signal>`` methods hold what each signal means; hooks running in the master
    may call them too (``supervisor.handle_term()`` from ``on_worker_exit`` stops the service).

    Inside a :class:`~daemonctx.DaemonContext`, the pidfile holds the master's pid and workers
    never release it.  :meth:`run` waits for every child, including those the application started
    in the master before; it must be called from the main thread, once, and not inside a worker.
    """

    def __init__(self, num_workers: int | None = None, *, policy: RestartPolicy | None = None,
                 graceful_timeout: float = 30.0,
                 on_worker_start: WorkerStartHook | None = None,
                 on_worker_exit: WorkerExitHook | None = None,
                 proc_title: str | None = None,
                 parent_death_signal: int = signal.SIGKILL,
                 logger: str | Any = "daemonctx.supervisor") -> None:
        if num_workers is not None and (isinstance(num_workers, bool)
                                        or not isinstance(num_workers, int)):
            raise _option_error("num_workers", num_workers,
                                "an integer (None or <= 0: one worker per CPU)")
        if num_workers is None or num_workers <= 0:
            num_workers = os.cpu_count() or 1
        if policy is not None and not isinstance(policy, RestartPolicy):
            raise _option_error("policy", policy, "a RestartPolicy")
        _check_seconds("graceful_timeout", graceful_timeout)
        for name, hook in (("on_worker_start", on_worker_start),
                           ("on_worker_exit", on_worker_exit)):
            if hook is not None and not callable(hook):
                raise _option_error(name, hook, "a callable or None")
        if parent_death_signal not in set(signal.valid_signals()):
            raise _option_error("parent_death_signal", parent_death_signal, "a signal number")
        if proc_title is not None and not isinstance(proc_title, str):
            raise _option_error("proc_title", proc_title, "a string or None")
        if not isinstance(logger, str) and not callable(getattr(logger, "warning", None)):
            raise _option_error("logger", logger, "a logging.Logger or a logger's name")
        self.num_workers = num_workers
        self.policy = policy if policy is not None else RestartPolicy()
        self.graceful_timeout = float(graceful_timeout)
        self.on_worker_start = on_worker_start
        self.on_worker_exit = on_worker_exit
        self.proc_title = proc_title
        self.parent_death_signal = int(parent_death_signal)
        self.logger: str | Any = logger
        self._wording = _Wording()
        # Where the master's own events go (workers started, ready, stopping...); fork_processes
        # keeps tornado's logger for tornado's lines only (see fork_processes).
        self._events_logger: str | Any = logger
        self._budget = RestartBudget(self.policy)
        self._master_pid = 0
        self._ran = False
        self._slots: dict[int, _Slot] = {}
        self._workers: dict[int, _Worker] = {}
        self._to_start: deque[_Slot] = deque()      # forked at the top of the loop, in order
        self._rolling: RollingRestart | None = None
        self._pending_signals: deque[int] = deque()
        self._saved_handlers: dict[int, _SignalHandler] = {}
        self._saved_wakeup_fd = -1
        self._wakeup_installed = False
        self._internal_fds: list[int] = []
        self._wakeup_r = self._wakeup_w = -1
        self._ready_r = self._ready_w = -1
        self._death_r = self._death_w = -1
        self._ready_buffer = b""
        self._poller: Any = None
        self._set_pdeathsig: Callable[[int], None] | None = None
        self._stopping = False
        self._announced = False
        self._failure: SupervisorError | None = None

    # -- the public entry points ------------------------------------------------------------

    def run(self) -> int | None:
        """Fork and supervise the workers; return the task id in a worker, ``None`` in the master.

        In the master it returns once the service has stopped: every worker exited normally, or
        a TERM / INT stopped them.  It raises :class:`SupervisorError` after stopping every
        worker when the policy gives up, and on misuse (called twice, from a thread other than
        the main one, or inside a worker).
        """
        self._check_can_run()
        try:
            self._start_master()
            for task in range(self.num_workers):
                self._add_slot(task)
            self._loop()
        except _BecomeWorker as become:
            return self._enter_worker(become.task_id)
        except BaseException:
            if os.getpid() == self._master_pid:
                self._kill_all_now()
            raise
        finally:
            if os.getpid() == self._master_pid:
                self._stop_master()
        if self._failure is not None:
            raise self._failure
        return None

    def serve(self, target: Callable[[int], object]) -> None:
        """Run ``target(task_id)`` in each worker; return in the master when the service stopped.

        A worker never returns from here into the caller's code: it exits when ``target``
        returns (status 0), raises :class:`SystemExit` (its code) or raises anything else (the
        traceback on stderr, status 1), like :class:`multiprocessing.Process`.
        """
        worker = self.run()
        if worker is None:
            return
        status = 1
        try:
            target(worker)
            status = 0
        except SystemExit as stop:
            status = worker_side.exit_code_of(stop)
        except BaseException:
            worker_side.print_exception()
        finally:
            steps.flush_standard_streams()
            os._exit(status)

    # -- signal handlers, run by the loop (never inside the signal handler itself) -----------

    def handle_term(self) -> None:
        """SIGTERM: stop gracefully; if already stopping, kill every worker now."""
        self._begin_stop(immediate=self._stopping)

    def handle_int(self) -> None:
        """SIGINT: the same as SIGTERM."""
        self._begin_stop(immediate=self._stopping)

    def handle_quit(self) -> None:
        """SIGQUIT: kill every worker now, then return (gunicorn's quick shutdown)."""
        self._begin_stop(immediate=True)

    def handle_hup(self) -> None:
        """SIGHUP: replace every worker, one at a time (a rolling restart).

        Under systemd (``Type=notify-reload``), ``RELOADING=1`` is sent now and ``READY=1`` once
        every worker has been replaced (or the rolling restart was abandoned).
        """
        if self._stopping:
            return
        self._log("info", "rolling restart of %d workers requested", len(self._slots))
        now = time.monotonic()
        if self._rolling is not None:
            self._rolling.widen(self._slots, now)
            return
        self._rolling = RollingRestart(self._slots, now, announce=self._announced)
        if self._announced:
            _os.notify_service_manager(reloading=True)

    def handle_ttin(self) -> None:
        """SIGTTIN: add one worker, with the lowest free task id."""
        if self._stopping:
            return
        busy = set(self._slots) | {w.task_id for w in self._workers.values()}
        new_id = next(i for i in range(len(busy) + 1) if i not in busy)
        self._log("info", "adding worker %d (SIGTTIN)", new_id)
        self._add_slot(new_id)

    def handle_ttou(self) -> None:
        """SIGTTOU: retire the worker with the highest task id, unless it is the last one."""
        if self._stopping:
            return
        if len(self._slots) <= 1:
            self._log("info", "SIGTTOU ignored: the service is down to one worker")
            return
        retired = max(self._slots)
        slot = self._slots.pop(retired)
        if slot in self._to_start:
            self._to_start.remove(slot)
        self._log("info", "retiring worker %d (SIGTTOU)", retired)
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.task_id == retired:
                self._terminate(worker, now)

    def handle_chld(self) -> None:
        """SIGCHLD: nothing more to do -- every wake-up of the loop reaps all exited children."""

    # -- master set-up and tear-down -------------------------------------------------------

    def _check_can_run(self) -> None:
        global _running
        current_task = worker_side.task_id()
        if current_task is not None:
            raise SupervisorError(f"Supervisor.run() called inside worker {current_task}: a"
                                  " worker cannot supervise workers of its own")
        if self._ran:
            raise SupervisorError("Supervisor.run() was already called on this supervisor:"
                                  " create a new Supervisor")
        if _running is not None:
            raise SupervisorError("another Supervisor is already running in this process")
        self._ran = True
        _running = self

    def _start_master(self) -> None:
        self._master_pid = os.getpid()
        self._wakeup_r, self._wakeup_w = self._internal_pipe(blocking=False)
        try:
            self._saved_wakeup_fd = c_signal.set_wakeup_fd(self._wakeup_w,
                                                         warn_on_full_buffer=False)
        except ValueError as error:
            raise SupervisorError(
                f"Supervisor.run() must be called from the main thread ({error})") from None
        self._wakeup_installed = True
        self._ready_r, self._ready_w = self._internal_pipe(blocking=False)
        self._death_r, self._death_w = self._internal_pipe(blocking=True)
        # Everything a worker needs is loaded here, once, so a fork costs no import, and a
        # master inside a chroot (or running as a user who cannot read the Python installation)
        # never has to import a module later.  Logging goes through `logging` only if the
        # application loaded it (see _log_to): importing it here would slow every fork.
        _os.preload_service_manager()
        self._set_pdeathsig = worker_side.load_pdeathsig_setter()
        for signum in _HANDLED_SIGNALS:
            self._saved_handlers[signum] = c_signal.signal(signum, self._record_signal)
        self._poller = select.poll()
        self._poller.register(self._wakeup_r, select.POLLIN)
        self._poller.register(self._ready_r, select.POLLIN)
        if self.proc_title is not None:
            worker_side.set_proc_title(f"{self.proc_title} master")
        self._log_as_tornado("info", *self._wording.starting(self.num_workers))

    def _internal_pipe(self, *, blocking: bool) -> tuple[int, int]:
        # Above every fd DaemonContext closed behind objects made before open(), so that
        # collecting one of them never closes the master's or a worker's pipe.
        read_end, write_end = (_os.above_closed_fds(fd) for fd in os.pipe())
        self._internal_fds += [read_end, write_end]
        for fd in (read_end, write_end):
            os.set_blocking(fd, blocking)
        return read_end, write_end

    def _stop_master(self) -> None:
        global _running
        if self._saved_handlers:
            for signum, handler in self._saved_handlers.items():
                c_signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            self._saved_handlers = {}
        if self._wakeup_installed:
            c_signal.set_wakeup_fd(self._saved_wakeup_fd)
            self._wakeup_installed = False
        for fd in self._internal_fds:
            os.close(fd)
        self._internal_fds = []
        _running = None

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        self._pending_signals.append(signum)

    def _log(self, level: str, message: str, *args: object) -> None:
        """The master's own events."""
        _log_to(self._events_logger, level, message, *args)

    def _log_as_tornado(self, level: str, message: str, *args: object) -> None:
        """The events tornado's ``fork_processes`` logs too, on ``logger``."""
        _log_to(self.logger, level, message, *args)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._dispatch_signals()
            now = time.monotonic()
            self._collect_exits(now)
            self._fire_timers(now)
            self._advance_rolling_restart(now)
            if self._start_workers():
                continue  # a worker ready when forked may let a rolling restart go on at once
            self._announce_ready_once()
            if not self._workers and (self._stopping or not self._slots):
                return
            self._wait(self._next_deadline())

    def _dispatch_signals(self) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_term, signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit, signal.SIGHUP: self.handle_hup,
            signal.SIGTTIN: self.handle_ttin, signal.SIGTTOU: self.handle_ttou,
            signal.SIGCHLD: self.handle_chld,
        }
        while self._pending_signals:
            handlers[self._pending_signals.popleft()]()

    def _wait(self, deadline: float | None) -> None:
        timeout_ms = None
        if deadline is not None:
            timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        self._poller.poll(timeout_ms)
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _next_deadline(self) -> float | None:
        deadlines = [w.kill_at for w in self._workers.values() if w.kill_at is not None]
        if not self._stopping:
            deadlines += [s.restart_due for s in self._slots.values()
                          if s.restart_due is not None]
        return min(deadlines, default=None)

    def _fire_timers(self, now: float) -> None:
        for worker in self._workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                worker.kill_at = None
                self._log("warning",
                          "worker %d (pid %d) still running %.1f s after SIGTERM: SIGKILL",
                          worker.task_id, worker.pid, self.graceful_timeout)
                _kill(worker.pid, signal.SIGKILL)
        if self._stopping:
            return
        for slot in list(self._slots.values()):
            if slot.restart_due is not None and now >= slot.restart_due:
                slot.restart_due = None
                self._to_start.append(slot)

    # -- forking workers: the one place ------------------------------------------------------

    def _add_slot(self, task: int) -> None:
        slot = _Slot(task, self._budget.new_slot())
        self._slots[task] = slot
        self._to_start.append(slot)

    def _start_workers(self) -> bool:
        """Fork every worker asked for since the last time round the loop; True if any."""
        started = False
        while self._to_start and not self._stopping:
            slot = self._to_start.popleft()
            if self._slots.get(slot.task_id) is not slot:
                continue  # retired by SIGTTOU meanwhile
            worker = self._fork_worker(slot.task_id)
            if worker is None:
                return started
            slot.current = worker
            if self._rolling is not None:
                self._rolling.forked(worker)
            started = True
        return started

    def _fork_worker(self, task: int) -> _Worker | None:
        steps.flush_standard_streams()
        # Handled signals stay blocked across the fork, so that one arriving in the new worker
        # before its handlers are restored is delivered to the restored handler, not recorded
        # into the master's queue copy and lost.
        previous_mask = c_signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            c_signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            self._give_up(f"could not fork worker {task}: {error}", task=task)
            return None
        if pid == 0:
            self._become_worker(task, previous_mask)
        c_signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        worker = _Worker(task, pid, started=time.monotonic(), ready=self.policy.ready_on_start)
        self._workers[pid] = worker
        self._log("info", "worker %d started (pid %d)", task, pid)
        return worker

    def _become_worker(self, task: int, signal_mask: list[int] | set[int]) -> None:
        # The master's bookkeeping means nothing in the worker.
        self._workers, self._slots, self._rolling = {}, {}, None
        self._to_start.clear()
        self._pending_signals.clear()
        worker_side.set_up(
            task, master_pid=self._master_pid, pdeathsig=self._set_pdeathsig,
            death_signal=self.parent_death_signal, wakeup_fd=self._saved_wakeup_fd,
            handlers=self._saved_handlers, internal_fds=self._internal_fds,
            ready_w=None if self.policy.ready_on_start else self._ready_w,
            death_r=self._death_r, proc_title=self.proc_title, signal_mask=signal_mask)
        raise _BecomeWorker(task)

    def _enter_worker(self, task: int) -> int:
        if self.on_worker_start is not None:
            try:
                self.on_worker_start(task)
            except BaseException:
                worker_side.report_and_exit()
        return task

    # -- reaping and restarting ------------------------------------------------------------------

    def _collect_exits(self, now: float) -> None:
        exits: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exits.append((pid, status))
        # Read readiness after reaping: a reaped worker's report is already in the pipe, so a
        # worker that was ready is never mistaken for one that failed to boot.
        self._read_ready_reports()
        for pid, status in exits:
            self._handle_exit(pid, status, now)

    def _read_ready_reports(self) -> None:
        while True:
            try:
                data = os.read(self._ready_r, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            self._ready_buffer += data
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        for line in lines:
            worker = self._workers.get(int(line)) if line.strip().isdigit() else None
            if worker is not None and not worker.ready:
                worker.ready = True
                self._log("info", "worker %d (pid %d) is ready", worker.task_id, worker.pid)

    def _handle_exit(self, pid: int, status: int, now: float) -> None:
        worker = self._workers.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if worker is None:
            # An orphan reparented to us, or a child the application started: reaped all the same.
            self._log("debug", "reaped unknown child %d (%s)", pid,
                      _os.describe_wait_status(code))
            return
        if self.on_worker_exit is not None:
            try:
                self.on_worker_exit(worker.task_id, pid, code)
            except Exception:
                self._log("exception", "on_worker_exit(%d, %d, %d) failed",
                          worker.task_id, pid, code)
        keep = self._rolling.exited(worker) if self._rolling is not None else None
        slot = self._slots.get(worker.task_id)
        if keep is not None and slot is not None:
            self._abandon_rolling_restart(slot, worker, keep, code)
            return
        if self._stopping or worker.retiring or slot is None or slot.current is not worker:
            level = "info" if self._stopping or worker.retiring else "warning"
            self._log(level, *self._wording.exited(worker.task_id, pid, code))
            return
        slot.current = None
        self._handle_slot_exit(slot, worker, code, now)

    def _handle_slot_exit(self, slot: _Slot, worker: _Worker, code: int, now: float) -> None:
        exited = self._wording.exited(worker.task_id, worker.pid, code)
        decision = self._budget.decide(slot.history, WorkerExit(
            worker.task_id, worker.pid, code, worker.ready, now - worker.started,
            exited[0] % exited[1:]), now)
        if decision.action == "done":
            del self._slots[slot.task_id]
            self._log_as_tornado("info", *self._wording.finished(worker.task_id, worker.pid,
                                                                 code))
        elif decision.action == "give-up":
            self._give_up(decision.message, task=worker.task_id, pid=worker.pid, code=code)
        elif decision.delay > 0:
            self._log_as_tornado("warning", exited[0] + ", restarting in %.2f s", *exited[1:],
                                 decision.delay)
            slot.restart_due = now + decision.delay
        else:
            self._log_as_tornado("warning", exited[0] + ", restarting", *exited[1:])
            self._to_start.append(slot)

    # -- rolling restart, readiness, stopping -------------------------------------------------

    def _advance_rolling_restart(self, now: float) -> None:
        rolling = self._rolling
        if rolling is None or self._stopping:
            return

        def current_of(task: int) -> _Worker | None:
            slot = self._slots.get(task)
            return slot.current if slot is not None else None

        action = rolling.next_action(current_of)
        if isinstance(action, StartSuccessor):
            self._log("info", "replacing worker %d (pid %d)", action.task_id,
                      current_of(action.task_id).pid)  # type: ignore[union-attr]
            self._to_start.append(self._slots[action.task_id])
        elif isinstance(action, Retire):
            old = action.worker
            assert isinstance(old, _Worker)
            self._terminate(old, now)
        elif isinstance(action, Finished):
            self._rolling = None
            self._log("info", "rolling restart complete")
            if rolling.announce:
                _os.notify_service_manager(ready=True)

    def _abandon_rolling_restart(self, slot: _Slot, failed: _Worker, old: object,
                                 code: int) -> None:
        assert isinstance(old, _Worker)
        rolling, self._rolling = self._rolling, None
        slot.current = old
        message = (f"rolling restart abandoned: replacement worker {failed.task_id} (pid"
                   f" {failed.pid}) {_os.describe_wait_status(code)} before it was ready; the old"
                   " workers keep serving")
        self._log("error", "%s", message)
        if rolling is not None and rolling.announce:
            _os.notify_service_manager(ready=True, status=message)

    def _all_ready(self) -> bool:
        return all(s.current is not None and s.current.ready for s in self._slots.values())

    def _announce_ready_once(self) -> None:
        if self._announced or self._stopping or not self._slots:
            return
        if self._all_ready():
            self._announced = True
            self._log("info", "all %d workers are ready", len(self._slots))
            handshake.notify_ready()

    def _terminate(self, worker: _Worker, now: float) -> None:
        worker.retiring = True
        worker.kill_at = now + self.graceful_timeout
        _kill(worker.pid, signal.SIGTERM)

    def _begin_stop(self, *, immediate: bool) -> None:
        if not self._stopping:
            self._log("info", "stopping %d workers", len(self._workers))
        self._stopping = True
        self._rolling = None
        self._to_start.clear()
        now = time.monotonic()
        for slot in self._slots.values():
            slot.restart_due = None
        for worker in self._workers.values():
            if immediate:
                worker.retiring = True
                worker.kill_at = None
                _kill(worker.pid, signal.SIGKILL)
            elif not worker.retiring:
                self._terminate(worker, now)
            elif worker.kill_at is None:
                worker.kill_at = now + self.graceful_timeout

    def _give_up(self, message: str, *, task: int, pid: int | None = None,
                 code: int | None = None) -> None:
        if self._failure is None:
            self._failure = SupervisorError(message, task_id=task, pid=pid, exit_status=code)
            self._log("error", "%s", message)
        self._begin_stop(immediate=False)

    def _kill_all_now(self) -> None:
        """The master is failing unexpectedly: leave no worker behind."""
        for pid in list(self._workers):
            _kill(pid, signal.SIGKILL)
        for pid in list(self._workers):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self._workers.clear()


# -- small helpers -------------------------------------------------------------------------------

def _log_to(logger: str | Any, level: str, message: str, *args: object) -> None:
    """Log through ``logger`` (a :class:`logging.Logger`, or a logger's name).

    For a name, :mod:`logging` is used only if the application imported it; otherwise warnings
    and errors go straight to stderr, as logging's last-resort handler would print them:
    importing logging (and with it threading, whose fork hooks slow every fork) is left to
    applications that configure it.
    """
    if not isinstance(logger, str):
        getattr(logger, level)(message, *args)
        return
    logging = sys.modules.get("logging")
    if logging is not None:
        getattr(logging.getLogger(logger), level)(message, *args)
        return
    if level in ("warning", "error", "exception"):
        text = message % args if args else message
        if level == "exception":
            error = sys.exc_info()[1]
            text += f": {type(error).__name__}: {error}"
        _os.write_all(2, f"{logger}: {text}\n".encode("utf-8", "replace"))


class _Wording:
    """How the supervisor words the events that tornado's ``fork_processes`` logs too."""

    def starting(self, count: int) -> tuple[Any, ...]:
        return ("starting %d worker processes", count)

    def exited(self, task: int, pid: int, code: int) -> tuple[Any, ...]:
        return ("worker %d (pid %d) %s", task, pid, _os.describe_wait_status(code))

    def finished(self, task: int, pid: int, code: int) -> tuple[Any, ...]:
        return ("worker %d (pid %d) %s: not restarted", task, pid, _os.describe_wait_status(code))


class _TornadoWording(_Wording):
    """tornado's own messages, word for word (``tornado/process.py``), for fork_processes."""

    def starting(self, count: int) -> tuple[Any, ...]:
        return ("Starting %d processes", count)

    def exited(self, task: int, pid: int, code: int) -> tuple[Any, ...]:
        if code < 0:
            return ("child %d (pid %d) killed by signal %d", task, pid, -code)
        return ("child %d (pid %d) exited with status %d", task, pid, code)

    def finished(self, task: int, pid: int, code: int) -> tuple[Any, ...]:
        return ("child %d (pid %d) exited normally", task, pid)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
