"""Restart decisions: when a worker that ended is started again, and when the service gives up.

:class:`RestartPolicy` is the configuration; :class:`RestartBudget` keeps what the restarts so
far used up and, for each worker exit, decides one thing (:class:`Decision`): the slot is done
(not restarted), the worker is restarted after a delay, or the supervisor gives up, with the
message to raise.  Nothing here forks, signals or reads a clock: the master passes the exit and
the time, so the decisions can be driven by tests with plain numbers.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from daemonctx.errors import DaemonOptionError

__all__ = ["Decision", "RestartBudget", "RestartMode", "RestartPolicy", "SlotHistory",
           "WorkerExit"]

RestartMode = Literal["on-failure", "always"]


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


@dataclass
class SlotHistory:
    """The restart history of one task id: its next backoff delay and boot failures in a row."""

    next_delay: float
    boot_failures: int = 0


@dataclass(frozen=True)
class WorkerExit:
    """One worker's end, as the master saw it.

    ``code`` is :func:`os.waitstatus_to_exitcode`'s (``-N`` after signal N); ``ready`` whether
    it had reported readiness; ``uptime`` seconds since it was forked; ``description`` the
    words for it that messages quote (``"worker 1 (pid 4242) exited with status 3"``).
    """

    task_id: int
    pid: int
    code: int
    ready: bool
    uptime: float
    description: str


@dataclass(frozen=True)
class Decision:
    """What to do after a worker exit: ``"done"``, ``"restart"`` (after ``delay`` s) or
    ``"give-up"`` (with ``message``, the :class:`~daemonctx.SupervisorError`'s)."""

    action: Literal["done", "restart", "give-up"]
    delay: float = 0.0
    message: str = ""


class RestartBudget:
    """What the service's restarts used up: a lifetime count and the restarts of the last
    ``restart_interval`` seconds; and the decision after each worker exit."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.restarts = 0
        self.recent: deque[float] = deque()

    def new_slot(self) -> SlotHistory:
        """The history of a task id that was never restarted."""
        return SlotHistory(next_delay=self.policy.backoff_initial)

    def decide(self, slot: SlotHistory, exit: WorkerExit, now: float) -> Decision:
        """Decide after ``exit`` of the worker of ``slot`` at time ``now``; update the state.

        In order: a success status under ``"on-failure"`` ends the slot; a boot failure (dead
        before ready, or within ``start_period``) beyond ``boot_retries`` in a row gives up;
        then the lifetime limit, then the rate budget; otherwise restart after the slot's
        backoff delay, which then grows (and is reset by a long enough uptime).
        """
        policy = self.policy
        if policy.restart == "on-failure" and exit.code in policy.success_exit_statuses:
            return Decision("done")
        booting = not exit.ready or exit.uptime < policy.start_period
        if policy.boot_retries is not None and booting:
            slot.boot_failures += 1
            if slot.boot_failures > policy.boot_retries:
                when = ("before it was ready" if not exit.ready
                        else f"{exit.uptime:.2f} s after start")
                return Decision("give-up", message=(
                    f"{exit.description} {when}: it failed to boot {slot.boot_failures} "
                    f"time(s) in a row (boot_retries={policy.boot_retries}); stopped every worker"
                    " -- fix the worker's start-up, or raise boot_retries if the failure is "
                    "transient"))
        else:
            slot.boot_failures = 0
        if exit.uptime >= policy.backoff_reset_after:
            slot.next_delay = policy.backoff_initial
        self.restarts += 1
        if policy.max_restarts is not None and self.restarts > policy.max_restarts:
            return Decision("give-up", message=(
                f"Too many child restarts, giving up: {exit.description} after "
                f"{policy.max_restarts} restarts (max_restarts={policy.max_restarts}); stopped "
                f"every worker"))
        if policy.restart_burst is not None:
            while self.recent and now - self.recent[0] > policy.restart_interval:
                self.recent.popleft()
            if len(self.recent) >= policy.restart_burst:
                return Decision("give-up", message=(
                    f"restart budget exhausted: {exit.description} after {len(self.recent)} "
                    f"restarts within {policy.restart_interval:g} s (restart_burst="
                    f"{policy.restart_burst}, restart_interval={policy.restart_interval:g}); "
                    f"stopped every worker -- fix the crash, or raise the budget"))
            self.recent.append(now)
        delay = slot.next_delay
        slot.next_delay = min(max(delay * policy.backoff_factor, policy.backoff_initial),
                              policy.backoff_max)
        return Decision("restart", delay=delay)
