"""Workers serving for real: a shared socket, tornado's own scenario, readiness, the example."""

from __future__ import annotations

import os
import select
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    kill_tree,
    live_children,
    pid_exists,
    read_pid_file,
    run_python,
    wait_for,
    wait_live_children,
    wait_pid_gone,
    wait_pidfds,
    write_script,
)
from tests.test_supervisor_support import (
    supervisor_script,
    terminate_and_wait,
)


def test_workers_share_one_listening_socket_on_loopback(tmp_path: Path) -> None:
    body = """
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    record("port", listener.getsockname()[1])
    def worker(tid):
        notify_worker_ready()
        while True:
            conn, _ = listener.accept()
            conn.sendall(str(os.getpid()).encode())
            conn.close()
    Supervisor(4).serve(worker)
    """
    with supervisor_script(tmp_path, body) as master:
        port = int(master.wait_lines("port", 1)[0][0])
        answered: set[int] = set()
        for _ in range(400):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                answered.add(int(conn.recv(64)))
            if len(answered) == 4:
                break
        workers = set(live_children(master.pid))
        assert answered <= workers
        assert len(answered) >= 3, answered
        assert terminate_and_wait(master) == 0


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """An abstract AF_UNIX datagram socket standing in for systemd's notification socket."""
    name = f"@daemonctx-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    yield sock, name
    sock.close()


def receive(sock: socket.socket, timeout: float) -> bytes | None:
    ready, _, _ = select.select([sock], [], [], timeout)
    return sock.recv(4096) if ready else None


def test_master_reports_ready_only_once_every_worker_is_ready(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    body = """
    log_to_file()
    def worker(tid):
        go = os.path.join(OUT, f"go-{tid}")
        while not os.path.exists(go):  # this worker's start-up takes until the test says go
            time.sleep(0.01)
        notify_worker_ready()
        park()
    Supervisor(2).serve(worker)
    """
    env = dict(os.environ, NOTIFY_SOCKET=name)
    with supervisor_script(tmp_path, body, env=env) as master:
        (master.out / "go-0").write_text("")
        master.wait_log("is ready")
        assert receive(sock, 0.5) is None  # one of two workers ready: not yet
        (master.out / "go-1").write_text("")
        message = receive(sock, 15)
        assert message is not None
        assert message.split(b"\n")[:2] == [b"READY=1", f"MAINPID={master.pid}".encode()]
        assert terminate_and_wait(master) == 0


def test_sighup_under_systemd_reports_reloading_then_ready(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    body = """
    def worker(tid):
        record("events", "start", tid, os.getpid())
        notify_worker_ready()
        park()
    Supervisor(2).serve(worker)
    """
    env = dict(os.environ, NOTIFY_SOCKET=name)
    with supervisor_script(tmp_path, body, env=env) as master:
        first = receive(sock, 15)
        assert first is not None and first.startswith(b"READY=1")
        master.signal(signal.SIGHUP)
        reloading = receive(sock, 15)
        assert reloading is not None and reloading.startswith(b"RELOADING=1")
        ready = receive(sock, 15)
        assert ready is not None and ready.startswith(b"READY=1")
        assert len(master.lines("events")) == 4  # both workers were replaced first
        assert terminate_and_wait(master) == 0


def test_process_titles_name_the_master_and_each_worker(tmp_path: Path) -> None:
    pytest.importorskip("setproctitle")
    title = f"sv-title-{uuid.uuid4().hex[:8]}"
    body = f"""
    def worker(tid):
        record("events", "start", tid, os.getpid())
        notify_worker_ready()
        park()
    Supervisor(2, proc_title={title!r}).serve(worker)
    """
    with supervisor_script(tmp_path, body, markers=(title,)) as master:
        lines = master.wait_lines("events", 2)

        def cmdline(pid: int) -> str:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

        wait_for(lambda: cmdline(master.pid).startswith(f"{title} master"),
                 what="the master's title")
        for _, tid, pid in lines:
            assert cmdline(int(pid)).startswith(f"{title} worker {tid}")
        assert terminate_and_wait(master) == 0


# tornado's own tornado/test/process_test.py scenario, with daemonctx's fork_processes and
# task_id in place of tornado's: three workers, max_restarts=3; worker 2 drives the test over
# HTTP against workers 0 and 1, making them exit abnormally (restarted), normally (not
# restarted), and checking that a restarted worker has a new pid; the master finally exits 0.
TORNADO_SCENARIO = """
import asyncio
import logging
import os
import signal
import sys

from tornado.httpclient import HTTPClient, HTTPError
from tornado.httpserver import HTTPServer
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from daemonctx import fork_processes, task_id


class ProcessHandler(RequestHandler):
    def get(self):
        if self.get_argument("exit", None):
            os._exit(int(self.get_argument("exit")))
        if self.get_argument("signal", None):
            os.kill(os.getpid(), int(self.get_argument("signal")))
        self.write(str(os.getpid()))


def main():
    sock, port = bind_unused_port()

    def get_url(path):
        return "http://127.0.0.1:%d%s" % (port, path)

    signal.alarm(20)  # master process (tornado uses 5 s; this machine is shared)
    try:
        id = fork_processes(3, max_restarts=3)
        assert id is not None
        signal.alarm(20)  # child processes
    except SystemExit as e:
        assert e.code == 0, "fork_processes exited with %r" % (e.code,)
        assert task_id() is None
        sock.close()
        print("master exited normally", flush=True)
        return
    try:
        if id in (0, 1):
            assert id == task_id()

            async def f():
                server = HTTPServer(Application([("/", ProcessHandler)]))
                server.add_sockets([sock])
                await asyncio.Event().wait()

            asyncio.run(f())
        elif id == 2:
            assert id == task_id()
            sock.close()
            client = HTTPClient(SimpleAsyncHTTPClient)

            def fetch(url, fail_ok=False):
                try:
                    return client.fetch(get_url(url))
                except HTTPError as e:
                    if not (fail_ok and e.code == 599):
                        raise

            fetch("/?exit=2", fail_ok=True)
            fetch("/?exit=3", fail_ok=True)
            int(fetch("/").body)
            fetch("/?exit=0", fail_ok=True)
            pid = int(fetch("/").body)
            fetch("/?exit=4", fail_ok=True)
            pid2 = int(fetch("/").body)
            assert pid != pid2
            fetch("/?exit=0", fail_ok=True)
            os._exit(0)
    except Exception:
        logging.error("exception in child process %d", id, exc_info=True)
        raise


if __name__ == "__main__":
    main()
"""


def test_tornado_process_test_scenario_passes_with_daemonctx_fork_processes(
        tmp_path: Path) -> None:
    pytest.importorskip("tornado")
    script = write_script(tmp_path, TORNADO_SCENARIO)
    result = run_python(script, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "master exited normally" in result.stdout
    # Exactly the three abnormal exits of the scenario were restarted (max_restarts=3).
    assert result.stderr.count(", restarting") == 3, result.stderr


def test_prefork_echo_example_serves_and_stops_with_its_master(tmp_path: Path) -> None:
    from daemonctx.pidfile import holder_pid

    rundir = tmp_path / "run"
    rundir.mkdir()
    example = REPO / "examples" / "tutorial" / "echo_prefork.py"  # the docs' example
    env = dict(os.environ, PYTHONPATH=str(REPO))
    master = None
    workers: list[int] = []
    try:
        result = run_python(example, str(rundir), "3", env=env, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        master = read_pid_file(rundir / "echo.pid")
        assert holder_pid(rundir / "echo.pid") == master
        workers = live_children(master)
        assert len(workers) == 3  # all ready before the launcher exited 0
        port = int((rundir / "echo.port").read_text())
        for message in (b"hello\n", b"prefork\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(message)
                conn.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
            assert received.startswith(b"worker ") and received.endswith(b": " + message)

        # A crashed worker is replaced; it never takes the master's pidfile with it.
        os.kill(workers[0], signal.SIGKILL)
        replaced = wait_live_children(master, 3, without=(workers[0],))
        workers = sorted(set(workers) | set(replaced))
        assert holder_pid(rundir / "echo.pid") == master

        os.kill(master, signal.SIGTERM)
        wait_pid_gone(master)
        wait_pidfds(workers)
        assert not (rundir / "echo.pid").exists()
    finally:
        kill_tree(master)
        for pid in workers:
            if pid_exists(pid) and b"echo" in Path(f"/proc/{pid}/cmdline").read_bytes():
                kill_tree(pid)


def test_under_daemon_context_workers_exiting_normally_leave_the_pidfile_alone(
        tmp_path: Path) -> None:
    from daemonctx.pidfile import holder_pid

    pidfile = tmp_path / "app.pid"
    body = f"""
    import daemonctx
    log = os.path.join(OUT, "daemon.log")
    with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile({str(pidfile)!r}), stdout=log,
                                 stderr=log):
        tid = fork_processes(2)
        record("events", "start", tid, os.getpid())
        if tid == 0:
            sys.exit(0)  # unwinds through the with block and runs atexit, in the worker
        park()
    """
    with supervisor_script(tmp_path, body) as launcher:
        assert launcher.wait() == 0
        master = read_pid_file(pidfile)
        try:
            events = launcher.wait_lines("events", 2)
            exited = next(int(x[2]) for x in events if x[1] == "0")
            wait_pidfds([exited])
            (remaining,) = wait_live_children(master, 1)
            assert holder_pid(pidfile) == master
            assert read_pid_file(pidfile) == master
            os.kill(master, signal.SIGTERM)
            wait_pid_gone(master)
            wait_pidfds([remaining])
            assert not pidfile.exists()
        finally:
            kill_tree(master)


def test_sighup_of_fork_processes_under_systemd_reports_reloading_then_ready(
        tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    body = """
    tid = fork_processes(2)
    record("events", "start", tid, os.getpid())
    park()
    """
    env = dict(os.environ, NOTIFY_SOCKET=name)
    with supervisor_script(tmp_path, body, env=env) as master:
        first = receive(sock, 15)
        assert first is not None and first.startswith(b"READY=1")
        master.wait_lines("events", 2)
        master.signal(signal.SIGHUP)
        reloading = receive(sock, 15)
        assert reloading is not None and reloading.startswith(b"RELOADING=1")
        ready = receive(sock, 15)  # Type=notify-reload: the reload completes
        assert ready is not None and ready.startswith(b"READY=1"), ready
        assert len(master.wait_lines("events", 4)) == 4  # both workers were replaced
        assert terminate_and_wait(master) == 0
