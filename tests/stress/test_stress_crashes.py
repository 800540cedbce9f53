"""SIGKILL at random points of start-up: nothing left behind, and the next start works.

Each run forks a real launcher from the warm farm (tests/stress/fleet.py) and, after a random
delay measured from that fork, SIGKILLs the launcher, the intermediate child or the daemon.
The delays span the whole start-up (calibrated first: from fork to the launcher's exit), and
what existed at the kill instant (launcher, intermediate, daemon, lock) names the stage hit.
After every run: the only process left may be a daemon that holds its lock (it is then stopped
by SIGTERM and must exit 0, removing its pidfile); no zombie anywhere; no pidfile naming a
live process; and the next start succeeds.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import WaitTimeoutError, children_of, pid_exists, wait_for, wait_pid_gone
from tests.stress.support import (
    Figures,
    Fleet,
    census,
    describe_process,
    tagged_processes,
    wait_tagged_settle,
)

pytestmark = pytest.mark.stress

RUNS = 100
SUPERVISOR_RUNS = 30
TARGETS = ("launcher", "intermediate", "daemon")


def _alive(entry: list[Any] | None) -> bool:
    return entry is not None and entry[1] != "Z"


def stage_hit(target: str, snapshot: dict[str, Any]) -> str:
    """Name the start-up stage the ``target`` was in when it was killed (or why it was not)."""
    launcher_running = _alive(snapshot["launcher"])
    intermediate, daemon = snapshot["intermediate"], snapshot["daemon"]
    if target == "launcher":
        if not launcher_running:
            return "missed: launcher had exited"
        if daemon is not None:
            return "daemon holds lock" if snapshot["daemon_locked"] else "daemon starting"
        return "detaching" if intermediate is not None else "before first fork"
    if target == "intermediate":
        if intermediate is None:
            return "missed: not forked yet" if launcher_running else "missed: gone"
        if not _alive(intermediate):
            return "missed: had exited"
        return "after second fork" if daemon is not None else "before setsid/second fork"
    if daemon is None:
        return "missed: not forked yet" if launcher_running else "missed: gone"
    if not snapshot["daemon_locked"]:
        return "before lock"
    return "holding lock, launcher waiting" if launcher_running else "running"


def _stop_holder(fleet: Fleet, pidfile: Path, daemon: int) -> None:
    """SIGTERM a started daemon: exit 0 and its pidfile gone (the default SIGTERM behaviour)."""
    assert int(pidfile.read_text()) == daemon
    os.kill(daemon, signal.SIGTERM)
    try:
        wait_pid_gone(daemon)
    except WaitTimeoutError:
        raise WaitTimeoutError(f"SIGTERM did not stop {describe_process(daemon)}") from None
    assert fleet.reap([daemon])[daemon] == 0
    assert not pidfile.exists()


def _settle(tmp: Path, fleet: Fleet, pidfile: Path, pid_path: Path) -> int | None:
    """Wait until at most one process is left: a daemon holding the lock, done with open().

    Return its pid (or None).  A daemon whose launcher was killed finishes its start-up on its
    own; anything else still alive after the deadline is a leak.
    """
    def settled() -> list[int | None] | None:
        holder = holder_pid(pidfile)
        allowed = {holder} if holder is not None else set()
        alive = {p for p, s in census(tmp, [fleet.pid]).items() if s != "Z"}
        if not alive <= allowed:
            return None
        if holder is not None and (not pid_path.exists() or pid_path.read_text() != str(holder)):
            return None  # still inside open(): let it finish its start-up
        return [holder]

    try:
        result = wait_for(settled, 15, "start-up to settle")
    except WaitTimeoutError:
        raise WaitTimeoutError(
            f"left behind: {tagged_processes(tmp, [fleet.pid])}, holder {holder_pid(pidfile)}"
        ) from None
    assert isinstance(result, list)
    survivor: int | None = result[0]
    return survivor


def _assert_nothing_left(tmp: Path, fleet: Fleet, pidfile: Path) -> None:
    fleet.reap()
    fleet.wait_childless()
    left = census(tmp, [fleet.pid])
    assert left == {}, f"processes or zombies left: {left}"
    assert holder_pid(pidfile) is None
    if pidfile.exists():
        text = pidfile.read_text().strip()
        assert not (text.isdigit() and pid_exists(int(text))), f"pidfile names live pid {text}"


def _calibrate(fleet: Fleet, tmp: Path, program: dict[str, Any], pidfile: Path,
               runs: int = 8) -> float:
    """The longest start-up seen (fork of the launcher to its exit), in seconds."""
    longest = 0.0
    for n in range(runs):
        reply = fleet.request("launch", program=dict(program, pid_path=str(tmp / f"cal{n}")),
                              stderr=str(tmp / "calibrate.err"))
        assert reply["code"] == 0, reply["stderr"]
        longest = max(longest, reply["elapsed"])
        daemon = holder_pid(pidfile)
        assert daemon is not None
        wait_for((tmp / f"cal{n}").exists, what="the daemon's pid file")
        _stop_holder(fleet, pidfile, daemon)
    _assert_nothing_left(tmp, fleet, pidfile)
    return longest


def test_sigkill_at_random_points_of_startup_leaves_nothing_and_next_start_works(
        tmp_path: Path, fleet: Fleet, figures: Figures) -> None:
    pidfile = tmp_path / "app.pid"
    program: dict[str, Any] = {"options": {"pidfile": str(pidfile)}}
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    span = 1.3 * _calibrate(fleet, tmp_path, program, pidfile)
    stages = Counter[str]()
    outcomes = Counter[str]()
    runs = 0
    try:
        for run in range(RUNS):
            target = TARGETS[run % len(TARGETS)]
            delay = rng.uniform(0, span)
            pid_path = tmp_path / f"pid-{run}"
            reply = fleet.request("launch", program=dict(program, pid_path=str(pid_path)),
                                  stderr=str(tmp_path / f"run{run}.err"),
                                  kill={"target": target, "delay": delay})
            assert not reply["missing"]
            stage = stage_hit(target, reply["snapshot"])
            stages[f"{target}: {stage}"] += 1
            code, stderr = reply["code"], reply["stderr"]
            if code == -signal.SIGKILL:
                assert reply["killed"] == reply["launcher"]
            elif code != 0:
                assert stderr.count("\n") == 1 and ": daemon failed to start: " in stderr, stderr
            survivor = _settle(tmp_path, fleet, pidfile, pid_path)
            if code == 0 and reply["killed"] is None:
                assert survivor is not None, "the launcher said started, no daemon runs"
            if code not in (0, -signal.SIGKILL):
                assert survivor is None, "the launcher said failed, but a daemon runs"
            outcomes["daemon survived" if survivor else "no daemon"] += 1
            if survivor is not None:
                _stop_holder(fleet, pidfile, survivor)
            _assert_nothing_left(tmp_path, fleet, pidfile)
            # the next start always succeeds
            again = fleet.request("launch", program=dict(program, pid_path=str(pid_path) + "b"),
                                  stderr=str(tmp_path / f"run{run}b.err"))
            assert again["code"] == 0, again["stderr"]
            daemon = _settle(tmp_path, fleet, pidfile, Path(str(pid_path) + "b"))
            assert daemon is not None
            _stop_holder(fleet, pidfile, daemon)
            _assert_nothing_left(tmp_path, fleet, pidfile)
            runs += 1
    finally:
        figures(runs=runs, seed=seed, delay_span_ms=f"{span * 1000:.1f}",
                outcomes=dict(outcomes), stages=dict(sorted(stages.items())))
    killed = {s for s in stages if "missed" not in s}
    assert len(killed) >= 4, f"the random delays hit too few stages: {stages}"


def test_supervisor_master_sigkilled_at_random_leaves_no_worker(tmp_path: Path, fleet: Fleet,
                                                                 figures: Figures) -> None:
    pidfile = tmp_path / "app.pid"
    program: dict[str, Any] = {"options": {"pidfile": str(pidfile), "defer_ready": True},
                               "supervisor": {"workers": 3}}
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    span = 1.5 * _calibrate(fleet, tmp_path, program, pidfile, runs=4)
    workers_at_kill = Counter[str]()
    runs = 0
    try:
        for _ in range(SUPERVISOR_RUNS):
            delay = rng.uniform(0, span)
            reply = fleet.request("launch", program=program, stderr=str(tmp_path / "sup.err"),
                                  kill={"target": "daemon", "delay": delay})
            snapshot = reply["snapshot"]
            if reply["killed"] is None:  # not forked yet at the kill instant: kill it now
                assert reply["code"] == 0, reply["stderr"]
                master = wait_for(lambda: holder_pid(pidfile), what="the master's lock")
                assert isinstance(master, int)
                workers_at_kill[f"{len(children_of(master))} (late)"] += 1
                os.kill(master, signal.SIGKILL)
            else:
                workers_at_kill[str(snapshot["daemon_children"])] += 1
            started = time.monotonic()
            wait_tagged_settle(tmp_path, set(), [fleet.pid], timeout=10)
            assert time.monotonic() - started < 10
            _assert_nothing_left(tmp_path, fleet, pidfile)
            runs += 1
    finally:
        figures(runs=runs, seed=seed, delay_span_ms=f"{span * 1000:.1f}",
                workers_alive_at_master_kill=dict(sorted(workers_at_kill.items())))
