"""The launching shell learns whether the daemon really started (issue: truthful start-up).

Each test runs a real launcher and looks at its exit status and stderr, then at what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import (
    PYTHON,
    launch_probe,
    pid_exists,
    read_pid_file,
    wait_file_text,
    wait_for,
    wait_pid_gone,
    write_script,
)

APP = """
import os, sys, time, signal
import daemonctx

mode, rundir = sys.argv[1], sys.argv[2]
ctx = daemonctx.DaemonContext(defer_ready=True, startup_timeout=float(sys.argv[3]),
                              pidfile=daemonctx.PIDFile(os.path.join(rundir, "app.pid")))
with ctx:
    open(os.path.join(rundir, "daemon.pid"), "w").write(str(os.getpid()))
    if mode == "raise":
        raise RuntimeError("cannot parse /etc/app.conf line 3")
    if mode == "exit3":
        sys.exit(3)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "slow":
        time.sleep(60)
    ctx.notify_ready()
    while True:
        signal.pause()
"""


def _launch(tmp_path: Path, mode: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    script = write_script(tmp_path, APP, "app.py")
    return subprocess.run([PYTHON, str(script), mode, str(tmp_path), str(timeout)],
                          capture_output=True, text=True, timeout=60)


def _daemon_pid(tmp_path: Path) -> int | None:
    path = tmp_path / "daemon.pid"
    return int(path.read_text()) if path.exists() else None


def test_success_exits_zero_once_the_daemon_declared_ready(tmp_path, spawned):
    result = _launch(tmp_path, "ok")
    pid = read_pid_file(tmp_path / "app.pid")
    spawned.append(pid)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert pid_exists(pid)
    assert _daemon_pid(tmp_path) == pid


def test_exception_before_ready_reaches_the_launcher(tmp_path, spawned):
    result = _launch(tmp_path, "raise")
    pid = _daemon_pid(tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: cannot parse /etc/app.conf line 3" in result.stderr
    assert pid is not None
    wait_pid_gone(pid)
    assert not (tmp_path / "app.pid").exists(), "the failed daemon left its pidfile"


def test_exit_status_before_ready_becomes_the_launchers(tmp_path):
    result = _launch(tmp_path, "exit3")
    assert result.returncode == 3
    assert "exited with status 3 before it was ready" in result.stderr


def test_daemon_killed_during_startup_fails_the_launcher_naming_the_signal(tmp_path):
    result = _launch(tmp_path, "sigkill")
    pid = _daemon_pid(tmp_path)
    assert pid is not None
    # The launcher is the daemon's subreaper while it waits: it reaps it and knows how it died.
    assert result.returncode == 128 + signal.SIGKILL
    assert f"daemon (pid {pid}) was killed by signal 9 (SIGKILL) during start-up" in result.stderr
    assert not pid_exists(pid)


def test_startup_slower_than_timeout_fails_and_stops_the_daemon(tmp_path, spawned):
    result = _launch(tmp_path, "slow", timeout=0.5)
    assert result.returncode == 1
    pid = _daemon_pid(tmp_path)
    assert pid is not None
    spawned.append(pid)
    assert f"daemon (pid {pid}) did not report readiness in time" in result.stderr
    wait_pid_gone(pid)


def test_second_start_fails_naming_the_running_pid(tmp_path, spawned):
    pidfile = tmp_path / "app.pid"
    config = {"pid_path": str(tmp_path / "pid"), "options": {"pidfile": str(pidfile)}}
    first, pid = launch_probe(config, spawned)
    assert first.returncode == 0 and pid is not None
    second, _ = launch_probe(dict(config, pid_path=str(tmp_path / "pid2")), spawned)
    assert second.returncode != 0
    assert f"held by pid {pid}" in second.stderr
    assert "PIDFileLockedError" in second.stderr
    assert int(pidfile.read_text()) == pid


def test_second_start_is_refused_before_anything_forks(tmp_path, spawned):
    pidfile = tmp_path / "app.pid"
    config = {"pid_path": str(tmp_path / "pid"), "options": {"pidfile": str(pidfile)}}
    first, pid = launch_probe(config, spawned)
    assert first.returncode == 0 and pid is not None
    script = write_script(tmp_path, f"""
import os, daemonctx
try:
    daemonctx.DaemonContext(pidfile=daemonctx.PIDFile({str(pidfile)!r})).open()
except daemonctx.PIDFileLockedError as exc:
    children = open(f"/proc/self/task/{{os.getpid()}}/children").read().split()
    print(exc.pid, len(children))
    raise SystemExit(2)
""", "second.py")
    result = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stdout.split() == [str(pid), "0"]  # the holder named, nothing forked
    assert int(pidfile.read_text()) == pid


def test_a_lock_object_entered_in_the_daemon_that_loses_reports_the_holder(tmp_path, spawned):
    # python-daemon's way, kept for lock objects other than PIDFile (lockfile's): the daemon
    # enters the pidfile after the forks, so a start that loses there is reported by the
    # launcher, naming the holder.
    pidfile = tmp_path / "app.pid"
    holder = write_script(tmp_path, f"""
import daemonctx, signal, sys
lock = daemonctx.PIDFile({str(pidfile)!r})
lock.acquire()
print("locked", flush=True)
signal.pause()
""", "holder.py")
    proc = subprocess.Popen([PYTHON, str(holder)], stdout=subprocess.PIPE, text=True)
    spawned.append(proc.pid)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    script = write_script(tmp_path, f"""
import daemonctx
class EnteredInTheDaemon:
    def __init__(self, path):
        self.lock = daemonctx.PIDFile(path)
    def __enter__(self):
        self.lock.acquire()
        return self
    def __exit__(self, *exc):
        self.lock.release()
with daemonctx.DaemonContext(pidfile=EnteredInTheDaemon({str(pidfile)!r})):
    pass
""", "late.py")
    result = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"daemon failed to start: PIDFileLockedError: pidfile {pidfile} is held by pid " \
           f"{proc.pid}" in result.stderr
    proc.kill()
    proc.wait(10)


def test_pidfile_directory_the_caller_cannot_write_fails_before_fork(tmp_path, world_dir):
    rundir = world_dir / "run"  # root-owned 0755: nobody cannot create files here
    rundir.mkdir(mode=0o755)
    # The caller is nobody (it imports what it needs first, as root: the interpreter here
    # lives where nobody cannot read), so it cannot create the pidfile before it forks.
    script = write_script(world_dir, f"""
import os, daemonctx, daemonctx.context, daemonctx.pidfile
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    pidfile = daemonctx.PIDFile({str(rundir / 'a.pid')!r})
    daemonctx.DaemonContext(pidfile=pidfile).open()
except daemonctx.DaemonError as exc:
    print(type(exc).__name__, exc, os.listdir('/proc/self/task/%d' % os.getpid()) and
          open('/proc/self/task/%d/children' % os.getpid()).read().strip() or 'no-children')
    raise SystemExit(2)
""")
    result = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "PIDFileLockFailedError" in result.stdout
    assert f"directory {rundir} (owner uid 0, gid 0, mode 0755) is not writable by uid 65534" \
        in result.stdout
    assert result.stdout.rstrip().endswith("no-children")
    assert list(rundir.iterdir()) == []


# --- pid 1 of a container ----------------------------------------------------------------

PID1_APP = """
import os, sys, time, signal, select
import daemonctx

out = sys.argv[1]
with daemonctx.DaemonContext(stdout=out + ".log", stderr=out + ".log"):
    assert os.getppid() == 1, os.getppid()
    pid_r, pid_w = os.pipe()
    go_r, go_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        orphan = os.fork()
        if orphan == 0:
            os.read(go_r, 1)   # wait until our parent is gone: we are an orphan now
            os._exit(0)
        os.write(pid_w, str(orphan).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    orphan = int(os.read(pid_r, 64))
    os.write(go_w, b"x")        # let the orphan (now a child of pid 1) exit
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
        time.sleep(0.01)     # inside the namespace: nothing else to wait on for a non-child
    state = "reaped" if not os.path.exists(f"/proc/{orphan}") else "zombie"
    with open(out, "w") as f:
        f.write(f"{os.getpid()} {state}")
    if len(sys.argv) > 2:
        _r, _w = os.pipe(); os.set_blocking(_w, False); signal.set_wakeup_fd(_w)
        while True:  # not signal.pause(): a signal just before it would be lost
            select.select([_r], [], []); os.read(_r, 512)
"""


def test_as_pid_one_no_detach_and_orphans_are_reaped(tmp_path):
    script = write_script(tmp_path, PID1_APP, "pid1.py")
    out = tmp_path / "result"
    result = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", PYTHON, str(script),
                             str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + (tmp_path / "result.log").read_text()
    pid, state = out.read_text().split()
    assert pid == "2", "the application runs under a minimal init that stays pid 1"
    assert state == "reaped"


def test_as_pid_one_sigterm_is_forwarded_and_exit_status_kept(tmp_path, spawned):
    script = write_script(tmp_path, PID1_APP, "pid1.py")
    out = tmp_path / "result"
    proc = subprocess.Popen(["unshare", "--fork", "--pid", "--mount-proc", PYTHON, str(script),
                             str(out), "wait"])
    spawned.append(proc.pid)
    wait_for(out.exists, 30, "the application in the namespace")
    init = wait_for(lambda: _children(proc.pid), 10, "unshare's child")
    os.kill(init[0], signal.SIGTERM)  # type: ignore[index]
    assert proc.wait(30) == 0


def _children(pid: int) -> list[int]:
    from tests.helpers import children_of

    return children_of(pid)


def test_startup_timeout_zero_does_not_wait_like_python_daemon(tmp_path):
    result = _launch(tmp_path, "raise", timeout=0)
    assert result.returncode == 0, "with startup_timeout=0 the launcher exits at once"
    assert result.stderr == ""
    pid = read_pid_file(tmp_path / "daemon.pid")
    wait_pid_gone(pid)


def test_sigterm_to_the_launcher_while_it_waits_stops_the_daemon(tmp_path):
    script = write_script(tmp_path, APP, "app.py")
    launcher = subprocess.Popen([PYTHON, str(script), "slow", str(tmp_path), "60"],
                                stderr=subprocess.PIPE, text=True)
    try:
        pid = int(wait_file_text(tmp_path / "daemon.pid"))
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=30)
    finally:
        if launcher.returncode is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 128 + signal.SIGTERM
    assert ("daemon failed to start: interrupted by SIGTERM while waiting for the daemon's "
            "start-up report; stopped it") in stderr
    assert not pid_exists(pid)
    assert not (tmp_path / "app.pid").exists()
