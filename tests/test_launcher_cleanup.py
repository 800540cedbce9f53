"""A failed start leaves nothing running and never signals a pid it cannot prove is its own.

Issue 14, #2: a daemon that forked a helper (which kept the start-up pipe open) and died made
the launcher wait its whole timeout, then send SIGTERM to the daemon's old pid -- by then
possibly an unrelated process.  The first test recycles that pid for real, inside a pid
namespace whose ``/proc/sys/kernel/ns_last_pid`` the test sets.

Issue 14, #3: ``daemonctx start`` said "not started" while a child of the program, in a session
of its own, kept running with the pidfile's lock.

Outside review, item 3: the same through the library (``DaemonContext``), whose launcher is no
subreaper (loading ``prctl`` would cost the daemon milliseconds): a helper in a session of its
own survived a failed start holding the pidfile's lock, and a daemon that died left its
pidfile, so ``status`` said 1 (dead).  Item 4: a lock passed to an unrelated process was
reported by the dead pid that took it ("pid N still holds the lock", "already running as pid
N") instead of the live process holding it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PYTHON,
    assert_one_line_error,
    kill_and_wait,
    pid_exists,
    pid_in_message,
    run_cli,
    run_python,
    wait_file_text,
    wait_pid_gone,
    write_script,
)

APP = """
import multiprocessing, os, signal, sys, time
import daemonctx

rundir = sys.argv[1]

def helper():
    with open(os.path.join(rundir, "helper.pid"), "w") as out:
        out.write(str(os.getpid()))
    while True:
        signal.pause()

context = daemonctx.DaemonContext(defer_ready=True, startup_timeout=float(sys.argv[2]),
                                  detach_process=True)  # its parent is pid 1 here
with context:
    with open(os.path.join(rundir, "daemon.pid"), "w") as out:
        out.write(str(os.getpid()))
    multiprocessing.get_context("fork").Process(target=helper).start()  # keeps the pipe
    while not os.path.exists(os.path.join(rundir, "die")):
        time.sleep(0.01)
    os._exit(3)  # dies before it reported readiness
"""

# pid 1 of a fresh pid namespace: runs the launcher, lets its daemon die, gives the dead
# daemon's pid to an innocent process, and reports what happened to everyone.
HARNESS = """
import json, os, select, signal, sys, time

python, app, rundir, timeout = sys.argv[1:5]
statuses = {}

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        statuses[pid] = os.waitstatus_to_exitcode(status)

def read(name):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(rundir, name)) as f:
                text = f.read()
            if text.isdigit():
                return int(text)
        except FileNotFoundError:
            pass
        reap()
        time.sleep(0.005)
    raise SystemExit(f"no {name}")

err = os.open(os.path.join(rundir, "launcher.err"), os.O_WRONLY | os.O_CREAT, 0o644)
launcher = os.fork()
if launcher == 0:
    os.dup2(err, 2)
    os.execv(python, [python, app, rundir, timeout])
daemon, helper = read("daemon.pid"), read("helper.pid")
pidfd = os.pidfd_open(daemon)
open(os.path.join(rundir, "die"), "w").close()
select.select([pidfd], [], [], 20)
innocent, attempts = None, 0
deadline = time.monotonic() + 10
while innocent is None and time.monotonic() < deadline and launcher not in statuses:
    reap()  # the dead daemon, if it was re-parented to us
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(daemon - 1))
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "60"])
    attempts += 1
    if pid == daemon:
        innocent = pid
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        time.sleep(0.002)  # the dead daemon's pid is not free yet
deadline = time.monotonic() + 30
while launcher not in statuses and time.monotonic() < deadline:
    reap()
    time.sleep(0.005)
innocent_status = None
if innocent is not None:
    reap()
    innocent_status = statuses.get(innocent, "alive")
helper_alive = os.path.exists(f"/proc/{helper}") and open(f"/proc/{helper}/stat").read().split(
    ")")[-1].split()[0] != "Z"
print(json.dumps({"launcher": statuses.get(launcher), "daemon": daemon, "helper": helper,
                  "helper_alive": helper_alive, "innocent": innocent,
                  "innocent_status": innocent_status, "attempts": attempts,
                  "stderr": open(os.path.join(rundir, "launcher.err")).read()}))
"""


def _run_in_pid_namespace(tmp_path: Path, timeout: float) -> dict[str, object]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    app = write_script(tmp_path, APP, "app.py")
    harness = write_script(tmp_path, HARNESS, "harness.py")
    # every process of the namespace dies with its pid 1 (the harness): nothing outlives this
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", PYTHON, str(harness),
                             PYTHON, str(app), str(tmp_path), str(timeout)],
                            capture_output=True, text=True, timeout=90)
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"cannot create a pid namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_daemon_dying_with_a_helper_holding_the_pipe_never_gets_its_recycled_pid_signalled(
        tmp_path: Path) -> None:
    report = _run_in_pid_namespace(tmp_path, timeout=3.0)
    daemon, helper = report["daemon"], report["helper"]
    # the launcher saw the death at once (pidfd), not after its 3 s timeout, and said so
    assert report["launcher"] == 3, report
    assert (f"daemon (pid {daemon}) exited with status 3 during start-up; stopped 1 process it "
            f"left running (pid {helper})") in str(report["stderr"]), report
    assert report["helper_alive"] is False, report
    # the dead daemon's pid went to an innocent process, which nobody signalled
    assert report["innocent"] == daemon, report
    assert report["innocent_status"] == "alive", report


def test_program_leaving_a_child_in_its_own_session_is_not_started_and_leaves_nothing(
        tmp_path: Path, pid_path: Path) -> None:
    marker = tmp_path / "child.pid"
    result = run_cli("start", "--pidfile", str(pid_path), "--wait", "10", "--",
                     "/bin/sh", "-c", f"setsid /bin/sleep 600 & echo $! > {marker}; exit 0")
    assert result.returncode == 3
    child = int(wait_file_text(marker).strip())
    assert (f"exited during start-up with status 0; stopped 1 process it left running "
            f"(pid {child})") in result.stderr
    assert_one_line_error(result)
    wait_pid_gone(child)
    assert holder_pid(pid_path) is None
    assert not pid_path.exists()
    assert run_cli("status", "--pidfile", str(pid_path)).returncode == 3
    again = run_cli("start", "--pidfile", str(pid_path), "--", "/bin/sleep", "600")
    assert again.returncode == 0, again.stderr


def test_program_never_ready_with_a_child_in_its_own_session_leaves_nothing(
        tmp_path: Path, pid_path: Path) -> None:
    marker = tmp_path / "child.pid"
    result = run_cli("start", "--notify", "--timeout", "1", "--pidfile", str(pid_path), "--",
                     "/bin/sh", "-c", f"setsid /bin/sleep 600 & echo $! > {marker}; "
                                      f"exec /bin/sleep 600")
    assert result.returncode == 3
    program = pid_in_message(result.stderr)
    child = int(wait_file_text(marker).strip())
    assert "sent no READY=1 within 1 s; stopped it; stopped 1 process it left running " \
           f"(pid {child})" in result.stderr
    assert not pid_exists(program)
    wait_pid_gone(child)
    assert holder_pid(pid_path) is None
    assert not pid_path.exists()
    assert run_cli("status", "--pidfile", str(pid_path)).returncode == 3


# --- the library's launcher, and locks passed on ----------------------------------------------

# A DaemonContext program with a pidfile that fails its start: "die" dies at once (os._exit,
# no release); "setsid-helper" first forks a helper that leaves for a session of its own,
# keeping the pidfile's lock; "pass-lock" first passes its lock descriptor to the process
# listening on receiver.sock.  The launcher is no subreaper: prctl is never loaded here.
LIBRARY_APP = """
import os, signal, socket, sys
import daemonctx

rundir, mode = sys.argv[1], sys.argv[2]
pidfile = daemonctx.PIDFile(os.path.join(rundir, "app.pid"))
context = daemonctx.DaemonContext(pidfile=pidfile, defer_ready=True, startup_timeout=20,
                                  detach_process=True)
with context:
    if mode == "setsid-helper":
        ready_r, ready_w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            with open(os.path.join(rundir, "helper.pid"), "w") as out:
                out.write(str(os.getpid()))
            os.write(ready_w, b"x")
            while True:
                signal.pause()
        os.read(ready_r, 1)  # the helper has left the daemon's session
    elif mode == "pass-lock":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(os.path.join(rundir, "receiver.sock"))
            socket.send_fds(sock, [b"lock"], [pidfile.fileno()])
            sock.recv(1)  # the receiver holds it now
    os._exit(3)  # dies before it reported readiness, its pidfile neither released nor removed
"""

# An unrelated process, started before the start: accepts one descriptor on receiver.sock,
# acknowledges it, keeps it.
RECEIVER = """
import os, signal, socket, sys
path = os.path.join(sys.argv[1], "receiver.sock")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(1)
with open(sys.argv[1] + "/receiver.ready", "w") as ready:
    ready.write("ready")
connection, _ = server.accept()
_, fds, _, _ = socket.recv_fds(connection, 16, 4)
connection.send(b"k")
while True:
    signal.pause()
"""

# Under `daemonctx start`: pass the lock (DAEMONCTX_LOCK_FD) to the receiver, then exit.
PASS_COMMAND_LOCK = """
import os, socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.connect(os.path.join(sys.argv[1], "receiver.sock"))
    socket.send_fds(sock, [b"lock"], [int(os.environ["DAEMONCTX_LOCK_FD"])])
    sock.recv(1)
"""


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[int]:
    """The pid of a :data:`RECEIVER` running in ``tmp_path`` (killed at the end)."""
    script = write_script(tmp_path, RECEIVER, "receiver.py")
    process = subprocess.Popen([PYTHON, str(script), str(tmp_path)], stdin=subprocess.DEVNULL)
    try:
        wait_file_text(tmp_path / "receiver.ready")
        yield process.pid
    finally:
        kill_and_wait(process.pid)


def _run_library_app(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    app = write_script(tmp_path, LIBRARY_APP, "app.py")
    return run_python(app, str(tmp_path), mode, timeout=60)


def test_library_daemon_dying_leaves_no_pidfile_behind(tmp_path: Path) -> None:
    """Review item 3b: the pidfile of a daemon that died during start-up is removed."""
    result = _run_library_app(tmp_path, "die")
    pidfile = tmp_path / "app.pid"
    assert result.returncode == 3, result.stderr
    assert "exited with status 3 during start-up" in result.stderr
    assert holder_pid(pidfile) is None
    assert not pidfile.exists()
    assert run_cli("status", "--pidfile", str(pidfile)).returncode == 3


def test_library_daemon_dying_leaves_no_helper_of_its_own_session_holding_the_lock(
        tmp_path: Path, spawned: list[int]) -> None:
    """Review item 3a: a helper that called setsid() is stopped, found through the lock."""
    result = _run_library_app(tmp_path, "setsid-helper")
    helper = int(wait_file_text(tmp_path / "helper.pid"))
    spawned.append(helper)
    pidfile = tmp_path / "app.pid"
    assert result.returncode == 3, result.stderr
    assert f"; stopped 1 process it left running (pid {helper})" in result.stderr
    assert not pid_exists(helper)
    assert holder_pid(pidfile) is None
    assert not pidfile.exists()
    assert run_cli("status", "--pidfile", str(pidfile)).returncode == 3


def test_library_daemon_passing_its_lock_to_an_older_process_gets_it_named_not_signalled(
        tmp_path: Path, receiver: int) -> None:
    """Review items 3 and 4: a holder that ran before the start is not this start's.

    It was passed the daemon's descriptor (no process the daemon forked runs before the
    daemon): named, by its own pid rather than the dead daemon's, and left running.
    """
    result = _run_library_app(tmp_path, "pass-lock")
    pidfile = tmp_path / "app.pid"
    assert result.returncode == 3, result.stderr
    daemon = pid_in_message(result.stderr)
    assert (f"; pid {receiver} still holds the lock of {pidfile} and is not a process this "
            f"start began: left running") in result.stderr
    assert pid_exists(receiver)
    assert holder_pid(pidfile) == daemon  # /proc/locks names the dead daemon: it took the lock
    assert pidfile.exists()


def test_command_names_the_live_holder_of_a_lock_the_program_passed_on(
        tmp_path: Path, pid_path: Path, receiver: int) -> None:
    """Review item 4: the failed start and the next one name the receiver, not the dead pid."""
    script = write_script(tmp_path, PASS_COMMAND_LOCK, "pass.py")
    result = run_cli("start", "--pidfile", str(pid_path), "--wait", "10", "--",
                     PYTHON, str(script), str(tmp_path))
    assert result.returncode == 3, result.stderr
    program = pid_in_message(result.stderr)
    assert (f"; pid {receiver} still holds the lock of {pid_path} and is not a process this "
            f"start began: left running") in result.stderr
    assert f"pid {program} still holds" not in result.stderr
    assert_one_line_error(result)
    assert not pid_exists(program) and pid_exists(receiver)
    again = run_cli("start", "--pidfile", str(pid_path), "--", "/bin/sleep", "600")
    assert again.returncode == 1, again.stderr
    assert f"already running as pid {receiver} (pidfile {pid_path})" in again.stderr
