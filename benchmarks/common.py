"""What every benchmark section shares: clocks, statistics, the FIFO channel, process clean-up.

The harness makes itself a child subreaper, so every daemon and orphaned worker a sample
leaves behind is re-parented to it: it can kill each one by pid and reap it, leaving no zombie
(the machine's pid 1 is not a real init).
"""

from __future__ import annotations

import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
CLOCK = time.CLOCK_MONOTONIC
PR_SET_CHILD_SUBREAPER = 36


class BenchError(RuntimeError):
    """A sample could not be taken (a contender failed or timed out); the message says which."""


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds: system-wide, so comparable across processes."""
    return time.clock_gettime_ns(CLOCK)


def become_subreaper() -> None:
    """Adopt every orphaned descendant (daemons, workers of a dead master), to reap them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


# --- statistics ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else float("nan")


def p90(values: Sequence[float]) -> float:
    """The 90th percentile (linear interpolation between order statistics); NaN if empty."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def paired_ratio(samples: Sequence[float | None], baseline: Sequence[float | None]) -> float:
    """Median of per-round ratios ``sample / baseline`` (rounds where both exist); NaN if none."""
    ratios = [a / b for a, b in zip(samples, baseline, strict=False)
              if a is not None and b is not None and b > 0]
    return median(ratios)


def summary(samples: Sequence[float | None]) -> dict[str, Any]:
    """``{"median", "p90", "n", "failed"}`` of the samples that were taken."""
    taken = [s for s in samples if s is not None]
    return {"median": median(taken), "p90": p90(taken), "n": len(taken),
            "failed": len(samples) - len(taken)}


# --- interleaving --------------------------------------------------------------------------

Samples = dict[str, list[float | None]]
"""Samples of one metric per contender, one slot per round (None where the sample failed)."""


def interleave(contenders: Sequence[str], rounds: int, warmup: int,
               take: Callable[[str], dict[str, float]], metrics: Sequence[str],
               errors: dict[str, list[str]] | None = None) -> dict[str, Samples]:
    """Take ``rounds`` samples of each contender as A B C, B C A, C A B... (rotated order).

    ``take(name)`` returns one value per metric.  The first ``warmup`` rounds are discarded
    (page cache, bytecode cache).  A sample that raises :class:`BenchError` is recorded as None
    (its message goes to ``errors``), so one failing contender does not stop the run.  Returns
    ``{metric: {contender: [value per round]}}``.
    """
    result: dict[str, Samples] = {m: {c: [] for c in contenders} for m in metrics}
    n = len(contenders)
    for r in range(warmup + rounds):
        order = [contenders[(r + i) % n] for i in range(n)]
        for name in order:
            try:
                values: dict[str, float] = take(name)
            except BenchError as exc:
                values = {}
                log(f"  {name}: {exc}")
                if errors is not None:
                    errors.setdefault(name, []).append(str(exc))
            if r >= warmup:
                for metric in metrics:
                    result[metric][name].append(values.get(metric))
    return result


# --- a FIFO the daemons and workers report on ---------------------------------------------


class Channel:
    """A named pipe in ``directory`` that processes open by name and write one line to.

    The harness holds it open read-write, so there is always a writer (no spurious EOF) and a
    reader (writers never block on open); lines of up to PIPE_BUF bytes are atomic.  Each line
    starts with a token naming the sample (or the master) it belongs to; lines are kept per
    token until asked for, so concurrent reporters never lose a line.
    """

    def __init__(self, directory: Path, name: str = "report.fifo") -> None:
        self.path = directory / name
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._buffer = b""
        self._backlog: dict[str, list[list[str]]] = {}

    def close(self) -> None:
        os.close(self.fd)

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            fields = line.decode(errors="replace").split()
            if fields:
                self._backlog.setdefault(fields[0], []).append(fields)

    def forget(self, token: str) -> None:
        """Drop lines of a sample that is over (a late report of a timed-out sample)."""
        self._backlog.pop(token, None)

    def read_lines(self, count: int, timeout: float, token: str) -> list[list[str]]:
        """Wait (bounded) for ``count`` lines starting with ``token``; return them, split."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            queue = self._backlog.get(token, [])
            if len(queue) >= count:
                found, self._backlog[token] = queue[:count], queue[count:]
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"timed out after {timeout:g} s: {len(queue)}/{count} reports")
            select.select([self.fd], [], [], remaining)


# --- processes ----------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list in /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            found.extend(int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text()
                         .split())
        except FileNotFoundError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, depth first."""
    found: list[int] = []
    for child in children_of(pid):
        found.append(child)
        found.extend(descendants(child))
    return found


def state_of(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat, or None when the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2]


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of ``pid`` in KiB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid has exited (pidfds, no polling); reap our children.

    Returns the pids still alive when ``timeout`` ran out.
    """
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            _reap(pid)
    deadline = time.monotonic() + timeout
    try:
        while fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], remaining)
            for fd in ready:
                pid = fds.pop(fd)
                os.close(fd)
                _reap(pid)
    finally:
        left = list(fds.values())
        for fd in fds:
            os.close(fd)
    return left


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Block (no polling: a pidfd) until ``proc`` exits; its status.  Raises BenchError on timeout.

    ``Popen.wait(timeout=...)`` polls with growing sleeps, which would quantise wall times.
    """
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise BenchError(f"pid {proc.pid} did not exit within {timeout:g} s")
    finally:
        os.close(fd)
    return proc.wait()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Signal each pid (a missing one is fine) and wait for all of them to be gone."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    left = wait_gone(pids, timeout)
    if left:
        raise BenchError(f"processes survived {signal.Signals(sig).name}: {left}")


def reap_strays(keep: Iterable[int] = (), grace: float = 1.0) -> list[int]:
    """Reap every child of the harness not in ``keep``; kill those still alive after ``grace``.

    A sample that went to plan leaves only zombies here, or an intermediate process of a
    double fork that is just exiting (re-parented to the harness); a process still running after
    the grace period means a sample lost track of it: it is killed and its pid returned.
    """
    keep = set(keep)
    strays = [p for p in children_of(os.getpid()) if p not in keep]
    live = wait_gone(strays, grace) if strays else []
    kill_all(live)
    return live


# --- the machine ---------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """CPU model, core count, kernel, Python, library versions and the date of the run."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import resource
    from importlib import metadata

    versions = {}
    for dist in ("daemonctx", "python-daemon", "daemonize", "tornado"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nofile": f"{soft} soft / {hard} hard",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **{f"version {k}": v for k, v in versions.items()},
    }


def log(message: str) -> None:
    """Progress on stderr (stdout carries the comparison)."""
    print(message, file=sys.stderr, flush=True)
