"""Pidfiles in root-owned runtime directories, with a privilege drop (issue 16, #1).

``DaemonContext(pidfile=PIDFile("/run/app.pid"), uid="app")`` is how most daemons that drop
privileges are written, and it used to fail: the pidfile was created after the drop, by a user
who may not write ``/run``.  Now the launcher creates and locks it while it is still root, the
daemon inherits the lock and makes it its own, and keeps only a read-only descriptor (it cannot
rewrite root's file).  At exit the file is removed where the daemon may, otherwise left
unlocked: the lock, not the file, says who runs.  Everything is judged from outside: the
launcher's status, ``/proc/<pid>/status`` (who the daemon runs as), ``/proc/<pid>/fdinfo``
(how it holds the file), ``/proc/locks`` (who holds the lock), the file's owner and content.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PYTHON,
    proc_status,
    run_cli,
    wait_for,
    wait_pid_gone,
    write_script,
)

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")

# A daemon as people write it: start as root, drop to nobody inside DaemonContext.  Everything
# it needs is imported first (the interpreter here lives where nobody may not read).
DAEMON = """
import errno, os, signal, sys
import daemonctx, daemonctx.context, daemonctx.pidfile

pidfile_path, report = sys.argv[1], sys.argv[2]
with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(pidfile_path), uid="nobody"):
    try:
        os.open(pidfile_path, os.O_WRONLY)
        outcome = "opened for writing"
    except OSError as exc:
        outcome = errno.errorcode[exc.errno]
    with open(report, "w") as out:
        out.write(outcome)
    signal.pause()
"""


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A fresh directory in /run as a package would create it: root's, mode 0755."""
    path = Path("/run") / f"daemonctx-test-{secrets.token_hex(4)}"
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        pid = holder_pid(path / "app.pid") if path.exists() else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_pid_gone(pid)
        shutil.rmtree(path)


def _start(script: Path, pidfile: Path, report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(script), str(pidfile), str(report)],
                          capture_output=True, text=True, timeout=60)


def _accmode_of_fds_on(pid: int, path: Path) -> list[int]:
    """The access mode (O_RDONLY 0, O_WRONLY 1, O_RDWR 2) of each fd ``pid`` has on ``path``."""
    modes = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") != str(path):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as info:
                flags = next(line for line in info if line.startswith("flags:"))
        except (FileNotFoundError, StopIteration):
            continue
        modes.append(int(flags.split()[1], 8) & os.O_ACCMODE)
    return modes


def test_a_daemon_dropping_to_nobody_takes_its_pidfile_in_a_root_owned_run_directory(
        run_dir: Path, world_dir: Path) -> None:
    script = write_script(world_dir, DAEMON, "app.py")
    pidfile, report = run_dir / "app.pid", world_dir / "report"
    started = _start(script, pidfile, report)
    assert started.returncode == 0, started.stderr
    pid = holder_pid(pidfile)
    assert pid is not None, "the daemon must hold the lock"
    uids = proc_status(pid)["Uid"].split()
    assert uids == [str(NOBODY)] * 4, f"the daemon runs as nobody: {uids}"
    assert pidfile.read_text() == f"{pid}\n"
    assert pidfile.stat().st_uid == 0  # created by root, before the drop
    assert _accmode_of_fds_on(pid, pidfile) == [os.O_RDONLY]  # one read-only fd: the lock
    assert wait_for(lambda: report.exists() and report.read_text()) == "EACCES"

    os.kill(pid, signal.SIGTERM)
    wait_pid_gone(pid)
    assert holder_pid(pidfile) is None
    # nobody may not remove a file from root's directory: left, unlocked, naming the old pid
    assert pidfile.read_text() == f"{pid}\n"

    again = _start(script, pidfile, world_dir / "report2")
    assert again.returncode == 0, again.stderr
    second = holder_pid(pidfile)
    assert second is not None and second != pid
    assert pidfile.read_text() == f"{second}\n"


def test_a_second_start_is_refused_in_the_launcher_naming_the_running_daemon(
        run_dir: Path, world_dir: Path) -> None:
    script = write_script(world_dir, DAEMON, "app.py")
    pidfile = run_dir / "app.pid"
    first = _start(script, pidfile, world_dir / "report")
    assert first.returncode == 0, first.stderr
    pid = holder_pid(pidfile)
    second = _start(script, pidfile, world_dir / "report2")
    assert second.returncode == 1
    assert f"PIDFileLockedError: pidfile {pidfile} is held by pid {pid}: already running" \
        in second.stderr
    assert holder_pid(pidfile) == pid
    assert not (world_dir / "report2").exists()  # no second daemon ever ran


def test_a_daemon_whose_user_owns_the_directory_removes_its_pidfile_at_exit(
        run_dir: Path, world_dir: Path) -> None:
    own = run_dir / "app"  # RuntimeDirectory=app: /run/app, owned by the service's user
    own.mkdir()
    os.chown(own, NOBODY, NOBODY)
    script = write_script(world_dir, DAEMON, "app.py")
    pidfile = own / "app.pid"
    started = _start(script, pidfile, world_dir / "report")
    assert started.returncode == 0, started.stderr
    pid = holder_pid(pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_pid_gone(pid)
    assert not pidfile.exists()


def test_daemonctx_start_with_user_nobody_and_a_pidfile_in_run(run_dir: Path) -> None:
    pidfile = run_dir / "sleeper.pid"
    start = run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--",
                    "/bin/sleep", "600")
    assert start.returncode == 0, start.stderr
    pid = holder_pid(pidfile)
    assert pid is not None
    try:
        assert proc_status(pid)["Uid"].split() == [str(NOBODY)] * 4
        assert Path(f"/proc/{pid}/exe").resolve().name == "sleep"
        assert pidfile.read_text() == f"{pid}\n"
        assert _accmode_of_fds_on(pid, pidfile) == [os.O_RDONLY]
        status = run_cli("status", "--pidfile", str(pidfile))
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"running: pid {pid}" in status.stdout
    finally:
        stop = run_cli("stop", "--pidfile", str(pidfile))
    assert stop.returncode == 0, stop.stderr
    wait_pid_gone(pid)
    assert not pidfile.exists()  # the command, as root, removes what nobody could not
