"""The ``daemonctx`` command under stress: racing start/stop loops, and arguments of any shape.

The racing loops run the real command (``python -m daemonctx``) in shell loops side by side on
one pidfile.  The argument fuzzing runs :func:`daemonctx.cli.main` in a child forked from the
test process (the same code ``python -m daemonctx`` runs, without the 30 ms of an interpreter
start per example), and holds every outcome to the command's documented contract: a status
from the documented set, at most one line on stderr (always one for bad input), never a
traceback, and never a program left running after a start that reported failure.
"""

from __future__ import annotations

import os
import select
import subprocess
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from daemonctx.pidfile import holder_pid
from tests.helpers import PYTHON, kill_tree, wait_for, write_script
from tests.stress.support import (
    Figures,
    assert_events_alternate,
    census,
    fresh_scratch,
    read_events,
)

pytestmark = pytest.mark.stress

LOOPS = 3
LOOP_ITERATIONS = 15
EXAMPLES = 150
# a command line no other process on the machine has: how the fuzzer finds what it started
MARK = "86399.123456"

PROGRAM = """
import os, select, signal, sys, time
from daemonctx.pidfile import holder_pid

log, pidfile = sys.argv[1], sys.argv[2]

def event(kind):
    ok = holder_pid(pidfile) == os.getpid()   # the lock inherited across exec is ours
    line = f"{kind} {os.getpid()} {time.monotonic_ns()} {'ok' if ok else 'nolock'}\\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())
    os.close(fd)

def terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # racing stops may send more than one
    raise SystemExit(0)

read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signal.set_wakeup_fd(write_fd)
signal.signal(signal.SIGTERM, terminate)
try:
    event("start")
    while True:  # not signal.pause(): a SIGTERM just before it would be lost
        select.select([read_fd], [], [])
finally:
    event("stop")
"""

IMPOSTOR_RACE = "which did not write it: not the daemon; refusing to signal it"
LOOP = """
for i in $(seq "$ITERATIONS"); do
    "$PYTHON" -m daemonctx start --pidfile "$PIDFILE" --wait 0 -- "$PYTHON" "$PROGRAM" \\
        "$LOG" "$PIDFILE" 2>>"$ERRORS"
    started=$?
    "$PYTHON" -m daemonctx stop --pidfile "$PIDFILE" --timeout 20 2>>"$ERRORS"
    echo "$started $?"
done
"""


def test_cli_start_stop_loops_racing_never_have_two_holders(tmp_path: Path,
                                                             figures: Figures) -> None:
    pidfile, log, errors = tmp_path / "app.pid", tmp_path / "events", tmp_path / "errors"
    program = write_script(tmp_path, PROGRAM, "program.py")
    env = dict(os.environ, PYTHON=PYTHON, PIDFILE=str(pidfile), PROGRAM=str(program),
               LOG=str(log), ERRORS=str(errors), ITERATIONS=str(LOOP_ITERATIONS))
    loops = [subprocess.Popen(["sh", "-c", LOOP], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(LOOPS)]
    try:
        outputs = [loop.communicate(timeout=240)[0] for loop in loops]
    finally:
        for loop in loops:
            kill_tree(loop.pid)
    # a stop refused because it caught the holder between its flock and its pid write (a known
    # bug, pinned below) leaves that program running: stop it now, before judging
    final_stop = subprocess.run([PYTHON, "-m", "daemonctx", "stop", "--pidfile", str(pidfile)],
                                capture_output=True, text=True, timeout=60)
    codes = [tuple(line.split()) for out in outputs for line in out.splitlines()]
    started = sum(1 for start, _ in codes if start == "0")
    events = read_events(log)
    error_text = errors.read_text() if errors.exists() else ""
    refused = error_text.count(IMPOSTOR_RACE)
    figures(loops=LOOPS, cycles=len(codes), started=started,
            programs_held_lock=len({pid for _, pid, _, _ in events}),
            start_codes=sorted({c[0] for c in codes}), stop_codes=sorted({c[1] for c in codes}),
            stops_refused_known_bug=refused)
    assert len(codes) == LOOPS * LOOP_ITERATIONS
    assert {start for start, _ in codes} <= {"0", "1"}, (codes, error_text)
    assert {stop for _, stop in codes} <= {"0", "1", "3"}, (codes, error_text)
    assert sum(1 for _, stop in codes if stop == "3") == refused, error_text
    assert final_stop.returncode in (0, 1), final_stop.stderr
    assert started > 0
    assert_events_alternate(events)
    assert holder_pid(pidfile) is None
    wait_for(lambda: census(program) == {}, what="every program to be gone")


# --- arguments of any shape -----------------------------------------------------------------

STATUSES = {"start": {0, 1, 3}, "restart": {0, 1, 2, 3}, "stop": {0, 1, 2, 3},
            "reload": {0, 1, 3}, "signal": {0, 1, 3}, "status": {0, 1, 3, 4}}
# no "/" (a relative path stays in the scratch directory), no NUL (argv cannot carry it), no
# newline (a known bug, pinned below)
TEXT = st.text(alphabet=st.characters(exclude_characters="/\0\n\r",
                                      exclude_categories=["Cs"]), max_size=10)
# never a valid value above 0.3 s but the huge ones (a known bug, skipped for start): each
# example stays quick even when it waits the whole time (--notify, --wait)
SECONDS = st.sampled_from(["0", "0.05", "0.3", "-1", "nan", "inf", "-inf", "1e300", "x", "",
                           "0x10", "1e-400"]) | st.floats(max_value=0.2).map(repr)
PATHS = st.sampled_from(["scratch-dir", "/nonexistent", "a-file", "out.log", "no-dir/x", "/"])
FLAGS: dict[str, st.SearchStrategy[str] | None] = {
    "--pidfile": st.sampled_from(["app.pid", "scratch-dir", "no-dir/app.pid", "a-file"]) | TEXT,
    "--user": st.sampled_from(["nobody", "root", "65534", "0", "no-such-user", "nobody:nogroup",
                               "nobody:", ":", ":root", "²", str(2**40), "-1"]) | TEXT,
    "--group": st.sampled_from(["nogroup", "0", "no-such-group", "³", str(2**40)]) | TEXT,
    "--chdir": PATHS | TEXT, "--chroot": PATHS | TEXT,
    "--umask": st.sampled_from(["022", "0", "777", "1000", "-1", "0o22", "8"]) | TEXT,
    "--stdout": PATHS | TEXT, "--stderr": PATHS | TEXT,
    "--env": st.sampled_from(["A=1", "=x", "NOEQUALS", "PATH=", "A=\u00e9"]) | TEXT,
    "--env-keep": TEXT, "--clear-env": None, "--notify": None, "--oknodo": None,
    "--verbose": None, "--json": None,
    "--timeout": SECONDS, "--wait": SECONDS,
    "--signal": st.sampled_from(["TERM", "KILL", "0", "99", "-1", "SIGFOO", "hup"]) | TEXT,
    "--retry": st.sampled_from(["TERM/1/KILL/1", "1", "forever", "TERM/x", "/", "KILL/0",
                                "TERM/1/forever", "HUP/nan"]) | TEXT,
}
PROGRAMS = st.sampled_from([None, [], ["/bin/true"], ["/nonexistent-command"], ["a-file"]]
                           + [["sleep", MARK]] * 4)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A command, some flags with (often bad) values in any order, maybe ``-- PROGRAM``."""
    argv = [draw(st.sampled_from(["start"] * 4 + ["restart"] * 2 + [*STATUSES]
                                 + ["bogus", "", "--version"]))]
    if argv[0] == "signal" and draw(st.booleans()):
        argv.append(draw(st.sampled_from(["TERM", "USR1", "0", "65", "NOPE"]) | TEXT))
    chosen = draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=4, unique=True))
    if draw(st.integers(0, 9)) > 0:
        chosen = ["--pidfile", *[f for f in chosen if f != "--pidfile"]]
    if "--notify" in chosen and "--timeout" not in chosen:
        chosen.append("--timeout")  # the default is 60 s of waiting for READY=1
    pairs = []
    for flag in chosen:
        values = FLAGS[flag]
        pairs.append([flag] if values is None else [flag, draw(values)])
    for pair in draw(st.permutations(pairs)):
        argv.extend(pair)
    if draw(st.integers(0, 19)) == 0:
        argv.append(draw(TEXT))  # a stray word
    program = draw(PROGRAMS)
    if program is not None:
        argv += ["--", *program]
    return argv


KNOWN_CLI_BUGS: dict[str, Callable[[list[str]], bool]] = {}  # none open: see the end


def run_cli_in_child(argv: list[str], scratch: Path,
                     timeout: float = 60.0) -> tuple[int, str, str]:
    """Fork, run ``daemonctx.cli.main(argv)`` in ``scratch``; (status, stdout, stderr)."""
    out_path, err_path = scratch.parent / "cli.out", scratch.parent / "cli.err"
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            os.chdir(scratch)
            for fd, path in ((1, out_path), (2, err_path)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            from daemonctx import cli

            code = cli.main(argv)
        except SystemExit as stop:  # --help, --version
            code = stop.code if isinstance(stop.code, int) else 97
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            code = 99
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            kill_tree(pid)
            raise AssertionError(f"daemonctx {argv!r} did not finish in {timeout} s")
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return (os.waitstatus_to_exitcode(status), out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"))


def _stop_marked_programs() -> list[int]:
    """SIGKILL every program the fuzzer started (found by MARK); their pids."""
    found = list(census(MARK))
    for pid in found:
        kill_tree(pid)
    return found


def check_command_line(base: Path, argv: list[str], tally: Callable[[str], None]) -> None:
    """Run one example and hold it to the contract in the module docstring."""
    scratch = fresh_scratch(base)
    code, _, err = run_cli_in_child(argv, scratch)
    running = census(MARK)
    _stop_marked_programs()
    command = argv[0] if argv[0] in STATUSES else None
    lines = err.rstrip("\n").split("\n") if err else []  # lines a terminal shows
    assert "Traceback" not in err, f"daemonctx {argv!r} -> {code}:\n{err}"
    assert len(lines) <= 1, f"daemonctx {argv!r} -> {code}: {lines}"
    if lines:
        assert lines[0].startswith("daemonctx"), lines
    if argv[0] == "--version":
        assert code == 0
    else:
        expected = STATUSES.get(command or "", {3})
        assert code in expected, f"daemonctx {argv!r} -> {code} not in {expected}: {err!r}"
        if code == 3 and command != "status":
            assert len(lines) == 1, f"an error with no reason: {argv!r} -> {code}"
    if command in ("start", "restart") and code != 0:
        assert not running, f"start {argv!r} said {code} but left {running}"
    tally(f"{command or argv[0] or 'empty'} -> {code}" + (" (running)" if running else ""))


@pytest.fixture(autouse=True)
def _no_marked_program_left() -> Iterator[None]:
    """Whatever a test of this module started and did not stop, it is killed at the end."""
    yield
    _stop_marked_programs()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=command_lines())
def test_cli_arguments_of_any_shape_get_a_documented_status_and_at_most_one_line(
        tmp_path: Path, tally: Callable[[str], None], argv: list[str]) -> None:
    known = [name for name, hits in KNOWN_CLI_BUGS.items() if hits(argv)]
    if known:
        tally(f"skipped (known bug: {known[0]})")
    assume(not known)
    check_command_line(tmp_path, argv, tally)


# --- regressions: each bug the property test found, pinned by its own test --------------


@pytest.mark.parametrize("flag", ["--user", "--group"])
def test_cli_user_or_group_of_non_ascii_digits_is_one_line_and_status_3(tmp_path: Path,
                                                                        flag: str) -> None:
    scratch = fresh_scratch(tmp_path)
    argv = ["start", "--pidfile", "app.pid", flag, "²", "--", "/bin/true"]
    code, _, err = run_cli_in_child(argv, scratch)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert code == 3


def test_cli_start_with_a_timeout_beyond_select_is_refused_and_leaves_nothing_running(
        tmp_path: Path) -> None:
    scratch = fresh_scratch(tmp_path)
    argv = ["start", "--pidfile", "app.pid", "--timeout", "1e300", "--wait", "0", "--",
            "sleep", MARK]
    try:
        code, _, err = run_cli_in_child(argv, scratch)
        assert code == 3 and "--timeout" in err, err
        assert not census(MARK), "a failed start left the program running"
    finally:
        _stop_marked_programs()


def test_cli_error_naming_a_path_with_a_newline_is_still_one_line(tmp_path: Path) -> None:
    scratch = fresh_scratch(tmp_path)
    argv = ["start", "--pidfile", "app.pid", "--stdout", "out\nlog", "--wait", "0.2", "--",
            "/bin/true"]
    code, _, err = run_cli_in_child(argv, scratch)
    assert code == 3
    assert err.count("\n") == 1, err


SLOW_CLAIM = """
import fcntl, os, select, signal, sys, time

path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.3)  # a holder preempted between its flock and its pid write (simulated)
data = f"{os.getpid()}\\n".encode()
os.pwrite(fd, data, 0)
os.ftruncate(fd, len(data))
read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
signal.set_wakeup_fd(write_fd)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    select.select([read_fd], [], [])
"""


def test_cli_stop_waits_for_a_holder_that_has_not_written_its_pid_yet(tmp_path: Path,
                                                                     spawned: list[int]) -> None:
    pidfile = tmp_path / "app.pid"
    script = write_script(tmp_path, SLOW_CLAIM, "slow_claim.py")
    holder = subprocess.Popen([PYTHON, str(script), str(pidfile)], stdout=subprocess.PIPE,
                              text=True)
    spawned.append(holder.pid)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    stop = subprocess.run([PYTHON, "-m", "daemonctx", "stop", "--pidfile", str(pidfile),
                           "--timeout", "10"], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert holder.wait(10) == 0
