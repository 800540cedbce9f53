"""The documentation's claims, checked: the tutorial's programs run as the tutorial says, and the
built HTML contains the pictures.

The tutorial's final program, examples/tutorial/app.py, is started the way the tutorial starts
it (``python app.py ...`` from the directory holding its files), then managed with the
``daemonctx`` command.  The systemd and container parts are checked in a new pid namespace
(``unshare``, root only): there the program's parent is pid 1, or the program is pid 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PYTHON,
    REPO,
    children_of,
    pid_exists,
    proc_stat,
    wait_file_text,
    wait_pid_gone,
)

TUTORIAL = REPO / "examples" / "tutorial"
APP = TUTORIAL / "app.py"
PLAIN = TUTORIAL / "plain.py"
ECHO = TUTORIAL / "echo_prefork.py"
DOCS = REPO / "docs"
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def daemonctx_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``daemonctx`` command (as ``python -m daemonctx``) and wait, bounded."""
    return subprocess.run([PYTHON, "-m", "daemonctx", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=60, check=False)


def ask(port: int, name: str) -> str:
    """Send ``name`` to the greeter on ``port`` and return its one-line answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"{name}\n".encode())
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(256):
            data += chunk
    return data.decode()


def listening_port(log: Path) -> int:
    text = wait_file_text(log, predicate=lambda t: LISTENING.search(t) is not None)
    match = LISTENING.search(text)
    assert match is not None
    return int(match.group(2))


@dataclass
class Greeter:
    """A running tutorial daemon: where its files are, its pid and port."""

    workdir: Path
    pidfile: Path
    log: Path
    pid: int
    port: int


def start_app(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Start app.py as the tutorial does: relative paths, from the directory holding them."""
    command = [PYTHON, str(APP), "--config", "greeter.conf", "--port", "0",
               "--pidfile", "run/greeter.pid", "--log", "run/greeter.log", *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=ENV,
                          timeout=60, check=False)


@pytest.fixture
def greeter(tmp_path: Path, spawned: list[int]) -> Iterator[Greeter]:
    """The tutorial's daemon, started and ready; killed (by pid) whatever the test did."""
    (tmp_path / "greeter.conf").write_text("Hello\n")
    (tmp_path / "run").mkdir()
    started = start_app(tmp_path)
    assert started.returncode == 0, started.stderr
    pidfile = tmp_path / "run" / "greeter.pid"
    pid = holder_pid(pidfile)
    assert pid is not None
    spawned.append(pid)
    log = tmp_path / "run" / "greeter.log"
    yield Greeter(tmp_path, pidfile, log, pid, listening_port(log))


# --- Part 1: the daemon, managed with the daemonctx command ---------------------------------


def test_tutorial_app_answers_once_its_start_command_returned(greeter: Greeter) -> None:
    assert ask(greeter.port, "Ada") == "Hello, Ada!\n"
    assert "greeted Ada" in wait_file_text(greeter.log, predicate=lambda t: "greeted" in t)


def test_tutorial_app_runs_detached_in_its_own_session_without_terminal(
        greeter: Greeter) -> None:
    daemon = proc_stat(greeter.pid)
    assert daemon.session != os.getsid(0)
    assert daemon.session != greeter.pid  # not the session leader: the second fork happened
    assert daemon.tty_nr == 0
    assert os.readlink(f"/proc/{greeter.pid}/cwd") == "/"
    assert greeter.pidfile.read_text() == f"{greeter.pid}\n"


def test_tutorial_second_start_fails_naming_the_running_pid(greeter: Greeter) -> None:
    second = start_app(greeter.workdir)
    assert second.returncode == 1
    assert f"held by pid {greeter.pid}: already running" in second.stderr
    assert holder_pid(greeter.pidfile) == greeter.pid


def test_tutorial_start_fails_with_the_bind_error_when_the_port_is_taken(
        greeter: Greeter, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "run").mkdir(parents=True)
    (other / "greeter.conf").write_text("Hello\n")
    command = [PYTHON, str(APP), "--config", "greeter.conf", "--port", str(greeter.port),
               "--pidfile", "run/greeter.pid", "--log", "run/greeter.log"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=other, env=ENV,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert "daemon failed to start: OSError" in result.stderr
    assert "Address already in use" in result.stderr
    assert holder_pid(other / "run" / "greeter.pid") is None


def test_tutorial_reload_rereads_greeting_and_reopens_the_rotated_log(greeter: Greeter) -> None:
    (greeter.workdir / "greeter.conf").write_text("Bonjour\n")
    rotated = greeter.log.with_name("greeter.log.1")
    greeter.log.rename(rotated)  # what logrotate does before sending SIGHUP
    reload = daemonctx_command("reload", "--pidfile", "run/greeter.pid", cwd=greeter.workdir)
    assert reload.returncode == 0, reload.stderr
    wait_file_text(greeter.log, predicate=lambda t: "reloaded: greeting is 'Bonjour'" in t)
    assert ask(greeter.port, "Grace") == "Bonjour, Grace!\n"
    assert "reloaded" not in rotated.read_text()


def test_tutorial_status_reports_running_with_lsb_code_zero(greeter: Greeter) -> None:
    status = daemonctx_command("status", "--pidfile", "run/greeter.pid", cwd=greeter.workdir)
    assert status.returncode == 0, status.stderr
    assert f"running: pid {greeter.pid}" in status.stdout


def test_tutorial_stop_ends_daemon_cleanly_and_removes_pidfile(greeter: Greeter) -> None:
    stop = daemonctx_command("stop", "--pidfile", "run/greeter.pid", cwd=greeter.workdir)
    assert stop.returncode == 0, stop.stderr
    wait_pid_gone(greeter.pid)
    assert not greeter.pidfile.exists()
    assert greeter.log.read_text().splitlines()[-1].endswith("INFO stopping")
    status = daemonctx_command("status", "--pidfile", "run/greeter.pid", cwd=greeter.workdir)
    assert status.returncode == 3


def test_plain_script_is_started_and_stopped_by_the_daemonctx_command(
        tmp_path: Path, spawned: list[int]) -> None:
    (tmp_path / "greeter.conf").write_text("Hello\n")
    (tmp_path / "run").mkdir()
    start = daemonctx_command("start", "--pidfile", "run/plain.pid", "--chdir", str(tmp_path),
                              "--stdout", "run/plain.log", "--", PYTHON, str(PLAIN),
                              "greeter.conf", "0", cwd=tmp_path)
    pid = holder_pid(tmp_path / "run" / "plain.pid")
    if pid is not None:
        spawned.append(pid)
    assert start.returncode == 0, start.stderr
    assert pid is not None
    port = listening_port(tmp_path / "run" / "plain.log")
    assert ask(port, "Ada") == "Hello, Ada!\n"
    stop = daemonctx_command("stop", "--pidfile", "run/plain.pid", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    wait_pid_gone(pid)
    assert not pid_exists(pid)


def test_prefork_echo_example_serves_from_every_worker_and_stops_them_all(
        tmp_path: Path, spawned: list[int]) -> None:
    started = subprocess.run([PYTHON, str(ECHO), str(tmp_path), "3"], capture_output=True,
                             text=True, env=ENV, timeout=60, check=False)
    master = holder_pid(tmp_path / "echo.pid")
    if master is not None:
        spawned.append(master)
    assert started.returncode == 0, started.stderr
    assert master is not None
    workers = children_of(master)  # the launcher returned only once all three were ready
    assert len(workers) == 3
    port = int((tmp_path / "echo.port").read_text())
    answers = {ask(port, "hi") for _ in range(12)}
    assert all(re.fullmatch(r"worker [0-2] \(pid \d+\): hi\n", a) for a in answers), answers
    pids = {int(m.group(1)) for a in answers if (m := re.search(r"pid (\d+)", a))}
    assert pids <= set(workers)
    os.kill(master, signal.SIGTERM)
    wait_pid_gone(master)
    for worker in workers:
        wait_pid_gone(worker)
    assert not (tmp_path / "echo.pid").exists()


# --- Parts 2 and 3: under a service manager, and as pid 1 -----------------------------------


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", "true"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


# --kill-child: if unshare dies (a test timing out kills it), the namespace dies with it.
UNSHARE = ["unshare", "--fork", "--kill-child", "--pid", "--mount-proc"]
needs_pid_namespace = pytest.mark.skipif(not _can_unshare(),
                                         reason="needs root and unshare --pid")

# Runs as pid 1 of a new pid namespace and starts app.py the way systemd starts a Type=notify
# service with socket activation: parent pid 1, NOTIFY_SOCKET and INVOCATION_ID set, the
# listening socket as fd 3 with LISTEN_FDS/LISTEN_PID.  Prints what it saw as JSON.
SERVICE_MANAGER = r'''
import json, os, signal, socket, sys

work, app, python = sys.argv[1], sys.argv[2], sys.executable
notify_path = os.path.join(work, "notify.sock")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
notify.settimeout(20)
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
child = os.fork()
if child == 0:
    os.dup2(listener.fileno(), 3)  # dup2 makes fd 3 inheritable
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, INVOCATION_ID="0" * 32,
               LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    err = os.open(os.path.join(work, "service.err"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(err, 2)
    os.execve(python, [python, app, "--config", os.path.join(work, "greeter.conf"),
                       "--pidfile", os.path.join(work, "greeter.pid"), "--log", "-"], env)
listener.close()
seen = {"child": child}

def receive_until(key):
    messages = []
    while True:
        message = notify.recv(4096).decode()
        messages.append(message)
        if key in message.split("\n"):
            return messages

seen["start"] = receive_until("READY=1")
seen["child_running"] = os.waitpid(child, os.WNOHANG) == (0, 0)
with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
    conn.sendall(b"Ada\n")
    seen["answer"] = conn.recv(256).decode()
os.kill(child, signal.SIGHUP)
seen["reload"] = receive_until("READY=1")
os.kill(child, signal.SIGTERM)
seen["stop"] = receive_until("STOPPING=1")
_, status = os.waitpid(child, 0)
seen["exit_status"] = os.waitstatus_to_exitcode(status)
print(json.dumps(seen))
'''


@needs_pid_namespace
def test_tutorial_app_under_a_service_manager_stays_in_foreground_and_notifies(
        tmp_path: Path) -> None:
    (tmp_path / "greeter.conf").write_text("Hello\n")
    manager = tmp_path / "manager.py"
    manager.write_text(SERVICE_MANAGER)
    result = subprocess.run(
        [*UNSHARE, PYTHON, str(manager), str(tmp_path), str(APP)],
        capture_output=True, text=True, env=ENV, timeout=60, check=False)
    # When the namespace's pid 1 exits, the kernel kills whatever was left in it.
    service_err = tmp_path / "service.err"
    assert result.returncode == 0, result.stderr + (
        service_err.read_text() if service_err.exists() else "")
    seen = json.loads(result.stdout)
    assert seen["child_running"]  # did not fork away: the manager's child is the service
    assert f"MAINPID={seen['child']}" in seen["start"][-1].split("\n")
    assert seen["answer"] == "Hello, Ada!\n"  # served on the socket passed as fd 3
    assert seen["reload"][0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert seen["reload"][-1] == "READY=1"
    assert seen["stop"] == ["STOPPING=1"]
    assert seen["exit_status"] == 0


@needs_pid_namespace
def test_tutorial_app_as_pid_1_forwards_sigterm_and_exits_zero(
        tmp_path: Path, spawned: list[int]) -> None:
    (tmp_path / "greeter.conf").write_text("Hello\n")
    err = tmp_path / "container.err"
    with err.open("w") as stderr:
        unshare = subprocess.Popen(
            [*UNSHARE, PYTHON, str(APP), "--config", str(tmp_path / "greeter.conf"),
             "--port", "0", "--log", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
    spawned.append(unshare.pid)
    port = listening_port(err)
    assert ask(port, "Ada") == "Hello, Ada!\n"
    assert "[2] INFO listening on" in err.read_text()  # the service runs as pid 2
    (init,) = children_of(unshare.pid)  # the namespace's pid 1, seen from the host
    assert len(children_of(init)) == 1
    os.kill(init, signal.SIGTERM)
    assert unshare.wait(timeout=30) == 0
    assert err.read_text().splitlines()[-1].endswith("INFO stopping")


# --- the documentation itself -----------------------------------------------------------------


def test_diagrams_in_docs_static_are_what_diagrams_py_draws() -> None:
    check = subprocess.run([PYTHON, str(DOCS / "diagrams.py"), "--check"], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_docs_pages_show_the_process_tree_and_handshake_diagrams(built_docs: Path) -> None:
    pages = {
        "explanation/detach-sequence.html": ["tree-0-start.svg", "tree-1-first-fork.svg",
                                             "tree-2-setsid.svg", "tree-3-second-fork.svg",
                                             "tree-4-ready.svg"],
        "explanation/startup-handshake.html": ["handshake.svg"],
    }
    for page, pictures in pages.items():
        html = (built_docs / page).read_text(encoding="utf-8")
        for picture in pictures:
            img = re.search(rf'<img[^>]+src="[^"]*{re.escape(picture)}"', html)
            assert img is not None, f"{page} does not show {picture}"
            svg = (built_docs / "_images" / picture).read_text(encoding="utf-8")
            assert svg.startswith("<svg")


def test_docs_reference_documents_every_public_name(built_docs: Path) -> None:
    import importlib

    import daemonctx

    html = "".join(page.read_text(encoding="utf-8")
                   for page in (built_docs / "reference").glob("*.html"))
    missing = [f"daemonctx.{name}" for name in daemonctx.__all__
               if f'id="daemonctx.{name}"' not in html]
    names = ("context", "handshake", "pidfile", "supervisor", "systemd", "runner", "control",
             "status", "cli", "steps", "signals", "errors", "launcher")
    modules = {name: importlib.import_module(f"daemonctx.{name}") for name in names}
    for module_name, module in modules.items():
        for name in module.__all__:
            obj = getattr(module, name, None)
            # a name re-exported from where it moved is documented where it is defined
            homes = [other for other, m in modules.items()
                     if obj is not None and getattr(m, name, None) is obj]
            ids = [f"daemonctx.{module_name}.{name}", f"daemonctx.{name}",
                   *(f"daemonctx.{home}.{name}" for home in homes)]
            if not any(f'id="{id_}"' in html for id_ in ids):
                missing.append(f"daemonctx.{module_name}.{name}")
    assert not missing, f"not in the reference: {missing}"


def _documented_names() -> list[tuple[str, str]]:
    """(page, dotted name) for every name docs/reference/ documents, as the page writes it.

    From the autodoc directives (``.. autoclass:: daemonctx.PIDFile``) and the ``:members:``
    lists of ``.. automodule::`` (``daemonctx.pidfile`` + ``holder_pid``).
    """
    found: list[tuple[str, str]] = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        module = None
        for line in page.read_text(encoding="utf-8").splitlines():
            directive = re.match(r"\.\. (auto\w+|py:\w+):: ([\w.]+)", line.strip())
            if directive is not None:
                kind, name = directive.groups()
                module = name if kind == "automodule" else None
                if kind.startswith("auto"):
                    found.append((page.name, name))
                continue
            members = re.match(r":members:(.*)", line.strip())
            if members is not None and module is not None:
                module_members = [m.strip() for m in members.group(1).split(",") if m.strip()]
                found.extend((page.name, f"{module}.{member}") for member in module_members)
            elif module is not None and line.startswith("             "):  # continued list
                found.extend((page.name, f"{module}.{m.strip()}") for m in line.split(",")
                             if m.strip())
    return found


def test_every_name_the_reference_documents_imports_from_where_the_page_says() -> None:
    """Issue 15: the restructuring must not move a documented name out of its documented home."""
    import importlib

    names = _documented_names()
    assert len(names) > 40, names
    missing = []
    for page, dotted in names:
        parts = dotted.split(".")
        for split in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attribute in parts[split:]:
                    obj = getattr(obj, attribute)
            except AttributeError:
                missing.append(f"{page}: {dotted}")
            break
        else:
            missing.append(f"{page}: {dotted} (no module)")
    assert not missing, missing


def test_dir_of_the_package_lists_only_public_names() -> None:
    """Issue 16: dir(daemonctx) showed TYPE_CHECKING and annotations, the internals of the lazy
    imports; help() and completion in a REPL should show what a user may use."""
    import daemonctx

    shown = set(dir(daemonctx))
    assert set(daemonctx.__all__) <= shown
    extra = {name for name in shown - set(daemonctx.__all__)
             if getattr(getattr(daemonctx, name), "__name__", "") != f"daemonctx.{name}"}
    assert extra == {"__version__"}, extra  # beside __all__: the version and submodules only
    assert not {"TYPE_CHECKING", "annotations", "Any"} & shown
