"""A pidfile's ``acquire_timeout`` is waited for before forking (issue 13, #2).

python-daemon's restart pattern is ``kill -TERM $old; python app.py`` with
``TimeoutPIDLockFile(path, 5)``: the new instance waits up to 5 s for the old one to let go of
the pidfile.  Here the old instance takes its time to stop (its SIGTERM handler is slow), and
the new launcher must wait for it, then start, instead of failing at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import (
    PYTHON,
    adopt_lock_holder,
    holder,
    kill_and_wait,
    pid_exists,
    read_pid_file,
    wait_for,
    wait_pid_gone,
    write_script,
)

APP = """
import os, signal, sys, time
import daemonctx
from daemonctx.pidfile import TimeoutPIDLockFile

rundir, wait, stop_time = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])

def stop_slowly(signum, frame):
    open(os.path.join(rundir, f"stopping-{os.getpid()}"), "w").close()
    time.sleep(stop_time)  # flushing, closing connections...
    raise SystemExit(0)

pidfile = TimeoutPIDLockFile(os.path.join(rundir, "app.pid"), wait)
with daemonctx.DaemonContext(pidfile=pidfile, signal_map={signal.SIGTERM: stop_slowly}):
    while True:
        signal.pause()
"""


def _start(script: Path, rundir: Path, wait: float,
           stop_time: float = 0.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(script), str(rundir), str(wait), str(stop_time)],
                          capture_output=True, text=True, timeout=60)


def test_restart_while_the_old_instance_stops_waits_for_it(tmp_path: Path,
                                                           spawned: list[int]) -> None:
    script = write_script(tmp_path, APP, "app.py")
    pidfile = tmp_path / "app.pid"
    first = _start(script, tmp_path, wait=5, stop_time=1.0)
    adopt_lock_holder(pidfile, spawned)
    assert first.returncode == 0, first.stderr
    old = read_pid_file(pidfile)
    os.kill(old, signal.SIGTERM)
    wait_for((tmp_path / f"stopping-{old}").exists, what="the old one to be stopping")
    assert holder(pidfile) == old  # still shutting down, still holding the pidfile
    second = _start(script, tmp_path, wait=5, stop_time=0)
    adopt_lock_holder(pidfile, spawned)
    assert second.returncode == 0, second.stderr
    new = holder(pidfile)
    assert new != old
    assert not pid_exists(old)
    assert int(pidfile.read_text()) == new


def _running(tmp_path: Path, spawned: list[int]) -> tuple[Path, Path, int]:
    """The app started once: (its script, its pidfile, the daemon's pid)."""
    script = write_script(tmp_path, APP, "app.py")
    pidfile = tmp_path / "app.pid"
    started = _start(script, tmp_path, wait=0)
    adopt_lock_holder(pidfile, spawned)
    assert started.returncode == 0, started.stderr
    return script, pidfile, read_pid_file(pidfile)


def test_holder_that_outlasts_the_wait_fails_naming_it_and_the_wait(tmp_path: Path,
                                                                    spawned: list[int]) -> None:
    script, pidfile, running = _running(tmp_path, spawned)
    second = _start(script, tmp_path, wait=0.5)
    assert second.returncode == 1
    assert (f"PIDFileTimeoutError: pidfile {pidfile} is held by pid {running}: still locked "
            f"after waiting 0.5 s") in second.stderr
    assert holder(pidfile) == running
    kill_and_wait(running, signal.SIGTERM)
    wait_pid_gone(running)


def test_no_wait_still_fails_at_once_as_already_running(tmp_path: Path,
                                                        spawned: list[int]) -> None:
    script, _, running = _running(tmp_path, spawned)
    second = _start(script, tmp_path, wait=0)
    assert second.returncode == 1
    assert f"is held by pid {running}: already running" in second.stderr
