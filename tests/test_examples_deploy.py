"""The deployment recipes in examples/, checked: systemd unit files, the image, Kubernetes.

* Every unit file passes ``systemd-analyze verify``, run against a root directory laid out as
  the docs install things: the units in /etc/systemd/system, the programs they run in place.
* Every program does what its unit promises, started as the unit starts it: the unit's own
  ``ExecStart=`` (and ``ExecReload=``/``ExecStop=``) command line, with the paths below /opt,
  /etc, /run and /var mapped into a temporary *machine* that the tutorial's install commands
  set up (a virtual environment with daemonctx installed from a copy of this checkout).  The
  service manager is played by tests/subreaper.py named ``systemd``: the program's parent, it
  reaps every process of the service and exits only once none is left.  The notification socket
  is one the test binds, so it sees READY=1, RELOADING=1, WATCHDOG=1 and STOPPING=1 and the pid
  that sent each, which systemd checks too (``NotifyAccess=main``).
* The Kubernetes manifest runs the image's command, and its probes are programs of the image.
  The image's build stage is run from examples/tutorial/Dockerfile itself, on the build context
  the .dockerignore leaves.  The pod is emulated with unshare (new pid, mount and network
  namespaces, the manifest's uid): the command is pid 1, the probes run inside with nsenter as
  the kubelet's exec probes do, and SIGTERM to pid 1 stops it with status 0 well within
  ``terminationGracePeriodSeconds``.

What cannot run here is named where it is left out: ``User=`` (the services run as the test's
user), the units' fixed port (each test uses a free one), ``docker build`` itself, and the
pod's uid where this host's interpreter is out of that uid's reach (pyenv under /root).
"""

from __future__ import annotations

import itertools
import json
import os
import posixpath
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    DEFAULT_TIMEOUT,
    PYTHON,
    REPO,
    Subreaper,
    WaitTimeoutError,
    children_of,
    let_others_traverse,
    pid_exists,
    proc_status,
    wait_file_text,
    wait_for,
)

EXAMPLES = REPO / "examples"
UNIT_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in {".service", ".socket"})
DOCKERFILE = EXAMPLES / "tutorial" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MANIFEST = EXAMPLES / "kubernetes" / "greeter-deployment.yaml"
SYSTEMD_PAGE = REPO / "docs" / "tutorial" / "systemd.md"
# The longest the greeter may take to stop on SIGTERM; the manifest's grace period must exceed it.
STOP_BOUND = 5.0
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
# Absolute paths of the machine's own state: mapped into the test's machine.  /bin, /usr... are
# this host's.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?=(?:opt|etc|run|var|src)(?:/|\s|$))")


# --- unit files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitFile:
    """A unit file's settings: ``(section, key)`` to the values, in file order."""

    path: Path
    settings: dict[tuple[str, str], list[str]]

    def get(self, section: str, key: str) -> str | None:
        values = self.settings.get((section, key))
        return values[-1] if values else None

    def command(self, key: str) -> list[str]:
        """An ``Exec*=`` command line, split as systemd splits it (shell-like quoting)."""
        value = self.get("Service", key)
        assert value is not None, f"{self.path.name} has no {key}="
        return shlex.split(value)

    def commands(self) -> list[list[str]]:
        return [shlex.split(value) for (section, key), values in self.settings.items()
                if section == "Service" and key.startswith("Exec") for value in values]


def read_unit(path: Path) -> UnitFile:
    """Parse a unit file: sections, ``key=value``, comments, lines continued with a backslash."""
    settings: dict[tuple[str, str], list[str]] = {}
    section, pending = "", ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "  # systemd replaces the backslash with a space
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return UnitFile(path, settings)


def example_unit(name: str) -> UnitFile:
    (path,) = [p for p in UNIT_FILES if p.name == name]
    return read_unit(path)


def systemd_version() -> int | None:
    if shutil.which("systemd-analyze") is None:
        return None
    first = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True,
                           timeout=30, check=False).stdout.split()
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else None


# --- the machine the docs set up ----------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """A directory standing for a machine's /: /opt, /etc, /run and /var live below ``root``."""

    root: Path

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def map(self, text: str) -> str:
        return MACHINE_PATH.sub(f"{self.root}/", text)

    def command(self, argv: list[str]) -> list[str]:
        return [self.map(arg) for arg in argv]

    def fresh_directories(self, unit: UnitFile) -> None:
        """What ``RuntimeDirectory=``/``LogsDirectory=``/``CacheDirectory=`` do at each start."""
        for key, base in (("RuntimeDirectory", "/run"), ("LogsDirectory", "/var/log"),
                          ("CacheDirectory", "/var/cache"), ("StateDirectory", "/var/lib")):
            for name in (unit.get("Service", key) or "").split():
                directory = self.path(f"{base}/{name}")
                shutil.rmtree(directory, ignore_errors=True)
                directory.mkdir(parents=True)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str], str]]:
    """The .dockerignore patterns as ``(re-included, regex, pattern)``, in order."""
    rules = []
    for line in text.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        included = pattern.startswith("!")
        pattern = posixpath.normpath(pattern.removeprefix("!").strip()).lstrip("/")
        assert not set(pattern) & set("[]\\"), f"no matcher here for {pattern!r}"
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((included, re.compile(regex + r"\Z"), pattern))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for included, regex, _ in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not included
    return ignored


def copy_build_context(destination: Path) -> list[str]:
    """Copy what ``docker build`` sends from this checkout (after .dockerignore); list it."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    kept: list[str] = []
    for directory, subdirs, files in os.walk(REPO):
        here = Path(directory).relative_to(REPO).as_posix()
        prefix = "" if here == "." else f"{here}/"
        # Walk into an ignored directory only if a pattern may bring back something below it.
        subdirs[:] = [d for d in subdirs if not is_ignored(prefix + d, rules) or any(
            included and pattern.startswith(f"{prefix}{d}/") for included, _, pattern in rules)]
        for name in files:
            if not is_ignored(prefix + name, rules):
                target = destination / prefix / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory) / name, target)
                kept.append(prefix + name)
    return kept


def run_shell(machine: Machine, line: str, cwd: Path, tools: Path) -> None:
    """Run one install command on the machine: paths mapped, ``python3``/``python`` ours."""
    env = {"PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(cwd),
           "LANG": "C.UTF-8"}
    done = subprocess.run(["sh", "-ec", machine.map(line)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"


def python_tools(directory: Path) -> Path:
    """A directory with ``python3`` and ``python``: this interpreter, as the docs' commands say."""
    directory.mkdir()
    for name in ("python3", "python"):
        (directory / name).symlink_to(PYTHON)
    return directory


# Commands of the tutorial's systemd page that this test runs, by how they begin; and those it
# cannot run here (package manager, users, the real /etc/systemd, a running systemd).
RUN_HERE = ("python3 -m venv ", "/opt/greeter/venv/bin/pip install ", "install ", "echo ")
NOT_HERE = ("apt ", "useradd ", "cp ", "systemd-analyze ", "systemctl ", "journalctl ")


def tutorial_root_commands() -> list[str]:
    """The ``# command`` lines (root's prompt) of the console blocks of docs/tutorial/systemd.md."""
    blocks = re.findall(r"```console\n(.*?)```", SYSTEMD_PAGE.read_text(), re.S)
    return [line[2:].strip() for block in blocks for line in block.splitlines()
            if line.startswith("# ")]


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Machine:
    """A machine set up by the install commands of docs/tutorial/systemd.md, run in order from
    a copy of the checkout; plus /opt/cleaner (sharing the greeter's virtual environment)."""
    base = tmp_path_factory.mktemp("machine")
    machine = Machine(base / "root")
    (machine.path("/etc")).mkdir(parents=True)
    checkout = base / "checkout"
    copy_build_context(checkout)
    tools = python_tools(base / "tools")
    ran = []
    for line in tutorial_root_commands():
        if line.startswith(RUN_HERE):
            run_shell(machine, line, checkout, tools)
            ran.append(line)
        else:
            assert line.startswith(NOT_HERE), f"unknown command in {SYSTEMD_PAGE.name}: {line}"
    assert [r.split()[0] for r in ran[:2]] == ["python3", "/opt/greeter/venv/bin/pip"], ran
    cleaner = machine.path("/opt/cleaner")
    cleaner.mkdir()
    (cleaner / "venv").symlink_to(machine.path("/opt/greeter/venv"))
    shutil.copy2(EXAMPLES / "systemd" / "cleaner.py", cleaner / "cleaner.py")
    return machine


@dataclass(frozen=True)
class Image:
    """The file system of the image examples/tutorial/Dockerfile builds, below ``machine``."""

    machine: Machine
    context: list[str]
    entrypoint: list[str]
    cmd: list[str]
    user: str
    final_stage: str


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of ``(INSTRUCTION, argument)``."""
    text = re.sub(r"\\\n", "", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, argument = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), argument.strip()))
    return stages


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The image, as far as it can be made without Docker: the build stage's RUN commands are
    run from the Dockerfile (``COPY . /src`` is the .dockerignore'd context); the final stage,
    which adds a user to the system, is done by hand and its text kept for the tests to check."""
    base = tmp_path_factory.mktemp("image")
    machine = Machine(base / "root")
    machine.root.mkdir()
    tools = python_tools(base / "tools")
    build, final = dockerfile_stages(DOCKERFILE)
    context: list[str] = []
    for keyword, argument in build[1:]:
        if keyword == "RUN":
            run_shell(machine, argument, machine.root, tools)
        elif keyword == "COPY":
            assert argument == ". /src", argument
            context = copy_build_context(machine.path("/src"))
        else:
            raise AssertionError(f"build stage: no emulation for {keyword} {argument}")
    instructions = dict(final)
    assert instructions["COPY"] == "--from=build /opt/greeter /opt/greeter"
    greeting = re.search(r'echo "([^"]+)" > /etc/greeter/greeter.conf', instructions["RUN"])
    assert greeting is not None, instructions["RUN"]
    config = machine.path("/etc/greeter/greeter.conf")
    config.parent.mkdir(parents=True)
    config.write_text(greeting.group(1) + "\n")
    uid, _, gid = instructions["USER"].partition(":")
    run_dir = machine.path("/run/greeter")
    run_dir.mkdir(parents=True)
    os.chown(run_dir, int(uid), int(gid or uid))
    let_others_traverse(machine.root)
    return Image(machine, context, json.loads(instructions["ENTRYPOINT"]),
                 json.loads(instructions["CMD"]), instructions["USER"], instructions["RUN"])


# --- a stand-in for systemd ---------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One datagram received on the notification socket, with the pid that sent it."""

    pid: int
    at: float
    fields: dict[str, str]


class NotifySocket:
    """The service manager's end of ``$NOTIFY_SOCKET``: an abstract datagram socket.

    ``SO_PASSCRED`` makes the kernel attach the sender's pid to each message, as systemd reads
    it to accept only the main process's notifications.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = f"daemonctx-deploy-test-{os.getpid()}-{time.monotonic_ns()}"
        self.sock.bind(b"\0" + name.encode())
        self.address = "@" + name

    def receive(self, timeout: float = DEFAULT_TIMEOUT) -> Notification:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            raise WaitTimeoutError(f"no notification within {timeout} s")
        credentials = struct.calcsize("3i")
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(credentials))
        (pid,) = [struct.unpack("3i", item[:credentials])[0]
                  for level, kind, item in ancillary
                  if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        return Notification(pid, time.monotonic(), fields)

    def until(self, key: str, timeout: float = DEFAULT_TIMEOUT) -> list[Notification]:
        """Every message up to and including the first that sets ``key``."""
        received = []
        deadline = time.monotonic() + timeout
        while not received or key not in received[-1].fields:
            received.append(self.receive(max(0.0, deadline - time.monotonic())))
        return received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def manager_env(notify: NotifySocket | None = None) -> dict[str, str]:
    """The environment systemd gives a service (no variable of the test's own run leaks in)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "INVOCATION_ID": uuid.uuid4().hex, "SUBREAPER_COMM": "systemd"}
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.address
    return env


def journal_wrapped(journal: Path, argv: list[str], watchdog_pid: bool = False) -> list[str]:
    """``argv`` with stdout and stderr appended to ``journal``; the same process (``exec``)."""
    script = 'exec "$@" >>"$0" 2>&1'
    if watchdog_pid:  # systemd sets WATCHDOG_PID to the main pid, known only once forked
        script = f"WATCHDOG_PID=$$ {script}"
    return ["sh", "-c", script, str(journal), *argv]


def main_pid(manager: Subreaper) -> int:
    """The service's main process: the stand-in manager's one child."""
    children = wait_for(lambda: children_of(manager.process.pid), what="the main process")
    assert isinstance(children, list) and len(children) == 1, children
    return int(children[0])


def stop_as_systemd_does(manager: Subreaper, pid: int, notify: NotifySocket) -> None:
    """SIGTERM (``KillSignal=``): STOPPING=1 from the main pid, exit 0, nothing left behind."""
    os.kill(pid, signal.SIGTERM)
    (stopping,) = notify.until("STOPPING")
    assert (stopping.pid, stopping.fields) == (pid, {"STOPPING": "1"})
    assert manager.wait_status(pid) == ("exit", 0)
    assert manager.wait_exit() == 0  # no process of the service outlived it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(port: int, name: str) -> str:
    """The greeter's protocol: send a name, read the one-line answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"{name}\n".encode())
        return conn.makefile("rb").readline().decode()


def logged_port(log: Path) -> int:
    text = wait_file_text(log, predicate=lambda t: LISTENING.search(t) is not None)
    match = LISTENING.search(text)
    assert match is not None
    return int(match.group(2))


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# --- every unit file: systemd-analyze verify ------------------------------------------------

ANALYZE_VERSION = systemd_version()
needs_systemd_analyze = pytest.mark.skipif(
    ANALYZE_VERSION is None,
    reason="systemd-analyze is not installed (Debian: apt install systemd)")
# A systemd older than the unit: the one line it prints about a setting it does not know yet.
NEWER_THAN = {"notify-reload": (253, re.compile(r".*Failed to parse service type, ignoring: "
                                                 r"notify-reload"))}


def system_unit_directory() -> Path | None:
    for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(candidate, "multi-user.target").exists():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for ``systemd-analyze verify --root``: the system's own units (targets the
    examples depend on), the examples in /etc/systemd/system, and every program they run.

    verify checks that each ``Exec*=`` program exists below the root.  The /opt ones are what the
    tutorial's install creates (test_units_run_the_programs_the_docs_install checks that on the
    tutorial's machine); the others are this host's (checked there too).  Here they are
    placeholders, because the real virtual environment's interpreter is a symlink out of the
    root, which verify resolves inside it.
    """
    units = system_unit_directory()
    if units is None:
        pytest.skip("no systemd unit directory (/usr/lib/systemd/system) on this host")
    root = tmp_path_factory.mktemp("verify-root")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    assert len({p.name for p in UNIT_FILES}) == len(UNIT_FILES), "unit names must be unique"
    for unit in UNIT_FILES:
        shutil.copy2(unit, installed / unit.name)
        for argv in read_unit(unit).commands():
            program = root / argv[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    return root


def test_examples_ship_the_documented_unit_files() -> None:
    found = {(read_unit(p).get("Service", "Type"), p.suffix) for p in UNIT_FILES}
    assert {("notify", ".service"), ("notify-reload", ".service"), ("forking", ".service"),
            (None, ".socket")} <= found
    assert any(read_unit(p).get("Service", "WatchdogSec") for p in UNIT_FILES)


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNIT_FILES, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit: Path, verify_root: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", f"--root={verify_root}", unit.name],
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
                            timeout=60, check=False)
    # Unknown keys and values are only warnings to verify: any output at all is a failure.
    lines = (result.stdout + result.stderr).splitlines()
    service_type = read_unit(unit).get("Service", "Type") or ""
    if service_type in NEWER_THAN and ANALYZE_VERSION is not None:
        since, known_complaint = NEWER_THAN[service_type]
        if since > ANALYZE_VERSION:  # e.g. Debian 12's systemd 252 for Type=notify-reload
            lines = [line for line in lines if not known_complaint.fullmatch(line)]
    assert result.returncode == 0 and not lines, "\n".join(lines)


def test_units_run_the_programs_the_docs_install(machine: Machine) -> None:
    for unit in UNIT_FILES:
        for argv in read_unit(unit).commands():
            program = argv[0]
            if program.startswith("/opt/"):
                # A virtual environment's interpreter or entry point, never the system Python.
                assert re.fullmatch(r"/opt/[\w-]+/venv/bin/(python|daemonctx)", program), program
                assert os.access(machine.path(program), os.X_OK), f"{unit.name}: {program}"
                if program.endswith("/python"):
                    assert machine.path(argv[1]).is_file(), f"{unit.name}: {argv[1]}"
            else:
                assert os.access(program, os.X_OK), f"{unit.name}: {program} not on this host"
            assert not any("/usr/bin/python" in arg for arg in argv), f"{unit.name}: {argv}"


def test_tutorial_install_gives_the_units_interpreter_daemonctx(machine: Machine) -> None:
    python = machine.path("/opt/greeter/venv/bin/python")
    found = subprocess.run([python, "-c", "import daemonctx.systemd; print(daemonctx.__file__)"],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                           cwd="/", timeout=60, check=False)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(machine.root)  # installed, not the checkout
    version = subprocess.run([machine.path("/opt/greeter/venv/bin/daemonctx"), "--version"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0, version.stderr


def test_installed_package_holds_every_module_of_the_checkout(machine: Machine) -> None:
    (site,) = machine.path("/opt/greeter/venv/lib").glob("python3*/site-packages")
    checkout = {p.relative_to(REPO).as_posix() for p in (REPO / "daemonctx").rglob("*.py")}
    installed = {p.relative_to(site).as_posix() for p in (site / "daemonctx").rglob("*.py")}
    assert checkout - installed == set()


# --- the programs do what their units promise -------------------------------------------------


def test_socket_activated_greeter_starts_on_first_connection_and_serves_it(
        machine: Machine, notify_socket: NotifySocket, tmp_path: Path,
        spawned: list[int]) -> None:
    service, sockets = example_unit("greeter.service"), example_unit("greeter.socket")
    machine.fresh_directories(service)
    host, _, _ = (sockets.get("Socket", "ListenStream") or "").rpartition(":")
    port = free_port()  # instead of the unit's fixed 8470
    journal = tmp_path / "journal"
    env = manager_env(notify_socket)
    activate = ["systemd-socket-activate", "-l", f"{host}:{port}",
                f"--fdname={sockets.get('Socket', 'FileDescriptorName')}",
                # systemd-socket-activate passes on only the variables it is told to
                "-E", f"NOTIFY_SOCKET={env['NOTIFY_SOCKET']}",
                "-E", f"INVOCATION_ID={env['INVOCATION_ID']}",
                *machine.command(service.command("ExecStart"))]
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate is not installed (Debian: apt install systemd)")
    manager = Subreaper(tmp_path, journal_wrapped(journal, activate), spawned, env=env)
    wait_file_text(journal, predicate=lambda t: f"Listening on {host}:{port}" in t)
    assert ask(port, "Ada") == "Hello, Ada!\n"  # this connection made it start
    pid = main_pid(manager)
    (ready,) = notify_socket.until("READY")
    assert ready.pid == pid and ready.fields["MAINPID"] == str(pid)  # no fork: pid systemd knows
    assert f"listening on {host}:{port}" in journal.read_text()  # the socket passed as fd 3
    reload = [arg.replace("$MAINPID", str(pid)) for arg in service.command("ExecReload")]
    assert subprocess.run(reload, timeout=30, check=False).returncode == 0
    reloading, *_, ready_again = notify_socket.until("READY")
    assert reloading.fields["RELOADING"] == "1" and ready_again.pid == pid
    stop_as_systemd_does(manager, pid, notify_socket)
    assert not machine.path("/run/greeter/greeter.pid").exists()


def test_notify_reload_greeter_reports_reloading_then_ready_on_sighup(
        machine: Machine, notify_socket: NotifySocket, tmp_path: Path,
        spawned: list[int]) -> None:
    unit = example_unit("greeter-notify-reload.service")
    assert unit.get("Service", "ExecReload") is None  # systemd sends ReloadSignal= (SIGHUP)
    machine.fresh_directories(unit)
    config = machine.path("/etc/greeter.conf")
    config.write_text("Hello\n")
    journal = tmp_path / "journal"
    command = [*machine.command(unit.command("ExecStart")), "--port", "0"]
    manager = Subreaper(tmp_path, journal_wrapped(journal, command), spawned,
                        env=manager_env(notify_socket))
    pid = main_pid(manager)
    (ready,) = notify_socket.until("READY")
    assert ready.pid == pid and ready.fields["MAINPID"] == str(pid)
    port = logged_port(journal)
    assert ask(port, "Ada") == "Hello, Ada!\n"
    config.write_text("Bonjour\n")
    signalled_at = monotonic_usec()
    os.kill(pid, signal.SIGHUP)
    reloading, *_, ready_again = notify_socket.until("READY")
    # systemd accepts the reload only with a MONOTONIC_USEC taken after it sent the signal
    assert reloading.pid == pid and reloading.fields["RELOADING"] == "1"
    assert int(reloading.fields["MONOTONIC_USEC"]) >= signalled_at
    assert ready_again.pid == pid
    assert ask(port, "Ada") == "Bonjour, Ada!\n"  # the reload was complete at READY=1
    stop_as_systemd_does(manager, pid, notify_socket)
    config.write_text("Hello\n")


def test_watchdog_cleaner_pings_at_half_the_timeout_from_its_working_loop(
        machine: Machine, notify_socket: NotifySocket, tmp_path: Path,
        spawned: list[int]) -> None:
    unit = example_unit("cleaner.service")
    assert unit.get("Service", "WatchdogSec") == "30"
    timeout = 1.0  # as if WatchdogSec=1: the same protocol, quicker
    machine.fresh_directories(unit)
    cache = machine.path("/var/cache/cleaner")
    expired, fresh = cache / "expired", cache / "fresh"
    expired.write_text("old")
    fresh.write_text("new")
    two_days_ago = time.time() - 2 * 86400
    os.utime(expired, (two_days_ago, two_days_ago))
    env = manager_env(notify_socket) | {"WATCHDOG_USEC": str(int(timeout * 1_000_000))}
    command = machine.command(unit.command("ExecStart"))
    manager = Subreaper(tmp_path, journal_wrapped(tmp_path / "journal", command,
                                                  watchdog_pid=True), spawned, env=env)
    pid = main_pid(manager)
    notify_socket.until("READY")
    pings = [notify_socket.until("WATCHDOG")[-1] for _ in range(5)]
    assert {p.pid for p in pings} == {pid} and {p.fields["WATCHDOG"] for p in pings} == {"1"}
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(pings)]
    # About half the timeout: never late enough to trip it, not a busy loop either.
    assert all(0.3 * timeout < gap < timeout for gap in gaps), gaps
    assert not expired.exists() and fresh.exists()  # the loop that pings does the work
    stop_as_systemd_does(manager, pid, notify_socket)


def test_daemonctx_command_under_type_forking_leaves_main_pid_in_pidfile(
        machine: Machine, tmp_path: Path, spawned: list[int]) -> None:
    unit = example_unit("greeter-forking.service")
    machine.fresh_directories(unit)
    config = machine.path("/etc/greeter.conf")
    config.write_text("Hello\n")
    env = manager_env()  # Type=forking: no NOTIFY_SOCKET from systemd
    start = [*machine.command(unit.command("ExecStart")), "--port", "0"]
    manager = Subreaper(tmp_path, journal_wrapped(tmp_path / "journal", start), spawned, env=env)
    launcher = main_pid(manager)
    # systemd waits for ExecStart= to exit 0, then reads PIDFile=
    assert manager.wait_status(launcher, timeout=40) == ("exit", 0), (
        (tmp_path / "journal").read_text())
    pidfile = machine.path(unit.get("Service", "PIDFile") or "")
    pid = int(pidfile.read_text())
    assert holder_pid(pidfile) == pid and pid != launcher and pid_exists(pid)
    assert "app.py" in Path(f"/proc/{pid}/cmdline").read_text()  # the program, exec'd in place
    log = machine.path("/var/log/greeter/greeter.log")
    port = logged_port(log)
    assert ask(port, "Ada") == "Hello, Ada!\n"
    config.write_text("Bonjour\n")
    reload = subprocess.run(machine.command(unit.command("ExecReload")), env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert reload.returncode == 0, reload.stderr
    wait_file_text(log, predicate=lambda t: "reloaded: greeting is 'Bonjour'" in t)
    assert ask(port, "Ada") == "Bonjour, Ada!\n"
    stop = subprocess.run(machine.command(unit.command("ExecStop")), env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert stop.returncode == 0, stop.stderr
    assert manager.wait_status(pid) == ("exit", 0)
    assert manager.wait_exit() == 0  # the daemon and the notify keeper: none left
    assert not pidfile.exists()
    config.write_text("Hello\n")


# --- the image and Kubernetes ---------------------------------------------------------------


def deployment() -> Any:
    """The Deployment of examples/kubernetes/, as YAML loads it."""
    yaml = pytest.importorskip("yaml")
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (found,) = [d for d in documents if d["kind"] == "Deployment"]
    return found


def pod_spec() -> Any:
    return deployment()["spec"]["template"]["spec"]


def test_build_context_holds_what_the_image_needs_and_nothing_else(image: Image) -> None:
    assert "examples/tutorial/app.py" in image.context
    assert {"setup.cfg", "pyproject.toml", "README.md", "daemonctx/__init__.py",
            "daemonctx/systemd.py"} <= set(image.context)
    top = {path.split("/")[0] for path in image.context}
    assert top <= {"daemonctx", "examples", "setup.cfg", "pyproject.toml", "README.md",
                   "LICENSE"}, top
    assert not [p for p in image.context if "__pycache__" in p or p.endswith(".pyc")]


def test_image_runs_app_py_with_the_virtual_environments_python(image: Image) -> None:
    assert image.entrypoint == ["/opt/greeter/venv/bin/python", "/opt/greeter/app.py"]
    assert image.machine.path("/opt/greeter/app.py").read_bytes() == (
        EXAMPLES / "tutorial" / "app.py").read_bytes()
    assert "--pidfile" in image.cmd and "--log" in image.cmd
    assert "useradd --system --uid 10001" in image.final_stage
    assert "-o greeter -g greeter /run/greeter" in image.final_stage


def test_deployment_runs_the_image_command_as_its_non_root_user(image: Image) -> None:
    deploy = deployment()
    assert (deploy["apiVersion"], deploy["kind"]) == ("apps/v1", "Deployment")
    spec = deploy["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = pod_spec()
    (container,) = pod["containers"]
    assert container["command"] == image.entrypoint and container["args"] == image.cmd
    uid, _, gid = image.user.partition(":")
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == int(uid) != 0
    assert context["runAsGroup"] == int(gid)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pidfile = container["args"][container["args"].index("--pidfile") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[posixpath.dirname(pidfile)]]  # writable for the pidfile
    assert [p["containerPort"] for p in container["ports"]] == [8470]  # app.py's default port


def test_deployment_probes_are_programs_of_the_image(image: Image) -> None:
    (container,) = pod_spec()["containers"]
    pidfile = container["args"][container["args"].index("--pidfile") + 1]
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness == ["/opt/greeter/venv/bin/daemonctx", "status", "--pidfile", pidfile]
    liveness = container["livenessProbe"]["exec"]["command"]
    for probe in (readiness, liveness):
        assert os.access(image.machine.path(probe[0]), os.X_OK), probe[0]


def test_termination_grace_period_exceeds_the_greeters_stop_time() -> None:
    pod = pod_spec()
    grace = pod["terminationGracePeriodSeconds"]
    (container,) = pod["containers"]
    assert "lifecycle" not in container  # a preStop hook would count against the grace period
    assert STOP_BOUND < grace <= 30, grace  # measured by the next test


def _can_make_a_pod() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    probe = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", "--net", "true"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def runs_as(uid: int, gid: int, python: str) -> bool:
    """True if ``python`` starts for ``uid``:``gid`` (its files are reachable for that user)."""
    try:
        result = subprocess.run([python, "-c", "pass"], user=uid, group=gid, extra_groups=[],
                                capture_output=True, cwd="/", timeout=60, check=False)
    except PermissionError:
        return False
    return result.returncode == 0


# What a container runtime does before it runs the container's command: bring the loopback
# interface of the new network namespace up, take the pod's uid and gid, exec the command (which
# keeps this process's pid: 1).
POD_RUNTIME = r"""
import fcntl, os, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
os.execv(sys.argv[3], sys.argv[3:])
"""
CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "HOSTNAME": "greeter-7d9c5b6f4-x2x7q", "LANG": "C.UTF-8"}


needs_pod = pytest.mark.skipif(not _can_make_a_pod(), reason="needs root, unshare and nsenter")


@dataclass
class Pod:
    """The Deployment's container, running: its pid 1 and service as the host sees them."""

    container: Any
    unshare: subprocess.Popen[bytes]
    init: int
    service: int
    uid: str
    gid: str
    log: Path

    def exec(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """As the kubelet runs an exec probe: in the pod's namespaces, as the pod's user."""
        return subprocess.run(["nsenter", "--target", str(self.init), "--pid", "--mount",
                               "--net", "--setuid", self.uid, "--setgid", self.gid, *argv],
                              capture_output=True, text=True, env=CONTAINER_ENV, cwd="/",
                              timeout=60, check=False)

    def pidfile(self) -> str:
        args = self.container["args"]
        return str(args[args.index("--pidfile") + 1])


@pytest.fixture
def pod(image: Image, tmp_path: Path, spawned: list[int]) -> Pod:
    """The container's command started as a container runtime would: pid 1 of new pid, mount
    and network namespaces, as the pod's uid and gid, with the image's environment."""
    spec = pod_spec()
    (container,) = spec["containers"]
    uid, gid = str(spec["securityContext"]["runAsUser"]), str(spec["securityContext"]["runAsGroup"])
    command = image.machine.command([*container["command"], *container["args"]])
    if not runs_as(int(uid), int(gid), command[0]):
        # This host's interpreter lives where that uid cannot reach (e.g. pyenv under /root);
        # in an image it is the image's own.  Everything but the uid is still checked.
        uid = gid = "0"
    log = tmp_path / "container.log"
    with log.open("w") as output:
        unshare = subprocess.Popen(
            ["unshare", "--fork", "--kill-child", "--pid", "--mount-proc", "--net",
             PYTHON, "-c", POD_RUNTIME, uid, gid, *command],
            stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=CONTAINER_ENV, cwd="/")
    spawned.append(unshare.pid)
    wait_file_text(log, predicate=lambda t: "[2] INFO listening on 0.0.0.0:8470" in t)
    # The namespace's pid 1, seen from the host: the child of unshare.
    (init,) = children_of(unshare.pid)
    if shutil.which("pgrep"):  # as docs/tutorial/container.md finds it
        pgrep = subprocess.run(["pgrep", "-P", str(unshare.pid)], capture_output=True,
                               text=True, timeout=30, check=False)
        assert pgrep.stdout.split() == [str(init)]
    (service,) = children_of(init)
    return Pod(container, unshare, init, service, uid, gid, log)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None


@needs_pod
def test_pod_command_is_pid_1_with_the_service_as_its_one_child(pod: Pod) -> None:
    assert proc_status(pod.init)["NSpid"].split()[-1] == "1"
    assert proc_status(pod.service)["NSpid"].split()[-1] == "2"
    assert proc_status(pod.service)["Uid"].split()[0] == pod.uid


@needs_pod
def test_pod_probes_pass_inside_the_running_container(pod: Pod, image: Image) -> None:
    for probe in ("readinessProbe", "livenessProbe"):
        result = pod.exec(image.machine.command(pod.container[probe]["exec"]["command"]))
        assert result.returncode == 0, f"{probe}: {result.stdout}{result.stderr}"


@needs_pod
def test_pod_pid_1_reaps_what_a_probe_leaves_behind(pod: Pod) -> None:
    left = pod.exec(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
    assert left.returncode == 0, left.stderr

    def orphan() -> int | None:  # re-parented to the namespace's pid 1 when sh exited
        return next((c for c in children_of(pod.init) if _comm(c) == "sleep"), None)

    sleeper = wait_for(orphan, what="the probe's orphan to be adopted by pid 1")
    assert isinstance(sleeper, int)
    os.kill(sleeper, signal.SIGKILL)
    wait_for(lambda: sleeper not in children_of(pod.init), what="pid 1 to reap the orphan")
    assert children_of(pod.init) == [pod.service]


@needs_pod
def test_pod_sigterm_to_pid_1_stops_it_with_status_0_within_the_grace_period(
        pod: Pod, image: Image) -> None:
    # Pod deletion: SIGTERM to pid 1 (there is no preStop hook), SIGKILL after the grace period.
    started = time.monotonic()
    os.kill(pod.init, signal.SIGTERM)
    assert pod.unshare.wait(timeout=pod_spec()["terminationGracePeriodSeconds"]) == 0
    assert time.monotonic() - started < STOP_BOUND
    assert pod.log.read_text().splitlines()[-1].endswith("INFO stopping")
    assert not image.machine.path(pod.pidfile()).exists()
    readiness = image.machine.command(pod.container["readinessProbe"]["exec"]["command"])
    after = subprocess.run(readiness, capture_output=True, text=True, timeout=60, check=False)
    assert after.returncode == 3, after.stdout  # LSB "not running": never ready again
