"""Restarting workers: same task id, tornado's counting, rate budget, backoff, boot failures.

Each test runs a supervisor in a fresh interpreter and reads what its workers and master wrote.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.helpers import (
    children_of,
    cpu_ticks,
    live_children,
    pid_exists,
    wait_pid_gone,
    zombies_of,
)
from tests.test_supervisor_support import (
    pids_from,
    supervisor_script,
    terminate_and_wait,
)


def test_crashed_worker_restarts_with_same_task_id_and_new_pid(tmp_path: Path) -> None:
    body = """
    tid = fork_processes(2)
    record("events", "start", tid, os.getpid())
    if tid == 1 and not os.path.exists(os.path.join(OUT, "crashed")):
        record("crashed", os.getpid())
        os._exit(3)
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        lines = master.wait_lines("events", 3)
        starts = [(int(tid), int(pid)) for _, tid, pid in lines]
        ones = [pid for tid, pid in starts if tid == 1]
        assert len(ones) == 2 and ones[0] != ones[1]
        assert [tid for tid, _ in starts].count(0) == 1
        assert not pid_exists(ones[0])
        assert sorted(children_of(master.pid)) == sorted([pid for tid, pid in starts
                                                          if pid != ones[0]])
        assert terminate_and_wait(master) == 0


def test_worker_exiting_zero_is_not_restarted_and_master_exits_zero_after_all(
        tmp_path: Path) -> None:
    body = """
    try:
        tid = fork_processes(3)
    except SystemExit as stop:
        record("master", stop.code, task_id())
        raise
    record("events", "start", tid, os.getpid())
    os._exit(0)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 0
        assert master.lines("master") == [["0", "None"]]
        assert sorted(int(x[1]) for x in master.lines("events")) == [0, 1, 2]


def test_tornado_max_restarts_exceeded_stops_other_workers_before_raising(
        tmp_path: Path) -> None:
    # Worker 0 always crashes; worker 1 is healthy.  With max_restarts=3 the fourth crash gives
    # up: tornado would leave worker 1 running without a master; here it is stopped (TERM) and
    # reaped before RuntimeError reaches the caller.
    body = """
    try:
        tid = fork_processes(2, max_restarts=3)
    except RuntimeError as error:
        healthy = [int(x.split()[2]) for x in open(os.path.join(OUT, "events"))
                   if x.split()[:2] == ["start", "1"]]
        gone = all(not os.path.exists(f"/proc/{pid}") for pid in healthy)
        record("master", type(error).__name__, "gone" if gone else "alive", "|", error)
        sys.exit(5)
    record("events", "start", tid, os.getpid())
    if tid == 0:
        while not os.path.exists(os.path.join(OUT, "serving")):  # worker 1 is up first
            time.sleep(0.01)
        os._exit(9)
    record_stop_on_term()
    record("serving", tid)
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 5
        (report,) = master.lines("master")
        assert report[:2] == ["SupervisorError", "gone"]
        message = " ".join(report[3:])
        assert message.startswith("Too many child restarts, giving up")
        zero_pids = [int(x[2]) for x in master.lines("events") if x[:2] == ["start", "0"]]
        assert len(zero_pids) == 4  # the first start and 3 restarts
        assert f"child 0 (pid {zero_pids[-1]}) exited with status 9" in message  # tornado's words
        stops = [x for x in master.lines("events") if x[0] == "stop"]
        assert [x[1] for x in stops] == ["1"]  # stopped with TERM, gracefully


def test_restart_budget_exhausted_stops_service_naming_worker_and_status(
        tmp_path: Path) -> None:
    body = """
    policy = RestartPolicy(restart_burst=3, restart_interval=60, backoff_initial=0,
                           backoff_max=0, boot_retries=None, ready_on_start=True)
    try:
        tid = Supervisor(1, policy=policy).run()
    except SupervisorError as error:
        record("master", error.task_id, error.pid, error.exit_status, "|", error)
        sys.exit(2)
    record("events", "start", tid, os.getpid())
    os._exit(7)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 2
        pids = pids_from(master.lines("events"))
        assert len(pids) == 4  # the first start and restart_burst=3 restarts
        (report,) = master.lines("master")
        assert report[:3] == ["0", str(pids[-1]), "7"]
        message = " ".join(report[4:])
        assert f"worker 0 (pid {pids[-1]}) exited with status 7" in message
        assert "restart_burst=3" in message


def test_restart_budget_is_a_rate_restarts_spread_out_are_allowed(tmp_path: Path) -> None:
    # restart_burst=2 per 0.3 s, backoff 0.2 s: restarts come at most ~2 per window, so the
    # budget never runs out although 6 restarts happen in all.
    body = """
    policy = RestartPolicy(restart_burst=2, restart_interval=0.3, backoff_initial=0.2,
                           backoff_factor=1, backoff_max=0.2, boot_retries=None,
                           ready_on_start=True)
    tid = Supervisor(1, policy=policy).run()
    if tid is None:
        sys.exit(0)
    record("events", "start", tid, os.getpid(), time.monotonic())
    if len(open(os.path.join(OUT, "events")).readlines()) <= 6:
        os._exit(1)
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        master.wait_lines("events", 7)
        assert master.proc.poll() is None
        assert terminate_and_wait(master) == 0


def test_restarts_back_off_exponentially_up_to_the_cap(tmp_path: Path) -> None:
    body = """
    policy = RestartPolicy(backoff_initial=0.05, backoff_factor=4, backoff_max=0.1,
                           max_restarts=4, restart_burst=None, boot_retries=None,
                           ready_on_start=True)
    try:
        Supervisor(1, policy=policy).serve(
            lambda tid: (record("events", "start", tid, os.getpid(), time.monotonic()),
                         os._exit(1)))
    except SupervisorError:
        sys.exit(4)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 4
        times = [float(x[3]) for x in master.lines("events")]
    assert len(times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    expected = [0.05, 0.1, 0.1, 0.1]  # 0.05 * 4 = 0.2 is capped at 0.1
    for gap, minimum in zip(gaps, expected, strict=True):
        assert gap >= minimum * 0.95, (gaps, expected)
    # Uncapped, the last delay would be 0.05 * 4**3 = 3.2 s.
    assert gaps[-1] < 1.5, gaps


def test_backoff_resets_after_a_worker_stayed_up(tmp_path: Path) -> None:
    # Start 1 crashes at once (next delay 0.1 s, then 2 s); start 2 stays up 0.4 s, longer than
    # backoff_reset_after, then crashes: start 3 must follow after 0.1 s, not 2 s.
    body = """
    policy = RestartPolicy(backoff_initial=0.1, backoff_factor=20, backoff_max=10,
                           backoff_reset_after=0.3, restart_burst=None, boot_retries=None,
                           ready_on_start=True)
    def worker(tid):
        record("events", "start", tid, os.getpid(), time.monotonic())
        count = len(open(os.path.join(OUT, "events")).readlines())
        if count == 2:
            time.sleep(0.4)  # the worker's own behaviour: up for longer than 0.3 s
        if count < 3:
            record("crashes", "crash", tid, os.getpid(), time.monotonic())
            os._exit(1)
        park()
    Supervisor(1, policy=policy).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        starts = master.wait_lines("events", 3)
        crashes = master.lines("crashes")
        assert terminate_and_wait(master) == 0
    first_gap = float(starts[1][3]) - float(crashes[0][3])
    reset_gap = float(starts[2][3]) - float(crashes[1][3])
    assert first_gap >= 0.095
    assert 0.095 <= reset_gap < 1.5, (first_gap, reset_gap)


def test_boot_failure_stops_service_with_nonzero_exit_and_no_worker_left(
        tmp_path: Path) -> None:
    body = """
    def worker(tid):
        record("events", "start", tid, os.getpid())
        if tid == 1:
            while not os.path.exists(os.path.join(OUT, "serving")):  # worker 0 is up first
                time.sleep(0.01)
            raise RuntimeError("cannot read configuration")
        record_stop_on_term()
        notify_worker_ready()
        record("serving", tid)
        park()
    Supervisor(2, policy=RestartPolicy(boot_retries=0), graceful_timeout=10).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        status = master.wait()
        stderr = master.stderr()
        lines = master.lines("events")
    assert status != 0
    pids = pids_from(lines)
    assert len(pids) == 2  # no restart loop
    failed = next(int(x[2]) for x in lines if x[:2] == ["start", "1"])
    assert f"worker 1 (pid {failed}) exited with status 1 before it was ready" in stderr
    assert "boot_retries=0" in stderr
    assert "SupervisorError" in stderr
    assert [x[1] for x in lines if x[0] == "stop"] == ["0"]  # the healthy worker got TERM
    for pid in pids:
        assert not pid_exists(pid)


def test_boot_failures_are_retried_boot_retries_times_with_backoff(tmp_path: Path) -> None:
    body = """
    def worker(tid):
        record("events", "start", tid, os.getpid(), time.monotonic())
        if tid == 1:
            os._exit(3)
        notify_worker_ready()
        park()
    policy = RestartPolicy(boot_retries=2, backoff_initial=0.05)
    try:
        Supervisor(2, policy=policy).serve(worker)
    except SupervisorError as error:
        record("master", error.task_id, error.exit_status)
        sys.exit(6)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 6
        lines = master.lines("events")
        assert master.lines("master") == [["1", "3"]]
    ones = [float(x[3]) for x in lines if x[:2] == ["start", "1"]]
    assert len(ones) == 3  # the first start and boot_retries=2 retries
    assert ones[1] - ones[0] >= 0.045 and ones[2] - ones[1] >= 0.095


def test_worker_dying_within_start_period_is_a_boot_failure(tmp_path: Path) -> None:
    # Ready on start, so only the start period can tell that the worker never got going.
    body = """
    policy = RestartPolicy(ready_on_start=True, start_period=30, boot_retries=0)
    try:
        tid = Supervisor(1, policy=policy).run()
    except SupervisorError as error:
        record("master", "|", error)
        sys.exit(6)
    record("events", "start", tid, os.getpid())
    os._exit(4)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 6
        message = " ".join(master.lines("master")[0])
        assert "exited with status 4" in message and "s after start" in message
        assert len(master.lines("events")) == 1


def test_hooks_run_on_worker_start_in_worker_and_on_exit_in_master(tmp_path: Path) -> None:
    body = """
    def started(tid):
        record("hooks", "start", tid, os.getpid(), os.getppid())
    def exited(tid, pid, status):
        record("hooks", "exit", tid, pid, status, os.getpid())
    tid = fork_processes(1, on_worker_start=started, on_worker_exit=exited)
    record("events", "start", tid, os.getpid())
    if len(open(os.path.join(OUT, "events")).readlines()) == 1:
        os._exit(5)
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        master.wait_lines("events", 2)
        hooks = master.wait_lines("hooks", 3)
        first, second = pids_from(master.lines("events"))
        assert ["start", "0", str(first), str(master.pid)] in hooks
        assert ["exit", "0", str(first), "5", str(master.pid)] in hooks
        assert ["start", "0", str(second), str(master.pid)] in hooks
        assert terminate_and_wait(master) == 0
        assert ["exit", "0", str(second), "-15", str(master.pid)] in master.lines("hooks")


def test_exception_in_on_worker_start_ends_worker_with_status_one(tmp_path: Path) -> None:
    body = """
    def started(tid):
        raise ValueError("hook failed")
    def exited(tid, pid, status):
        record("hooks", "exit", tid, pid, status)
    policy = RestartPolicy(boot_retries=0)
    try:
        Supervisor(1, policy=policy, on_worker_start=started,
                   on_worker_exit=exited).serve(lambda tid: park())
    except SupervisorError:
        sys.exit(6)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 6
        assert [x[:2] + x[3:] for x in master.lines("hooks")] == [["exit", "0", "1"]]
        assert "ValueError: hook failed" in master.stderr()


def test_orphans_reparented_to_the_master_are_reaped(tmp_path: Path) -> None:
    # The master is a child subreaper, so a worker's orphaned child is reparented to it, as
    # to pid 1 in a container.  The master must reap it although it is not one of its workers.
    body = """
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    tid = fork_processes(2)
    if tid == 0:
        read_end, write_end = os.pipe()
        grandchild = os.fork()
        if grandchild == 0:
            os.close(write_end)
            os.read(read_end, 1)  # returns when the worker has exited
            os._exit(0)
        record("orphan", "start", tid, grandchild)
        os._exit(0)  # not restarted; the grandchild is orphaned
    record("events", "start", tid, os.getpid())
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        orphan = int(master.wait_lines("orphan", 1)[0][2])
        master.wait_lines("events", 1)
        wait_pid_gone(orphan)
        from tests.helpers import wait_for
        wait_for(lambda: not Path(f"/proc/{orphan}").exists(), what="the orphan reaped")
        assert zombies_of(master.pid) == []
        assert master.proc.poll() is None
        assert terminate_and_wait(master) == 0


def crash_cycles_body(crashes: int) -> str:
    """A supervisor script whose two workers crash until ``crashes`` crashes, then settle."""
    return f"""
    def worker(tid):
        fd = os.open(os.path.join(OUT, "count"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"x")
        crashes = os.fstat(fd).st_size
        os.close(fd)
        if crashes <= {crashes}:
            os._exit(1)
        record("settled", "start", tid, os.getpid())
        park()
    Supervisor(2, policy=RestartPolicy.tornado(max_restarts=None)).serve(worker)
    """


def test_thousand_crash_cycles_leave_no_zombie_and_idle_master_uses_no_cpu(
        tmp_path: Path) -> None:
    body = crash_cycles_body(1000)
    with supervisor_script(tmp_path, body) as master:
        master.wait_lines("settled", 2, timeout=60)
        assert (tmp_path / "out" / "count").stat().st_size >= 1000
        assert zombies_of(master.pid) == []
        assert sorted(live_children(master.pid)) == sorted(pids_from(master.lines("settled")))
        before = cpu_ticks(master.pid)
        time.sleep(2.0)  # a measurement window, not synchronisation: the master must sleep
        after = cpu_ticks(master.pid)
        assert after - before <= 2, f"idle master used {after - before} ticks in 2 s"
        assert terminate_and_wait(master) == 0


@pytest.mark.stress
def test_ten_thousand_crash_cycles_leave_no_zombie_and_no_fd_leak(tmp_path: Path) -> None:
    body = crash_cycles_body(10000)
    with supervisor_script(tmp_path, body) as master:
        from tests.helpers import wait_for
        count = tmp_path / "out" / "count"
        wait_for(lambda: count.exists() and count.stat().st_size >= 100, what="100 crashes")
        fds_early = len(list(Path(f"/proc/{master.pid}/fd").iterdir()))
        master.wait_lines("settled", 2, timeout=300)
        assert zombies_of(master.pid) == []
        assert len(list(Path(f"/proc/{master.pid}/fd").iterdir())) <= fds_early
        assert terminate_and_wait(master) == 0


def test_restart_always_restarts_workers_that_exit_zero(tmp_path: Path) -> None:
    body = """
    policy = RestartPolicy(restart="always", ready_on_start=True, start_period=0,
                           backoff_initial=0.01)
    tid = Supervisor(1, policy=policy).run()
    if tid is None:
        sys.exit(0)
    record("events", "start", tid, os.getpid())
    if len(open(os.path.join(OUT, "events")).readlines()) < 3:
        os._exit(0)
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        assert len(set(pids_from(master.wait_lines("events", 3)))) == 3
        assert terminate_and_wait(master) == 0


def test_success_exit_statuses_end_a_worker_without_restart(tmp_path: Path) -> None:
    body = """
    policy = RestartPolicy(success_exit_statuses={0, 3}, ready_on_start=True)
    tid = Supervisor(2, policy=policy).run()
    if tid is None:
        record("master", "done")
        sys.exit(0)
    record("events", "start", tid, os.getpid())
    os._exit(3 if tid == 0 else 0)
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 0
        assert master.lines("master") == [["done"]]
        assert sorted(x[1] for x in master.lines("events")) == ["0", "1"]


def test_hook_in_master_can_stop_the_service_like_a_signal(tmp_path: Path) -> None:
    body = """
    supervisor = None
    def exited(tid, pid, status):
        record("hooks", "exit", tid, status)
        supervisor.handle_term()
    supervisor = Supervisor(2, policy=RestartPolicy(boot_retries=None), on_worker_exit=exited)
    def worker(tid):
        record_stop_on_term()
        record("events", "start", tid, os.getpid())
        if tid == 0:
            while len(open(os.path.join(OUT, "events")).readlines()) < 2:
                time.sleep(0.01)
            os._exit(8)
        park()
    supervisor.serve(worker)
    record("master", "returned")
    """
    with supervisor_script(tmp_path, body) as master:
        assert master.wait() == 0
        assert master.lines("master") == [["returned"]]
        assert master.lines("hooks")[0] == ["exit", "0", "8"]
        assert [x[1] for x in master.lines("events") if x[0] == "stop"] == ["1"]
        assert len(pids_from(master.lines("events"))) == 2  # worker 0 was not restarted
