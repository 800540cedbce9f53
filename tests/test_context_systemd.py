"""DaemonContext under a service manager: readiness, stopping, socket activation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from tests.helpers import PYTHON, Subreaper, read_pid_file, wait_pid_gone, write_script

APP = """
import os, sys, signal, select
import daemonctx
with daemonctx.DaemonContext():
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    _r, _w = os.pipe(); os.set_blocking(_w, False); signal.set_wakeup_fd(_w)
    while True:  # not signal.pause(): a signal just before it would be lost
        select.select([_r], [], []); os.read(_r, 512)
"""


def test_under_systemd_stays_in_foreground_and_notifies_ready_and_stopping(tmp_path, spawned):
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(notify_path))
        manager.settimeout(15)
        script = write_script(tmp_path, APP)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), INVOCATION_ID="f" * 32,
                   SUBREAPER_COMM="systemd")
        harness = Subreaper(tmp_path, [PYTHON, str(script), str(tmp_path / "pid")], spawned,
                            env=env)
        pid = read_pid_file(tmp_path / "pid")
        spawned.append(pid)
        ready = manager.recv(4096).decode().split("\n")
        assert "READY=1" in ready
        assert f"MAINPID={pid}" in ready
        # no detach: the service manager's child is the daemon itself
        from tests.helpers import proc_stat

        assert proc_stat(pid).ppid == harness.process.pid
        os.kill(pid, signal.SIGTERM)
        assert manager.recv(4096).decode().split("\n") == ["STOPPING=1"]
        assert harness.wait_status(pid) == ("exit", 0)


ACTIVATED = """
import os, sys, signal
import daemonctx
from daemonctx import systemd
with daemonctx.DaemonContext():
    (listener,) = systemd.listen_sockets()
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    conn, _ = listener.accept()
    conn.sendall(f"served by {os.getpid()}".encode())
    conn.close()
"""


def test_socket_activation_fds_survive_the_detach_and_still_work(tmp_path, spawned):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    script = write_script(tmp_path, ACTIVATED)
    fd = listener.fileno()
    # like systemd: the socket is fd 3, LISTEN_PID is the pid that execs the program
    result = subprocess.run(
        ["bash", "-c", f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", PYTHON,
         str(script), str(tmp_path / "pid")],
        pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    listener.close()
    assert result.returncode == 0, result.stderr
    pid = read_pid_file(tmp_path / "pid")
    spawned.append(pid)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        assert conn.recv(100).decode() == f"served by {pid}"
    wait_pid_gone(pid)


def test_ready_reaches_systemd_after_dropping_to_a_user_who_cannot_read_python(world_dir,
                                                                               spawned):
    # Here the interpreter lives under /root (mode 0700): nobody cannot import anything, so
    # everything READY=1 needs must be loaded before the privilege drop.
    notify_path = world_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(notify_path))
        os.chmod(notify_path, 0o666)
        manager.settimeout(15)
        script = write_script(world_dir, APP.replace("DaemonContext()",
                                                     "DaemonContext(uid='nobody')"))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), INVOCATION_ID="f" * 32,
                   SUBREAPER_COMM="systemd")
        harness = Subreaper(world_dir, [PYTHON, str(script), str(world_dir / "pid")], spawned,
                            env=env)
        pid = read_pid_file(world_dir / "pid")
        spawned.append(pid)
        assert "READY=1" in manager.recv(4096).decode().split("\n")
        os.kill(pid, signal.SIGTERM)
        assert manager.recv(4096).decode().split("\n") == ["STOPPING=1"]
        assert harness.wait_status(pid) == ("exit", 0)
