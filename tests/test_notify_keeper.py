"""The notify keeper answers ``NOTIFY_SOCKET`` as long as any process may still send to it.

Outside review, a variant of issue 14 #1: ``daemonctx start --notify -- prog`` where ``prog``
sends ``READY=1``, forks a worker (which inherits ``NOTIFY_SOCKET``) and exits.  The keeper
(``daemonctx._notify_keeper.serve``) exited with the program, so the abstract name was free
while the worker still sent to it: user nobody bound it and received the worker's ``STATUS=``
lines.  The promise: no socket name another local user can take over stays in a live process's
environment once nobody listens on it.  So the keeper now answers while any process has the
address in its environment, following the carriers through pidfds and ``/proc/*/environ``.

Each process of :data:`CHAIN` waits for SIGUSR1 (blocked, then ``sigwait``: an event, never a
sleep) before its next step, so the test decides when each one acts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    PYTHON,
    kill_and_wait,
    pid_exists,
    proc_status,
    run_cli,
    wait_file_text,
    wait_for,
    wait_pid_gone,
    write_script,
)
from tests.test_notify_readiness import SYSTEM_PYTHON, TAKEOVER, keeper_of

# READY=1, then one step per SIGUSR1.  "fork": hand over to a child (which inherits
# NOTIFY_SOCKET) and exit; "fork-clean": the same, but the child executes `sleep` without
# NOTIFY_SOCKET; "send": a STATUS= line and a barrier (sd_notify_barrier(3)), the outcome in
# `<pid>.sent` ("ok ok" when somebody answered both).  Each process writes its pid to `<n>.pid`.
CHAIN = """
import array, os, select, signal, socket, sys

rundir, steps = sys.argv[1], sys.argv[2:]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
address = os.environ["NOTIFY_SOCKET"]
target = "\\0" + address[1:]

def record(name, text):
    path = os.path.join(rundir, name)
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.rename(path + ".tmp", path)

def send(text, fds=()):
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendmsg([text.encode()], rights, 0, target)
        except OSError as exc:
            return f"refused:{exc.errno}"
    return "ok"

def barrier():
    read_end, write_end = os.pipe()
    outcome = send("BARRIER=1", [write_end])
    os.close(write_end)
    if outcome == "ok" and not select.select([read_end], [], [], 10)[0]:
        outcome = "unanswered"
    os.close(read_end)
    return outcome

record("0.pid", str(os.getpid()))
send("READY=1")
for number, step in enumerate(steps, 1):
    signal.sigwait({signal.SIGUSR1})
    if step == "send":
        record(f"{os.getpid()}.sent", f"{send('STATUS=secret of ' + str(os.getpid()))} {barrier()}")
    elif step == "fork":
        if os.fork():
            os._exit(0)
        record(f"{number}.pid", str(os.getpid()))
    elif step == "fork-clean":  # the parent exits once the child has executed (end of file)
        executed, child_end = os.pipe()
        if os.fork():
            os.close(child_end)
            os.read(executed, 1)
            os._exit(0)
        record(f"{number}.pid", str(os.getpid()))
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        os.execve("/bin/sleep", ["sleep", "600"], env)
signal.sigwait({signal.SIGUSR1})
"""


def _start_chain(rundir: Path, pid_path: Path, *steps: str, python: str = PYTHON,
                 user: str | None = None) -> tuple[int, int, str]:
    """Start CHAIN under ``start --notify``: (program pid, keeper pid, its NOTIFY_SOCKET)."""
    script = write_script(rundir, CHAIN, "chain.py")
    as_user = ["--user", user] if user is not None else []
    result = run_cli("start", "--notify", "--timeout", "20", *as_user, "--pidfile",
                     str(pid_path), "--", python, str(script), str(rundir), *steps)
    assert result.returncode == 0, result.stderr
    program = int(wait_file_text(rundir / "0.pid"))
    environ = Path(f"/proc/{program}/environ").read_bytes().split(b"\0")
    (address,) = [v[14:].decode() for v in environ if v.startswith(b"NOTIFY_SOCKET=")]
    keeper = wait_for(lambda: keeper_of(program), what="the keeper")
    assert isinstance(keeper, int)
    return program, keeper, address


def _next_step(pid: int, rundir: Path, number: int | None = None) -> int | None:
    """Tell ``pid`` to take its next step; for a fork, the child's pid once the parent is gone."""
    os.kill(pid, signal.SIGUSR1)
    if number is None:
        return None
    child = int(wait_file_text(rundir / f"{number}.pid"))
    wait_pid_gone(pid)
    return child


def _keeper_follows(keeper: int, carrier: int) -> None:
    """Wait until the keeper watches ``carrier`` (a pidfd on it), or has exited (the defect)."""
    wait_for(lambda: not pid_exists(keeper) or keeper_of(carrier) == keeper,
             what=f"the keeper to follow pid {carrier} or exit")
    assert pid_exists(keeper), "the keeper exited while a process still had its address"


@pytest.fixture
def bind_as_nobody(world_dir: Path) -> Callable[[str], str]:
    """``bind_as_nobody(address)``: user nobody tries to bind the name; ``"bound"`` or errno."""
    if SYSTEM_PYTHON is None:
        pytest.skip("no Python interpreter that nobody may execute")
    script = write_script(world_dir, TAKEOVER, "takeover.py")

    def attempt(address: str) -> str:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(SYSTEM_PYTHON),
             "-I", str(script), address], capture_output=True, text=True, timeout=30)
        return result.stdout.strip() or result.stderr

    return attempt


def _name_is_free(address: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind("\0" + address[1:])
        except OSError:
            return False
    return True


def test_worker_outliving_the_program_keeps_the_socket_answered_and_the_name_taken(
        tmp_path: Path, pid_path: Path, spawned: list[int],
        bind_as_nobody: Callable[[str], str]) -> None:
    """The review's reproducer (READY=1, fork a worker, exit): the keeper follows the worker."""
    program, keeper, address = _start_chain(tmp_path, pid_path, "fork", "send")
    spawned.append(keeper)
    worker = _next_step(program, tmp_path, 1)
    assert worker is not None
    spawned.append(worker)
    _keeper_follows(keeper, worker)
    assert bind_as_nobody(address) == str(errno.EADDRINUSE)
    _next_step(worker, tmp_path)
    assert wait_file_text(tmp_path / f"{worker}.sent") == "ok ok"  # STATUS= and barrier answered
    kill_and_wait(worker)
    wait_pid_gone(keeper)  # nobody has the address any more: the keeper ends
    assert _name_is_free(address)


def test_keeper_follows_a_chain_of_carriers_each_forked_by_the_last(
        tmp_path: Path, pid_path: Path, spawned: list[int],
        bind_as_nobody: Callable[[str], str]) -> None:
    """A carrier born after the keeper's last scan, of a carrier that then exits, is found."""
    program, keeper, address = _start_chain(tmp_path, pid_path, "fork", "fork", "send")
    spawned.append(keeper)
    first = _next_step(program, tmp_path, 1)
    assert first is not None
    spawned.append(first)
    _keeper_follows(keeper, first)
    second = _next_step(first, tmp_path, 2)
    assert second is not None
    spawned.append(second)
    _keeper_follows(keeper, second)
    assert bind_as_nobody(address) == str(errno.EADDRINUSE)
    _next_step(second, tmp_path)
    assert wait_file_text(tmp_path / f"{second}.sent") == "ok ok"
    kill_and_wait(second)
    wait_pid_gone(keeper)


def test_keeper_ends_with_the_program_when_no_other_process_has_the_address(
        tmp_path: Path, pid_path: Path, spawned: list[int]) -> None:
    """A child that executed without NOTIFY_SOCKET does not keep the keeper alive."""
    program, keeper, address = _start_chain(tmp_path, pid_path, "fork-clean")
    spawned.append(keeper)
    sleeper = _next_step(program, tmp_path, 1)
    assert sleeper is not None
    spawned.append(sleeper)
    wait_pid_gone(keeper)
    assert pid_exists(sleeper)
    assert _name_is_free(address)
    kill_and_wait(sleeper)


def test_keeper_of_a_program_run_as_nobody_follows_its_worker_as_nobody(
        world_dir: Path, pidfiles: list[Path], spawned: list[int],
        bind_as_nobody: Callable[[str], str]) -> None:
    """The keeper runs as the program's user and reads that user's environments."""
    assert SYSTEM_PYTHON is not None
    path = world_dir / "app.pid"
    pidfiles.append(path)
    program, keeper, address = _start_chain(world_dir, path, "fork", "send",
                                            python=SYSTEM_PYTHON, user="nobody")
    spawned.append(keeper)
    # (found by the pidfd it inherits at the fork: it drops to nobody right after)
    wait_for(lambda: proc_status(keeper)["Uid"].split() == ["65534"] * 4,
             what="the keeper to run as nobody")
    worker = _next_step(program, world_dir, 1)
    assert worker is not None
    spawned.append(worker)
    _keeper_follows(keeper, worker)
    assert bind_as_nobody(address) == str(errno.EADDRINUSE)
    _next_step(worker, world_dir)
    assert wait_file_text(world_dir / f"{worker}.sent") == "ok ok"
    kill_and_wait(worker)
    wait_pid_gone(keeper)
