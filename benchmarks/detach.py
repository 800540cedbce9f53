"""Detach latency, launcher wall time and the daemon's peak RSS, per contender and RLIMIT_NOFILE.

Each sample starts ``detach_launcher.py`` in a fresh interpreter and measures:

* ``latency_ms``: ``open()`` called -> the daemon's main running (both CLOCK_MONOTONIC reads are
  taken by the contender's own processes: the launcher just before the call, the daemon first
  thing in main);
* ``wall_ms``: spawning the launcher -> the launcher has exited (interpreter start-up and
  imports included: what a shell or a deploy script waits for);
* ``daemon_hwm_kib``: the daemon's VmHWM once its main runs.

The daemon is then killed by pid and reaped (the harness is a subreaper).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PYTHON,
    BenchError,
    Channel,
    interleave,
    kill_all,
    log,
    now_ns,
    reap_strays,
    vm_hwm_kib,
    wait_exit,
)

CONTENDERS = ("reference", "reference-handshake", "daemonctx", "daemonctx-nowait",
              "python-daemon", "daemonize")
METRICS = ("latency_ms", "wall_ms", "daemon_hwm_kib")
LAUNCHER = BENCH_DIR / "detach_launcher.py"


class DetachSampler:
    """Takes one detach sample of a contender at a given RLIMIT_NOFILE soft limit."""

    def __init__(self, scratch: Path, channel: Channel) -> None:
        self.scratch = scratch
        self.channel = channel
        self.nofile = 1024
        self.count = 0

    def take(self, contender: str) -> dict[str, float]:
        self.count += 1
        token = f"detach-{self.count}"
        errfile = self.scratch / "launcher.stderr"
        with errfile.open("wb") as err:
            started = now_ns()
            proc = subprocess.Popen(
                [PYTHON, str(LAUNCHER), contender, str(self.channel.path), token,
                 str(self.nofile), str(self.scratch)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            try:
                status = wait_exit(proc, 30)
            except BenchError:
                reap_strays()
                raise
            exited = now_ns()
        if status != 0:
            reap_strays()
            tail = errfile.read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"{contender} launcher exited {status}: {' | '.join(tail)}")
        try:
            (_, delta, pid), = self.channel.read_lines(1, timeout=20, token=token)
        except BenchError:
            reap_strays()
            raise
        daemon = int(pid)
        hwm = vm_hwm_kib(daemon)
        kill_all([daemon])
        live = reap_strays()
        if live:
            raise BenchError(f"{contender} left unexpected processes {live}")
        values = {"latency_ms": int(delta) / 1e6, "wall_ms": (exited - started) / 1e6}
        if hwm is not None:
            values["daemon_hwm_kib"] = float(hwm)
        return values


def run(scratch: Path, limits: list[int], rounds: int, warmup: int) -> dict[str, Any]:
    """Measure every contender at each RLIMIT_NOFILE in ``limits``; return raw samples."""
    channel = Channel(scratch, "detach.fifo")
    sampler = DetachSampler(scratch, channel)
    errors: dict[str, list[str]] = {}
    by_limit: dict[str, Any] = {}
    try:
        for nofile in limits:
            log(f"detach: RLIMIT_NOFILE {nofile}, {rounds} rounds x {len(CONTENDERS)}")
            sampler.nofile = nofile
            by_limit[str(nofile)] = interleave(CONTENDERS, rounds, warmup, sampler.take,
                                               METRICS, errors)
    finally:
        channel.close()
    return {"contenders": list(CONTENDERS), "limits": limits, "rounds": rounds,
            "by_limit": by_limit, "errors": errors}
