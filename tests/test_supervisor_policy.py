"""Configuration and misuse of the supervisor: errors raised before anything is forked.

These run in the test process itself; each checks that nothing was forked and no signal
handler or file descriptor was left changed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import daemonctx
from daemonctx import DaemonError, DaemonOptionError
from daemonctx.supervisor import (
    RestartPolicy,
    Supervisor,
    SupervisorError,
    fork_processes,
    notify_worker_ready,
    parent_death_fd,
    task_id,
)
from daemonctx.supervisor import master as supervisor_module
from daemonctx.supervisor.policy import RestartBudget, WorkerExit
from tests.helpers import children_of
from tests.test_supervisor_support import supervisor_script


@pytest.fixture
def unchanged_process() -> Iterator[None]:
    """Fail if the test forked, or left a handler, the wake-up fd or an fd changed."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)}
    fds = sorted(os.listdir("/proc/self/fd"))
    children = children_of(os.getpid())
    yield
    assert children_of(os.getpid()) == children
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert sorted(os.listdir("/proc/self/fd")) == fds
    previous = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous)
    assert previous == -1


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("restart", "sometimes", "'on-failure' or 'always'"),
    ("restart_burst", 0, "None or an integer >= 1"),
    ("max_restarts", -1, "None or an integer >= 0"),
    ("boot_retries", 1.5, "None or an integer >= 0"),
    ("restart_interval", 0, "> 0"),
    ("backoff_initial", -0.1, ">= 0"),
    ("backoff_factor", 0.5, ">= 1.0"),
    ("backoff_max", float("inf"), "finite"),
    ("start_period", "1", "seconds"),
    ("success_exit_statuses", 0, "exit statuses 0..255"),
    ("success_exit_statuses", {0, 300}, "exit statuses 0..255"),
    ("ready_on_start", 1, "True or False"),
])
def test_restart_policy_rejects_bad_values_naming_field_and_expectation(
        field: str, value: object, expected: str) -> None:
    with pytest.raises(DaemonOptionError) as caught:
        RestartPolicy(**{field: value})  # type: ignore[arg-type]
    assert f"RestartPolicy.{field}={value!r}" in str(caught.value)
    assert expected in str(caught.value)


def test_restart_policy_backoff_max_below_initial_is_refused() -> None:
    with pytest.raises(DaemonOptionError, match=r"backoff_max=0\.5"):
        RestartPolicy(backoff_initial=1.0, backoff_max=0.5)


def test_restart_policy_accepts_any_collection_of_success_statuses() -> None:
    policy = RestartPolicy(success_exit_statuses=[0, 3])  # type: ignore[arg-type]
    assert policy.success_exit_statuses == frozenset({0, 3})
    assert hash(policy) == hash(RestartPolicy(success_exit_statuses=frozenset({3, 0})))


def test_tornado_policy_restarts_at_once_with_only_a_lifetime_limit() -> None:
    policy = RestartPolicy.tornado()
    assert policy.max_restarts == 100
    assert policy.restart_burst is None and policy.boot_retries is None
    assert policy.backoff_initial == policy.backoff_max == 0
    assert policy.ready_on_start
    assert RestartPolicy.tornado(3).max_restarts == 3


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_workers": "4"}, "num_workers='4'"),
    ({"num_workers": True}, "num_workers=True"),
    ({"graceful_timeout": -1}, "graceful_timeout=-1"),
    ({"on_worker_exit": "print"}, "on_worker_exit='print'"),
    ({"parent_death_signal": 0}, "parent_death_signal=0"),
    ({"policy": {"restart_burst": 3}}, "expected a RestartPolicy"),
])
def test_supervisor_rejects_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DaemonOptionError, match=match):
        Supervisor(**kwargs)  # type: ignore[arg-type]


def test_worker_count_none_or_not_positive_means_one_per_cpu() -> None:
    assert Supervisor().num_workers == os.cpu_count()
    assert Supervisor(0).num_workers == os.cpu_count()
    assert Supervisor(-3).num_workers == os.cpu_count()
    assert Supervisor(5).num_workers == 5


def test_fork_processes_rejects_unknown_option_before_forking(unchanged_process: None) -> None:
    with pytest.raises(DaemonOptionError, match="unknown option 'restart_brust'"):
        fork_processes(2, restart_brust=3)
    assert supervisor_module._fork_processes_called is False


def test_fork_processes_rejects_bad_policy_field_before_forking(
        unchanged_process: None) -> None:
    with pytest.raises(DaemonOptionError, match=r"RestartPolicy\.restart_burst=0"):
        fork_processes(2, restart_burst=0)


def test_run_outside_the_main_thread_raises_and_leaves_nothing_changed(
        unchanged_process: None) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Supervisor(2).run()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], SupervisorError)
    assert "main thread" in str(errors[0])
    assert supervisor_module._running is None


def test_second_call_raises_in_master_and_in_worker(tmp_path: Path) -> None:
    body = """
    supervisor = Supervisor(1, policy=RestartPolicy(ready_on_start=True))
    tid = supervisor.run()
    if tid is not None:
        for again in (lambda: fork_processes(1), supervisor.run, Supervisor(1).run):
            try:
                again()
            except SupervisorError as error:
                record("worker", "|", error)
        os._exit(0)
    try:
        supervisor.run()
    except SupervisorError as error:
        record("master", "|", error)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 0
        in_worker = [" ".join(x[1:]) for x in master.lines("worker")]
        assert len(in_worker) == 3
        assert in_worker[0].startswith("fork_processes() was already called in this process"
                                       " (this is worker 0)")
        assert all("inside worker 0" in x for x in in_worker[1:])
        assert "already called on this supervisor" in " ".join(master.lines("master")[0])


def test_worker_side_functions_outside_a_worker() -> None:
    assert task_id() is None
    assert notify_worker_ready() is False
    assert parent_death_fd() is None


def test_supervisor_error_is_a_daemon_error_and_tornados_runtime_error() -> None:
    error = SupervisorError("gave up", task_id=1, pid=42, exit_status=-9)
    assert isinstance(error, DaemonError) and isinstance(error, RuntimeError)
    assert (error.task_id, error.pid, error.exit_status) == (1, 42, -9)


def test_names_are_exported_lazily_from_the_package() -> None:
    assert daemonctx.Supervisor is Supervisor
    assert daemonctx.RestartPolicy is RestartPolicy
    assert daemonctx.SupervisorError is SupervisorError
    assert daemonctx.fork_processes is fork_processes
    assert daemonctx.task_id is task_id


# --- the decisions, driven without forking ---------------------------------------------------


def _exit(code: int = 1, *, ready: bool = True, uptime: float = 100.0) -> WorkerExit:
    return WorkerExit(task_id=0, pid=42, code=code, ready=ready, uptime=uptime,
                      description="worker 0 (pid 42) exited with status 1")


def test_decision_success_status_ends_the_slot_and_failure_restarts_with_growing_backoff() -> None:
    budget = RestartBudget(RestartPolicy(backoff_initial=0.5, backoff_factor=2, backoff_max=3,
                                         restart_burst=None))
    slot = budget.new_slot()
    assert budget.decide(slot, _exit(0), now=0).action == "done"
    delays = [budget.decide(slot, _exit(1, uptime=1.0), now=t).delay for t in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    # a worker that stayed up long enough starts the backoff over
    assert budget.decide(slot, _exit(1, uptime=60.0), now=10).delay == 0.5


def test_decision_boot_failures_in_a_row_give_up_naming_the_retries() -> None:
    budget = RestartBudget(RestartPolicy(boot_retries=2, restart_burst=None))
    slot = budget.new_slot()
    actions = [budget.decide(slot, _exit(ready=False), now=t).action for t in range(3)]
    assert actions == ["restart", "restart", "give-up"]
    decision = budget.decide(budget.new_slot(), _exit(ready=True, uptime=0.2), now=5)
    assert decision.action == "restart"  # within start_period: a boot failure, the first


def test_decision_rate_budget_counts_restarts_over_every_slot_in_the_window() -> None:
    budget = RestartBudget(RestartPolicy(restart_burst=3, restart_interval=10,
                                         boot_retries=None))
    slots = [budget.new_slot() for _ in range(2)]
    assert [budget.decide(slots[t % 2], _exit(), now=t).action for t in range(3)] == \
        ["restart"] * 3
    decision = budget.decide(slots[1], _exit(), now=3)
    assert decision.action == "give-up"
    assert "after 3 restarts within 10 s (restart_burst=3, restart_interval=10)" in \
        decision.message



def test_decision_rate_budget_comes_back_once_the_window_has_moved_on() -> None:
    budget = RestartBudget(RestartPolicy(restart_burst=3, restart_interval=10,
                                         boot_retries=None))
    slot = budget.new_slot()
    assert [budget.decide(slot, _exit(), now=t).action for t in (0, 1, 2)] == ["restart"] * 3
    assert budget.decide(slot, _exit(), now=9).action == "give-up"  # 3 within 10 s
    # the same budget, later: the restarts at 0 and 1 s have left the window, 2 s has not
    assert [budget.decide(slot, _exit(), now=t).action for t in (11.5, 11.6, 11.7)] == \
        ["restart", "restart", "give-up"]


def test_decision_lifetime_limit_gives_up_with_tornados_words() -> None:
    budget = RestartBudget(RestartPolicy.tornado(max_restarts=2))
    slot = budget.new_slot()
    assert [budget.decide(slot, _exit(), now=t).action for t in range(3)] == \
        ["restart", "restart", "give-up"]
    assert budget.decide(slot, _exit(), now=4).message.startswith(
        "Too many child restarts, giving up")
