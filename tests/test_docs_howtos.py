"""The how-to guides' programs and console blocks run as written, and so do the examples of
``daemonctx --help`` and ``daemonctx start --help`` (issue 16, #3).

Each block marked ``% runnable: NAME`` in ``docs/howto/*.md`` has a scenario here (see
:data:`SCENARIOS`; ``tests/test_docs_runnable`` fails for a marked block without one).  A
scenario runs the block's own text.  Where the page leaves a function to the reader
(``serve()``, ``main()``), the scenario defines it before the block's text, as a small service
that tells the test what it can only learn from inside (its pid).  Where the block cannot run
literally here, the scenario's docstring names what it substitutes: a real system user
(``nobody``) for ``app``, a fresh directory in ``/run`` for ``/run/app``, a temporary file for a
path under ``/etc`` or ``/var``, a free port for a fixed one (or a network namespace of its own,
where the page's port is free).  Every check is one a user could make from outside: the start
command's status, ``/proc/<pid>/``, the pidfile's lock, a connection over loopback, the log.

The ``--help`` examples are taken from the command's real output, and run in the order a user
would type them, with the same kind of substitutions; programs the examples only name
(``/usr/sbin/app``) are small stand-ins that behave as the examples assume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.docs_blocks import (
    Block,
    Command,
    ConsoleSession,
    commands_of,
    output_matches,
    runnable_blocks,
)
from tests.helpers import (
    PYTHON,
    REPO,
    kill_and_wait,
    kill_tree,
    let_others_traverse,
    live_children,
    pid_exists,
    proc_stat,
    proc_status,
    run_cli,
    wait_file_text,
    wait_for,
    wait_live_children,
    wait_pid_gone,
    wait_pidfds,
)

BLOCKS = runnable_blocks()
NOBODY = 65534
WWW_DATA = 33
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_systemd_notify = pytest.mark.skipif(shutil.which("systemd-notify") is None,
                                          reason="systemd-notify is not installed "
                                                 "(Debian: apt install systemd)")


# --- running a block ------------------------------------------------------------------------


def substituted(block: Block, substitutions: dict[str, str] | None = None) -> str:
    """``block``'s text with each substitution made (each must still be on the page)."""
    text = block.text
    for old, new in (substitutions or {}).items():
        assert old in text, f"{block.where} ({block.name}) no longer says {old!r}"
        text = text.replace(old, new)
    return text


def write_program(directory: Path, block: Block, substitutions: dict[str, str] | None = None,
                  *, defined: str = "", name: str = "app.py") -> Path:
    """The Python block as a file: the scenario's ``defined`` functions, then its own text."""
    assert block.language == "python", f"{block.where} is not a Python block"
    path = directory / name
    path.write_text(defined + "\n" + substituted(block, substitutions))
    return path


def program_env(**extra: str) -> dict[str, str]:
    """The caller's environment, daemonctx importable from this checkout."""
    return dict(os.environ, PYTHONPATH=str(REPO), **extra)


@dataclasses.dataclass(frozen=True)
class Launched:
    """A program run as ``python app.py`` from a shell, after it exited."""

    pid: int
    status: int
    stdout: str
    stderr: str


def launch(program: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Launched:
    """Run ``program`` with this interpreter and wait (bounded) for it to exit."""
    process = subprocess.Popen([PYTHON, str(program)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env or program_env(), cwd=program.parent)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=15)
    return Launched(process.pid, process.returncode, stdout, stderr)


def reported_pid(report: Path) -> int:
    """The pid a scenario's service wrote into ``report`` once it runs."""
    return int(wait_file_text(report, 30, lambda text: text.strip().isdigit()))


def stop(pid: int) -> None:
    """SIGTERM, then a bounded wait for the process to be gone."""
    kill_and_wait(pid, signal.SIGTERM, 30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def receive_all(port: int, send: bytes = b"") -> bytes:
    """Connect to ``port`` on loopback, send ``send``, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(send)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return data


# --- typing console blocks ------------------------------------------------------------------


def console_commands(block: Block, substitutions: dict[str, str] | None = None) -> list[Command]:
    """The commands of a console block, with the substitutions made (outputs included)."""
    assert block.language == "console", f"{block.where} is not a console block"
    return commands_of(dataclasses.replace(block, text=substituted(block, substitutions)))


def type_commands(session: ConsoleSession, block: Block,
                  commands: list[Command]) -> list[list[str]]:
    """Type ``commands`` (of ``block``); each must exit 0 and print what the page shows."""
    outputs = []
    for command in commands:
        lines, status = session.run(command.text)
        assert status == 0 and output_matches(command.expected, lines, session.home), (
            f"{block.where} ({block.name}): $ {command.text}\n--- the page shows:\n"
            + "\n".join(command.expected) + "\n--- the shell printed:\n" + "\n".join(lines)
            + f"\n(exit status {status})")
        outputs.append(lines)
    return outputs


@contextlib.contextmanager
def console(home: Path, *, own_network: bool = False) -> Iterator[ConsoleSession]:
    session = ConsoleSession(home, own_network=own_network)
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A reader's directory holding the repository's examples/; pidfiles' holders stopped."""
    directory = tmp_path / "home"
    directory.mkdir()
    (directory / "examples").symlink_to(REPO / "examples")
    yield directory
    for pidfile in directory.glob("run/*.pid"):
        kill_tree(holder_pid(pidfile))


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A fresh name for a directory in root's /run (not created yet); afterwards whatever holds
    a pidfile in it is stopped, and the directory removed."""
    path = Path("/run") / f"daemonctx-howto-{secrets.token_hex(4)}"
    yield path
    if path.exists():
        for pidfile in path.glob("*.pid"):
            kill_tree(holder_pid(pidfile))
        shutil.rmtree(path)


def notify_socket(path: Path) -> socket.socket:
    """A socket that plays systemd's notification socket."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(30)
    return receiver


def notification(receiver: socket.socket) -> dict[str, str]:
    """The next datagram on ``receiver`` as its ``KEY=VALUE`` assignments."""
    lines = receiver.recv(4096).decode().splitlines()
    return dict(line.split("=", 1) for line in lines)


# --- logging.md -----------------------------------------------------------------------------


def test_logging_file_handler_configured_before_open_writes_from_the_daemon(
        tmp_path: Path) -> None:
    """logging-file, with a file in a temporary directory for /var/log/app/app.log."""
    log = tmp_path / "app.log"
    program = write_program(tmp_path, BLOCKS["logging-file"], {"/var/log/app/app.log": str(log)})
    launched = launch(program)
    assert launched.status == 0, launched.stderr
    text = wait_file_text(log, 30, lambda text: "INFO started" in text)
    found = re.search(r"\[(\d+)\] INFO started", text)
    assert found, text
    daemon = int(found.group(1))
    assert daemon != launched.pid  # written by the daemon, not by the command that started it
    wait_pid_gone(daemon, 30)


def test_logging_to_stderr_reaches_the_service_managers_pipe(tmp_path: Path) -> None:
    """logging-stderr, started as a service manager starts it: this test is its parent, named
    by MANAGERPID, with INVOCATION_ID set, and its stderr a pipe, as the journal's is."""
    program = write_program(tmp_path, BLOCKS["logging-stderr"])
    launched = launch(program, program_env(MANAGERPID=str(os.getpid()),
                                           INVOCATION_ID=secrets.token_hex(16)))
    assert launched.status == 0, launched.stderr
    assert launched.stderr.splitlines() == ["INFO:root:started"]


def _log_records(conn: socket.socket) -> list[str]:
    """The messages of the records a SocketHandler sent on ``conn``, until it closed."""
    conn.settimeout(30)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    messages = []
    while data:
        (size,) = struct.unpack(">L", data[:4])
        messages.append(pickle.loads(data[4:4 + size])["msg"])  # our own program's records
        data = data[4 + size:]
    return messages


def test_socket_handler_listed_in_files_preserve_keeps_its_connection(tmp_path: Path) -> None:
    """logging-socket-handler, with a port this test listens on for 9020.

    Both records arrive on the one connection made before ``open()``: the daemon kept the
    handler's socket (had it been closed, the second record would come on a new connection).
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        program = write_program(tmp_path, BLOCKS["logging-socket-handler"], {"9020": str(port)})
        launched = launch(program)
        assert launched.status == 0, launched.stderr
        conn, _ = server.accept()
        with conn:
            assert _log_records(conn) == ["starting", "started"]


# --- log-rotation.md ------------------------------------------------------------------------

ROTATION_SERVE = '''
import os
import signal

def serve():
    """The service: logs "record N" at the Nth SIGUSR1; writes its pid for the test first."""
    count = 0

    def on_usr1(signum, frame):
        nonlocal count
        count += 1
        logging.info("record %d", count)

    signal.signal(signal.SIGUSR1, on_usr1)
    with open(REPORT, "w") as out:
        out.write(str(os.getpid()))
    while True:
        signal.pause()
'''


def test_watched_file_handler_follows_a_rotation_without_a_signal(tmp_path: Path,
                                                                  spawned: list[int]) -> None:
    """log-rotation-watched, with a file in a temporary directory for /var/log/app/app.log; the
    rotation is logrotate's rename, then a record."""
    log, report = tmp_path / "app.log", tmp_path / "report"
    program = write_program(tmp_path, BLOCKS["log-rotation-watched"],
                            {"/var/log/app/app.log": str(log)},
                            defined=f"REPORT = {str(report)!r}\n{ROTATION_SERVE}")
    launched = launch(program)
    assert launched.status == 0, launched.stderr
    pid = reported_pid(report)
    spawned.append(pid)
    os.kill(pid, signal.SIGUSR1)
    wait_file_text(log, 30, lambda text: "record 1" in text)
    log.rename(tmp_path / "app.log.1")
    os.kill(pid, signal.SIGUSR1)
    assert wait_file_text(log, 30, lambda text: "record 2" in text) == "record 2\n"
    assert (tmp_path / "app.log.1").read_text() == "record 1\n"
    stop(pid)


# --- migrate-from-python-daemon.md ------------------------------------------------------------

SERVICE = '''
import os
import signal

def {name}():
    """The application: writes its pid for the test, then serves until SIGTERM."""
    with open(REPORT, "w") as out:
        out.write(str(os.getpid()))
    signal.pause()
'''


def test_migrated_program_runs_as_a_daemon_with_its_options(tmp_path: Path,
                                                            spawned: list[int]) -> None:
    """migrate-import, with a temporary directory for /var/lib/app."""
    workdir, report = tmp_path / "lib", tmp_path / "report"
    workdir.mkdir()
    program = write_program(tmp_path, BLOCKS["migrate-import"], {"/var/lib/app": str(workdir)},
                            defined=f"REPORT = {str(report)!r}\n" + SERVICE.format(name="main"))
    launched = launch(program)
    assert launched.status == 0, launched.stderr
    pid = reported_pid(report)
    spawned.append(pid)
    assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
    assert proc_status(pid)["Umask"] == "0022"
    stat = proc_stat(pid)
    assert stat.session != os.getsid(0) and stat.tty_nr == 0
    stop(pid)


THREADS = '''
import threading

def start_metrics_thread():
    """A reporter thread that lives as long as the process."""
    threading.Thread(target=threading.Event().wait, name="metrics", daemon=True).start()
'''


@needs_root
def test_thread_started_after_open_runs_in_the_daemon(tmp_path: Path, run_dir: Path,
                                                      spawned: list[int]) -> None:
    """migrate-threads, with a fresh directory in /run for /run/app."""
    run_dir.mkdir()
    report = tmp_path / "report"
    program = write_program(tmp_path, BLOCKS["migrate-threads"], {"/run/app/": f"{run_dir}/"},
                            defined=f"REPORT = {str(report)!r}\n{THREADS}"
                                    + SERVICE.format(name="serve"))
    launched = launch(program)
    assert launched.status == 0, launched.stderr
    assert "DaemonThreadWarning" not in launched.stderr
    pid = reported_pid(report)
    spawned.append(pid)
    assert holder_pid(run_dir / "app.pid") == pid
    assert len(os.listdir(f"/proc/{pid}/task")) == 2  # the main thread and "metrics"
    stop(pid)
    assert not (run_dir / "app.pid").exists()


# --- prefork-workers.md -------------------------------------------------------------------------


def test_prefork_echo_walk_through(home: Path) -> None:
    """prefork-echo, typed into a shell in a directory holding the repository's examples/."""
    block = BLOCKS["prefork-echo"]
    *commands, kill = console_commands(block)
    with console(home) as session:
        outputs = type_commands(session, block, commands)
        master = holder_pid(home / "run" / "echo.pid")
        assert master is not None
        workers = {int(line.split()[0]): int(line.split()[1]) for line in outputs[1][1:]}
        assert set(workers.values()) == {master}
        assert sorted(workers) == sorted(live_children(master))
        port = int((home / "run" / "echo.port").read_text())
        type_commands(session, block, [kill])
        wait_pidfds([master, *workers], 30)
    assert not (home / "run" / "echo.pid").exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)


# --- privileges.md ------------------------------------------------------------------------------

PRIVILEGED_SERVE = '''
import hashlib
import json

def serve(listener, key):
    """The service: tells each client who it runs as and which key it holds."""
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(json.dumps({"pid": os.getpid(),
                                     "ids": [os.getresuid(), os.getresgid()],
                                     "key": hashlib.sha256(key).hexdigest()}).encode())
'''


@needs_root
def test_privileges_recipe_binds_as_root_and_serves_as_the_user(tmp_path: Path, run_dir: Path,
                                                                spawned: list[int]) -> None:
    """privileges-recipe, then privileges-check, with user nobody for "app", a fresh directory
    in /run for /run/app, a free port for 80, and a file only root may read for
    /etc/app/secret.key."""
    key = tmp_path / "secret.key"
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    port = free_port()
    program = write_program(tmp_path, BLOCKS["privileges-recipe"], {
        'USER = "app"': 'USER = "nobody"', '"/run/app': f'"{run_dir}',
        '("0.0.0.0", 80)': f'("0.0.0.0", {port})', '"/etc/app/secret.key"': repr(str(key))},
        defined=PRIVILEGED_SERVE)
    launched = launch(program)
    pid = holder_pid(run_dir / "app.pid")
    if pid is not None:
        spawned.append(pid)
    assert launched.status == 0, launched.stderr
    answer = json.loads(receive_all(port))
    assert answer == {"pid": pid, "ids": [[NOBODY] * 3, [NOBODY] * 3],
                      "key": hashlib.sha256(key.read_bytes()).hexdigest()}
    status = proc_status(pid)
    assert status["Uid"].split() == status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"] == ""
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.M), limits
    assert run_dir.stat().st_uid == NOBODY
    with console(tmp_path) as session:
        block = BLOCKS["privileges-check"]
        type_commands(session, block, console_commands(block, {"/run/app": str(run_dir)}))
    stop(pid)
    assert not (run_dir / "app.pid").exists()  # the daemon's user may remove it: its directory


@needs_root
def test_privileges_command_drops_to_the_user_with_its_groups(tmp_path: Path,
                                                              run_dir: Path) -> None:
    """privileges-command, with user nobody (group nogroup) for app, a fresh directory in /run
    for /run/app, and for /usr/local/bin/app a script that stays in the foreground."""
    program = tmp_path / "app"
    program.write_text('#!/bin/sh\n[ "$1" = --foreground ] || exit 2\nexec sleep infinity\n')
    program.chmod(0o755)
    let_others_traverse(tmp_path)
    block = BLOCKS["privileges-command"]
    *commands, stop_command = console_commands(block, {
        "-o app -g app": "-o nobody -g nogroup", "--user app": "--user nobody",
        "/run/app": str(run_dir), "/usr/local/bin/app": str(program)})
    with console(tmp_path) as session:
        type_commands(session, block, commands)
        pid = holder_pid(run_dir / "app.pid")
        assert pid is not None
        status = proc_status(pid)
        assert status["Uid"].split() == status["Gid"].split() == [str(NOBODY)] * 4
        assert status["Groups"] == str(NOBODY)  # nobody's own groups: nogroup
        wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\0infinity\0",
                 30, "the program to exec sleep")
        type_commands(session, block, [stop_command])
    assert not pid_exists(pid)
    assert not (run_dir / "app.pid").exists()


# --- readiness.md ---------------------------------------------------------------------------

READINESS_DEFINED = '''
import json
import os
import socket

def load_config():
    """The test's configuration: where to say the port; a missing file raises."""
    with open(PIDS, "a") as out:
        out.write(f"{os.getpid()}\\n")
    with open(CONFIG) as config_file:
        return json.load(config_file)

def bind(config):
    listener = socket.create_server(("127.0.0.1", 0))
    with open(config["port_file"], "w") as out:
        out.write(str(listener.getsockname()[1]))
    return listener

def serve(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(str(os.getpid()).encode())
'''


def _readiness_program(tmp_path: Path, config: Path) -> tuple[Path, Path]:
    pids = tmp_path / "pids"
    defined = f"PIDS = {str(pids)!r}\nCONFIG = {str(config)!r}\n{READINESS_DEFINED}"
    return write_program(tmp_path, BLOCKS["readiness-defer"], defined=defined), pids


def test_deferred_readiness_start_returns_once_the_daemon_listens(tmp_path: Path,
                                                                  spawned: list[int]) -> None:
    """readiness-defer: the start command exits 0 only once the socket is bound (a connection
    right after it returns is answered, without waiting)."""
    port_file = tmp_path / "port"
    config = tmp_path / "app.json"
    config.write_text(json.dumps({"port_file": str(port_file)}))
    program, pids = _readiness_program(tmp_path, config)
    launched = launch(program)
    (daemon,) = map(int, pids.read_text().split())
    spawned.append(daemon)
    assert launched.status == 0, launched.stderr
    assert receive_all(int(port_file.read_text())) == str(daemon).encode()
    stop(daemon)


def test_deferred_readiness_start_fails_with_the_configurations_error(tmp_path: Path) -> None:
    """readiness-defer, without its configuration file: the start command says why and fails,
    and the daemon is gone."""
    missing = tmp_path / "missing.json"
    program, pids = _readiness_program(tmp_path, missing)
    launched = launch(program)
    assert launched.status == 1
    assert launched.stderr.splitlines() == [
        f"app.py: daemon failed to start: FileNotFoundError: [Errno 2] No such file or "
        f"directory: {str(missing)!r}"]
    (daemon,) = map(int, pids.read_text().split())
    wait_pid_gone(daemon, 30)


def test_systemd_notify_calls_send_their_messages(tmp_path: Path) -> None:
    """readiness-notify-calls, with NOTIFY_SOCKET naming a socket this test reads."""
    with notify_socket(tmp_path / "notify.sock") as receiver:
        program = write_program(tmp_path, BLOCKS["readiness-notify-calls"])
        launched = launch(program, program_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock")))
        assert launched.status == 0, launched.stderr
        assert notification(receiver) == {"STATUS": "loading the index (3 of 12 files)"}
        assert notification(receiver) == {"EXTEND_TIMEOUT_USEC": "30000000"}
        reloading = notification(receiver)
        assert reloading.pop("RELOADING") == "1" and reloading.pop("MONOTONIC_USEC").isdigit()
        assert reloading == {}
        assert notification(receiver) == {"READY": "1"}


SCHEDULE_EVERY = '''
def schedule_every(seconds, callback):
    """The event loop's timer, here: print the interval, then call ``callback`` once."""
    print(seconds, flush=True)
    callback()
'''


def test_watchdog_is_fed_at_half_its_timeout_only_when_armed(tmp_path: Path) -> None:
    """readiness-watchdog, with WATCHDOG_USEC (4 s) set as systemd sets it, and without."""
    with notify_socket(tmp_path / "notify.sock") as receiver:
        program = write_program(tmp_path, BLOCKS["readiness-watchdog"], defined=SCHEDULE_EVERY)
        env = program_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
        armed = launch(program, dict(env, WATCHDOG_USEC="4000000"))
        assert (armed.status, armed.stdout) == (0, "2.0\n"), armed.stderr
        assert notification(receiver) == {"WATCHDOG": "1"}
        unarmed = launch(program, env)
        assert (unarmed.status, unarmed.stdout) == (0, ""), unarmed.stderr
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):  # the program has exited: nothing more is coming
            receiver.recv(4096)


NOTIFYING_APP = '''\
"""Stands for the reader's app.py: with --foreground, it binds, says READY=1, then serves."""
import os
import socket
import sys

import daemonctx

if sys.argv[1:] != ["--foreground"]:
    sys.exit("usage: app.py --foreground")
listener = socket.create_server(("127.0.0.1", 0))
with open("app.port", "w") as out:            # in its working directory
    out.write(str(listener.getsockname()[1]))
daemonctx.notify_ready()
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(str(os.getpid()).encode())
'''


def test_start_notify_returns_once_the_program_is_ready(home: Path) -> None:
    """readiness-notify-command, in a directory holding run/ and, for app.py, a program that
    calls daemonctx.notify_ready() once it listens."""
    (home / "run").mkdir()
    (home / "app.py").write_text(NOTIFYING_APP)
    block = BLOCKS["readiness-notify-command"]
    with console(home) as session:
        type_commands(session, block, console_commands(block))
        pid = holder_pid(home / "run" / "app.pid")
        assert pid is not None
        assert receive_all(int((home / "app.port").read_text())) == str(pid).encode()
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"app.py", b"--foreground"]
        stop(pid)


def test_start_notify_with_a_shell_script_that_reports_readiness(home: Path) -> None:
    """readiness-notify-script, with prepare-cache and serve in a directory put first in PATH:
    prepare-cache leaves a file, serve stays in the foreground."""
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (home / "run").mkdir()
    (bin_dir / "prepare-cache").write_text(f"#!/bin/sh\necho $$ > {home}/cache.ready\n")
    (bin_dir / "serve").write_text(
        f"#!{PYTHON}\nimport signal, sys\n"
        "sys.exit(2) if sys.argv[1:] != ['--foreground'] else signal.pause()\n")
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    block = BLOCKS["readiness-notify-script"]
    with console(home) as session:
        session.run('export PATH="$PWD/bin:$PATH"')
        type_commands(session, block, console_commands(block))
        pid = holder_pid(home / "run" / "app.pid")
        assert pid is not None
        assert (home / "cache.ready").exists()  # prepare-cache ran before READY=1
        # sh goes on to exec serve: the process holding the lock becomes serve, same pid
        serve = [str(bin_dir / "serve").encode(), b"--foreground"]
        wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == serve,
                 30, "sh to exec serve")
        stop(pid)


# --- socket-activation.md -------------------------------------------------------------------

UNIT_BLOCKS = ("socket-activation-http-socket", "socket-activation-admin-socket",
               "socket-activation-service")


def _system_unit_directory() -> Path | None:
    for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(candidate, "sockets.target").exists():
            return Path(candidate).resolve()
    return None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or _system_unit_directory() is None,
                    reason="systemd-analyze is not installed (Debian: apt install systemd)")
def test_socket_activation_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """socket-activation-http-socket, -admin-socket and -service, each under the name its first
    line gives, verified against a root holding the system's units and, for the service's
    interpreter and program, placeholders (verify checks that they exist)."""
    root = tmp_path / "root"
    units = _system_unit_directory()
    assert units is not None
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    names = []
    for name in UNIT_BLOCKS:
        text = BLOCKS[name].text
        names.append(text.splitlines()[0].removeprefix("# "))
        (installed / names[-1]).write_text(text)
    exec_start = re.search(r"^ExecStart=(\S+) (\S+)$", BLOCKS["socket-activation-service"].text,
                           re.M)
    assert exec_start and exec_start.group(1).endswith("/venv/bin/python"), (
        "the service runs a virtual environment's interpreter")
    for program in exec_start.groups():
        placeholder = root / program.lstrip("/")
        placeholder.parent.mkdir(parents=True, exist_ok=True)
        placeholder.write_text("#!/bin/sh\n")
        placeholder.chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *names],
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
                            timeout=60, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0 and not lines, "\n".join(lines)


ANSWER_BY_SOCKET_NAME = '''
import json
import os
import selectors

def serve(sockets):
    """The service: answers each connection with the name of the socket it came on."""
    with open(REPORT, "w") as out:
        json.dump({"pid": os.getpid(),
                   "sockets": {name: s.getsockname() for name, s in sockets.items()}}, out)
    selector = selectors.DefaultSelector()
    for name, listener in sockets.items():
        selector.register(listener, selectors.EVENT_READ, name)
    while True:
        for key, _ in selector.select():
            conn, _ = key.fileobj.accept()
            with conn:
                conn.sendall(key.data.encode())
'''


def _report(path: Path) -> dict[str, object]:
    return json.loads(wait_file_text(path, 30, lambda text: text.endswith("}")))


@needs_root
def test_socket_activation_program_binds_its_own_sockets_when_not_activated(
        home: Path, spawned: list[int]) -> None:
    """socket-activation-program started by hand (``python3 app.py``), in a network namespace of
    its own so that the page's ports 8080 and 9090 are free."""
    report = home / "report.json"
    write_program(home, BLOCKS["socket-activation-program"],
                  defined=f"REPORT = {str(report)!r}\n{ANSWER_BY_SOCKET_NAME}")
    with console(home, own_network=True) as session:
        assert session.run("python3 app.py") == ([], 0)
        started = _report(report)
        pid = int(str(started["pid"]))
        spawned.append(pid)
        assert started["sockets"] == {"http": ["0.0.0.0", 8080], "admin": ["127.0.0.1", 9090]}
        assert session.run("nc -N 127.0.0.1 8080 < /dev/null") == (["http"], 0)
        assert session.run("nc -N 127.0.0.1 9090 < /dev/null") == (["admin"], 0)
        stop(pid)


@needs_root
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (Debian: apt install systemd)")
def test_socket_activation_try_passes_the_socket_to_the_daemon(home: Path,
                                                               spawned: list[int]) -> None:
    """socket-activation-try, on socket-activation-program as app.py, in a network namespace of
    its own (the page's port 8080 is free there).  The command runs as a job of the shell (as in
    a terminal: the shell is its parent), and a connection from the same shell, as from a second
    terminal, starts the program."""
    report = home / "report.json"
    write_program(home, BLOCKS["socket-activation-program"],
                  defined=f"REPORT = {str(report)!r}\n{ANSWER_BY_SOCKET_NAME}")
    (command,) = console_commands(BLOCKS["socket-activation-try"])
    output = home / "activate.out"
    with console(home, own_network=True) as session:
        (job,), _ = session.run(f"{command.text} > {output} 2>&1 & echo $!")
        wait_file_text(output, 30, lambda text: text.startswith(command.expected[0] + "\n"))
        assert session.run("nc -N 127.0.0.1 8080 < /dev/null") == (["http"], 0)
        started = _report(report)
        pid = int(str(started["pid"]))
        spawned.append(pid)
        assert started["sockets"] == {"http": ["127.0.0.1", 8080]}
        # The command (exec'd into the program's launcher) exits 0 once the daemon is ready;
        # the daemon, detached, is another process, and the socket is its own.
        assert session.run(f"wait {job}") == ([], 0)
        assert pid != int(job)
        assert proc_stat(pid).session not in (int(job), proc_stat(session.shell.pid).session)
        assert session.run("nc -N 127.0.0.1 8080 < /dev/null") == (["http"], 0)
        stop(pid)


WORKER_SERVE = '''
import os
from daemonctx.supervisor import notify_worker_ready

def serve(sockets):
    """A worker: ready at once, then answers with its pid and its master's."""
    notify_worker_ready()
    while True:
        conn, _ = sockets["http"].accept()
        with conn:
            conn.sendall(f"{os.getpid()} {os.getppid()}".encode())
'''


@needs_root
def test_socket_activation_with_prefork_workers_shares_the_sockets(home: Path,
                                                                   spawned: list[int]) -> None:
    """socket-activation-prefork, after socket-activation-program's imports and
    listening_sockets(), started by hand in a network namespace of its own (port 8080 free)."""
    program = BLOCKS["socket-activation-program"].text
    definitions = program[:program.index("with daemonctx.DaemonContext")]
    (home / "app.py").write_text(WORKER_SERVE + definitions
                                 + BLOCKS["socket-activation-prefork"].text)
    with console(home, own_network=True) as session:
        assert session.run("python3 app.py") == ([], 0)
        (answer,), status = session.run("nc -N 127.0.0.1 8080 < /dev/null")
        assert status == 0
        worker, master = map(int, answer.split())
        spawned.append(master)
        workers = wait_live_children(master, 4)
        assert worker in workers
        stop(master)
        wait_pidfds(workers, 30)


# --- testing.md -----------------------------------------------------------------------------

TESTING_BLOCKS = ("testing-fixture", "testing-wait", "testing-behaviour", "testing-systemd")


def test_testing_howto_is_a_test_file_that_passes(tmp_path: Path) -> None:
    """testing-fixture, testing-wait, testing-behaviour and testing-systemd, in the page's order,
    as tests/test_app.py next to the tutorial's app.py, run by pytest in a subprocess."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "tutorial" / "app.py", project / "app.py")
    blocks = sorted((BLOCKS[name] for name in TESTING_BLOCKS), key=lambda block: block.line)
    assert [block.name for block in blocks] == list(TESTING_BLOCKS), "the page's order"
    (project / "tests" / "test_app.py").write_text("\n\n".join(block.text for block in blocks))
    # A short base directory: the page's notification socket is a path below tmp_path, and
    # AF_UNIX paths are limited to 107 bytes.
    basetemp = Path(tempfile.mkdtemp(prefix="dctx-"))
    try:
        result = subprocess.run(
            [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
             "tests/test_app.py"],
            cwd=project, env=program_env(), capture_output=True, text=True, timeout=300,
            check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"^4 passed\b", result.stdout, re.M), result.stdout
        for pidfile in basetemp.rglob("*.pid"):
            assert holder_pid(pidfile) is None, f"the page's tests left {pidfile} held"
    finally:
        shutil.rmtree(basetemp)


# --- the examples of daemonctx --help and daemonctx start --help ----------------------------


def help_examples(*command: str) -> list[str]:
    """The example lines of ``daemonctx [COMMAND] --help``, continuation lines joined."""
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in re.sub(r"\\\n\s+", "", section).splitlines()]


class Examples:
    """The examples of one ``--help``, each run (with substitutions) once a test picks it."""

    def __init__(self, examples: list[str], substitutions: dict[str, str]) -> None:
        self.left = list(examples)
        self.substitutions = substitutions

    def run(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the example that is ``command`` (its comment aside), or else the one that begins
        with it, in bash as a user types it; ``env``: variables of the user's shell."""
        exact = [line for line in self.left if line.partition(" #")[0].strip() == command]
        (example,) = exact or [line for line in self.left if line.startswith(command)]
        self.left.remove(example)
        return self.run_again(example, **env)

    def run_again(self, example: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``example`` (with the substitutions) once more."""
        for old, new in self.substitutions.items():
            example = example.replace(old, new)
        shell_env = program_env(PATH=f"{os.path.dirname(PYTHON)}:{os.environ['PATH']}", **env)
        return subprocess.run(["bash", "-c", example], capture_output=True, text=True,
                              env=shell_env, timeout=90, stdin=subprocess.DEVNULL, check=False)


NOTIFYING_SERVICE = '''#!{python}
"""Stands for /usr/sbin/app: with --foreground, says READY=1 (systemd-notify), notes signals."""
import os
import signal
import subprocess
import sys

if sys.argv[1:] != ["--foreground"]:
    sys.exit("usage: app --foreground")

def note(text):
    with open({events!r}, "a") as out:
        out.write(text + "\\n")

for signum in (signal.SIGHUP, signal.SIGUSR1):
    signal.signal(signum, lambda signum, frame: note(signal.Signals(signum).name))
note(f"ready {{os.getpid()}} {{os.environ.get('NOTIFY_SOCKET', '')}}")
subprocess.run(["systemd-notify", "--ready"], check=True)
while True:
    signal.pause()
'''


def _get(port: int, path: str) -> str:
    """GET ``path``, trying again (bounded) while the server does not listen yet: the start
    command returns once the program survived half a second, which says nothing about its
    port."""
    def attempt() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
                return str(answer.read().decode())
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return None
            raise
    return str(wait_for(attempt, 30, f"an answer on port {port}"))


def _assert_web_server_runs_as_www_data(pidfile: Path, site: Path, port: int, log: Path) -> int:
    pid = holder_pid(pidfile)
    assert pid is not None
    status = proc_status(pid)
    assert status["Uid"].split() == status["Gid"].split() == [str(WWW_DATA)] * 4
    assert os.readlink(f"/proc/{pid}/cwd") == str(site)
    assert _get(port, "/index.html") == "the site\n"
    wait_file_text(log, 30, lambda text: text.count('"GET /index.html HTTP/1.1" 200') == 1)
    return pid


@needs_root
@needs_systemd_notify
def test_daemonctx_help_examples_run_in_order(tmp_path: Path, run_dir: Path) -> None:
    """The examples of ``daemonctx --help``: start, start --notify, status, status --json,
    reload, signal USR1, stop --retry, restart.  Substituted: a fresh directory in /run for
    /run, a directory www-data may read for /srv/web, a temporary file for /var/log/web.log,
    a free port for 8080, and for /usr/sbin/app a program that reports READY=1 with
    systemd-notify and notes the signals it gets."""
    run_dir.mkdir()
    site = tmp_path / "srv"
    site.mkdir()
    (site / "index.html").write_text("the site\n")
    let_others_traverse(site)
    os.chmod(site / "index.html", 0o644)
    port = free_port()
    events = tmp_path / "app.events"
    app = tmp_path / "app"
    app.write_text(NOTIFYING_SERVICE.format(python=PYTHON, events=str(events)))
    app.chmod(0o755)
    web_log = tmp_path / "web.log"
    web_pid, app_pid = run_dir / "web.pid", run_dir / "app.pid"
    examples = Examples(help_examples(), {
        "/run/": f"{run_dir}/", "/srv/web": str(site), "/var/log/web.log": str(web_log),
        "8080": str(port), "/usr/sbin/app": str(app)})
    try:
        started = examples.run("daemonctx start --pidfile /run/web.pid")
        assert started.returncode == 0, started.stderr
        web = _assert_web_server_runs_as_www_data(web_pid, site, port, web_log)

        started = examples.run("daemonctx start --pidfile /run/app.pid --notify")
        assert started.returncode == 0, started.stderr
        ready = events.read_text().split()  # written before READY=1: start waited for it
        notified = holder_pid(app_pid)
        assert ready[:2] == ["ready", str(notified)] and ready[2].startswith("@")

        status = examples.run("daemonctx status --pidfile /run/web.pid")
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"running: pid {web} holds the lock of {web_pid}\n")
        status = examples.run("daemonctx status --pidfile /run/web.pid --json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["state"] == "running"
        assert json.loads(status.stdout)["pid"] == web

        assert examples.run("daemonctx reload").returncode == 0
        wait_file_text(events, 30, lambda text: text.endswith("SIGHUP\n"))
        assert examples.run("daemonctx signal USR1").returncode == 0
        wait_file_text(events, 30, lambda text: text.endswith("SIGHUP\nSIGUSR1\n"))
        assert holder_pid(app_pid) == notified  # both signals handled, still running

        stopped = examples.run("daemonctx stop --pidfile /run/web.pid --retry TERM/30/KILL/5")
        assert stopped.returncode == 0, stopped.stderr
        assert not pid_exists(web) and not web_pid.exists()
        again = examples.run_again("daemonctx status --pidfile /run/web.pid")
        assert again.returncode == 3  # "3 stopped", as the example's comment says

        web_log.unlink()
        restarted = examples.run("daemonctx restart --pidfile /run/web.pid")
        assert restarted.returncode == 0, restarted.stderr
        assert _assert_web_server_runs_as_www_data(web_pid, site, port, web_log) != web
        assert examples.left == [], "examples this test does not run"
    finally:
        for pidfile in (web_pid, app_pid):
            run_cli("stop", "--pidfile", str(pidfile), "--oknodo")


@needs_root
def test_daemonctx_start_help_examples_run(tmp_path: Path, run_dir: Path) -> None:
    """The examples of ``daemonctx start --help``, each started, checked and stopped.
    Substituted: a fresh directory in /run for /run, user nobody for app, a temporary file for
    /var/log/app.log, and for /usr/bin/app and app (which --clear-env looks up in its default
    PATH) a script that says who it runs as and stays in the foreground."""
    run_dir.mkdir()
    app = tmp_path / "app"
    app.write_text('#!/bin/sh\necho "app runs as $(id -un), groups $(id -Gn)"\n'
                   "exec sleep infinity\n")
    app.chmod(0o755)
    let_others_traverse(tmp_path)
    log = tmp_path / "app.log"
    pidfile = run_dir / "app.pid"
    examples = Examples(help_examples("start"), {
        "/run/": f"{run_dir}/", "--user app": "--user nobody", "/var/log/app.log": str(log),
        "/usr/bin/app": str(app), "-- app": f"-- {app}"})
    try:
        started = examples.run("daemonctx start --pidfile /run/app.pid --user app")
        assert started.returncode == 0, started.stderr
        pid = holder_pid(pidfile)
        assert pid is not None
        assert proc_status(pid)["Uid"].split() == [str(NOBODY)] * 4
        text = wait_file_text(log, 30, lambda text: text.endswith("\n"))
        assert text == "app runs as nobody, groups nogroup\n"
        assert run_cli("stop", "--pidfile", str(pidfile)).returncode == 0

        started = examples.run("daemonctx start --pidfile /run/app.pid --clear-env",
                               LANG="C.UTF-8", DAEMONCTX_HELP_TEST="the caller's")
        assert started.returncode == 0, started.stderr
        pid = holder_pid(pidfile)
        assert pid is not None
        environment = dict(entry.split("=", 1) for entry in Path(
            f"/proc/{pid}/environ").read_text().split("\0") if entry)
        assert environment["MODE"] == "prod" and environment["LANG"] == "C.UTF-8"
        assert environment["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        assert "DAEMONCTX_HELP_TEST" not in environment and "HOME" not in environment
        assert examples.left == [], "examples this test does not run"
    finally:
        run_cli("stop", "--pidfile", str(pidfile), "--oknodo")


# --- every marked block of the how-tos has a scenario -------------------------------------------

SCENARIOS: dict[str, Callable[..., None]] = {
    "logging-file": test_logging_file_handler_configured_before_open_writes_from_the_daemon,
    "logging-stderr": test_logging_to_stderr_reaches_the_service_managers_pipe,
    "logging-socket-handler": test_socket_handler_listed_in_files_preserve_keeps_its_connection,
    "log-rotation-watched": test_watched_file_handler_follows_a_rotation_without_a_signal,
    "migrate-import": test_migrated_program_runs_as_a_daemon_with_its_options,
    "migrate-threads": test_thread_started_after_open_runs_in_the_daemon,
    "prefork-echo": test_prefork_echo_walk_through,
    "privileges-recipe": test_privileges_recipe_binds_as_root_and_serves_as_the_user,
    "privileges-check": test_privileges_recipe_binds_as_root_and_serves_as_the_user,
    "privileges-command": test_privileges_command_drops_to_the_user_with_its_groups,
    "readiness-defer": test_deferred_readiness_start_returns_once_the_daemon_listens,
    "readiness-notify-calls": test_systemd_notify_calls_send_their_messages,
    "readiness-watchdog": test_watchdog_is_fed_at_half_its_timeout_only_when_armed,
    "readiness-notify-command": test_start_notify_returns_once_the_program_is_ready,
    "readiness-notify-script": test_start_notify_with_a_shell_script_that_reports_readiness,
    **dict.fromkeys(UNIT_BLOCKS, test_socket_activation_units_pass_systemd_analyze_verify),
    "socket-activation-program":
        test_socket_activation_program_binds_its_own_sockets_when_not_activated,
    "socket-activation-try": test_socket_activation_try_passes_the_socket_to_the_daemon,
    "socket-activation-prefork": test_socket_activation_with_prefork_workers_shares_the_sockets,
    **dict.fromkeys(TESTING_BLOCKS, test_testing_howto_is_a_test_file_that_passes),
}
