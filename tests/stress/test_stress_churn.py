"""A supervisor whose workers crash as fast as they start: no leak, no zombie, budgets honoured.

The supervisor runs as a real daemon (DaemonContext + Supervisor, forked by the warm farm).
Its workers exit 1 the moment they start, so the master does nothing but reap and re-fork.
After 1,000 and after 10,000 restarts the master stops itself (SIGSTOP) and the test measures
it from outside: open fds (``/proc/<pid>/fd``), resident memory (``VmRSS``), zombie children.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    WaitTimeoutError,
    children_of,
    proc_state,
    proc_status,
    read_pid_file,
    wait_for,
    wait_pid_gone,
    zombies_of,
)
from tests.stress.support import Figures, Fleet, wait_tagged_settle

pytestmark = pytest.mark.stress

RESTARTS = 10_000
FIRST_SAMPLE = 1_000
WORKERS = 2
RSS_TOLERANCE_KIB = 1024  # allocator noise; a leak of 100 bytes a restart would show 880 KiB
CHURN_POLICY: dict[str, Any] = {
    "restart": "always", "restart_burst": None, "max_restarts": None, "backoff_initial": 0,
    "backoff_max": 0, "boot_retries": None, "ready_on_start": True, "start_period": 0,
}


def _wait_stopped(master: int, max_zombies: list[int], timeout: float = 120.0) -> None:
    """Wait for the master to SIGSTOP itself, noting the most zombie children seen meanwhile."""
    def stopped() -> bool:
        try:
            max_zombies[0] = max(max_zombies[0], len(zombies_of(master)))
        except ProcessLookupError:
            pass  # a child was reaped while its /proc entry was read: look again
        try:
            return proc_state(master) == "T"
        except (FileNotFoundError, ProcessLookupError):
            raise AssertionError("the master exited during the churn") from None
    wait_for(stopped, timeout, "the master to stop itself at a sample point")


def _measure(master: int) -> dict[str, int]:
    return {"fds": len(os.listdir(f"/proc/{master}/fd")),
            "rss_kib": int(proc_status(master)["VmRSS"].split()[0]),
            "zombies": len(zombies_of(master)), "children": len(children_of(master))}


def test_ten_thousand_worker_crashes_leak_nothing_in_the_master(tmp_path: Path, fleet: Fleet,
                                                                figures: Figures) -> None:
    pidfile = tmp_path / "app.pid"
    progress = tmp_path / "progress"
    program = {"options": {"pidfile": str(pidfile), "stderr": str(tmp_path / "master.err")},
               "supervisor": {"workers": WORKERS, "crash": True, "policy": CHURN_POLICY,
                              "snapshots": [FIRST_SAMPLE, RESTARTS], "stop_after": RESTARTS,
                              "progress": str(progress)}}
    reply = fleet.request("launch", program=program, stderr=str(tmp_path / "launcher.err"))
    assert reply["code"] == 0, reply["stderr"]
    master = holder_pid(pidfile)
    assert master is not None
    max_zombies = [0]
    samples: dict[int, dict[str, int]] = {}
    started = time.monotonic()
    timings: dict[int, float] = {}
    try:
        for count in (FIRST_SAMPLE, RESTARTS):
            _wait_stopped(master, max_zombies)
            timings[count] = time.monotonic() - started
            assert int(progress.read_text()) == count
            samples[count] = _measure(master)
            os.kill(master, signal.SIGCONT)
        wait_pid_gone(master, 30)  # it sent itself SIGTERM after the last sample
    finally:
        rate = (RESTARTS - FIRST_SAMPLE) / (timings[RESTARTS] - timings[FIRST_SAMPLE]) \
            if len(timings) == 2 else 0
        figures(restarts=max(timings, default=0), workers=WORKERS,
                seconds=f"{max(timings.values(), default=0):.1f}",
                restarts_per_s=f"{rate:.0f}", samples=samples, max_zombies_seen=max_zombies[0])
    first, last = samples[FIRST_SAMPLE], samples[RESTARTS]
    assert fleet.reap([master])[master] == 0
    assert not pidfile.exists()
    wait_tagged_settle(tmp_path, set(), [fleet.pid])
    assert last["fds"] == first["fds"], samples
    assert last["rss_kib"] - first["rss_kib"] <= RSS_TOLERANCE_KIB, samples
    # at a sample point the master has just reaped one worker; the other may have exited
    # and wait for the next wake-up: never more zombies than workers, whatever the count
    assert last["zombies"] <= WORKERS - 1 and first["zombies"] <= WORKERS - 1, samples
    assert max_zombies[0] <= WORKERS, max_zombies


def _run_until_budget(tmp_path: Path, fleet: Fleet, policy: dict[str, Any],
                      ) -> tuple[int, str, int]:
    """Run crashing workers under ``policy``: the master's exit code, its stderr, and how many
    workers it forked (counted as exits: the master reaps every worker before it returns)."""
    pidfile = tmp_path / "app.pid"
    program = {"options": {"pidfile": str(pidfile), "stderr": str(tmp_path / "master.err")},
               "pid_path": str(tmp_path / "master.pid"),
               "supervisor": {"workers": WORKERS, "crash": True, "policy": policy,
                              "progress": str(tmp_path / "exits"), "progress_every": 1,
                              "graceful_timeout": 5}}
    reply = fleet.request("launch", program=program, stderr=str(tmp_path / "launcher.err"))
    assert reply["code"] == 0, reply["stderr"]
    master = read_pid_file(tmp_path / "master.pid")  # it may have given up already
    try:
        wait_pid_gone(master, 30)
    except WaitTimeoutError:
        raise AssertionError("the supervisor did not give up") from None
    code = fleet.reap([master])[master]
    wait_tagged_settle(tmp_path, set(), [fleet.pid])
    fleet.wait_childless()
    assert not pidfile.exists(), "the pidfile must be removed when the service stops"
    forks = int((tmp_path / "exits").read_text())
    return code, (tmp_path / "master.err").read_text(), forks


def test_restart_rate_budget_stops_the_service_after_the_burst(tmp_path: Path, fleet: Fleet,
                                                               figures: Figures) -> None:
    policy = dict(CHURN_POLICY, restart_burst=5, restart_interval=60)
    code, stderr, forks = _run_until_budget(tmp_path, fleet, policy)
    figures(workers=WORKERS, restart_burst=5, workers_forked=forks, master_exit=code)
    assert code == 1
    assert "SupervisorError: restart budget exhausted" in stderr, stderr
    assert "restart_burst=5" in stderr
    assert forks == WORKERS + 5, "exactly restart_burst restarts, then the service stops"


def test_lifetime_restart_limit_stops_the_service_like_tornado(tmp_path: Path, fleet: Fleet,
                                                               figures: Figures) -> None:
    policy = dict(CHURN_POLICY, max_restarts=50)
    code, stderr, forks = _run_until_budget(tmp_path, fleet, policy)
    figures(workers=WORKERS, max_restarts=50, workers_forked=forks, master_exit=code)
    assert code == 1
    assert "Too many child restarts, giving up" in stderr, stderr
    assert forks == WORKERS + 50
