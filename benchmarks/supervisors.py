"""Pre-fork supervisors: start, restart, idle CPU, graceful stop, worker RSS.

Contenders (see ``supervisor_master.py``): a minimal fork/wait loop, ``daemonctx.fork_processes``
and ``tornado.process.fork_processes``.  Measured:

* ``start_ms`` (per worker count): ``fork_processes(n)`` called -> the last of the n workers
  running (its own clock read, first thing);
* ``restart_ms``: SIGKILL sent to a worker by the harness -> its replacement running;
* ``idle_ticks``: utime + stime of the master over an idle window with 16 workers up;
* ``stop_ms``: SIGTERM to the master -> the master and its 16 workers all gone (tornado's master
  dies at once and leaves its workers running: recorded as a failure, the orphans killed);
* ``worker_hwm_kib`` / ``master_hwm_kib``: VmHWM of worker 0 and of the master once all run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    Channel,
    cpu_ticks,
    interleave,
    kill_all,
    log,
    now_ns,
    reap_strays,
    vm_hwm_kib,
    wait_gone,
)

CONTENDERS = ("minimal-loop", "daemonctx", "tornado")
MASTER = BENCH_DIR / "supervisor_master.py"
STOP_WORKERS = 16
STOP_TIMEOUT = 1.0


@dataclass
class Master:
    """A running master and the current pid of each of its workers."""

    contender: str
    token: str
    proc: subprocess.Popen[bytes]
    workers: dict[int, int]
    start_ns: int

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.workers.values()]


class Fleet:
    """Starts masters and takes them down again, leaving nothing behind."""

    def __init__(self, scratch: Path, channel: Channel) -> None:
        self.scratch = scratch
        self.channel = channel
        self.count = 0
        self.live: set[int] = set()
        self.errfile = (scratch / "masters.stderr").open("ab")

    def close(self) -> None:
        self.errfile.close()

    def launch(self, contender: str, workers: int) -> Master:
        """Start a master; return once it is forked (its workers report later)."""
        self.count += 1
        token = f"sup-{self.count}"
        proc = subprocess.Popen(
            [PYTHON, str(MASTER), contender, str(self.channel.path), token, str(workers)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.errfile)
        self.live.add(proc.pid)
        return Master(contender, token, proc, {}, 0)

    def await_workers(self, master: Master, workers: int, timeout: float = 60.0) -> float:
        """Wait until every worker reported; return the start time of the last one (ms)."""
        try:
            lines = self.channel.read_lines(workers, timeout, master.token)
        except BenchError as exc:
            self.discard(master)
            raise BenchError(f"{master.contender}: {exc}") from None
        deltas = []
        for _, task, pid, _now, delta in lines:
            master.workers[int(task)] = int(pid)
            deltas.append(int(delta))
        return max(deltas) / 1e6

    def discard(self, master: Master) -> None:
        """SIGKILL the master and every worker by pid, and reap them."""
        kill_all(master.pids())
        self._forget(master)

    def _forget(self, master: Master) -> None:
        master.proc.wait()
        self.live.discard(master.proc.pid)
        self.channel.forget(master.token)
        reap_strays(keep=self.live)

    def restart_once(self, master: Master, task: int = 0) -> float:
        """Kill worker ``task`` and wait for its replacement; the latency in ms."""
        victim = master.workers[task]
        killed = now_ns()
        os.kill(victim, signal.SIGKILL)
        try:
            (_, new_task, pid, started, _), = self.channel.read_lines(1, 10.0, master.token)
        except BenchError as exc:
            raise BenchError(f"{master.contender}: no restart: {exc}") from None
        if int(new_task) != task or int(pid) == victim:
            raise BenchError(f"{master.contender}: unexpected report {new_task} {pid}")
        master.workers[task] = int(pid)
        return (int(started) - killed) / 1e6

    def graceful_stop(self, master: Master) -> float:
        """SIGTERM the master; the time until it and its workers are gone (ms).

        Raises BenchError (after killing them) if any is left after STOP_TIMEOUT.
        """
        pids = master.pids()
        started = now_ns()
        os.kill(master.proc.pid, signal.SIGTERM)
        left = wait_gone(pids, STOP_TIMEOUT)
        elapsed = (now_ns() - started) / 1e6
        if left:
            master_alive = master.proc.pid in left
            self.discard(master)
            what = "the master is still running" if master_alive else "the master exited"
            raise BenchError(f"{master.contender}: {STOP_TIMEOUT:g} s after SIGTERM {what} "
                             f"and {len(left) - master_alive} workers are left running")
        self._forget(master)
        return elapsed


def run_start(fleet: Fleet, counts: list[int], rounds: dict[int, int],
              errors: dict[str, list[str]]) -> dict[str, Any]:
    """Start latency for each worker count; worker/master RSS at the smallest count."""
    by_count: dict[str, Any] = {}
    for n in counts:
        log(f"supervisor start: {n} workers, {rounds[n]} rounds x {len(CONTENDERS)}")

        def take(contender: str, n: int = n) -> dict[str, float]:
            master = fleet.launch(contender, n)
            try:
                values = {"start_ms": fleet.await_workers(master, n)}
                worker_hwm = vm_hwm_kib(master.workers[0])
                master_hwm = vm_hwm_kib(master.proc.pid)
                if worker_hwm is not None:
                    values["worker_hwm_kib"] = float(worker_hwm)
                if master_hwm is not None:
                    values["master_hwm_kib"] = float(master_hwm)
                return values
            finally:
                fleet.discard(master)

        by_count[str(n)] = interleave(CONTENDERS, rounds[n], 1, take,
                                      ("start_ms", "worker_hwm_kib", "master_hwm_kib"), errors)
    return by_count


def run_restart(fleet: Fleet, kills: int, errors: dict[str, list[str]]) -> dict[str, Any]:
    """Restart latency: one master of each contender with 2 workers, kills interleaved."""
    log(f"supervisor restart: {kills} kills x {len(CONTENDERS)}")
    masters: dict[str, Master] = {}
    try:
        for contender in CONTENDERS:
            master = fleet.launch(contender, 2)
            fleet.await_workers(master, 2)
            masters[contender] = master

        def take(contender: str) -> dict[str, float]:
            return {"restart_ms": fleet.restart_once(masters[contender])}

        return interleave(CONTENDERS, kills, 1, take, ("restart_ms",), errors)["restart_ms"]
    finally:
        for master in masters.values():
            fleet.discard(master)


def run_idle_and_stop(fleet: Fleet, rounds: int, idle_seconds: float,
                      errors: dict[str, list[str]]) -> dict[str, Any]:
    """Masters with 16 workers: idle CPU over a window (first round), then graceful stops."""
    log(f"supervisor idle ({idle_seconds:g} s) and graceful stop: {rounds} rounds")
    stop: dict[str, list[float | None]] = {c: [] for c in CONTENDERS}
    idle: dict[str, int | None] = {}
    for r in range(rounds):
        masters: dict[str, Master] = {}
        try:
            for contender in CONTENDERS:
                masters[contender] = fleet.launch(contender, STOP_WORKERS)
            for master in masters.values():
                fleet.await_workers(master, STOP_WORKERS)
            if r == 0:
                before = {c: cpu_ticks(m.proc.pid) for c, m in masters.items()}
                time.sleep(idle_seconds)  # the measurement window itself, not a synchronisation
                for c, m in masters.items():
                    idle[c] = cpu_ticks(m.proc.pid) - before[c]
            order = [CONTENDERS[(r + i) % len(CONTENDERS)] for i in range(len(CONTENDERS))]
            for contender in order:
                try:
                    value: float | None = fleet.graceful_stop(masters.pop(contender))
                except BenchError as exc:
                    value = None
                    errors.setdefault(contender, []).append(str(exc))
                stop[contender].append(value)
        except BenchError as exc:
            log(f"  idle/stop round {r}: {exc}")
            errors.setdefault("idle/stop", []).append(str(exc))
        finally:
            for master in masters.values():
                fleet.discard(master)
    return {"idle_seconds": idle_seconds, "idle_ticks": idle, "stop_ms": stop,
            "stop_workers": STOP_WORKERS}


def run(scratch: Path, counts: list[int], start_rounds: dict[int, int], kills: int,
        stop_rounds: int, idle_seconds: float) -> dict[str, Any]:
    """Every supervisor measurement; raw samples."""
    channel = Channel(scratch, "supervisor.fifo")
    fleet = Fleet(scratch, channel)
    errors: dict[str, list[str]] = {}
    try:
        start = run_start(fleet, counts, start_rounds, errors)
        restart = run_restart(fleet, kills, errors)
        idle_stop = run_idle_and_stop(fleet, stop_rounds, idle_seconds, errors)
    finally:
        fleet.close()
        channel.close()
    return {"contenders": list(CONTENDERS), "counts": counts, "start": start,
            "restart_ms": restart, **idle_stop, "errors": errors}
