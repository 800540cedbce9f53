"""The master's signals: graceful and immediate stop, rolling restart, scaling, master death."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import (
    live_children,
    open_fds,
    pid_exists,
    proc_status,
    wait_for,
    wait_live_children,
    wait_pid_gone,
    wait_pidfds,
)
from tests.test_supervisor_support import (
    MasterProcess,
    pids_from,
    supervisor_script,
    terminate_and_wait,
)

# Workers that record their start and stop (on SIGTERM) and declare themselves ready.  Indented
# like the test bodies they are prepended to.
RECORDING_WORKER = textwrap.indent("""
def worker(tid):
    record("events", "start", tid, os.getpid(), time.monotonic())
    record_stop_on_term()
    notify_worker_ready()
    park()
""", "    ")

# Workers that record SIGTERM but keep running.
STUBBORN_WORKER = textwrap.indent("""
def worker(tid):
    signal.signal(signal.SIGTERM,
                  lambda signum, frame: record("events", "term", tid, os.getpid()))
    record("events", "start", tid, os.getpid())
    notify_worker_ready()
    park()
""", "    ")


def started_pids(master: MasterProcess, count: int) -> list[int]:
    return pids_from(master.wait_lines("events", count, first="start"))


def test_sigterm_with_sixteen_workers_stops_all_and_master_exits_zero(tmp_path: Path) -> None:
    body = """
    tid = fork_processes(16)
    record("events", "start", tid, os.getpid())
    park()
    """
    with supervisor_script(tmp_path, body) as master:
        pids = started_pids(master, 16)
        assert sorted(live_children(master.pid)) == sorted(pids)
        assert terminate_and_wait(master) == 0
        for pid in pids:
            assert not pid_exists(pid), f"worker {pid} outlived its master"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_terminates_workers_gracefully(tmp_path: Path, signum: int) -> None:
    body = RECORDING_WORKER + """
    Supervisor(3, graceful_timeout=30).serve(worker)
    record("master", "returned")
    """
    with supervisor_script(tmp_path, body) as master:
        pids = started_pids(master, 3)
        master.signal(signum)
        assert master.wait() == 0
        assert sorted(pids_from(master.lines("events"), "stop")) == sorted(pids)
        assert master.lines("master") == [["returned"]]


def test_workers_ignoring_sigterm_are_killed_after_graceful_timeout(tmp_path: Path) -> None:
    body = STUBBORN_WORKER + """
    Supervisor(2, graceful_timeout=0.5).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        pids = started_pids(master, 2)
        sent = time.monotonic()
        master.signal(signal.SIGTERM)
        assert master.wait() == 0
        assert time.monotonic() - sent >= 0.5
        assert len(master.lines("events")) == 4  # 2 starts, 2 TERMs received
        for pid in pids:
            assert not pid_exists(pid)


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM),
                                     (signal.SIGINT, signal.SIGTERM),
                                     (signal.SIGQUIT,)],
                         ids=["term-term", "int-term", "quit"])
def test_second_stop_signal_or_quit_kills_workers_at_once(
        tmp_path: Path, signals: tuple[int, ...]) -> None:
    # The graceful timeout is 60 s; the master must be gone well before that.
    body = STUBBORN_WORKER + """
    Supervisor(2, graceful_timeout=60).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        pids = started_pids(master, 2)
        first, *rest = signals
        master.signal(first)
        if rest:
            master.wait_lines("events", 2, first="term")
            master.signal(rest[0])
        assert master.wait(timeout=20) == 0
        for pid in pids:
            assert not pid_exists(pid)


def test_sigkill_of_master_takes_every_worker_with_it(tmp_path: Path) -> None:
    body = RECORDING_WORKER + """
    Supervisor(4).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        pids = started_pids(master, 4)
        fds = [os.pidfd_open(pid) for pid in pids]  # opened while they are surely ours
        try:
            master.signal(signal.SIGKILL)
            master.wait()
            wait_pidfds(pids, timeout=10)
        finally:
            for fd in fds:
                os.close(fd)
        assert master.lines("events") == [x for x in master.lines("events") if x[0] == "start"]


def test_parent_death_pipe_stops_workers_where_pdeathsig_is_unavailable(tmp_path: Path) -> None:
    # Forces the path taken on systems without prctl(PR_SET_PDEATHSIG): a thread in each
    # worker watches the parent-death pipe and sends the death signal at its end of file.
    body = RECORDING_WORKER + """
    import daemonctx.supervisor
    daemonctx.supervisor.worker._use_pdeathsig = False
    Supervisor(2).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        pids = started_pids(master, 2)
        master.signal(signal.SIGKILL)
        master.wait()
        wait_pidfds(pids, timeout=10)


def test_parent_death_fd_is_readable_in_worker_once_master_is_gone(tmp_path: Path) -> None:
    # The death signal is one the worker ignores, so it lives on to see the pipe's end of file.
    body = """
    import select
    def worker(tid):
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        notify_worker_ready()
        record("events", "start", tid, os.getpid())
        fd = parent_death_fd()
        select.select([fd], [], [])
        record("events", "eof", tid, os.getpid(), os.read(fd, 1) == b"")
    Supervisor(1, parent_death_signal=signal.SIGUSR2).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        (pid,) = started_pids(master, 1)
        assert master.lines("events") == [["start", "0", str(pid)]]
        master.signal(signal.SIGKILL)
        master.wait()
        assert master.wait_lines("events", 1, first="eof") == [["eof", "0", str(pid), "True"]]
        wait_pidfds([pid])


def live_counts(events: list[list[str]], initial: int) -> list[int]:
    """The number of live workers after each event, from the initial ``initial`` starts on."""
    count = 0
    counts = []
    for index, event in enumerate(events):
        count += 1 if event[0] == "start" else -1
        if index >= initial - 1:
            counts.append(count)
    return counts


def test_sighup_replaces_every_worker_one_at_a_time_never_below_the_count(
        tmp_path: Path) -> None:
    body = RECORDING_WORKER + """
    Supervisor(3).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        old = started_pids(master, 3)
        master.signal(signal.SIGHUP)
        master.wait_lines("events", 3, first="stop")
        events = master.wait_lines("events", 6, first="start")
        events = master.lines("events")
        new = [pid for pid in pids_from(events) if pid not in old]
        assert sorted(pids_from(events, "stop")) == sorted(old)
        assert len(new) == 3 and all(pid_exists(pid) for pid in new)
        assert sorted(wait_live_children(master.pid, 3, without=tuple(old))) == sorted(new)
        counts = live_counts(events, 3)
        assert min(counts) >= 3, counts   # never fewer workers than before the HUP
        assert max(counts) <= 4, counts   # one replacement at a time
        # Each replacement has the task id of the worker it replaced, and was started first.
        tids = {int(x[2]): x[1] for x in events}
        for index, event in enumerate(events):
            if event[0] == "stop":
                started = [x for x in events[:index] if x[0] == "start" and x[1] == event[1]]
                assert int(started[-1][2]) in new
        assert sorted(tids[pid] for pid in new) == ["0", "1", "2"]
        assert terminate_and_wait(master) == 0


def test_sighup_keeps_old_workers_when_a_replacement_fails_to_boot(tmp_path: Path) -> None:
    body = """
    log_to_file()
    def worker(tid):
        record("events", "start", tid, os.getpid())
        if os.path.exists(os.path.join(OUT, "broken")):
            raise SystemExit(2)
        record_stop_on_term()
        notify_worker_ready()
        park()
    Supervisor(2, policy=RestartPolicy(boot_retries=0)).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        old = started_pids(master, 2)
        (master.out / "broken").write_text("")
        master.signal(signal.SIGHUP)
        master.wait_log("rolling restart abandoned")
        assert all(pid_exists(pid) for pid in old)
        assert sorted(live_children(master.pid)) == sorted(old)
        assert terminate_and_wait(master) == 0


def test_ttin_adds_a_worker_and_ttou_removes_one_but_never_the_last(tmp_path: Path) -> None:
    body = RECORDING_WORKER + """
    log_to_file()
    Supervisor(2).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        first = started_pids(master, 2)

        def workers(count: int) -> list[int]:
            return wait_live_children(master.pid, count)

        master.signal(signal.SIGTTIN)
        third = [pid for pid in workers(3) if pid not in first]
        starts = master.wait_lines("events", 3, first="start")
        assert [x[1] for x in starts if int(x[2]) in third] == ["2"]
        master.signal(signal.SIGTTOU)
        assert sorted(workers(2)) == sorted(first)
        master.signal(signal.SIGTTOU)
        (last,) = workers(1)
        task_of = {int(x[2]): x[1] for x in master.lines("events") if x[0] == "start"}
        assert task_of[last] == "0"  # the highest task ids were retired first
        master.signal(signal.SIGTTOU)
        master.wait_log("SIGTTOU ignored")
        assert live_children(master.pid) == [last]
        assert terminate_and_wait(master) == 0


def test_reload_and_scaling_signals_do_nothing_once_stopping(tmp_path: Path) -> None:
    body = STUBBORN_WORKER + """
    Supervisor(1, graceful_timeout=60).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        (pid,) = started_pids(master, 1)
        master.signal(signal.SIGTERM)
        master.wait_lines("events", 1, first="term")
        master.signal(signal.SIGTTIN)
        master.signal(signal.SIGHUP)
        master.signal(signal.SIGTERM)  # now kill it
        assert master.wait() == 0
        assert pids_from(master.lines("events")) == [pid]
        wait_pid_gone(pid)


def signal_set(mask: str) -> set[int]:
    """The signal numbers in a /proc/<pid>/status mask such as ``SigCgt``."""
    bits = int(mask, 16)
    return {n for n in range(1, 65) if bits & (1 << (n - 1))}


def test_workers_get_back_the_signal_handlers_and_fds_the_master_had(tmp_path: Path) -> None:
    body = RECORDING_WORKER + """
    Supervisor(1).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        (pid,) = started_pids(master, 1)
        supervised = {signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU,
                      signal.SIGQUIT, signal.SIGTERM, signal.SIGINT}
        assert supervised <= signal_set(proc_status(master.pid)["SigCgt"])
        caught = signal_set(proc_status(pid)["SigCgt"])
        # The worker catches SIGTERM (its own handler) and SIGINT (Python's default), nothing
        # of the master's.
        assert caught & supervised == {signal.SIGTERM, signal.SIGINT}
        assert signal_set(proc_status(pid)["SigBlk"]) == set()

        def pipes(p: int) -> set[str]:
            return {target for target in open_fds(p).values() if target.startswith("pipe:")}

        # The master holds its wake-up, readiness and parent-death pipes (both ends of each);
        # the worker, once ready, only the read end of the parent-death pipe.
        assert len(pipes(master.pid)) == 3
        worker_pipes = wait_for(lambda: (len(pipes(pid)) == 1) and pipes(pid),
                                what="the worker's readiness fd closed")
        assert worker_pipes <= pipes(master.pid)  # type: ignore[operator]
        assert terminate_and_wait(master) == 0


# Workers ready as soon as they are forked (fork_processes, RestartPolicy(ready_on_start=True)):
# nothing is written to the readiness pipe, so nothing but the loop itself can move a rolling
# restart on.
READY_ON_FORK_WORKER = textwrap.indent("""
def worker(tid):
    record("events", "start", tid, os.getpid(), time.monotonic())
    record_stop_on_term()
    park()
""", "    ")


@pytest.mark.parametrize("entry", ["fork_processes(3)",
                                   "Supervisor(3, policy=RestartPolicy(ready_on_start=True))"])
def test_sighup_replaces_every_worker_when_workers_are_ready_on_fork(tmp_path: Path,
                                                                     entry: str) -> None:
    body = READY_ON_FORK_WORKER + f"""
    if {entry.startswith("fork")!r}:
        tid = fork_processes(3)
        worker(tid)
    else:
        Supervisor(3, policy=RestartPolicy(ready_on_start=True)).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        old = started_pids(master, 3)
        master.signal(signal.SIGHUP)
        # every old worker stopped and replaced, without any other event to wake the master
        master.wait_lines("events", 3, first="stop")
        events = master.wait_lines("events", 6, first="start")
        new = [pid for pid in pids_from(events) if pid not in old]
        assert len(new) == 3
        assert sorted(wait_live_children(master.pid, 3, without=tuple(old))) == sorted(new)
        assert not any(pid_exists(pid) for pid in old)
        assert terminate_and_wait(master) == 0
