"""A daemon whose pidfile was removed by hand is still found (issue 13, #5).

The daemon keeps its descriptor, and with it the lock, of the file that was at the path: the
kernel shows it as ``<path> (deleted)``.  ``status`` and ``stop`` find it there (and only a
process whose removed file names its own pid, i.e. the one that wrote it), and ``start``
refuses to start a second instance next to it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    adopt_lock_holder,
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


def _start_find_and_stop_through(pidfile: Path, spawned: list[int]) -> None:
    """Start a program on ``pidfile``, remove the file; status, start and stop must find it."""
    assert run_cli("start", "--pidfile", str(pidfile), *SLEEPER).returncode == 0
    program = holder(pidfile)
    spawned.append(program)
    pidfile.unlink()
    status = run_cli("status", "--pidfile", str(pidfile))
    assert status.returncode == 0, status.stdout
    assert f"running: pid {program} holds the lock of its pidfile" in status.stdout
    second = run_cli("start", "--pidfile", str(pidfile), *SLEEPER)
    adopt_lock_holder(pidfile, spawned)
    assert second.returncode == 1, second.stderr
    assert f"already running as pid {program}" in second.stderr
    assert not pidfile.exists(), "no second instance created a new pidfile"
    stop = run_cli("stop", "--pidfile", str(pidfile), "--verbose")
    assert stop.returncode == 0, stop.stderr
    assert "(its pidfile had been removed)" in stop.stdout
    assert not pid_exists(program)


def test_a_program_whose_pidfile_was_removed_is_found_through_a_symlinked_directory(
        tmp_path: Path, spawned: list[int]) -> None:
    """Issue 13, #5 (review): ``/var/run/app.pid`` where ``/var/run -> /run`` (Debian).

    The kernel shows the removed file by its resolved path (``/run/app.pid (deleted)``); the
    search compared it with the path as given, found nothing, and a second instance started.
    """
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("../run")
    _start_find_and_stop_through(tmp_path / "var" / "run" / "app.pid", spawned)


@pytest.mark.skipif(not os.path.islink("/var/run"), reason="/var/run is not a symbolic link")
def test_a_program_whose_pidfile_was_removed_is_found_through_var_run(
        spawned: list[int]) -> None:
    """Issue 13, #5 (review), on this system's own ``/var/run`` link."""
    pidfile = Path(f"/var/run/daemonctx-test-removed-{os.getpid()}.pid")
    try:
        _start_find_and_stop_through(pidfile, spawned)
    finally:
        for pid in spawned:
            kill_and_wait(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)


def test_a_library_start_next_to_a_daemon_whose_pidfile_was_removed_is_refused(
        tmp_path: Path, spawned: list[int]) -> None:
    """Issue 13, #5 (review): a second ``DaemonContext`` start ran a second instance.

    Only the command looked for the holder of a removed pidfile; the library's pre-fork check
    (``PIDFile.preflight``) found the path free and started.
    """
    pidfile = tmp_path / "app.pid"
    config = {"pid_path": str(tmp_path / "pid"), "options": {"pidfile": str(pidfile)}}
    result, daemon = launch_probe(config, spawned)
    assert result.returncode == 0, result.stderr
    assert daemon is not None
    pidfile.unlink()
    (tmp_path / "pid").unlink()
    second, second_daemon = launch_probe(config, spawned)
    adopt_lock_holder(pidfile, spawned)
    assert second_daemon is None, "a second instance started"
    assert second.returncode != 0
    assert (f"pidfile {pidfile} is held by pid {daemon}: already running, although the file "
            f"was removed") in second.stderr
    assert not pidfile.exists(), "no second instance created a new pidfile"
    assert pid_exists(daemon)
    kill_and_wait(daemon, signal.SIGTERM)
