"""Where ``DaemonContext.open()`` spends its time: a per-step timeline, median over runs.

    python benchmarks/profile_open.py [RUNS] [NOFILE]

Each run starts a fresh launcher that wraps every step function daemonctx's ``open()`` calls
(``daemonctx.steps``, the handshake, the context's own phases, ``os.fork``/``os.setsid``) with
CLOCK_MONOTONIC stamps.  A fork copies the stamps taken so far, so the daemon ends up holding
the whole timeline -- launcher, intermediate child and daemon -- and writes it out first thing
in its main.  Printed: the median time from ``open()`` called to the start of each step, the
median duration of each step, and the gaps between steps (code not wrapped).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Only modules that do not import threading at module level: threading registers at-fork
# handlers that make every os.fork() about 0.3 ms slower, which would distort the timeline.

REPO = Path(__file__).resolve().parent.parent
CLOCK = time.CLOCK_MONOTONIC


def _launcher(out: str, nofile: int) -> None:
    """Runs in the fresh interpreter: wrap, open(), and dump the timeline from the daemon."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    sys.path.insert(0, str(REPO))
    from daemonctx import context, handshake, launcher, options, steps

    stamps: list[tuple[str, int, int, int]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(original)
        def stamped(*args: Any, **kwargs: Any) -> Any:
            begin = time.clock_gettime_ns(CLOCK)
            try:
                return original(*args, **kwargs)
            finally:
                stamps.append((label, begin, time.clock_gettime_ns(CLOCK), os.getpid()))

        setattr(owner, name, stamped)

    for name in steps.__all__:
        wrap(steps, name, f"steps.{name}")
    wrap(handshake, "notify_ready", "handshake.notify_ready")
    wrap(options, "resolve", "options.resolve")
    for name in ("_run_steps_before_fork", "_run_steps_after_fork"):
        wrap(context.DaemonContext, name, f"DaemonContext.{name}")
    wrap(context, "_warn_about_threads", "context._warn_about_threads")
    wrap(context, "install_signal_handlers", "signals.install_signal_handlers")
    for name in ("__init__", "daemon_side"):  # the daemon's copy of the stamps sees these
        wrap(launcher.Launch, name, f"Launch.{name}")
    wrap(os, "fork", "os.fork (as seen by the caller)")
    wrap(os, "setsid", "os.setsid")
    wrap(os, "pipe2", "os.pipe2")
    wrap(signal, "pthread_sigmask", "signal.pthread_sigmask")
    if "threading" in sys.modules:
        raise SystemExit("threading got imported: fork timings would be distorted")
    ctx = context.DaemonContext()
    started = time.clock_gettime_ns(CLOCK)
    ctx.open()
    reached = time.clock_gettime_ns(CLOCK)
    timeline = [{"step": s, "begin": (b - started) / 1e6, "end": (e - started) / 1e6,
                 "pid": p} for s, b, e, p in stamps]
    Path(out + ".tmp").write_text(json.dumps({"total": (reached - started) / 1e6,
                                              "timeline": timeline}))
    os.rename(out + ".tmp", out)
    os._exit(0)


def main() -> None:
    import statistics
    import subprocess
    import tempfile

    from common import become_subreaper, children_of, wait_gone

    become_subreaper()
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    nofile = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    totals: list[float] = []
    durations: dict[str, list[float]] = {}
    begins: dict[str, list[float]] = {}
    order: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        # Cache bytecode in the scratch directory, whatever PYTHONDONTWRITEBYTECODE says.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(Path(scratch) / "pycache")
        for run in range(runs + 1):
            out = Path(scratch) / f"timeline-{run}.json"
            subprocess.run([sys.executable, __file__, "--launcher", str(out), str(nofile)],
                           check=True, stdin=subprocess.DEVNULL)
            # The daemon, re-parented to us (a subreaper), writes the timeline and exits.
            if wait_gone(children_of(os.getpid()), 10.0):
                raise SystemExit("the daemon did not finish within 10 s")
            data = json.loads(out.read_text())
            if run == 0:
                continue  # warm-up
            totals.append(data["total"])
            seen: dict[str, int] = {}
            for item in data["timeline"]:
                count = seen.get(item["step"], 0)
                seen[item["step"]] = count + 1
                key = item["step"] + (f" #{count + 1}" if count else "")
                if key not in durations:
                    order.append(key)
                durations.setdefault(key, []).append(item["end"] - item["begin"])
                begins.setdefault(key, []).append(item["begin"])
    print(f"open() -> main: median {statistics.median(totals):.3f} ms over {runs} runs "
          f"(RLIMIT_NOFILE {nofile}; wrapping adds ~2 us per stamped call)")
    print(f"{'step':<48} {'starts at':>10} {'takes':>8}")
    for key in sorted(order, key=lambda k: statistics.median(begins[k])):
        print(f"{key:<48} {statistics.median(begins[key]):>9.3f}  "
              f"{statistics.median(durations[key]):>7.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--launcher":
        _launcher(sys.argv[2], int(sys.argv[3]))
    else:
        main()
