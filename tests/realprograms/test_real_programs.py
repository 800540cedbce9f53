"""Real programs written for python-daemon, run unchanged on daemonctx.

Each program is started exactly as its documentation says, with ``tests/realprograms/shim``
first on ``PYTHONPATH``: its ``import daemon`` / ``from daemon.pidfile import
TimeoutPIDLockFile`` then load daemonctx.  Everything is judged from outside, as an operator
would: the launcher's exit status and stderr, ``/proc/<pid>/stat`` (session, controlling
terminal, parent), ``/proc/locks`` (who holds the pidfile's ``flock``), ``/proc/net/tcp`` (who
listens on the port) and plain HTTP over loopback.

How each program uses python-daemon (luigi 3.8, sendria 2.2, ansible-runner 2.4):

* ``luigid --background`` (luigi/process.py ``daemonize``): ``DaemonContext(stdout=<file>,
  stderr=<file>, working_directory=".", initgroups=False)``, both files opened *before* the
  context in ``--logdir``.  No ``pidfile`` option: luigi writes ``--pidfile`` itself inside
  the context, after checking ``kill(pid, 0)`` on the pid already there ("Server already
  running"), and never removes it.  So a second start is refused by luigi, in the daemon, after
  the launcher exited 0.  Stopped with SIGTERM (its own handler saves ``--state-path``).
* ``sendria --pidfile`` (sendria/cli.py): ``DaemonContext(files_preserve=[<log file>],
  pidfile=TimeoutPIDLockFile(path, 5))``; before that it deletes a pidfile whose pid is dead.
  Stopped with ``sendria --stop --pidfile PATH`` (SIGTERM; its asyncio handler stops the loop
  and the context's exit removes the pidfile).
* ``ansible-runner start DIR`` (ansible_runner/__main__.py):
  ``DaemonContext(pidfile=TimeoutPIDLockFile(DIR/pid))`` (no wait); ``is-alive`` is
  ``kill(pid, 0)`` on that pid; ``stop`` SIGKILLs the daemon's *process group* and removes the
  pidfile.  The playbook binary (``--binary``) is a small stub here, so ansible-core is not
  needed; it lives until ansible-runner's pty closes.

``REALPROGRAMS_DAEMON=python-daemon`` runs the same scenarios on the real python-daemon (no
shim), for comparison; the few expectations that differ by design (python-daemon's launcher
exits 0 before the pidfile is even tried, and its ``TimeoutPIDLockFile`` is lockfile's
``O_EXCL`` file, not a kernel lock) are stated per implementation below.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.helpers import (
    WaitTimeoutError,
    kill_tree,
    open_fds,
    pid_exists,
    proc_stat,
    proc_status,
    read_pid_file,
    wait_for,
    wait_pid_gone,
)

pytestmark = pytest.mark.realprograms

SHIM = Path(__file__).resolve().parent / "shim"
BIN = Path(sys.executable).parent
IMPL = os.environ.get("REALPROGRAMS_DAEMON", "daemonctx")
if IMPL not in ("daemonctx", "python-daemon"):
    raise ValueError(f"REALPROGRAMS_DAEMON must be daemonctx or python-daemon, not {IMPL!r}")
ON_DAEMONCTX = IMPL == "daemonctx"
LAUNCH_TIMEOUT = 30.0  # a start that waits for a held pidfile may take its 5 s and more


# --- the program's environment -----------------------------------------------------------------


def require(module: str, script: str) -> Path:
    """The program's console script in this venv; skip the test if it is not installed."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install {module.replace('_', '-')})")
    path = BIN / script
    if not path.exists():
        pytest.skip(f"{module} is installed but its {script} script is not in {BIN}")
    if not ON_DAEMONCTX and importlib.util.find_spec("daemon") is None:
        pytest.skip("REALPROGRAMS_DAEMON=python-daemon but python-daemon is not installed")
    return path


def program_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The program's environment: the shim first on PYTHONPATH, HOME inside ``tmp_path``."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SHIM)]
    if ON_DAEMONCTX:
        paths.insert(0, str(SHIM))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               PYTHONDONTWRITEBYTECODE="1", **extra)
    for name in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)  # the daemon is not under systemd here
    return env


def assert_import_resolution(env: dict[str, str]) -> None:
    """``import daemon`` with ``env`` loads the shim (daemonctx) or the real python-daemon."""
    # python-daemon 3.1 dropped daemon.runner; the shim keeps it (daemonctx.runner)
    runner = ", daemon.runner" if ON_DAEMONCTX else ""
    code = (f"import json, daemon, daemon.daemon, daemon.pidfile{runner}; "
            "print(json.dumps({'file': daemon.__file__, "
            "'context': daemon.DaemonContext.__module__, "
            "'pidfile': daemon.pidfile.TimeoutPIDLockFile.__module__}))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    if ON_DAEMONCTX:
        assert found == {"file": str(SHIM / "daemon" / "__init__.py"),
                         "context": "daemonctx.context", "pidfile": "daemonctx.pidfile"}
    else:
        assert found["context"] == "daemon.daemon", found
        assert not found["file"].startswith(str(SHIM)), found


def assert_env_reached_daemon(pid: int) -> None:
    """The daemon runs with the environment checked by :func:`assert_import_resolution`."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pythonpath = [e for e in environ if e.startswith(b"PYTHONPATH=")]
    first = pythonpath[0][len(b"PYTHONPATH="):].split(os.pathsep.encode())[0] if pythonpath else b""
    assert (first == os.fsencode(SHIM)) is ON_DAEMONCTX, (pid, pythonpath)


# --- launching -------------------------------------------------------------------------------


@dataclass
class Launch:
    pid: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def launch(command: list[str], env: dict[str, str], cwd: Path, spawned: list[int],
           timeout: float = LAUNCH_TIMEOUT) -> Launch:
    """Run a launcher the way a shell does and wait (bounded) for it and its pipes to finish.

    ``communicate`` returns only when every holder of the stdout/stderr pipes closed them, so
    a daemon that kept the launcher's pipes open fails here (a ``$(prog --start)`` would hang).
    """
    start = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spawned.append(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(
            f"{command[0]} did not finish within {timeout} s (exit status {proc.returncode}): "
            f"the launcher hung, or the daemon kept its stdout/stderr pipe open\n"
            f"stdout: {out}\nstderr: {err}") from None
    spawned.remove(proc.pid)  # reaped: its pid may be reused, never kill it later
    return Launch(proc.pid, proc.returncode, out, err, time.monotonic() - start)


def forget_gone(spawned: list[int], pid: int) -> None:
    """Drop a pid from ``spawned`` once it is known to be gone (its pid may be reused)."""
    assert not pid_exists(pid)
    while pid in spawned:
        spawned.remove(pid)


# --- looking from outside ----------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(port: int, path: str = "/") -> tuple[int, bytes] | None:
    """``(status, body)`` of a GET on 127.0.0.1, or None if nothing answers."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return response.status, response.read()
    except OSError:
        return None


def wait_serving(port: int, path: str = "/", timeout: float = 20.0) -> bytes:
    def answered() -> bytes | None:
        result = http_get(port, path)
        if result is None or result[0] != 200:
            return None
        return result[1] or b"<empty>"
    body = wait_for(answered, timeout, f"HTTP 200 from 127.0.0.1:{port}{path}")
    assert isinstance(body, bytes)
    return body


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def wait_only(marker: str, keep: set[int], spawned: list[int], timeout: float = 20.0) -> None:
    """Wait until the processes mentioning ``marker`` are exactly ``keep``.

    Every other one seen meanwhile is added to ``spawned`` (so it is killed whatever happens)
    and forgotten once gone.
    """
    extras: set[int] = set()

    def only_kept() -> bool:
        now = set(processes_mentioning(marker))
        for pid in now - keep - extras:
            extras.add(pid)
            spawned.append(pid)
        # an exiting process shows an empty cmdline before it is a zombie: wait for that too
        return now == keep and not any(map(pid_exists, extras))

    try:
        wait_for(only_kept, timeout, f"only {sorted(keep)} to mention {marker}")
    except WaitTimeoutError:
        left = {p: cmdline(p) for p in processes_mentioning(marker)}
        raise AssertionError(f"expected only {sorted(keep)}, found {left}") from None
    for pid in extras:
        forget_gone(spawned, pid)


def processes_mentioning(text: str) -> list[int]:
    """Live processes (not us, not zombies) whose command line contains ``text``."""
    found = []
    needle = os.fsencode(text)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and pid_exists(int(name)):
            found.append(int(name))
    return sorted(found)


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    return inodes


def listeners(port: int, marker: str) -> set[int]:
    """Pids (among processes mentioning ``marker``) holding a socket listening on ``port``.

    Fails if something listens on the port that is not one of those processes.
    """
    inodes = listening_inodes(port)
    pids = set()
    seen = set()
    for pid in processes_mentioning(marker):
        try:
            targets = open_fds(pid).values()
        except FileNotFoundError:
            continue
        for target in targets:
            if target.startswith("socket:[") and target[8:-1] in inodes:
                pids.add(pid)
                seen.add(target[8:-1])
    assert seen == inodes, f"port {port} is held by a process outside the test: {inodes - seen}"
    return pids


def flock_holders(path: Path) -> list[int]:
    """Pids that /proc/locks shows holding an ``flock`` on the file at ``path`` (not waiters)."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6:
            continue
        if fields[1] == "FLOCK" and fields[5] == key:
            holders.append(int(fields[4]))
    return holders


def proc_locks_evidence(path: Path) -> str:
    try:
        st = os.stat(path)
        inode = f"inode {st.st_ino}"
    except FileNotFoundError:
        inode = "missing"
    return f"{path} ({inode}); /proc/locks:\n{Path('/proc/locks').read_text()}"


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        pid = proc_stat(pid).ppid
        chain.append(pid)
    return chain


def assert_proper_daemon(pid: int, launcher: Launch, cwd: Path | str) -> None:
    """Detached from the launcher's session and terminal, adopted by init (or a subreaper)."""
    st = proc_stat(pid)
    assert st.session != os.getsid(0), f"daemon {pid} is still in the launcher's session"
    assert st.tty_nr == 0, f"daemon {pid} has a controlling terminal ({st.tty_nr:#x})"
    assert st.ppid != launcher.pid
    assert st.ppid == 1 or st.ppid in ancestors(os.getpid()), (
        f"daemon {pid}'s parent {st.ppid} is neither init nor a subreaper above the test")
    assert st.pgrp != os.getpgrp()
    fds = open_fds(pid)
    assert fds.get(0) == "/dev/null", f"daemon {pid}'s stdin is {fds.get(0)!r}"
    assert os.readlink(f"/proc/{pid}/cwd") == str(cwd)
    assert proc_status(pid)["Umask"] == "0000"  # DaemonContext's default umask=0


def assert_pidfile_names_and_locks(pidfile: Path, pid: int) -> None:
    """The pidfile names ``pid`` and (on daemonctx) ``pid`` holds its ``flock``."""
    assert read_pid_file(pidfile, timeout=1.0) == pid
    holders = flock_holders(pidfile)
    if ON_DAEMONCTX:
        assert holders == [pid], (
            f"pidfile lock not held by the daemon {pid}: holders {holders}\n"
            f"{proc_locks_evidence(pidfile)}\nfds of {pid}: {open_fds(pid)}")
    else:
        # python-daemon's TimeoutPIDLockFile is lockfile's PIDLockFile: the file's existence
        # (created O_EXCL) is the lock, no kernel lock and no descriptor is held.
        assert holders == [], holders


def assert_nothing_left(marker: str, ports: list[int], timeout: float = 10.0) -> None:
    def clean() -> bool:
        return not processes_mentioning(marker) and not any(map(listening_inodes, ports))
    try:
        wait_for(clean, timeout, f"no process mentioning {marker}")
    except WaitTimeoutError:
        left = {p: cmdline(p) for p in processes_mentioning(marker)}
        raise AssertionError(f"left behind: {left}; listening: "
                             f"{[p for p in ports if listening_inodes(p)]}") from None


def wait_gone(pid: int, spawned: list[int], timeout: float = 15.0) -> None:
    wait_pid_gone(pid, timeout)
    forget_gone(spawned, pid)


# --- luigid --------------------------------------------------------------------------------------

LUIGI_START = re.compile(r"luigi\.server\[(\d+)\] INFO: Checking pid file")


def test_luigid_background(tmp_path: Path, spawned: list[int]) -> None:
    luigid = require("luigi", "luigid")
    env = program_env(tmp_path)
    assert_import_resolution(env)
    pidfile, logdir, state = tmp_path / "luigid.pid", tmp_path / "log", tmp_path / "state.pickle"
    marker = str(tmp_path)

    def command(port: int) -> list[str]:
        # luigi's docs: luigid --background --pidfile <PATH> --logdir <PATH> --state-path <PATH>
        return [str(luigid), "--background", "--address", "127.0.0.1", "--port", str(port),
                "--pidfile", str(pidfile), "--logdir", str(logdir), "--state-path", str(state)]

    port = free_port()
    first = launch(command(port), env, tmp_path, spawned)
    assert first.returncode == 0, first
    pid = read_pid_file(pidfile)
    spawned.append(pid)
    wait_serving(port, "/api/graph")
    assert_proper_daemon(pid, first, cwd=tmp_path)  # luigi passes working_directory="."
    assert_env_reached_daemon(pid)
    assert listeners(port, marker) == {pid}
    # stdout/stderr are the files luigi opened before the context; fd 0 is /dev/null
    fds = open_fds(pid)
    assert fds[1].startswith(str(logdir / "luigi-server-")) and fds[1].endswith(".out"), fds
    assert fds[2].startswith(str(logdir / "luigi-server-")) and fds[2].endswith(".err"), fds
    # luigi's pidfile is its own plain file (DaemonContext gets no pidfile): content only
    assert read_pid_file(pidfile) == pid

    # A second start: luigi refuses it itself, in the (second) daemon, after the launcher
    # exited 0 (the same on python-daemon).  Another port, so that a second instance that
    # wrongly started would be seen serving instead of dying on EADDRINUSE.
    port2 = free_port()
    second = launch(command(port2), env, tmp_path, spawned)
    assert second.returncode == 0, second
    log = logdir / "luigi-server.log"
    refused = wait_for(
        lambda: re.search(rf"luigi\.server\[(\d+)\] INFO: Server already running \(pid={pid}\)",
                          log.read_text()),
        15.0, "luigi's 'Server already running' line")
    pid2 = int(refused.group(1))  # type: ignore[union-attr]
    assert pid2 != pid
    spawned.append(pid2)
    wait_gone(pid2, spawned)
    assert http_get(port2) is None and not listening_inodes(port2)
    assert listeners(port, marker) == {pid}
    assert read_pid_file(pidfile) == pid
    assert http_get(port, "/api/graph") is not None

    # Stop as luigi's docs say: SIGTERM to the pid in the pidfile.  luigi's own handler
    # saves the scheduler state, so the state file shows it ran.
    os.kill(read_pid_file(pidfile), signal.SIGTERM)
    wait_gone(pid, spawned)
    assert state.exists(), "luigi's SIGTERM handler did not run (no state file saved)"
    assert_nothing_left(marker, [port, port2])
    # luigi never removes its pidfile; it is a plain file nobody locks
    assert not pidfile.exists() or flock_holders(pidfile) == []
    starts = {int(m) for m in LUIGI_START.findall(log.read_text())}
    assert starts == {pid, pid2}, starts
    errors = "".join(p.read_text() for p in logdir.glob("*.err"))
    assert "Traceback" not in errors, errors


# --- sendria -------------------------------------------------------------------------------------


def sendria_command(sendria: Path, tmp_path: Path, http: int, smtp: int,
                    *extra: str) -> list[str]:
    # sendria's README: sendria --db mails.sqlite --pidfile PATH (daemonizes with a pidfile)
    return [str(sendria), "--db", str(tmp_path / "mails.sqlite"),
            "--smtp-ip", "127.0.0.1", "--smtp-port", str(smtp),
            "--http-ip", "127.0.0.1", "--http-port", str(http),
            "--pidfile", str(tmp_path / "sendria.pid"),
            "--log-file", str(tmp_path / "sendria.log"), *extra]


def sendria_stop(sendria: Path, tmp_path: Path, env: dict[str, str],
                 spawned: list[int]) -> Launch:
    stop = launch(sendria_command(sendria, tmp_path, 0, 0, "--stop"), env, tmp_path, spawned)
    assert stop.returncode == 0, stop
    return stop


def test_sendria(tmp_path: Path, spawned: list[int]) -> None:
    sendria = require("sendria", "sendria")
    env = program_env(tmp_path, SENDRIA_CONFIG_DIR=str(tmp_path / "config"))
    assert_import_resolution(env)
    pidfile, log = tmp_path / "sendria.pid", tmp_path / "sendria.log"
    marker = str(tmp_path)

    http, smtp = free_port(), free_port()
    first = launch(sendria_command(sendria, tmp_path, http, smtp), env, tmp_path, spawned)
    assert first.returncode == 0, first
    pid = read_pid_file(pidfile)
    spawned.append(pid)
    wait_serving(http, "/api/messages/")
    assert_proper_daemon(pid, first, cwd="/")
    assert_env_reached_daemon(pid)
    assert_pidfile_names_and_locks(pidfile, pid)
    assert listeners(http, marker) == {pid} and listeners(smtp, marker) == {pid}

    # real work: a mail through its SMTP port shows up in its HTTP API
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@example.test", "b@example.test", marker
    mail.set_content("sent to a daemonized sendria")
    with smtplib.SMTP("127.0.0.1", smtp, timeout=5) as client:
        client.send_message(mail)
    wait_for(lambda: marker.encode() in (http_get(http, "/api/messages/") or (0, b""))[1],
             10.0, "the mail in sendria's API")

    # A second start with the same pidfile (other ports, so that a second instance that wrongly
    # started would serve instead of dying on EADDRINUSE) must be refused.
    http2, smtp2 = free_port(), free_port()
    second = launch(sendria_command(sendria, tmp_path, http2, smtp2), env, tmp_path, spawned)
    if ON_DAEMONCTX:
        # daemonctx's launcher reports the start-up truthfully: non-zero, naming the holder
        # (after TimeoutPIDLockFile's 5 s wait, the lock still being held).
        assert second.returncode != 0, second
        assert "already running" in second.stderr or f"held by pid {pid}" in second.stderr, second
        assert second.seconds >= 5.0, (
            f"refused after {second.seconds:.2f} s: TimeoutPIDLockFile(path, 5) must wait 5 s "
            f"for the holder to let go before giving up")
    else:
        # python-daemon's launcher exits 0 right after the first fork; the detached child then
        # waits 5 s for the lock and dies of LockTimeout, its stderr on /dev/null.
        assert second.returncode == 0, second
    wait_only(marker, {pid}, spawned)
    assert http_get(http2) is None and not listening_inodes(http2)
    assert listeners(http, marker) == {pid}
    assert_pidfile_names_and_locks(pidfile, pid)

    # Stop the documented way: sendria --stop --pidfile PATH (SIGTERM to the pid in the file).
    sendria_stop(sendria, tmp_path, env, spawned)
    wait_gone(pid, spawned)
    assert_nothing_left(marker, [http, smtp, http2, smtp2])
    assert not pidfile.exists(), f"pidfile left: {pidfile.read_text()!r}"
    assert '"terminating"' in log.read_text()


def test_sendria_restart_waits_for_the_old_instance(tmp_path: Path, spawned: list[int]) -> None:
    """``--stop`` then start: TimeoutPIDLockFile(path, 5) waits for the old one to let go.

    The old instance is held stopped (SIGSTOP) while its SIGTERM is pending, as a slow
    shutdown would; it is let go (SIGCONT) as soon as the new launcher gives up, or after
    ``hold`` seconds.  The new start must wait for the lock (up to 5 s) and then serve.
    """
    hold = 1.5
    sendria = require("sendria", "sendria")
    env = program_env(tmp_path, SENDRIA_CONFIG_DIR=str(tmp_path / "config"))
    pidfile, log = tmp_path / "sendria.pid", tmp_path / "sendria.log"
    marker = str(tmp_path)

    http, smtp = free_port(), free_port()
    first = launch(sendria_command(sendria, tmp_path, http, smtp), env, tmp_path, spawned)
    assert first.returncode == 0, first
    old = read_pid_file(pidfile)
    spawned.append(old)
    wait_serving(http, "/api/messages/")

    os.kill(old, signal.SIGSTOP)
    try:
        sendria_stop(sendria, tmp_path, env, spawned)  # SIGTERM, pending while stopped
        # new ports: the old process may hold its sockets a little after it let go of the lock
        http2, smtp2 = free_port(), free_port()
        new_launcher = subprocess.Popen(
            sendria_command(sendria, tmp_path, http2, smtp2), env=env, cwd=tmp_path,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spawned.append(new_launcher.pid)
        wait_for(lambda: log.read_text().count('"starting Sendria"') == 2, 20.0,
                 "the new sendria to reach its DaemonContext")
        try:
            wait_for(lambda: new_launcher.poll() is not None, hold, "the new launcher to give up")
        except WaitTimeoutError:
            pass  # still waiting for the lock, as it should: now let the old one go
    finally:
        os.kill(old, signal.SIGCONT)
    _, err = new_launcher.communicate(timeout=LAUNCH_TIMEOUT)
    spawned.remove(new_launcher.pid)
    wait_gone(old, spawned)
    assert new_launcher.returncode == 0, (
        f"restart refused instead of waiting for the old instance: status "
        f"{new_launcher.returncode}\nstderr: {err}")
    new = wait_for(lambda: (p := read_pid_file(pidfile)) != old and p, 10.0, "the new pid")
    assert isinstance(new, int)
    spawned.append(new)
    wait_serving(http2, "/api/messages/")
    assert_pidfile_names_and_locks(pidfile, new)
    assert listeners(http2, marker) == {new}

    sendria_stop(sendria, tmp_path, env, spawned)
    wait_gone(new, spawned)
    assert_nothing_left(marker, [http, smtp, http2, smtp2])
    assert not pidfile.exists()


# --- ansible-runner ------------------------------------------------------------------------------

STUB = """\
#!/bin/sh
# stands in for ansible-playbook: runs until ansible-runner's pty goes away
echo "stub-playbook started $$"
cat > /dev/null
echo "stub-playbook done"
"""


def test_ansible_runner_start_is_alive_stop(tmp_path: Path, spawned: list[int]) -> None:
    runner = require("ansible_runner", "ansible-runner")
    env = program_env(tmp_path)
    assert_import_resolution(env)
    data = tmp_path / "private"
    (data / "project").mkdir(parents=True)
    (data / "project" / "site.yml").write_text("- hosts: localhost\n  tasks: []\n")
    stub = tmp_path / "stub-ansible-playbook"
    stub.write_text(STUB)
    stub.chmod(0o755)
    pidfile = data / "pid"
    marker = str(tmp_path)

    def runner_cmd(action: str, *extra: str) -> list[str]:
        return [str(runner), action, str(data), *extra]

    def start(ident: str) -> Launch:
        # ansible-runner's docs: ansible-runner start <private_data_dir> -p <playbook>
        return launch(runner_cmd("start", "-p", "site.yml", "--binary", str(stub),
                                 "--ident", ident), env, tmp_path, spawned)

    def is_alive() -> int:
        return launch(runner_cmd("is-alive"), env, tmp_path, spawned).returncode

    first = start("job1")
    assert first.returncode == 0, first
    pid = read_pid_file(pidfile)
    spawned.append(pid)
    job_out = data / "artifacts" / "job1" / "stdout"
    wait_for(lambda: job_out.exists() and "stub-playbook started" in job_out.read_text(), 15.0,
             "the job to run under the daemon")
    assert is_alive() == 0
    assert_proper_daemon(pid, first, cwd="/")
    assert_env_reached_daemon(pid)
    assert_pidfile_names_and_locks(pidfile, pid)

    second = start("job2")
    if ON_DAEMONCTX:
        assert second.returncode != 0, second
        assert "already running" in second.stderr or f"held by pid {pid}" in second.stderr, second
    else:
        assert second.returncode == 0, second  # the detached child dies of AlreadyLocked
    stubs = [p for p in processes_mentioning(marker)
             if cmdline(p).startswith(b"/bin/sh " + os.fsencode(stub))]
    assert len(stubs) == 1, {p: cmdline(p) for p in processes_mentioning(marker)}
    wait_only(marker, {pid, *stubs}, spawned)  # the daemon and its job's stub, no other
    assert not (data / "artifacts" / "job2").exists()
    assert is_alive() == 0
    assert_pidfile_names_and_locks(pidfile, pid)

    # ansible-runner stop SIGKILLs the daemon's process group: it must not be ours
    assert os.getpgid(pid) not in (os.getpgrp(), os.getsid(0))
    stop = launch(runner_cmd("stop"), env, tmp_path, spawned)
    assert stop.returncode == 0, stop
    wait_gone(pid, spawned)
    assert_nothing_left(marker, [])  # the stub ends when the daemon's pty closes
    assert not pidfile.exists()
    assert is_alive() != 0
