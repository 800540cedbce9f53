"""daemonctx.systemd against real sockets and real processes.

Notifications go to an AF_UNIX datagram socket the test binds (a path in tmp_path, or a unique
abstract name) and are asserted byte for byte.  Socket activation is arranged the way systemd
does it: the fds are placed at 3, 4, ... and LISTEN_PID is set to the real pid of the process
right before it execs the program under test, which then takes them with listen_fds().
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemonctx import systemd
from daemonctx.errors import DaemonError, DaemonOptionError
from daemonctx.systemd import SystemdEnvironmentError, SystemdNotifyError
from tests.helpers import DEFAULT_TIMEOUT, PYTHON, write_script

SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                     "LISTEN_FDS", "LISTEN_FDNAMES", "INVOCATION_ID", "MANAGERPID")


@pytest.fixture(autouse=True)
def no_systemd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without any service-manager variable (and monkeypatch restores them)."""
    for variable in SYSTEMD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


# --- a notification receiver ---------------------------------------------------------------

@dataclass
class Receiver:
    """A bound AF_UNIX datagram socket standing in for the service manager."""

    sock: socket.socket
    address: str  # as it appears in NOTIFY_SOCKET

    def receive(self) -> bytes:
        ready, _, _ = select.select([self.sock], [], [], DEFAULT_TIMEOUT)
        assert ready, "no notification arrived"
        return self.sock.recv(65536)

    def assert_nothing_received(self) -> None:
        # notify() returns after the datagram is queued, so a non-blocking read is conclusive.
        with pytest.raises(BlockingIOError):
            self.sock.recv(65536, socket.MSG_DONTWAIT)


@contextmanager
def bound_receiver(kind: str, tmp_path: Path) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if kind == "path":
            address = str(tmp_path / "notify.sock")
            sock.bind(address)
        else:
            address = f"@daemonctx-test-{os.getpid()}-{uuid.uuid4().hex}"
            sock.bind("\0" + address[1:])
        yield Receiver(sock, address)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver on a path socket and on an abstract one, named in NOTIFY_SOCKET."""
    with bound_receiver(request.param, tmp_path) as rcv:
        monkeypatch.setenv("NOTIFY_SOCKET", rcv.address)
        yield rcv


@pytest.fixture
def path_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver on a socket file in tmp_path, named in NOTIFY_SOCKET."""
    with bound_receiver("path", tmp_path) as rcv:
        monkeypatch.setenv("NOTIFY_SOCKET", rcv.address)
        yield rcv


# --- notify: the datagrams ------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "datagram"), [
    ({"ready": True}, b"READY=1"),
    ({"status": "Serving on 127.0.0.1:8080"}, b"STATUS=Serving on 127.0.0.1:8080"),
    ({"status": "d\u00e9marr\u00e9"}, "STATUS=d\u00e9marr\u00e9".encode()),
    ({"stopping": True}, b"STOPPING=1"),
    ({"watchdog": True}, b"WATCHDOG=1"),
    ({"watchdog": "trigger"}, b"WATCHDOG=trigger"),
    ({"mainpid": 4242}, b"MAINPID=4242"),
    ({"errno": 13}, b"ERRNO=13"),
    ({"extend_timeout_usec": 5_000_000}, b"EXTEND_TIMEOUT_USEC=5000000"),
    ({"watchdog_usec": 20_000_000}, b"WATCHDOG_USEC=20000000"),
    ({"X_CACHE": "warm"}, b"X_CACHE=warm"),
    ({"EXIT_STATUS": 3}, b"EXIT_STATUS=3"),
    ({"ready": True, "status": "up", "mainpid": 4242}, b"READY=1\nSTATUS=up\nMAINPID=4242"),
    ({"stopping": True, "status": "draining", "errno": 5}, b"STOPPING=1\nSTATUS=draining\nERRNO=5"),
    ({"X_B": "2", "X_A": 1}, b"X_B=2\nX_A=1"),
], ids=lambda value: value.decode() if isinstance(value, bytes) else None)
def test_notify_sends_exact_datagram(receiver: Receiver, fields: dict[str, Any],
                                     datagram: bytes) -> None:
    assert systemd.notify(**fields) is True
    assert receiver.receive() == datagram


def test_reloading_is_paired_with_monotonic_usec_from_clock_monotonic(receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.notify(reloading=True)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic = receiver.receive().decode().split("\n")
    assert reloading == "RELOADING=1"
    key, _, value = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notify_raw_sends_text_verbatim(receiver: Receiver) -> None:
    assert systemd.notify_raw("READY=1\nX_ANYTHING=goes here\n") is True
    assert receiver.receive() == b"READY=1\nX_ANYTHING=goes here\n"


def test_notify_raw_sends_bytes_verbatim(receiver: Receiver) -> None:
    assert systemd.notify_raw(b"STATUS=\xff raw") is True
    assert receiver.receive() == b"STATUS=\xff raw"


def test_notify_quietly_sends_like_notify(receiver: Receiver) -> None:
    assert systemd.notify_quietly(ready=True, mainpid=os.getpid()) is True
    assert receiver.receive() == f"READY=1\nMAINPID={os.getpid()}".encode()


def test_notify_leaves_no_file_descriptor_open(path_receiver: Receiver) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        systemd.notify(watchdog=True)
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert [path_receiver.receive() for _ in range(3)] == [b"WATCHDOG=1"] * 3


# --- notify: no manager ---------------------------------------------------------------------

def test_notify_without_notify_socket_is_a_noop_returning_false() -> None:
    assert systemd.notify(ready=True) is False
    assert systemd.notify_raw("READY=1") is False
    assert systemd.notify_quietly(stopping=True) is False


def test_empty_notify_socket_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify(ready=True) is False
    assert systemd.notify_socket_path() is None


def test_notify_socket_path_reports_the_variable(receiver: Receiver) -> None:
    assert systemd.notify_socket_path() == receiver.address


# --- notify: argument checks ----------------------------------------------------------------

@pytest.mark.parametrize(("fields", "complaint"), [
    ({}, "nothing to send"),
    ({"status": "two\nlines"}, "one line"),
    ({"status": "nul\0inside"}, "NUL"),
    ({"X_NOTE": "two\nlines"}, "one line"),
    ({"ready": True, "stopping": True}, "only one of"),
    ({"ready": True, "reloading": True}, "only one of"),
    ({"mainpid": 0}, "mainpid=0"),
    ({"mainpid": True}, "mainpid=True"),
    ({"errno": -1}, "errno=-1"),
    ({"extend_timeout_usec": 1.5}, "extend_timeout_usec=1.5"),
    ({"watchdog_usec": 0}, "watchdog_usec=0"),
    ({"watchdog": "yes"}, "'trigger'"),
    ({"READY": "1"}, "ready=True"),
    ({"MONOTONIC_USEC": 1}, "reloading=True"),
    ({"FDSTORE": 1}, "file descriptors"),
    ({"REDY": "1"}, "unknown assignment"),
    ({"x_lower": "1"}, "unknown assignment"),
    ({"X_FLAG": True}, "X_FLAG=True"),
], ids=lambda value: repr(value) if isinstance(value, dict) else None)
def test_bad_arguments_raise_option_error_and_send_nothing(
        path_receiver: Receiver, fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(DaemonOptionError) as caught:
        systemd.notify(**fields)
    assert complaint in str(caught.value)
    assert isinstance(caught.value, ValueError)
    path_receiver.assert_nothing_received()


def test_bad_arguments_raise_even_without_notify_socket() -> None:
    with pytest.raises(DaemonOptionError, match="one line"):
        systemd.notify(status="a\nb")


def test_notify_quietly_still_raises_for_bad_arguments(path_receiver: Receiver) -> None:
    with pytest.raises(DaemonOptionError, match="one line"):
        systemd.notify_quietly(status="a\nb")
    path_receiver.assert_nothing_received()


@pytest.mark.parametrize("text", ["", b"", "READY=1\0"])
def test_notify_raw_rejects_empty_or_nul_text(path_receiver: Receiver, text: str | bytes) -> None:
    with pytest.raises(DaemonOptionError):
        systemd.notify_raw(text)
    path_receiver.assert_nothing_received()


# --- notify: unset_environment --------------------------------------------------------------

def test_unset_environment_removes_notify_socket_after_sending(receiver: Receiver) -> None:
    assert systemd.notify(ready=True, unset_environment=True) is True
    assert receiver.receive() == b"READY=1"
    assert "NOTIFY_SOCKET" not in os.environ
    assert systemd.notify(ready=True) is False


def test_unset_environment_removes_notify_socket_even_when_sending_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    with pytest.raises(SystemdNotifyError):
        systemd.notify(ready=True, unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ


def test_notify_leaves_notify_socket_set_by_default(receiver: Receiver) -> None:
    systemd.notify(ready=True)
    assert os.environ["NOTIFY_SOCKET"] == receiver.address


# --- notify: delivery failures --------------------------------------------------------------

def test_missing_socket_file_raises_notify_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "gone.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", missing)
    with pytest.raises(SystemdNotifyError) as caught:
        systemd.notify(ready=True)
    error = caught.value
    assert isinstance(error, DaemonError) and isinstance(error, OSError)
    assert error.errno == errno.ENOENT
    assert error.address == missing
    assert missing in str(error) and "does not exist" in str(error)


def test_socket_nobody_listens_on_raises_connection_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with bound_receiver("path", tmp_path) as rcv:
        monkeypatch.setenv("NOTIFY_SOCKET", rcv.address)
    # The socket file is still there, but its owner closed it (a manager that died).
    assert Path(rcv.address).exists()
    with pytest.raises(SystemdNotifyError) as caught:
        systemd.notify(ready=True)
    assert caught.value.errno == errno.ECONNREFUSED


def test_abstract_name_nobody_listens_on_raises_notify_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@daemonctx-test-unbound-{uuid.uuid4().hex}")
    with pytest.raises(SystemdNotifyError) as caught:
        systemd.notify(ready=True)
    assert caught.value.errno == errno.ECONNREFUSED


def test_notify_quietly_returns_false_when_delivery_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify_quietly(ready=True) is False


NO_FREE_FD_CHILD = """
import json, os, resource, socket, sys
from daemonctx import systemd

receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
receiver.bind(sys.argv[1])
os.environ["NOTIFY_SOCKET"] = sys.argv[1]
lowest_free = os.dup(0)
os.close(lowest_free)
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no fd left for socket()
quiet = systemd.notify_quietly(ready=True)
try:
    systemd.notify(ready=True)
    raised = None
except systemd.SystemdNotifyError as error:
    raised = error.errno
print(json.dumps({"quiet": quiet, "errno": raised}))
"""


def test_notify_quietly_survives_running_out_of_fds(tmp_path: Path) -> None:
    # EMFILE is produced for real, in a child that lowers its own RLIMIT_NOFILE.
    script = write_script(tmp_path, NO_FREE_FD_CHILD)
    result = subprocess.run([PYTHON, str(script), str(tmp_path / "notify.sock")],
                            capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"quiet": False, "errno": errno.EMFILE}


@pytest.mark.parametrize("address", ["run/notify", "notify.sock"])
def test_relative_notify_socket_is_refused(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with pytest.raises(SystemdNotifyError, match="neither an absolute socket path"):
        systemd.notify(ready=True)


def test_vsock_notify_socket_is_refused_naming_vsock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with pytest.raises(SystemdNotifyError, match="vsock notification sockets are not supported"):
        systemd.notify(ready=True)


def test_full_manager_queue_times_out_with_notify_error(path_receiver: Receiver) -> None:
    # Fill the receiver's queue (net.unix.max_dgram_qlen) as a manager that stopped reading.
    fillers: list[socket.socket] = []
    try:
        while True:
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            fillers.append(filler)
            filler.connect(path_receiver.address)
            filler.setblocking(False)
            sent = 0
            try:
                while True:
                    filler.send(b"X_FILL=1")
                    sent += 1
            except BlockingIOError:
                pass
            if sent == 0:  # a fresh sender is refused: the receiver's queue itself is full
                break
            assert len(fillers) < 1000, "could not fill the receiver's queue"
        with pytest.raises(SystemdNotifyError, match="queue stayed full") as caught:
            systemd.notify(ready=True, timeout=0.3)
        assert caught.value.errno == errno.ETIMEDOUT
    finally:
        for filler in fillers:
            filler.close()


# --- watchdog -------------------------------------------------------------------------------

def test_watchdog_interval_is_none_without_watchdog_usec() -> None:
    assert systemd.watchdog_interval() is None


def test_watchdog_interval_is_half_the_timeout_without_watchdog_pid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "6000000")
    assert systemd.watchdog_interval() == 3.0


def test_watchdog_interval_is_half_the_timeout_when_watchdog_pid_is_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 0.25


def test_watchdog_interval_is_none_when_watchdog_pid_is_another_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "6000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert systemd.watchdog_interval() is None


@pytest.mark.parametrize(("variable", "value"), [
    ("WATCHDOG_USEC", "abc"), ("WATCHDOG_USEC", "0"), ("WATCHDOG_USEC", "-5"),
    ("WATCHDOG_USEC", "1.5"), ("WATCHDOG_PID", "me"),
])
def test_malformed_watchdog_variable_raises_naming_it(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "6000000")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemdEnvironmentError) as caught:
        systemd.watchdog_interval()
    assert (caught.value.variable, caught.value.value) == (variable, value)
    assert f"{variable}={value!r}" in str(caught.value)


def test_watchdog_interval_unset_environment_removes_both_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "6000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval(unset_environment=True) == 3.0
    assert "WATCHDOG_USEC" not in os.environ and "WATCHDOG_PID" not in os.environ


# --- socket activation: environment only ----------------------------------------------------

def test_listen_fds_is_empty_without_listen_pid() -> None:
    assert systemd.listen_fds() == []


def test_listen_fds_is_empty_when_listen_pid_is_another_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Variables inherited from an ancestor that was socket-activated: the fds are not ours.
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "http")
    assert systemd.listen_fds() == []
    assert not any(v in os.environ for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))


def test_listen_fds_keeps_variables_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_FDS"] == "1"


@pytest.mark.parametrize(("variable", "value"), [
    ("LISTEN_PID", "self"), ("LISTEN_FDS", "two"), ("LISTEN_FDS", "-1"),
])
def test_malformed_listen_variable_raises_and_still_unsets(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemdEnvironmentError) as caught:
        systemd.listen_fds()
    assert caught.value.variable == variable
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ


def test_is_socket_activated_reads_without_consuming(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    assert systemd.is_socket_activated() is True
    assert os.environ["LISTEN_FDS"] == "2"


@pytest.mark.parametrize(("pid", "count"), [("other", "1"), ("self", "0"), ("self", "x")])
def test_is_socket_activated_is_false_unless_fds_are_ours(
        monkeypatch: pytest.MonkeyPatch, pid: str, count: str) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() if pid == "self" else os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", count)
    assert systemd.is_socket_activated() is False


# --- socket activation: real fds in a real child --------------------------------------------

# Runs in the spawned process before the program under test, standing in for the service
# manager's own code between fork and exec: move the passed fds to 3, 4, ... (through
# close-on-exec copies above the target range, so sources and targets may overlap), set
# LISTEN_PID to this process's pid -- which exec keeps, so it is the real pid of the program,
# as systemd does -- and exec the program.
_MANAGER_SIDE = r"""
import fcntl, os, sys
sources = [int(fd) for fd in sys.argv[1].split(",") if fd]
first = 3
copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first + len(sources)) for fd in sources]
for fd in sources:
    os.close(fd)
for index, copy in enumerate(copies):
    os.dup2(copy, first + index)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


@contextmanager
def activated_child(script: Path, fds: Sequence[int],
                    env: Mapping[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` socket-activated with ``fds`` at 3, 4, ...; kill and reap it at the end."""
    child_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    child_env.update(env)
    proc = subprocess.Popen(
        [PYTHON, "-c", _MANAGER_SIDE, ",".join(map(str, fds)), PYTHON, str(script)],
        pass_fds=tuple(fds), env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEFAULT_TIMEOUT)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def read_report(proc: subprocess.Popen[str]) -> Any:
    """The JSON line the child prints, read with a bounded wait."""
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEFAULT_TIMEOUT)
    assert ready, "the child printed nothing in time"
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=DEFAULT_TIMEOUT)
        pytest.fail(f"the child exited ({proc.returncode}) without a report:\n"
                    f"{proc.stderr.read()}")
    return json.loads(line)


def fd_flags(pid: int, fd: int) -> int:
    """The open flags of ``pid``'s ``fd`` as the kernel reports them (O_CLOEXEC included)."""
    for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no flags in /proc/{pid}/fdinfo/{fd}")


ACCEPTING_CHILD = """
import json, os, socket
from daemonctx import systemd

fds = systemd.listen_fds()
variables = {name: os.environ.get(name) for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
print(json.dumps({"pid": os.getpid(), "fds": fds, "variables": variables}), flush=True)
listener = socket.socket(fileno=fds[0])
listener.settimeout(30)
connection, _ = listener.accept()
with connection:
    connection.settimeout(30)
    connection.sendall(b"pong " + connection.recv(64))
listener.close()
"""


def test_socket_activated_child_accepts_loopback_connection_on_passed_fd(tmp_path: Path) -> None:
    script = write_script(tmp_path, ACCEPTING_CHILD)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        with activated_child(script, [listener.fileno()],
                             {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}) as proc:
            listener.close()  # from here on only the child holds the listening socket
            report = read_report(proc)
            assert report["pid"] == proc.pid
            assert report["fds"] == [3]
            assert report["variables"] == {
                "LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
            # fd 3 survived exec, so it was inheritable; listen_fds() made it close-on-exec.
            assert fd_flags(proc.pid, 3) & os.O_CLOEXEC
            with socket.create_connection(("127.0.0.1", port),
                                          timeout=DEFAULT_TIMEOUT) as client:
                client.sendall(b"ping")
                answer = b""
                while chunk := client.recv(64):
                    answer += chunk
            assert answer == b"pong ping"
            assert proc.wait(timeout=DEFAULT_TIMEOUT) == 0
    finally:
        listener.close()


NAMES_CHILD = """
import json
from daemonctx import systemd

print(json.dumps(systemd.listen_fds_with_names()), flush=True)
"""


@pytest.mark.parametrize(("names_variable", "names"), [
    ("http:dns:metrics", ["http", "dns", "metrics"]),
    ("http", ["http", "unknown", "unknown"]),
    (None, ["unknown", "unknown", "unknown"]),
    ("a:b:c:surplus", ["a", "b", "c"]),
    ("a::c", ["a", "", "c"]),
])
def test_listen_fds_with_names_pairs_fds_with_listen_fdnames(
        tmp_path: Path, names_variable: str | None, names: list[str]) -> None:
    script = write_script(tmp_path, NAMES_CHILD)
    env = {"LISTEN_FDS": "3"}
    if names_variable is not None:
        env["LISTEN_FDNAMES"] = names_variable
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    read_end, write_end = os.pipe()
    try:
        with activated_child(script, [tcp.fileno(), udp.fileno(), read_end], env) as proc:
            assert read_report(proc) == [[3, names[0]], [4, names[1]], [5, names[2]]]
            assert proc.wait(timeout=DEFAULT_TIMEOUT) == 0
    finally:
        tcp.close()
        udp.close()
        os.close(read_end)
        os.close(write_end)


SOCKETS_CHILD = """
import json
from daemonctx import systemd

try:
    sockets = systemd.listen_sockets()
except systemd.SystemdEnvironmentError as error:
    print(json.dumps({"error": str(error)}), flush=True)
else:
    print(json.dumps([[s.fileno(), int(s.family), int(s.type), list(s.getsockname())]
                      for s in sockets]), flush=True)
"""


def test_listen_sockets_wraps_fds_as_sockets_of_their_kind(tmp_path: Path) -> None:
    script = write_script(tmp_path, SOCKETS_CHILD)
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        with activated_child(script, [tcp.fileno(), udp.fileno()], {"LISTEN_FDS": "2"}) as proc:
            assert read_report(proc) == [
                [3, socket.AF_INET, socket.SOCK_STREAM, ["127.0.0.1", tcp.getsockname()[1]]],
                [4, socket.AF_INET, socket.SOCK_DGRAM, ["127.0.0.1", udp.getsockname()[1]]],
            ]
    finally:
        tcp.close()
        udp.close()


def test_listen_sockets_refuses_a_passed_fd_that_is_not_a_socket(tmp_path: Path) -> None:
    script = write_script(tmp_path, SOCKETS_CHILD)
    read_end, write_end = os.pipe()
    try:
        with activated_child(script, [read_end], {"LISTEN_FDS": "1"}) as proc:
            report = read_report(proc)
            assert "fd 3" in report["error"] and "not a socket" in report["error"]
    finally:
        os.close(read_end)
        os.close(write_end)


MISSING_FD_CHILD = """
import json
from daemonctx import systemd

try:
    systemd.listen_fds()
except systemd.SystemdEnvironmentError as error:
    print(json.dumps({"error": str(error), "variable": error.variable}), flush=True)
else:
    print(json.dumps({"error": None}), flush=True)
"""


def test_listen_fds_raises_when_a_promised_fd_is_not_open(tmp_path: Path) -> None:
    script = write_script(tmp_path, MISSING_FD_CHILD)
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        with activated_child(script, [tcp.fileno()], {"LISTEN_FDS": "2"}) as proc:
            report = read_report(proc)
            assert report["variable"] == "LISTEN_FDS"
            assert "fd 4 is not open" in report["error"]
    finally:
        tcp.close()


# --- started_by_service_manager and booted --------------------------------------------------

def test_not_started_by_service_manager_without_its_variables() -> None:
    assert systemd.started_by_service_manager() is False


def test_variables_alone_do_not_make_a_service_when_parent_is_not_the_manager(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Our parent (pytest's launcher) is neither pid 1 nor MANAGERPID: inherited variables.
    monkeypatch.setenv("INVOCATION_ID", uuid.uuid4().hex)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("MANAGERPID", str(os.getppid() + 1))
    assert systemd.started_by_service_manager() is False


@pytest.mark.parametrize("variable", ["INVOCATION_ID", "NOTIFY_SOCKET", "LISTEN_PID"])
def test_started_by_user_manager_that_is_our_parent(
        monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    # A `systemd --user` instance sets MANAGERPID to its own pid, which is our real parent here.
    monkeypatch.setenv("MANAGERPID", str(os.getppid()))
    value = str(os.getpid()) if variable == "LISTEN_PID" else "/run/user/0/systemd/notify"
    monkeypatch.setenv(variable, value)
    assert systemd.started_by_service_manager() is True


def test_listen_pid_of_another_process_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANAGERPID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    assert systemd.started_by_service_manager() is False


needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a new namespace")

STARTED_BY_CHILD = """
import json, os
from daemonctx import systemd

print(json.dumps({"ppid": os.getppid(), "started": systemd.started_by_service_manager()}))
"""


@needs_unshare
@pytest.mark.parametrize(("env", "started"), [
    ({"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}, True),
    ({}, False),
])
def test_started_by_service_manager_when_parent_is_pid_1(
        tmp_path: Path, env: dict[str, str], started: bool) -> None:
    # In a new pid namespace the shell is pid 1 and runs the program as its child, as init would.
    script = write_script(tmp_path, STARTED_BY_CHILD)
    child_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES} | env
    result = subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child",
         "sh", "-c", '"$0" "$@"; exit $?', PYTHON, str(script)],
        env=child_env, capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ppid": 1, "started": started}


@needs_unshare
@pytest.mark.parametrize("with_runtime_dir", [True, False])
def test_booted_is_true_only_when_run_systemd_system_exists(
        tmp_path: Path, with_runtime_dir: bool) -> None:
    # A private mount namespace with a fresh tmpfs on /run, so the host's /run is untouched.
    script = write_script(tmp_path, "from daemonctx import systemd\nprint(systemd.booted())\n")
    make_dir = "mkdir -p /run/systemd/system && " if with_runtime_dir else ""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs tmpfs /run && {make_dir}exec "$0" "$@"', PYTHON, str(script)],
        capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(with_runtime_dir)
