"""A daemon whose pidfile was removed by hand is still found (issue 13, #5).

The daemon keeps its descriptor, and with it the lock, of the file that was at the path: the
kernel shows it as ``<path> (deleted)``.  ``status`` and ``stop`` find it there (and only a
process whose removed file names its own pid, i.e. the one that wrote it), and ``start``
refuses to start a second instance next to it.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import (
    assert_one_line_error,
    holder,
    kill_and_wait,
    launch_probe,
    pid_exists,
    run_cli,
    wait_pid_gone,
)

SLEEPER = ("--", "/bin/sleep", "600")


def test_status_stop_and_start_find_a_program_whose_pidfile_was_removed(
        pid_path: Path, spawned: list[int]) -> None:
    assert run_cli("start", "--pidfile", str(pid_path), *SLEEPER).returncode == 0
    program = holder(pid_path)
    spawned.append(program)  # killed at the end, even once its pidfile is gone
    pid_path.unlink()  # a careless clean-up script
    status = run_cli("status", "--pidfile", str(pid_path))
    assert status.returncode == 0, status.stdout
    assert f"running: pid {program} holds the lock of its pidfile {pid_path}, which was " \
           f"removed" in status.stdout
    second = run_cli("start", "--pidfile", str(pid_path), *SLEEPER)
    assert second.returncode == 1
    assert f"already running as pid {program}" in second.stderr
    assert_one_line_error(second)
    assert not pid_path.exists(), "no second instance created a new pidfile"
    stop = run_cli("stop", "--pidfile", str(pid_path), "--verbose")
    assert stop.returncode == 0, stop.stderr
    assert "(its pidfile had been removed)" in stop.stdout
    assert not pid_exists(program)
    assert run_cli("status", "--pidfile", str(pid_path)).returncode == 3


def test_signal_reaches_a_program_whose_pidfile_was_removed(pid_path: Path,
                                                           spawned: list[int]) -> None:
    assert run_cli("start", "--pidfile", str(pid_path), *SLEEPER).returncode == 0
    program = holder(pid_path)
    spawned.append(program)
    pid_path.unlink()
    result = run_cli("signal", "TERM", "--pidfile", str(pid_path))
    assert result.returncode == 0, result.stderr
    wait_pid_gone(program)


def test_status_finds_a_library_daemon_whose_pidfile_was_removed(tmp_path: Path,
                                                                 spawned: list[int]) -> None:
    pidfile = tmp_path / "app.pid"
    config = {"pid_path": str(tmp_path / "pid"), "options": {"pidfile": str(pidfile)}}
    result, daemon = launch_probe(config, spawned)
    assert result.returncode == 0, result.stderr
    assert daemon is not None
    pidfile.unlink()
    status = run_cli("status", "--pidfile", str(pidfile))
    assert status.returncode == 0
    assert f"running: pid {daemon}" in status.stdout
    kill_and_wait(daemon, signal.SIGTERM)


def test_a_process_holding_a_removed_file_it_did_not_write_is_not_the_daemon(
        tmp_path: Path, spawned: list[int]) -> None:
    import subprocess

    from tests.helpers import PYTHON

    pidfile = tmp_path / "app.pid"
    pidfile.write_text("1\n")  # names init, not the process that will lock it
    code = ("import fcntl, os, signal, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.unlink(sys.argv[1])\n"
            "print('locked', flush=True)\n"
            "signal.pause()\n")
    locker = subprocess.Popen([PYTHON, "-c", code, str(pidfile)], stdout=subprocess.PIPE,
                              text=True)
    spawned.append(locker.pid)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    status = run_cli("status", "--pidfile", str(pidfile))
    assert status.returncode == 3, status.stdout  # not running: that holder is no daemon
    stop = run_cli("stop", "--pidfile", str(pidfile))
    assert stop.returncode == 1
    assert locker.poll() is None, "a process that did not write the file is never signalled"
