"""Hostile environments: planted files, shared directories, closed stdio, odd fds and signals.

Launchers are real processes: forked by the warm farm (tests/stress/fleet.py) where many are
needed, or tests/probe_daemon.py started as a program where the launcher's own environment is
the point (closed stdio, signal mask, rlimits, a pty).
"""

from __future__ import annotations

import json
import os
import pty
import resource
import select
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PROBE,
    PYTHON,
    Subreaper,
    launch_probe,
    open_fds,
    pid_exists,
    proc_stat,
    read_pid_file,
    wait_pid_gone,
    write_script,
)
from tests.stress.support import Figures, Fleet, census, wait_tagged_settle

pytestmark = pytest.mark.stress

HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
NOBODY = 65534
PLANTED_LAUNCHES = 100
PTY_LAUNCHES = 10
PRECIOUS = "precious, owned by root\n"


def _stop(fleet: Fleet, pidfile: Path) -> None:
    """SIGTERM the pidfile's holder (a daemon the farm adopted): exit 0, pidfile removed.

    "Removed": nothing of root's is left at the path (a racing user may have planted anew).
    """
    daemon = holder_pid(pidfile)
    assert daemon is not None
    os.kill(daemon, signal.SIGTERM)
    wait_pid_gone(daemon)
    assert fleet.reap([daemon])[daemon] == 0
    try:
        assert os.lstat(pidfile).st_uid != 0, "the daemon left its pidfile"
    except FileNotFoundError:
        pass


def _plant(kind: str, path: Path, target: Path) -> None:
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "dangling symlink":
        path.symlink_to(target.parent / "not-there")
    else:
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo"])
def test_planted_pidfile_path_is_refused_before_forking_and_left_alone(
        tmp_path: Path, fleet: Fleet, kind: str) -> None:
    pidfile, target = tmp_path / "app.pid", tmp_path / "precious"
    target.write_text(PRECIOUS)
    _plant(kind, pidfile, target)
    planted = os.lstat(pidfile)
    reply = fleet.request("launch", program={"options": {"pidfile": str(pidfile)}},
                          stderr=str(tmp_path / "launcher.err"), timeout=30)
    assert reply["code"] == 1
    assert "PIDFileUnsafeError" in reply["stderr"] and " is refused: " in reply["stderr"]
    assert "daemon failed to start" not in reply["stderr"], "refused after forking"
    assert reply["elapsed"] < 10, "no hang on a FIFO"
    assert target.read_text() == PRECIOUS
    assert not (tmp_path / "not-there").exists()
    now = os.lstat(pidfile)
    assert (now.st_ino, now.st_mode, now.st_mtime_ns) == (
        planted.st_ino, planted.st_mode, planted.st_mtime_ns)
    fleet.wait_childless()
    assert census(tmp_path, [fleet.pid]) == {}


@pytest.mark.parametrize("mode, accepted", [(0o777, False), (0o1777, True)])
def test_world_writable_pidfile_directory_needs_the_sticky_bit(
        tmp_path: Path, fleet: Fleet, mode: int, accepted: bool) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir()
    os.chmod(rundir, mode)
    pidfile = rundir / "app.pid"
    reply = fleet.request("launch", program={"options": {"pidfile": str(pidfile)}},
                          stderr=str(tmp_path / "launcher.err"))
    if accepted:
        assert reply["code"] == 0, reply["stderr"]
        _stop(fleet, pidfile)
    else:
        assert reply["code"] == 1
        assert "world-writable without the sticky bit" in reply["stderr"]
        assert "daemon failed to start" not in reply["stderr"], "refused after forking"
        assert list(rundir.iterdir()) == []
    wait_tagged_settle(tmp_path, set(), [fleet.pid])


def _plant_until_stopped(path: Path, target: Path, stop_fd: int) -> dict[str, int]:
    """A hostile local user: plant at ``path`` until ``stop_fd`` reads end of file.

    It cycles through a symbolic link to ``target``, a FIFO and a regular file of its own,
    each planted when nothing is at the path, left there for a moment, then removed again (in
    a sticky directory it can remove nothing else), and the path is left free for a moment
    (a user who kept it occupied for ever would only stop the daemon from starting, which no
    pidfile in a shared directory can prevent).  Returns how many of each it planted.
    """
    plants = {
        "symlink": lambda: path.symlink_to(target),
        "fifo": lambda: os.mkfifo(path, 0o666),
        "file": lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)),
    }
    planted = dict.fromkeys(plants, 0)
    kinds = list(plants)
    turn = 0
    while not select.select([stop_fd], [], [], 0)[0]:
        kind = kinds[turn % len(kinds)]
        turn += 1
        try:
            plants[kind]()
        except FileExistsError:
            continue
        planted[kind] += 1
        select.select([stop_fd], [], [], 0.0005)  # leave it there a moment (or stop)
        try:
            path.unlink()
        except (FileNotFoundError, PermissionError):
            pass
        select.select([stop_fd], [], [], 0.001)  # and the path free for a moment
    return planted


def _start_racer(path: Path, target: Path, uid: int) -> tuple[int, int, int]:
    """Fork :func:`_plant_until_stopped` as ``uid``; (pid, stop pipe, report pipe)."""
    stop_r, stop_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(stop_w)
            os.close(report_r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(report_w, json.dumps(_plant_until_stopped(path, target, stop_r)).encode())
        finally:
            os._exit(0)
    os.close(stop_r)
    os.close(report_w)
    return pid, stop_w, report_r


def _stop_racer(pid: int, stop_w: int, report_r: int) -> dict[str, int]:
    os.close(stop_w)
    try:
        assert select.select([report_r], [], [], 30)[0], "the racer did not stop"
        report: dict[str, int] = json.loads(os.read(report_r, 4096) or b"{}")
    finally:
        os.close(report_r)
        wait_pid_gone(pid)
    return report


def test_local_user_racing_plants_in_a_sticky_directory_never_redirects_the_pidfile(
        tmp_path: Path, world_dir: Path, fleet: Fleet, spawned: list[int],
        figures: Figures) -> None:
    pidfile, target = world_dir / "app.pid", tmp_path / "precious"
    target.write_text(PRECIOUS)
    before = os.stat(target)
    racer, stop_w, report_r = _start_racer(pidfile, target, NOBODY)
    spawned.append(racer)
    outcomes: dict[str, int] = {}
    try:
        for run in range(PLANTED_LAUNCHES):
            reply = fleet.request("launch", program={"options": {"pidfile": str(pidfile)}},
                                  stderr=str(tmp_path / f"run{run}.err"), timeout=30)
            stderr = reply["stderr"]
            if reply["code"] == 0:
                st = os.lstat(pidfile)
                assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1
                assert int(pidfile.read_text()) == holder_pid(pidfile)
                _stop(fleet, pidfile)
                outcome = "started"
            else:
                assert reply["code"] == 1, stderr
                where = "after fork" if "daemon failed to start" in stderr else "before fork"
                if " is refused: " in stderr:
                    reason = stderr.split(" is refused: ", 1)[1].split(";")[0].split(",")[0]
                else:
                    # planted between the daemon's lstat and its open: this kernel answers
                    # open(O_CREAT|O_NOFOLLOW) on another user's symlink in a sticky
                    # directory with EACCES (not ELOOP), even for root
                    assert "PIDFileLockFailedError: cannot open pidfile" in stderr, stderr
                    assert "permission denied" in stderr, stderr
                    reason = "permission denied"
                outcome = f"refused {where}: {reason}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            assert reply["elapsed"] < 10
            fleet.reap()
    finally:
        plants = _stop_racer(racer, stop_w, report_r)
        figures(launches=sum(outcomes.values()), racer_plants=plants, outcomes=outcomes)
    after = os.stat(target)
    assert target.read_text() == PRECIOUS
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert outcomes.get("started", 0) > 0, "the racer never left the path free"
    wait_tagged_settle(tmp_path, set(), [fleet.pid])


def _run_with_stdio_closed(argv: list[str]) -> int:
    """Run ``argv`` with fds 0, 1 and 2 closed (``exec <&- >&- 2>&-``); its exit status."""
    shell = 'exec "$@" <&- >&- 2>&-'
    return subprocess.run(["sh", "-c", shell, "sh", *argv], timeout=30).returncode


def test_launcher_with_stdio_closed_starts_a_daemon_with_stdio_on_dev_null(
        tmp_path: Path, spawned: list[int]) -> None:
    pidfile = tmp_path / "app.pid"
    config = {"pid_path": str(tmp_path / "pid"), "options": {"pidfile": str(pidfile)}}
    assert _run_with_stdio_closed([PYTHON, str(PROBE), json.dumps(config)]) == 0
    daemon = read_pid_file(tmp_path / "pid")
    spawned.append(daemon)
    fds = open_fds(daemon)
    assert [fds[0], fds[1], fds[2]] == ["/dev/null"] * 3
    (lock,) = set(fds) - {0, 1, 2}  # numbered above every fd open when open() began
    assert fds[lock] == str(pidfile)
    assert holder_pid(pidfile) == daemon and int(pidfile.read_text()) == daemon


FAILING_APP = """
import os, sys, daemonctx
with daemonctx.DaemonContext(defer_ready=True, stdout=sys.argv[1]):
    os.write(1, f"daemon {os.getpid()}\\n".encode())  # sys.stdout is None: fd 1 was closed
    sys.exit(int(sys.argv[2]))
"""


def test_launcher_with_stdio_closed_still_learns_that_the_daemon_failed(tmp_path: Path) -> None:
    script = write_script(tmp_path, FAILING_APP, "failing.py")
    out = tmp_path / "daemon.out"
    assert _run_with_stdio_closed([PYTHON, str(script), str(out), "5"]) == 5
    pid = int(out.read_text().split()[1])
    wait_pid_gone(pid)


def test_fd_above_the_soft_limit_is_closed_in_the_daemon(tmp_path: Path,
                                                         spawned: list[int]) -> None:
    pidfile = tmp_path / "app.pid"
    config = {"pid_path": str(tmp_path / "pid"), "options": {"pidfile": str(pidfile)},
              "nofile": [HARD_NOFILE, HARD_NOFILE], "stray_fds": [HARD_NOFILE - 1, 700],
              "lower_nofile": 16}
    result, daemon = launch_probe(config, spawned)
    assert result.returncode == 0, result.stderr
    assert daemon is not None
    fds = open_fds(daemon)
    assert set(fds) - {0, 1, 2} == {max(fds)} and max(fds) < 16, fds  # one more: the lock
    assert fds[max(fds)] == str(pidfile)


def _catchable_signal_names() -> list[str]:
    return [s.name for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP)]


def test_launcher_blocking_and_ignoring_every_signal_leaves_default_sigterm_behaviour(
        tmp_path: Path, spawned: list[int]) -> None:
    pidfile, atexit_log = tmp_path / "app.pid", tmp_path / "atexit.log"
    names = _catchable_signal_names()
    config = json.dumps({"pid_path": str(tmp_path / "pid"), "atexit_path": str(atexit_log),
                         "options": {"pidfile": str(pidfile)}, "block": names,
                         "ignore": names})
    reaper = Subreaper(tmp_path, [PYTHON, str(PROBE), config], spawned)
    daemon = read_pid_file(tmp_path / "pid")
    spawned.append(daemon)
    assert holder_pid(pidfile) == daemon
    os.kill(daemon, signal.SIGTERM)
    assert reaper.wait_status(daemon) == ("exit", 0)
    assert atexit_log.read_text() == f"atexit {daemon}\n"
    assert not pidfile.exists()


def _launch_from_pty_session_leader(config: dict[str, Any]) -> int:
    """Run the probe as the session leader of a fresh pty that hangs up when it exits."""
    child, master = pty.fork()
    if child == 0:
        os.execv(PYTHON, [PYTHON, str(PROBE), json.dumps(config)])
    try:
        while select.select([master], [], [], 30)[0]:
            try:
                if not os.read(master, 1024):
                    break
            except OSError:  # EIO: the launcher exited and the pty hung up
                break
        _, status = os.waitpid(child, 0)
    finally:
        os.close(master)
    return os.waitstatus_to_exitcode(status)


def test_launchers_leading_pty_sessions_leave_daemons_that_survive_the_hangup(
        tmp_path: Path, spawned: list[int], figures: Figures) -> None:
    daemons = []
    for n in range(PTY_LAUNCHES):
        config = {"pid_path": str(tmp_path / f"pid{n}"),
                  "options": {"pidfile": str(tmp_path / f"app{n}.pid")}}
        assert _launch_from_pty_session_leader(config) == 0
        daemon = read_pid_file(tmp_path / f"pid{n}")
        spawned.append(daemon)
        daemons.append(daemon)
    figures(launches=PTY_LAUNCHES, daemons_alive=sum(pid_exists(d) for d in daemons))
    for n, daemon in enumerate(daemons):
        assert pid_exists(daemon), "killed by the hang-up of its launcher's terminal"
        assert proc_stat(daemon).tty_nr == 0
        assert holder_pid(tmp_path / f"app{n}.pid") == daemon
