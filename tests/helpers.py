"""Process helpers shared by the test-suite.

Tests start real processes and look at them from outside, through ``/proc/<pid>/`` and the files
they write.  Everything here waits with a deadline: nothing sleeps to synchronise, and nothing
that a test started is left behind (see :func:`kill_and_wait`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 15.0


class WaitTimeoutError(AssertionError):
    """A bounded wait in a test ran out."""


def wait_for(predicate: Callable[[], object], timeout: float = DEFAULT_TIMEOUT,
             what: str = "condition") -> object:
    """Return the first truthy result of ``predicate()``; fail after ``timeout`` seconds.

    Used only for state that has no event to wait on (a file another process writes); the
    interval grows from 1 ms so fast events are seen fast.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def pid_exists(pid: int) -> bool:
    """True if ``pid`` names a process that is not a zombie."""
    try:
        return proc_state(pid) != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_pid_gone(pid: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until ``pid`` (any process, not only our child) has exited.

    Uses a pidfd, which becomes readable when the process exits: an event, not a poll.  A child
    of ours is reaped as well.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise WaitTimeoutError(f"pid {pid} still alive after {timeout} s")
    finally:
        os.close(fd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def kill_and_wait(pid: int | None, sig: int = signal.SIGKILL,
                  timeout: float = DEFAULT_TIMEOUT) -> None:
    """Signal ``pid`` and wait for it to be gone; a missing pid is fine (cleanup paths)."""
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    wait_pid_gone(pid, timeout)


def kill_tree(pid: int | None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """SIGKILL every descendant of ``pid``, then ``pid``, and wait for them all.

    Descendants go first, in passes until none is left alive: a process forked, or re-parented
    to ``pid`` (a subreaper), while a pass ran is caught by the next one instead of escaping to
    init when ``pid`` dies.
    """
    if pid is None:
        return
    for _ in range(50):
        below = [p for p in descendants(pid) if pid_exists(p)]
        if not below:
            break
        for p in below:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in below:
            wait_pid_gone(p, timeout)
    kill_and_wait(pid, signal.SIGKILL, timeout)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (all threads' children lists)."""
    result: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return result
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except FileNotFoundError:
            continue
        result.extend(int(x) for x in text.split())
    return result


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, depth first."""
    found: list[int] = []
    for child in children_of(pid):
        found.append(child)
        found.extend(descendants(child))
    return found


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the tests look at."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int


def proc_stat(pid: int) -> ProcStat:
    """Parse ``/proc/<pid>/stat`` (the command name may contain spaces and parentheses)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2:].split()
    return ProcStat(pid=pid, state=rest[0], ppid=int(rest[1]), pgrp=int(rest[2]),
                    session=int(rest[3]), tty_nr=int(rest[4]))


def proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` (``R``, ``S``, ``Z``...)."""
    return proc_stat(pid).state


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict of field name to raw value."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def open_fds(pid: int) -> dict[int, str]:
    """The open fds of ``pid`` with what each points to (``readlink`` of /proc/<pid>/fd/N)."""
    result: dict[int, str] = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            result[int(name)] = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            continue
    return result


def zombies_of(pid: int) -> list[int]:
    """Children of ``pid`` that are zombies."""
    return [c for c in children_of(pid) if _state_or_none(c) == "Z"]


def _state_or_none(pid: int) -> str | None:
    try:
        return proc_state(pid)
    except (FileNotFoundError, ProcessLookupError):  # reaped while we read it
        return None


def let_others_traverse(path: Path) -> None:
    """Make ``path`` and every directory above it searchable by other users (``o+x``).

    pytest's base temporary directory is private (0700); tests that run something as another
    user (nobody) need to reach files below it.
    """
    for directory in (path, *path.parents):
        if directory == Path("/"):
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o711)


def write_script(directory: Path, body: str, name: str = "prog.py") -> Path:
    """Write a dedented Python script that can import daemonctx from this checkout."""
    path = directory / name
    header = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
    path.write_text(header + textwrap.dedent(body))
    return path


def run_python(script: Path, *args: str, timeout: float = DEFAULT_TIMEOUT,
               env: dict[str, str] | None = None,
               **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with this interpreter and wait (bounded) for it to exit."""
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        [PYTHON, str(script), *args], capture_output=True, text=True, timeout=timeout,
        env=env, **kwargs)
    return result


def read_pid_file(path: Path, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Wait for ``path`` to hold a pid (written by a daemon) and return it."""
    def read() -> int | None:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None
    pid = wait_for(read, timeout, f"a pid in {path}")
    assert isinstance(pid, int)
    return pid


def wait_file_text(path: Path, timeout: float = DEFAULT_TIMEOUT,
                   predicate: Callable[[str], bool] = bool) -> str:
    """Wait until ``path`` exists and its text satisfies ``predicate``; return the text."""
    def read() -> str | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return text if predicate(text) else None
    return str(wait_for(read, timeout, f"text in {path}"))


def assert_all_gone(pids: Iterable[int]) -> None:
    """Fail if any of ``pids`` is still a live process."""
    alive = [p for p in pids if pid_exists(p)]
    assert not alive, f"processes left alive: {alive}"


PROBE = REPO / "tests" / "probe_daemon.py"
SUBREAPER = REPO / "tests" / "subreaper.py"


def launch_probe(config: dict[str, object], spawned: list[int], pid_file: Path | None = None,
                 *, env: dict[str, str] | None = None, stdin: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> tuple[subprocess.CompletedProcess[str],
                                                            int | None]:
    """Run tests/probe_daemon.py as a launcher; return its result and the daemon's pid.

    The daemon's pid (read from ``pid_file``, default ``config["pid_path"]``) is appended to
    ``spawned`` so the fixture kills it whatever the test's outcome.
    """
    import json

    result = subprocess.run([PYTHON, str(PROBE), json.dumps(config)], capture_output=True,
                            text=True, timeout=timeout, env=env, stdin=stdin)
    pid = None
    if result.returncode == 0:
        pid = read_pid_file(pid_file or Path(str(config["pid_path"])))
        spawned.append(pid)
    return result, pid


class Subreaper:
    """tests/subreaper.py running a command: learns the exit status of every descendant."""

    def __init__(self, tmp: Path, command: list[str], spawned: list[int],
                 env: dict[str, str] | None = None) -> None:
        self.log = tmp / f"reaped-{time.monotonic_ns()}.log"
        self.log.touch()
        self.process = subprocess.Popen([PYTHON, str(SUBREAPER), str(self.log), *command],
                                        env=env, stdin=subprocess.DEVNULL)
        spawned.append(self.process.pid)

    def statuses(self) -> dict[int, tuple[str, int]]:
        """``{pid: ("exit", code) or ("signal", number)}`` of every process reaped so far."""
        found: dict[int, tuple[str, int]] = {}
        for line in self.log.read_text().splitlines():
            pid, kind, value = line.split()
            found[int(pid)] = (kind, int(value))
        return found

    def wait_status(self, pid: int, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, int]:
        """Wait until ``pid`` was reaped by the harness and return how it ended."""
        wait_for(lambda: pid in self.statuses(), timeout, f"pid {pid} to be reaped")
        return self.statuses()[pid]

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the harness itself to finish (no descendant left)."""
        return self.process.wait(timeout)


def wait_pidfds(pids: list[int], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until every one of ``pids`` has exited, watching pidfds (an event, not a poll).

    The pidfds should be opened while the processes are known to be ours; here they are opened
    on entry, so a pid that is already gone counts as exited.
    """
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + timeout
        waiting = list(fds)
        while waiting:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select(waiting, [], [], max(0.0, remaining))
            if not ready:
                raise WaitTimeoutError(f"{len(waiting)} of {pids} still alive after {timeout} s")
            waiting = [fd for fd in waiting if fd not in ready]
    finally:
        for fd in fds:
            os.close(fd)


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks, from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def live_children(pid: int) -> list[int]:
    """Children of ``pid`` that are alive (not zombies)."""
    return [c for c in children_of(pid) if pid_exists(c)]


def wait_live_children(pid: int, count: int, without: tuple[int, ...] = (),
                       timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """Wait until ``pid`` has exactly ``count`` live children, none of them in ``without``."""
    def check() -> list[int] | None:
        children = live_children(pid)
        if len(children) == count and not set(children) & set(without):
            return children
        return None
    return wait_for(check, timeout, f"{count} live children of {pid}")  # type: ignore[return-value]


def wait_child_status(pid: int, timeout: float = 15.0) -> int:
    """Wait (bounded, on a pidfd) for our child ``pid`` to exit; reap it, return its exit code.

    On timeout the child is killed and reaped before the test fails.
    """
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"child {pid} still running after {timeout} s (killed)")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fork_call(function: Callable[[], int]) -> int:
    """Fork a child that runs ``function`` and exits with its result (1 if it raises)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = function()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    pid = fork_call(lambda: 0)
    wait_child_status(pid)
    return pid


# --- the daemonctx command --------------------------------------------------------------------

CLI_TIMEOUT = 60.0


def run_cli(*args: str, timeout: float = CLI_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m daemonctx ARGS`` with a bounded wait; stdin is /dev/null."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run([PYTHON, "-m", "daemonctx", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def adopt_lock_holder(path: Path, spawned: list[int]) -> int | None:
    """Whatever holds the lock of pidfile ``path``, appended to ``spawned`` (killed at the end).

    Called right after a launcher returned, before asserting on it: a daemon that started when
    the test expected otherwise is still cleaned up.
    """
    from daemonctx.pidfile import holder_pid

    pid = holder_pid(path)
    if pid is not None:
        spawned.append(pid)
    return pid


def holder(path: Path) -> int:
    """The pid holding the lock of the pidfile ``path`` (fails if none does)."""
    from daemonctx.pidfile import holder_pid

    pid = holder_pid(path)
    assert pid is not None, f"no process holds the lock of {path}"
    return pid


def pid_in_message(text: str) -> int:
    """The first ``(pid N)`` in a message."""
    import re

    match = re.search(r"\(pid (\d+)\)", text)
    assert match, f"no pid in {text!r}"
    return int(match.group(1))


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    """The command failed with one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("daemonctx"), result.stderr
