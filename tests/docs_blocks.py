"""Code blocks of the documentation that are marked runnable, and a shell to run console ones.

A fenced block in ``README.md`` or ``docs/**/*.md`` is runnable when the line right before it
is a MyST comment ``% runnable: NAME`` (invisible in the built pages; in ``README.md``, which
GitHub renders, ``<!-- runnable: NAME -->``), optionally followed by words that say how it runs
(``% runnable: tutorial-1-plain background``).  ``tests/test_docs_runnable``
has one scenario per name and fails for a marked block without one, and for a scenario whose
block is gone, so that a runnable example can neither be added nor removed unnoticed.

Console blocks (```` ```console ````) are run by :class:`ConsoleSession`, a real ``bash`` fed one
command at a time, as a user types them: ``$ `` lines are commands (a trailing ``\\`` continues
one), the lines after them its expected output.  Output is compared line by line, loosely where
a real run cannot match a page: runs of digits match any digits (pids, ports, times), runs of
spaces match any spaces (``ps`` columns), ``...`` matches anything within a line and a line of
only ``...`` any number of lines, and ``/home/you`` is the session's directory.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import REPO, WaitTimeoutError, kill_tree, wait_for, wait_pid_gone

# "% runnable: NAME [how...]" (a MyST comment) in the docs; "<!-- runnable: NAME -->" in
# README.md, which GitHub renders as Markdown.
MARKER = re.compile(r"^(?:% |<!-- )runnable: (?P<name>[\w.-]+)(?P<how>(?: [\w-]+)*)\s*"
                    r"(?:-->)?\s*$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One runnable block: its name, where it is, its language, its text and how it runs."""

    name: str
    path: Path
    line: int
    language: str
    text: str
    how: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def documentation_files() -> list[Path]:
    """README.md and every Markdown page of the documentation."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def runnable_blocks() -> dict[str, Block]:
    """Every marked block, by name (a name marked twice is an error)."""
    blocks: dict[str, Block] = {}
    for path in documentation_files():
        if "_build" in path.parts:
            continue
        for block in _blocks_of(path):
            if block.name in blocks:
                raise AssertionError(f"runnable block {block.name!r} is marked twice: "
                                     f"{blocks[block.name].where} and {block.where}")
            blocks[block.name] = block
    return blocks


def _blocks_of(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        marker = MARKER.match(lines[index])
        if marker is None:
            index += 1
            continue
        opening = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if opening is None:
            raise AssertionError(f"{path}:{index + 1}: '% runnable:' is not followed by a "
                                 f"fenced code block")
        fence = opening.group("fence")
        end = index + 2
        while end < len(lines) and lines[end].rstrip() != fence:
            end += 1
        found.append(Block(marker.group("name"), path, index + 2,
                           opening.group("info").strip(), "\n".join(lines[index + 2:end]) + "\n",
                           tuple(marker.group("how").split())))
        index = end + 1
    return found


# --- console blocks -----------------------------------------------------------------------------


@dataclass
class Command:
    """One ``$`` line of a console block and the output the page shows for it."""

    text: str
    expected: list[str] = field(default_factory=list)


def commands_of(block: Block) -> list[Command]:
    """The commands of a console block, continuation lines joined."""
    commands: list[Command] = []
    pending: str | None = None
    for line in block.text.splitlines():
        if pending is not None:
            pending += "\n" + line
            if not line.endswith("\\"):
                commands.append(Command(pending))
                pending = None
            continue
        if line.startswith("$ "):
            if line.endswith("\\"):
                pending = line[2:]
            else:
                commands.append(Command(line[2:]))
        elif commands:
            commands[-1].expected.append(line)
        elif line.strip():
            raise AssertionError(f"{block.where}: output before the first command: {line!r}")
    return commands


def line_pattern(expected: str, home: Path) -> re.Pattern[str]:
    """The regular expression an output line must match to stand for ``expected``."""
    parts = re.split(r"(\.\.\.|\d+|\s+|/home/you)", expected.strip())
    regex = []
    for part in parts:
        if part == "...":
            regex.append(".*")
        elif part == "/home/you":
            regex.append(re.escape(str(home)))
        elif part.isdigit():
            regex.append(r"\d+")
        elif part and part.isspace():
            regex.append(r"\s+")
        else:
            regex.append(re.escape(part))
    return re.compile("".join(regex))


def output_matches(expected: list[str], actual: list[str], home: Path) -> bool:
    """True if ``actual`` lines are what the page shows (see the module documentation)."""
    want = [line for line in expected if line.strip()]
    got = [line for line in actual if line.strip()]

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and line_pattern(want[i], home).fullmatch(got[j].strip()) is not None \
            and match(i + 1, j + 1)

    return match(0, 0)


_LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
name = b"lo".ljust(16, b"\\0")
flags = struct.unpack("16sH", fcntl.ioctl(probe, SIOCGIFFLAGS, name + bytes(24))[:18])[1]
fcntl.ioctl(probe, SIOCSIFFLAGS, name + struct.pack("H", flags | IFF_UP) + bytes(22))
os.execvp(sys.argv[1], sys.argv[1:])
"""


class ConsoleSession:
    """A real bash in ``home``, fed the commands of console blocks one at a time.

    ``PATH`` starts with the test's virtual environment, so ``python`` and ``daemonctx`` are the
    ones under test.  Commands run in the same shell, so ``$?``, variables and the directory
    carry over as in a terminal.  :meth:`close` stops the shell and every process it started in
    the background (by pid); daemons the commands started are the caller's to stop.
    """

    def __init__(self, home: Path, env: dict[str, str] | None = None,
                 timeout: float = 60.0, *, own_network: bool = False) -> None:
        self.home = home
        self.timeout = timeout
        venv_bin = os.path.dirname(sys.executable)
        base = dict(os.environ if env is None else env)
        base["PATH"] = f"{venv_bin}:{base.get('PATH', '/usr/bin:/bin')}"
        base["PYTHONPATH"] = str(REPO)
        shell = ["bash", "--noprofile", "--norc"]
        if own_network:
            # A network namespace of its own, loopback up: the page's fixed ports (8470) are
            # free whatever else runs on the machine.
            shell = ["unshare", "--net", "--", sys.executable, "-c", _LOOPBACK_UP, *shell]
        self.shell = subprocess.Popen(
            shell, cwd=home, env=base, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.background: list[int] = []
        self._buffer = b""
        self._serial = 0

    def run(self, command: str, timeout: float | None = None) -> tuple[list[str], int]:
        """Run ``command``; its output lines (stdout and stderr) and its exit status."""
        self._serial += 1
        marker = f"__daemonctx_docs_{self._serial}__"
        script = (f"{command}\n__rc=$?; printf '\\n{marker} %d\\n' \"$__rc\"; "
                  f"(exit \"$__rc\")\n")
        self._send(script)
        text = self._read_until(re.compile(rf"\n{marker} (\d+)\n".encode()), timeout)
        head, _, rest = text.rpartition(f"\n{marker} ".encode())
        status = int(rest.split(b"\n", 1)[0])
        return head.decode("utf-8", "replace").splitlines(), status

    def start_in_background(self, command: str, until: str,
                            timeout: float | None = None) -> list[str]:
        """Start ``command`` as in a second terminal; return its output once it showed ``until``.

        Its output goes to a file of its own (a terminal of its own), read until a line
        matches ``until``.
        """
        output = self.home / f".background-{len(self.background)}.out"
        # In a subshell: the shell does not report the job's end ("Killed") between the next
        # commands' output.
        lines, _ = self.run(f"({command} > {output} 2>&1 & echo \"__bg__ $!\")")
        self.background.extend(int(line.split()[1]) for line in lines
                               if line.startswith("__bg__ "))
        pattern = line_pattern(until, self.home)

        def shown() -> list[str] | None:
            try:
                text = output.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:  # not created yet
                return None
            found = text.splitlines()
            return found if any(pattern.fullmatch(line.strip()) for line in found) else None

        return wait_for(shown, timeout or self.timeout)

    def interrupt_background(self) -> None:
        """Stop the programs started as in a second terminal, and wait (bounded).

        SIGTERM, not the SIGINT of a Ctrl-C: a shell without job control starts background
        programs with SIGINT ignored.
        """
        for pid in self.background:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for pid in self.background:
            try:
                wait_pid_gone(pid, 10)
            except WaitTimeoutError:
                kill_tree(pid)
        self.background.clear()

    def close(self) -> None:
        """Stop the background programs and the shell."""
        self.interrupt_background()
        if self.shell.poll() is None:
            assert self.shell.stdin is not None
            try:
                self.shell.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.shell.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.shell.pid, signal.SIGKILL)
                self.shell.wait(10)
        assert self.shell.stdout is not None
        self.shell.stdout.close()

    # --- internals ----------------------------------------------------------------------------

    def _send(self, text: str) -> None:
        assert self.shell.stdin is not None
        self.shell.stdin.write(text.encode())
        self.shell.stdin.flush()

    def _read_some(self, deadline: float) -> bytes:
        assert self.shell.stdout is not None
        fd = self.shell.stdout.fileno()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"the shell gave no more output in time; so far: "
                                 f"{self._buffer.decode('utf-8', 'replace')!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError("the shell exited")
        return chunk

    def _read_until(self, pattern: re.Pattern[bytes], timeout: float | None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while (found := pattern.search(self._buffer)) is None:
            self._buffer += self._read_some(deadline)
        text, self._buffer = self._buffer[:found.end()], self._buffer[found.end():]
        return text

