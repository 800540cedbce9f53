"""Shared scaffolding for the supervisor tests (no tests here).

Every supervisor runs in its own fresh interpreter: a script written to ``tmp_path`` whose first
argument is the directory it writes its observations to.  Workers append one line per event to
files opened with ``O_APPEND`` (each line is one ``write``, so lines from concurrent processes
never interleave), and the tests read those files from outside.

Candidates for ``tests/helpers.py``: :func:`cpu_ticks` and :func:`wait_pidfds`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import (
    DEFAULT_TIMEOUT,
    PYTHON,
    REPO,
    WaitTimeoutError,
    kill_tree,
    wait_for,
    write_script,
)

# Prepended to every supervisor script.
PRELUDE = """\
import logging
import os
import signal
import sys
import time

from daemonctx.supervisor import (
    RestartPolicy, Supervisor, SupervisorError, fork_processes, notify_worker_ready,
    parent_death_fd, task_id,
)

OUT = sys.argv[1]


def record(name, *fields):
    line = " ".join(str(f) for f in fields) + "\\n"
    fd = os.open(os.path.join(OUT, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def park():
    while True:
        signal.pause()


def record_stop_on_term(name="events"):
    def on_term(signum, frame):
        record(name, "stop", task_id(), os.getpid(), time.monotonic())
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)


def log_to_file():
    logging.basicConfig(filename=os.path.join(OUT, "master.log"), level=logging.INFO,
                        format="%(process)d %(levelname)s %(message)s")
"""


@dataclass
class MasterProcess:
    """A supervisor script running as a child of the test."""

    proc: subprocess.Popen[bytes]
    out: Path
    script: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self, name: str) -> list[list[str]]:
        """The lines of ``out/name`` split into fields (empty if the file does not exist)."""
        try:
            text = (self.out / name).read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.strip()]

    def wait_lines(self, name: str, count: int, timeout: float = DEFAULT_TIMEOUT,
                   first: str | None = None) -> list[list[str]]:
        """Wait until ``out/name`` has ``count`` lines (starting with ``first``, if given)."""
        def enough() -> list[list[str]] | None:
            lines = [x for x in self.lines(name) if first is None or x[:1] == [first]]
            return lines if len(lines) >= count else None
        try:
            return wait_for(enough, timeout, f"{count} {first or ''} lines in {name}")  # type: ignore[return-value]
        except WaitTimeoutError as error:
            raise WaitTimeoutError(f"{error}\n{self.describe()}") from None

    def wait_log(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the master's log file (see ``log_to_file``) to contain ``text``."""
        def found() -> bool:
            try:
                return text in (self.out / "master.log").read_text()
            except FileNotFoundError:
                return False
        try:
            wait_for(found, timeout, f"{text!r} in master.log")
        except WaitTimeoutError as error:
            raise WaitTimeoutError(f"{error}\n{self.describe()}") from None

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait (bounded) for the master to exit; its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeoutError(f"master {self.pid} still running after {timeout} s\n"
                              f"{self.describe()}") from None

    def stderr(self) -> str:
        return (self.out.parent / "master.stderr").read_text()

    def describe(self) -> str:
        files = sorted(p.name for p in self.out.iterdir())
        return f"files: {files}\nmaster stderr:\n{self.stderr()[-3000:]}"

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)


def is_our_process(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive and its command line mentions ``marker`` (our script)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False


@contextlib.contextmanager
def supervisor_script(tmp_path: Path, body: str, *, env: dict[str, str] | None = None,
                      markers: tuple[str, ...] = ()) -> Iterator[MasterProcess]:
    """Run ``PRELUDE + body`` as a supervisor; on exit kill whatever of it is left and reap it.

    Worker pids recorded in any output file (third field of ``start`` lines, or any field that
    is a pid of a process whose command line names the script) are killed too, so a test that
    fails half-way leaves nothing behind.
    """
    script = write_script(tmp_path, PRELUDE + textwrap.dedent(body), name="supervisor_prog.py")
    out = tmp_path / "out"
    out.mkdir()
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = str(REPO)
    with open(tmp_path / "master.stderr", "wb") as stderr:
        proc = subprocess.Popen([PYTHON, str(script), str(out)], stdin=subprocess.DEVNULL,
                                stdout=stderr, stderr=stderr, env=full_env)
    master = MasterProcess(proc, out, script)
    try:
        yield master
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(DEFAULT_TIMEOUT)
        for name in os.listdir(out):
            for line in master.lines(name):
                for word in line:
                    if word.isdigit() and int(word) > 1 and any(
                            is_our_process(int(word), m) for m in (str(script), *markers)):
                        kill_tree(int(word))


def pids_from(lines: list[list[str]], kind: str = "start") -> list[int]:
    """Pids (third field) of the lines whose first field is ``kind``."""
    return [int(x[2]) for x in lines if x[0] == kind]


def terminate_and_wait(master: MasterProcess, timeout: float = DEFAULT_TIMEOUT) -> int:
    """SIGTERM the master and wait for its exit status."""
    master.signal(signal.SIGTERM)
    return master.wait(timeout)
