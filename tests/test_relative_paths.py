"""Relative paths mean the caller's directory, in the library and in the command (issue 16, #2).

``PIDFile("app.pid")`` used to mean ``/app.pid`` (resolved in the daemon, after its change of
directory to ``/``), while ``daemonctx status -p app.pid`` meant the caller's ``app.pid``: the
command then said "not running" for a running daemon.  And ``daemonctx start ... -- python
ticker.py`` failed with "can't open file '//ticker.py'" and no hint why.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from daemonctx.pidfile import holder_pid
from tests.helpers import PYTHON, REPO, kill_tree, run_cli, wait_pid_gone, write_script

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def test_a_relative_pidfile_is_the_callers_and_the_command_finds_the_daemon_by_it(
        tmp_path: Path, spawned: list[int]) -> None:
    script = write_script(tmp_path, """
import signal, daemonctx
with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile("app.pid")):
    signal.pause()
""", "app.py")
    started = subprocess.run([PYTHON, str(script)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env=ENV)
    pid = holder_pid(tmp_path / "app.pid")
    if pid is not None:
        spawned.append(pid)
    assert started.returncode == 0, started.stderr
    assert pid is not None, "the pidfile is in the directory the program was started from"
    assert not Path("/app.pid").exists()
    status = subprocess.run([PYTHON, "-m", "daemonctx", "status", "-p", "app.pid"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=ENV)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"running: pid {pid}" in status.stdout
    stop = subprocess.run([PYTHON, "-m", "daemonctx", "stop", "-p", "app.pid"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert stop.returncode == 0, stop.stderr
    wait_pid_gone(pid)
    assert not (tmp_path / "app.pid").exists()


def test_a_program_that_cannot_find_a_relative_file_is_told_where_it_runs(
        tmp_path: Path) -> None:
    (tmp_path / "ticker.py").write_text("print('tick')\n")
    result = subprocess.run(
        [PYTHON, "-m", "daemonctx", "start", "--pidfile", "t.pid", "--", PYTHON, "ticker.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 3
    assert "exited during start-up with status 2" in result.stderr
    assert (f"note: it runs in /, where the relative path 'ticker.py' names nothing (it is a "
            f"file in {tmp_path}): give --chdir {tmp_path}, or an absolute path") \
        in result.stderr
    assert not (tmp_path / "t.pid").exists()


def test_with_chdir_the_same_relative_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "ticker.py").write_text("import signal\nsignal.pause()\n")
    pidfile = tmp_path / "t.pid"
    result = subprocess.run(
        [PYTHON, "-m", "daemonctx", "start", "--pidfile", "t.pid", "--chdir", ".", "--",
         PYTHON, "ticker.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=ENV)
    pid = holder_pid(pidfile)
    try:
        assert result.returncode == 0, result.stderr
        assert pid is not None
        assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            wait_pid_gone(pid)


def test_a_relative_command_path_is_the_callers(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "tick"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nsleep 600\n")
    program.chmod(0o755)
    pidfile = tmp_path / "t.pid"
    result = subprocess.run(
        [PYTHON, "-m", "daemonctx", "start", "--pidfile", "t.pid", "--", "bin/tick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=ENV)
    pid = holder_pid(pidfile)
    try:
        assert result.returncode == 0, result.stderr
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(program).encode() in cmdline  # run as bin/tick from the caller's directory
    finally:
        kill_tree(pid)
    assert run_cli("status", "--pidfile", str(pidfile)).returncode in (1, 3)
