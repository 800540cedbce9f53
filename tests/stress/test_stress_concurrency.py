"""Many launchers at once on one pidfile: exactly one daemon, every loser told who won.

The launchers are forked by the warm farm (tests/stress/fleet.py), so each is a real process
that calls ``DaemonContext.open()`` with a :class:`~daemonctx.PIDFile`, detaches and reports to
its shell through the start-up handshake; the test judges from outside: exit statuses, stderr,
``holder_pid``, ``/proc/locks`` and the daemons' own O_APPEND event log.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import pid_exists, wait_pid_gone
from tests.stress.support import (
    Figures,
    Fleet,
    ancestry,
    assert_events_alternate,
    descends_from,
    proc_locks_holders,
    read_events,
    wait_tagged_settle,
)

pytestmark = pytest.mark.stress

LAUNCHERS = 16
ROUNDS = 50
LOOPS = 4
LOOP_ITERATIONS = 30


def _stop(fleet: Fleet, pid: int) -> int:
    """SIGTERM ``pid`` (a daemon the farm adopted) and return its exit status."""
    os.kill(pid, signal.SIGTERM)
    wait_pid_gone(pid)
    return fleet.reap([pid])[pid]


def test_sixteen_simultaneous_launchers_start_exactly_one_daemon_per_round(
        tmp_path: Path, fleet: Fleet, figures: Figures) -> None:
    pidfile = tmp_path / "app.pid"
    events = tmp_path / "events"
    program = {"options": {"pidfile": str(pidfile)}, "log": str(events)}
    where = Counter[str]()
    spreads: list[int] = []
    rounds = 0
    try:
        for round_number in range(ROUNDS):
            reply = fleet.request("race", count=LAUNCHERS, program=program,
                                  stderr=str(tmp_path / f"r{round_number}"))
            assert reply["armed"] == LAUNCHERS and not reply["missing"], reply
            spreads.append(reply["spread_us"])
            winners = [pid for pid, code, _ in reply["launchers"] if code == 0]
            assert len(winners) == 1, f"round {round_number}: {reply['launchers']}"
            daemon = holder_pid(pidfile)
            assert daemon is not None, f"round {round_number}: the winner holds no lock"
            assert int(pidfile.read_text()) == daemon
            assert set(wait_tagged_settle(tmp_path, {daemon}, [fleet.pid])) == {daemon}
            for pid, code, stderr in reply["launchers"]:
                if pid in winners:
                    continue
                assert code != 0 and f"is held by pid {daemon}: already running" in stderr, (
                    f"round {round_number}: loser {pid} exited {code}: {stderr!r}")
                where["launcher" if "daemon failed to start" not in stderr else "daemon"] += 1
            starts = [e for e in read_events(events) if e[0] == "start"]
            assert [e[1] for e in starts[round_number:]] == [daemon]
            assert _stop(fleet, daemon) == 0
            assert not pidfile.exists()
            fleet.reap()
            fleet.wait_childless()
            rounds += 1
        assert_events_alternate(read_events(events))
    finally:
        figures(rounds=rounds, launchers_per_round=LAUNCHERS, daemons=rounds,
                losers_refused_before_fork=where["launcher"],
                losers_refused_by_daemon=where["daemon"],
                release_spread_ms=f"median {sorted(spreads)[len(spreads) // 2] / 1000:.1f}"
                if spreads else "-")


def test_racing_start_stop_loops_never_have_two_holders(tmp_path: Path, fleet: Fleet,
                                                        figures: Figures) -> None:
    pidfile = tmp_path / "app.pid"
    events = tmp_path / "events"
    program = {"options": {"pidfile": str(pidfile)}, "log": str(events)}
    fleet.send("loops", loops=LOOPS, iterations=LOOP_ITERATIONS, program=program,
               stderr=str(tmp_path / "loop"))
    samples = held = 0
    reply = None
    while reply is None:
        holders = proc_locks_holders(pidfile)
        assert len(holders) <= 1, f"two processes hold the pidfile's lock: {holders}"
        holder = holder_pid(pidfile)
        if holder is not None:
            held += 1
            ours = descends_from(holder, fleet.pid)
            assert ours or not pid_exists(holder), (
                f"pidfile held by stranger {holder}: {ancestry(holder)} (farm {fleet.pid})")
        samples += 1
        reply = fleet.receive(0.002)
    fleet.reap()
    log = read_events(events)
    daemons = {pid for _, pid, _, _ in log}
    ready = sum(started for _, _, started, _ in reply["loops"])
    figures(loops=LOOPS, cycles=LOOPS * LOOP_ITERATIONS, launches_ready=ready,
            daemons_held_lock=len(daemons), samples=samples, samples_held=held)
    assert not reply["missing"]
    assert all(code == 0 for _, code, _, _ in reply["loops"]), reply["loops"]
    # every launcher that said "started" had a daemon that held the pidfile (some daemons
    # were stopped by another loop before they were ready, so there may be more of those)
    assert ready <= len(daemons)
    assert_events_alternate(log)
    exits = dict(fleet.adopted)
    # A daemon stopped by another loop before it was ready was reaped by its intermediate
    # child (its parent until the launcher's verdict); its launcher printed how it ended.
    for launcher_err in tmp_path.glob("loop-*"):
        for pid, code in re.findall(r"daemon \(pid (\d+)\) exited with status (\d+) during "
                                    r"start-up", launcher_err.read_text()):
            exits.setdefault(int(pid), int(code))
    assert all(exits.get(pid) == 0 for pid in daemons), (
        "every daemon stopped by SIGTERM must exit 0", {pid: exits.get(pid) for pid in daemons})
    assert not pidfile.exists()
    wait_tagged_settle(tmp_path, set(), [fleet.pid])
