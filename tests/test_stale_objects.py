"""Python objects made before ``open()`` can never close what daemonctx keeps (issue 13, #1).

``DaemonContext`` closes every inherited descriptor behind the back of the objects that own
them.  Such an object (a socket, a file) still believes it owns its number, and closes it when
it is collected.  Here every such object is dropped and collected *inside* the daemon, as
Airflow's api-server does by accident, and the lock, the start-up pipe and the supervisor's
pipes must all survive: one instance, a truthful launcher, a clean stop.
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
    open_fds,
    pid_exists,
    read_pid_file,
    run_python,
    wait_for,
    wait_live_children,
    wait_pid_gone,
    write_script,
)

# The ten-line program of the issue: a socket made before open(), dropped inside the context.
TEN_LINES = """
import gc, os, signal, socket, sys
import daemonctx

rundir = sys.argv[1]
stale = [socket.socket()]                       # fd 3 in the launching process
stale += [open(os.devnull) for _ in range(int(sys.argv[2]))]
stale += [socket.socketpair()[0] for _ in range(int(sys.argv[2]))]
highest = max(obj.fileno() for obj in stale)
context = daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(os.path.join(rundir, "app.pid")),
                                  defer_ready=True)
with context:
    del stale[:]                                # each one closes "its" fd
    gc.collect()
    with open(os.path.join(rundir, "collected"), "w") as out:
        out.write(f"{os.getpid()} {highest}")
    context.notify_ready()                      # so the start-up pipe must have survived too
    while True:
        signal.pause()
"""


def _start(tmp_path: Path, script: Path, extra: int = 0) -> subprocess.CompletedProcess[str]:
    return run_python(script, str(tmp_path), str(extra))


def _lock_fd(pid: int, pidfile: Path) -> int:
    (fd,) = [fd for fd, target in open_fds(pid).items() if target == str(pidfile)]
    return fd


def test_collecting_a_socket_made_before_open_keeps_the_lock(tmp_path: Path,
                                                            spawned: list[int]) -> None:
    script = write_script(tmp_path, TEN_LINES, "ten_lines.py")
    pidfile = tmp_path / "app.pid"
    result = _start(tmp_path, script)
    adopt_lock_holder(pidfile, spawned)
    assert result.returncode == 0, result.stderr
    daemon = read_pid_file(pidfile)
    wait_for((tmp_path / "collected").exists, what="the collection")
    assert holder(pidfile) == daemon  # the kernel still has the lock
    second = _start(tmp_path, script)
    adopt_lock_holder(pidfile, spawned)
    assert second.returncode == 1
    assert f"held by pid {daemon}: already running" in second.stderr
    kill_and_wait(daemon, signal.SIGTERM)
    assert not pidfile.exists(), "the release must still find its descriptor"


def test_lock_and_start_up_pipe_survive_collecting_every_object_made_before_open(
        tmp_path: Path, spawned: list[int]) -> None:
    script = write_script(tmp_path, TEN_LINES, "ten_lines.py")
    pidfile = tmp_path / "app.pid"
    result = _start(tmp_path, script, extra=8)  # fds 3 to 19 owned by objects
    adopt_lock_holder(pidfile, spawned)
    assert result.returncode == 0, result.stderr  # the report arrived after the collection
    daemon, highest = map(int, (tmp_path / "collected").read_text().split())
    assert highest >= 19
    assert holder(pidfile) == daemon
    assert _lock_fd(daemon, pidfile) > highest
    assert int(pidfile.read_text()) == daemon


SUPERVISED = """
import gc, os, signal, socket, sys
import daemonctx
from daemonctx.supervisor import RestartPolicy, Supervisor

rundir = sys.argv[1]
stale = [socket.socket() for _ in range(6)]     # fds 3-8: where the master's pipes would go

def collect(task, pid, status):
    stale.clear()                               # in the master, after a worker exited
    gc.collect()
    open(os.path.join(rundir, "collected"), "a").write(f"{pid}\\n")

with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(os.path.join(rundir, "app.pid"))):
    policy = RestartPolicy(ready_on_start=True, backoff_initial=0, backoff_max=0,
                           boot_retries=None, restart_burst=None)
    if Supervisor(2, policy=policy, on_worker_exit=collect).run() is None:
        sys.exit(0)
    while True:
        signal.pause()
"""


def test_supervisor_master_keeps_its_pipes_and_lock_when_objects_are_collected(
        tmp_path: Path, spawned: list[int]) -> None:
    script = write_script(tmp_path, SUPERVISED, "supervised.py")
    pidfile = tmp_path / "app.pid"
    result = run_python(script, str(tmp_path))
    adopt_lock_holder(pidfile, spawned)
    assert result.returncode == 0, result.stderr
    master = read_pid_file(pidfile)
    first, _ = wait_live_children(master, 2)
    kill_and_wait(first, signal.SIGKILL)
    wait_for((tmp_path / "collected").exists, what="the master's collection")
    # the master still hears SIGCHLD (its wake-up pipe) and restarts the worker
    wait_live_children(master, 2, without=(first,))
    assert holder(pidfile) == master
    # and SIGTERM (the same pipe) stops it gracefully: it exits 0 and releases the pidfile
    fd = os.pidfd_open(master)
    try:
        os.kill(master, signal.SIGTERM)
        wait_pid_gone(master)
    finally:
        os.close(fd)
    assert not pid_exists(master)
    assert not pidfile.exists()


def test_command_hands_the_program_a_lock_fd_no_shell_redirection_uses(
        tmp_path: Path, pid_path: Path) -> None:
    from tests.helpers import run_cli

    result = run_cli("start", "--pidfile", str(pid_path), "--", PYTHON, "-c",
                     "import signal\nwhile True: signal.pause()")
    assert result.returncode == 0, result.stderr
    program = holder(pid_path)
    assert _lock_fd(program, pid_path) >= 10
