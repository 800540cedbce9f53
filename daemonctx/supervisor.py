"""Pre-fork workers: restarted when they crash, stopped when asked, never outliving their master.

Two ways in:

* :func:`fork_processes` keeps tornado 6's contract, so code written for
  ``tornado.process.fork_processes`` behaves the same (same return values, same restart
  counting), and gains what tornado lacks: SIGTERM to the master stops every worker, giving up
  stops the healthy workers first, a killed master takes its workers with it.
* :class:`Supervisor`, configured by a :class:`RestartPolicy`, adds a restart budget as a rate,
  exponential backoff, boot-failure detection, readiness, rolling restarts and scaling::

      supervisor = Supervisor(4, policy=RestartPolicy(restart_burst=5, restart_interval=10))
      worker = supervisor.run()          # returns the task id in each worker
      if worker is None:                 # the master: the service has stopped
          sys.exit(0)
      serve(listening_socket)            # worker code; call notify_worker_ready() once serving

The master blocks in ``poll`` on a signal wake-up fd and a readiness pipe, never polling on a
timer: its idle CPU is zero.  Signal handlers only record the signal; the loop dispatches them to
one method each (``handle_term``, ``handle_hup``...), gunicorn's arbiter model:

* TERM / INT: graceful stop (TERM to every worker, KILL after ``graceful_timeout``); a second
  TERM / INT, or QUIT, kills them at once.
* HUP: rolling restart, one worker at a time, never fewer workers than before.
* TTIN / TTOU: one worker more / fewer (never fewer than one).
* CHLD: wakes the loop, which reaps every child with ``waitpid(-1, WNOHANG)`` -- unknown ones
  too (orphans reparented to a master that is pid 1 or a subreaper), so no zombie accumulates.
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from types import FrameType, ModuleType
from typing import Any, Literal, NoReturn

from daemonctx import _os, handshake
from daemonctx._signal_module import signal as c_signal  # no enum conversions on hot paths
from daemonctx.errors import DaemonError, DaemonOptionError

if sys.platform.startswith("linux"):
    # Loaded with the module, not when the service starts: PR_SET_PDEATHSIG goes through it,
    # and a supervisor's start-up time is what a deploy or a restart waits for.
    try:
        _os.load_prctl()
    except (OSError, AttributeError):
        pass

__all__ = [
    "RestartPolicy",
    "Supervisor",
    "SupervisorError",
    "fork_processes",
    "notify_worker_ready",
    "parent_death_fd",
    "task_id",
]

RestartMode = Literal["on-failure", "always"]
WorkerStartHook = Callable[[int], object]
WorkerExitHook = Callable[[int, int, int], object]
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None

_HANDLED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
)

# State of this process as a worker (set after the fork, in the child only).
_task_id: int | None = None
_ready_fd: int | None = None
_parent_death_fd: int | None = None
_fork_processes_called = False
_running: Supervisor | None = None
# False makes workers use the parent-death pipe watcher instead of PR_SET_PDEATHSIG, as on systems
# without prctl; the test-suite sets it to exercise that path on Linux.
_use_pdeathsig = True


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


def _option_error(option: str, value: object, expected: str) -> DaemonOptionError:
    return DaemonOptionError(f"{option}={value!r}: expected {expected}")


def _check_count(option: str, value: object, minimum: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = "None or " if allow_none else ""
        raise _option_error(option, value, f"{none}an integer >= {minimum}")


def _check_seconds(option: str, value: object, minimum: float = 0.0,
                   strictly: bool = False) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
          and (value > minimum if strictly else value >= minimum))
    if not ok:
        relation = ">" if strictly else ">="
        raise _option_error(option, value, f"a finite number of seconds {relation} {minimum}")


@dataclass(frozen=True)
class RestartPolicy:
    """When a worker that ended is started again, and when the supervisor gives up instead.

    Budgets count restarts over all workers.  When one is exhausted, or a worker fails to boot
    more than ``boot_retries`` times in a row, the supervisor stops every worker gracefully and
    raises :class:`SupervisorError` naming the worker and its exit status: a broken service
    stops, visibly, instead of restarting in a tight loop forever.

    The defaults are those of :class:`Supervisor`; :meth:`tornado` gives tornado's behaviour,
    the default of :func:`fork_processes`.

    Attributes:
        restart: ``"on-failure"`` restarts a worker killed by a signal or exiting with a status not
            in ``success_exit_statuses``; a worker that exits with a success status is not
            restarted and its slot ends (tornado).  ``"always"`` restarts every exit.
        success_exit_statuses: exit statuses that mean "done, do not restart" under
            ``"on-failure"``.
        max_restarts: lifetime limit on restarts; ``None``: no limit.  Exceeding it gives up with
            tornado's message ``"Too many child restarts, giving up"``.
        restart_burst, restart_interval: at most ``restart_burst`` restarts within any
            ``restart_interval`` seconds (systemd's StartLimitBurst / StartLimitIntervalSec);
            ``restart_burst=None`` disables this budget.
        backoff_initial, backoff_factor, backoff_max: the first restart of a worker waits
            ``backoff_initial`` seconds, each further one ``backoff_factor`` times longer, at most
            ``backoff_max`` seconds.
        backoff_reset_after: a worker that stayed up this long resets its backoff to the
            start.
        ready_on_start: ``True``: a worker counts as ready as soon as it is forked.  ``False``: a
            worker is ready once it called :func:`notify_worker_ready`; the master reports the
            service ready (:func:`daemonctx.handshake.notify_ready`, systemd READY=1) only when
            every worker is.
        start_period: a worker that dies within this many seconds of its start (or before it
            was ready) failed to boot.
        boot_retries: how many times in a row a worker that failed to boot is started again
            (with backoff) before the service stops; 0 stops it at the first boot failure.
            ``None`` treats boot failures like any other exit (tornado).
    """

    restart: RestartMode = "on-failure"
    success_exit_statuses: frozenset[int] = frozenset({0})
    max_restarts: int | None = None
    restart_burst: int | None = 5
    restart_interval: float = 10.0
    backoff_initial: float = 0.1
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    backoff_reset_after: float = 10.0
    ready_on_start: bool = False
    start_period: float = 1.0
    boot_retries: int | None = 2

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field, the value and what is expected."""
        if self.restart not in ("on-failure", "always"):
            raise _option_error("RestartPolicy.restart", self.restart,
                                "'on-failure' or 'always'")
        statuses: object = self.success_exit_statuses
        if not isinstance(statuses, frozenset | set | list | tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 255
                for s in statuses):
            raise _option_error("RestartPolicy.success_exit_statuses", statuses,
                                "a set of exit statuses 0..255")
        object.__setattr__(self, "success_exit_statuses", frozenset(statuses))
        _check_count("RestartPolicy.max_restarts", self.max_restarts, 0, allow_none=True)
        _check_count("RestartPolicy.restart_burst", self.restart_burst, 1, allow_none=True)
        _check_seconds("RestartPolicy.restart_interval", self.restart_interval, strictly=True)
        _check_seconds("RestartPolicy.backoff_initial", self.backoff_initial)
        _check_seconds("RestartPolicy.backoff_factor", self.backoff_factor, minimum=1.0)
        _check_seconds("RestartPolicy.backoff_max", self.backoff_max, minimum=self.backoff_initial)
        _check_seconds("RestartPolicy.backoff_reset_after", self.backoff_reset_after)
        _check_seconds("RestartPolicy.start_period", self.start_period)
        _check_count("RestartPolicy.boot_retries", self.boot_retries, 0, allow_none=True)
        if not isinstance(self.ready_on_start, bool):
            raise _option_error("RestartPolicy.ready_on_start", self.ready_on_start,
                                "True or False")

    @classmethod
    def tornado(cls, max_restarts: int | None = 100) -> RestartPolicy:
        """Tornado's policy: restart failures at once, at most ``max_restarts`` times in all.

        No rate budget, no backoff, no boot-failure detection, workers ready when forked.
        """
        return cls(max_restarts=max_restarts, restart_burst=None, backoff_initial=0.0,
                   backoff_max=0.0, ready_on_start=True, start_period=0.0, boot_retries=None)


@dataclass(eq=False)
class _Worker:
    """A forked worker process the master has not reaped yet."""

    task_id: int
    pid: int
    started: float
    ready: bool
    generation: int
    successor_of: _Worker | None = None   # the worker it replaces in a rolling restart
    superseded: bool = False              # replaced by a successor; stopped once that one is ready
    retiring: bool = False                # stopped on purpose: its exit is not restarted
    kill_at: float | None = None          # when SIGKILL follows the SIGTERM it was sent


@dataclass(eq=False)
class _Slot:
    """A task id the service wants a worker for, with its restart history."""

    task_id: int
    current: _Worker | None = None
    restart_due: float | None = None
    next_delay: float = 0.0
    boot_failures: int = 0


class _BecomeWorker(BaseException):
    """Unwinds the master's loop in a freshly forked worker, up to :meth:`Supervisor.run`."""

    def __init__(self, task_id: int) -> None:
        super().__init__(task_id)
        self.task_id = task_id


def task_id() -> int | None:
    """The task id of this worker (0..n-1), or ``None`` outside a worker (in the master too).

    Same contract as ``tornado.process.task_id``.  A worker restarted after a crash, or replaced
    by a rolling restart, gets the same task id as the one it replaces.
    """
    return _task_id


def notify_worker_ready() -> bool:
    """Tell the master that this worker is ready to serve; idempotent.

    Call it once the worker can do its job (listening, configuration loaded).  Until then, its
    death counts as a boot failure; the master reports the service ready only when every worker
    is.  Returns ``True`` if the report was sent, ``False`` outside a worker, when the policy makes
    workers ready on start, or when it was already sent.
    """
    global _ready_fd
    fd = _ready_fd
    if fd is None:
        return False
    _ready_fd = None
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def parent_death_fd() -> int | None:
    """A file descriptor that becomes readable (end of file) when this worker's master is gone.

    On Linux every worker also gets ``PR_SET_PDEATHSIG`` and is killed when its master dies; on
    other systems a thread of the worker watches this fd and sends the death signal.  An event
    loop can watch it too (``loop.add_reader(parent_death_fd(), stop)``) to stop gracefully.
    Only the master holds the pipe's write end, so end of file means the master is gone.  Never
    read from it except to detect end of file.  ``None`` outside a worker.
    """
    return _parent_death_fd


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
      worker died); exceeding it raises ``RuntimeError("Too many child restarts, giving up")``
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
    if _fork_processes_called or _task_id is not None:
        raise SupervisorError(
            "fork_processes() was already called in this process"
            + (f" (this is worker {_task_id})" if _task_id is not None else "")
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
        valid_signals = set(signal.valid_signals())
        if parent_death_signal not in valid_signals:
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
        self._master_pid = 0
        self._ran = False
        self._slots: dict[int, _Slot] = {}
        self._workers: dict[int, _Worker] = {}
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
        self._handshake: ModuleType | None = None
        self._restarts = 0
        self._restart_times: deque[float] = deque()
        self._generation = 0
        self._rolling_old: _Worker | None = None
        self._stopping = False
        self._announced = False
        self._reloading = False
        self._failure: SupervisorError | None = None

    @property
    def worker_pids(self) -> dict[int, int]:
        """The pid of the current worker of each task id (in the master; a snapshot)."""
        return {tid: slot.current.pid for tid, slot in sorted(self._slots.items())
                if slot.current is not None}

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
            for slot_id in range(self.num_workers):
                self._slots[slot_id] = _Slot(slot_id, next_delay=self.policy.backoff_initial)
            for slot in list(self._slots.values()):
                self._spawn(slot)
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
            status = _exit_code_of(stop)
        except BaseException:
            _print_exception()
        finally:
            _flush_std_streams()
            os._exit(status)

    # -- signal handlers, run by the loop (never inside the signal handler itself) -----------

    def _log(self, level: str, message: str, *args: object) -> None:
        _log_to(self.logger, level, message, *args)

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
        self._generation += 1
        self._log("info", "rolling restart of %d workers requested", len(self._slots))
        if self._announced and not self._reloading:
            self._reloading = True
            _notify_systemd(reloading=True)

    def handle_ttin(self) -> None:
        """SIGTTIN: add one worker, with the lowest free task id."""
        if self._stopping:
            return
        busy = set(self._slots) | {w.task_id for w in self._workers.values()}
        new_id = next(i for i in range(len(busy) + 1) if i not in busy)
        slot = _Slot(new_id, next_delay=self.policy.backoff_initial)
        self._slots[new_id] = slot
        self._log("info", "adding worker %d (SIGTTIN)", new_id)
        self._spawn(slot)

    def handle_ttou(self) -> None:
        """SIGTTOU: retire the worker with the highest task id, unless it is the last one."""
        if self._stopping:
            return
        if len(self._slots) <= 1:
            self._log("info", "SIGTTOU ignored: the service is down to one worker")
            return
        retired = max(self._slots)
        del self._slots[retired]
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
        if _task_id is not None:
            raise SupervisorError(f"Supervisor.run() called inside worker {_task_id}: a worker"
                                  " cannot supervise workers of its own")
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
        # application loaded it (see _log): importing it here would slow every fork.
        if "NOTIFY_SOCKET" in os.environ:
            __import__("daemonctx.systemd")
            __import__("socket")
        self._handshake = handshake
        self._set_pdeathsig = _load_pdeathsig_setter()
        for signum in _HANDLED_SIGNALS:
            self._saved_handlers[signum] = c_signal.signal(signum, self._record_signal)
        self._poller = select.poll()
        self._poller.register(self._wakeup_r, select.POLLIN)
        self._poller.register(self._ready_r, select.POLLIN)
        if self.proc_title is not None:
            _set_proc_title(f"{self.proc_title} master")
        self._log("info", *self._wording.starting(self.num_workers))

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

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._dispatch_signals()
            now = time.monotonic()
            self._collect_exits(now)
            self._fire_timers(now)
            self._advance_rolling_restart(now)
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
                self._spawn(slot)

    # -- forking a worker ----------------------------------------------------------------------

    def _spawn(self, slot: _Slot, successor_of: _Worker | None = None) -> None:
        if self._stopping:
            return
        _flush_std_streams()
        # Handled signals stay blocked across the fork, so that one arriving in the new worker
        # before its handlers are restored is delivered to the restored handler, not recorded
        # into the master's queue copy and lost.
        previous_mask = c_signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            c_signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            self._give_up(f"could not fork worker {slot.task_id}: {error}", task=slot.task_id)
            return
        if pid == 0:
            self._become_worker(slot.task_id, previous_mask)
        c_signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        worker = _Worker(slot.task_id, pid, started=time.monotonic(),
                         ready=self.policy.ready_on_start, generation=self._generation,
                         successor_of=successor_of)
        self._workers[pid] = worker
        slot.current = worker
        self._log("info", "worker %d started (pid %d)", slot.task_id, pid)

    def _become_worker(self, task: int, signal_mask: Iterable[int]) -> NoReturn:
        global _task_id, _ready_fd, _parent_death_fd
        try:
            if self._set_pdeathsig is not None:
                self._set_pdeathsig(self.parent_death_signal)
            if os.getppid() != self._master_pid:
                # The master died before PR_SET_PDEATHSIG took effect: no signal will come.
                os._exit(1)
            c_signal.set_wakeup_fd(self._saved_wakeup_fd)
            for signum, handler in self._saved_handlers.items():
                c_signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            keep = {self._death_r}
            if not self.policy.ready_on_start:
                keep.add(self._ready_w)
            for fd in self._internal_fds:
                if fd not in keep:
                    os.close(fd)
            assert self._handshake is not None
            self._handshake.close_in_child()
            # The master's bookkeeping means nothing here.
            self._workers, self._slots, self._rolling_old = {}, {}, None
            self._pending_signals.clear()
            _task_id = task
            _ready_fd = None if self.policy.ready_on_start else self._ready_w
            _parent_death_fd = self._death_r
            if self._set_pdeathsig is None:
                _start_parent_death_watcher(self._death_r, self.parent_death_signal)
            if self.proc_title is not None:
                _set_proc_title(f"{self.proc_title} worker {task}")
            c_signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        except BaseException:
            _report_and_exit()
        raise _BecomeWorker(task)

    def _enter_worker(self, task: int) -> int:
        if self.on_worker_start is not None:
            try:
                self.on_worker_start(task)
            except BaseException:
                _report_and_exit()
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
                worker.successor_of = None
                self._log("info", "worker %d (pid %d) is ready", worker.task_id, worker.pid)

    def _handle_exit(self, pid: int, status: int, now: float) -> None:
        worker = self._workers.pop(pid, None)
        if worker is None:
            # An orphan reparented to us, or a child the application started: reaped all the same.
            self._log("debug", "reaped unknown child %d (%s)", pid,
                      _os.describe_wait_status(os.waitstatus_to_exitcode(status)))
            return
        code = os.waitstatus_to_exitcode(status)
        if self.on_worker_exit is not None:
            try:
                self.on_worker_exit(worker.task_id, pid, code)
            except Exception:
                self._log("exception", "on_worker_exit(%d, %d, %d) failed",
                          worker.task_id, pid, code)
        if self._rolling_old is worker:
            self._rolling_old = None
        slot = self._slots.get(worker.task_id)
        if self._stopping or worker.retiring or slot is None or slot.current is not worker:
            level = "info" if self._stopping or worker.retiring else "warning"
            self._log(level, *self._wording.exited(worker.task_id, pid, code))
            return
        slot.current = None
        old = worker.successor_of
        if old is not None and not worker.ready and old.pid in self._workers and not old.retiring:
            self._abort_rolling_restart(slot, worker, old, code)
            return
        self._handle_slot_exit(slot, worker, code, now)

    def _abort_rolling_restart(self, slot: _Slot, failed: _Worker, old: _Worker,
                               code: int) -> None:
        old.superseded = False
        slot.current = old
        self._rolling_old = None
        for worker in self._workers.values():
            worker.generation = self._generation
        message = (f"rolling restart abandoned: replacement worker {failed.task_id} (pid"
                   f" {failed.pid}) {_os.describe_wait_status(code)} before it was ready; the old"
                   " workers keep serving")
        self._log("error", "%s", message)
        if self._reloading:
            self._reloading = False
            _notify_systemd(ready=True, status=message)

    def _handle_slot_exit(self, slot: _Slot, worker: _Worker, code: int, now: float) -> None:
        policy = self.policy
        exited = self._wording.exited(worker.task_id, worker.pid, code)
        what = exited[0] % exited[1:]
        if policy.restart == "on-failure" and code in policy.success_exit_statuses:
            del self._slots[slot.task_id]
            self._log("info", *self._wording.finished(worker.task_id, worker.pid, code))
            return
        uptime = now - worker.started
        if policy.boot_retries is not None and (not worker.ready or uptime < policy.start_period):
            slot.boot_failures += 1
            if slot.boot_failures > policy.boot_retries:
                when = "before it was ready" if not worker.ready else f"{uptime:.2f} s after start"
                self._give_up(
                    f"{what} {when}: it failed to boot {slot.boot_failures} time(s) in a row"
                    f" (boot_retries={policy.boot_retries}); stopped every worker -- fix the"
                    " worker's start-up, or raise boot_retries if the failure is transient",
                    task=worker.task_id, pid=worker.pid, code=code)
                return
        else:
            slot.boot_failures = 0
        if uptime >= policy.backoff_reset_after:
            slot.next_delay = policy.backoff_initial
        self._restarts += 1
        if policy.max_restarts is not None and self._restarts > policy.max_restarts:
            self._give_up(
                f"Too many child restarts, giving up: {what} after {policy.max_restarts}"
                f" restarts (max_restarts={policy.max_restarts}); stopped every worker",
                task=worker.task_id, pid=worker.pid, code=code)
            return
        if policy.restart_burst is not None:
            while self._restart_times and now - self._restart_times[0] > policy.restart_interval:
                self._restart_times.popleft()
            if len(self._restart_times) >= policy.restart_burst:
                self._give_up(
                    f"restart budget exhausted: {what} after {len(self._restart_times)} restarts"
                    f" within {policy.restart_interval:g} s (restart_burst="
                    f"{policy.restart_burst}, restart_interval={policy.restart_interval:g});"
                    " stopped every worker -- fix the crash, or raise the budget",
                    task=worker.task_id, pid=worker.pid, code=code)
                return
            self._restart_times.append(now)
        delay = slot.next_delay
        slot.next_delay = min(max(delay * policy.backoff_factor, policy.backoff_initial),
                              policy.backoff_max)
        if delay > 0:
            self._log("warning", exited[0] + ", restarting in %.2f s", *exited[1:], delay)
        else:
            self._log("warning", exited[0] + ", restarting", *exited[1:])
        if delay <= 0:
            self._spawn(slot)
        else:
            slot.restart_due = now + delay

    # -- rolling restart, readiness, stopping -------------------------------------------------

    def _advance_rolling_restart(self, now: float) -> None:
        if self._stopping:
            return
        old = self._rolling_old
        if old is not None:
            slot = self._slots.get(old.task_id)
            successor = slot.current if slot is not None else None
            if not old.retiring and (slot is None or (successor is not None and successor.ready)):
                self._terminate(old, now)
            return
        for task in sorted(self._slots):
            slot = self._slots[task]
            current = slot.current
            if (current is not None and current.ready and not current.retiring
                    and current.generation < self._generation):
                current.superseded = True
                self._rolling_old = current
                self._log("info", "replacing worker %d (pid %d)", task, current.pid)
                self._spawn(slot, successor_of=current)
                return
        if self._reloading and self._all_ready() and all(
                w.generation >= self._generation for w in self._workers.values()):
            self._reloading = False
            self._log("info", "rolling restart complete")
            _notify_systemd(ready=True)

    def _all_ready(self) -> bool:
        return all(s.current is not None and s.current.ready for s in self._slots.values())

    def _announce_ready_once(self) -> None:
        if self._announced or self._stopping or not self._slots:
            return
        if self._all_ready():
            self._announced = True
            self._log("info", "all %d workers are ready", len(self._slots))
            assert self._handshake is not None
            self._handshake.notify_ready()

    def _terminate(self, worker: _Worker, now: float) -> None:
        worker.retiring = True
        worker.kill_at = now + self.graceful_timeout
        _kill(worker.pid, signal.SIGTERM)

    def _begin_stop(self, *, immediate: bool) -> None:
        if not self._stopping:
            self._log("info", "stopping %d workers", len(self._workers))
        self._stopping = True
        self._rolling_old = None
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
        _write_stderr(f"{logger}: {text}")


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


def _notify_systemd(**assignments: Any) -> None:
    """Tell systemd about a reload, when running under it (``$NOTIFY_SOCKET`` set)."""
    if "NOTIFY_SOCKET" in os.environ:
        from daemonctx import systemd
        systemd.notify_quietly(**assignments)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _exit_code_of(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _report_and_exit() -> NoReturn:
    """In a worker whose set-up failed: print the traceback and end with status 1."""
    try:
        _print_exception()
        _flush_std_streams()
    finally:
        os._exit(1)


def _print_exception() -> None:
    """Print the exception being handled: a traceback if it can be imported, else one line.

    Inside a chroot, or as a user who cannot read the Python installation, no module can be
    imported any more; the error must still be seen.
    """
    try:
        import traceback
    except ImportError:
        error = sys.exc_info()[1]
        _write_stderr(f"{type(error).__name__}: {error}")
        return
    traceback.print_exc()


def _write_stderr(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _set_proc_title(title: str) -> None:
    """Title the process if the optional setproctitle package is installed."""
    try:
        module = __import__("setproctitle")
    except ImportError:
        return
    module.setproctitle(title)


def _load_pdeathsig_setter() -> Callable[[int], None] | None:
    """``prctl(PR_SET_PDEATHSIG, sig)``, loaded in the master; None off Linux."""
    if not sys.platform.startswith("linux") or not _use_pdeathsig:
        return None
    try:
        _os.load_prctl()
    except (OSError, AttributeError):
        return None
    return _os.set_parent_death_signal


def _start_parent_death_watcher(fd: int, signum: int) -> None:
    """Where PR_SET_PDEATHSIG is missing: a thread that signals this worker at the pipe's EOF."""
    import threading

    def watch() -> None:
        while True:
            try:
                if os.read(fd, 1):
                    continue
            except InterruptedError:
                continue
            except OSError:
                return
            os.kill(os.getpid(), signum)
            return

    threading.Thread(target=watch, name="daemonctx-parent-death", daemon=True).start()

