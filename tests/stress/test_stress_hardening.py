"""The hardening of issues 13 and 14 under stress: many runs, a busy machine, racing users.

Each defect has a focused regression test (tests/test_notify_readiness.py,
tests/test_launcher_cleanup.py, tests/test_privileged_paths.py); here the same behaviours are
held over many runs and against adversaries:

* ``systemd-notify --ready`` in a ``sh -e`` script, 100 starts in a row while CPU hogs keep
  the machine busy: every barrier answered, every start a success;
* another local user racing to bind the notify socket's name (readable by anyone in
  ``/proc/net/unix``) while the program, or a worker that outlived it, keeps sending status
  lines: never binds it while they run, never reads a line;
* a daemon dying during start-up with a helper holding the start-up pipe, its pid recycled at
  once in a fresh pid namespace: the innocent process holding it is never signalled;
* programs leaving a child in a session of its own, then exiting or never sending READY=1:
  nothing outlives the failed start, not even a holder of the pidfile's lock; the same for
  ``DaemonContext`` daemons, whose launcher is no subreaper, and their pidfiles are removed;
* any sequence of sd_notify lines: a documented outcome (started, or status 3 and one line),
  the one sd_notify(3) gives them (lines end at newlines only), and nothing left running;
* the daemon's user replacing the log file in its own directory with links to a root-only
  file, as fast as it can, while root starts the daemon: root never writes there.

The ``daemonctx`` command runs as :func:`daemonctx_command`: :func:`daemonctx.cli.main` in a
child forked from the test process, the code ``python -m daemonctx`` runs without an
interpreter start per call (a cycle under CPU hogs costs a third as much); the real entry point
is exercised by the regression tests.  Every program started here carries :data:`MARK` in its
command line (how long it sleeps, or an argument it ignores), a number no other process uses:
:func:`census` finds whatever is left, whoever its parent.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PYTHON,
    WaitTimeoutError,
    kill_tree,
    pid_exists,
    pid_in_message,
    wait_file_text,
    wait_for,
    wait_pid_gone,
    write_script,
)
from tests.stress.support import Figures, census
from tests.test_launcher_cleanup import APP, HARNESS, LIBRARY_APP

pytestmark = pytest.mark.stress

MARK = "86400.271828"  # in the command line of every program of this module: census finds them
NOBODY = 65534
SYSTEMD_NOTIFY = shutil.which("systemd-notify")
# An interpreter another user can execute (this one may live under /root, mode 0700).
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                      if os.access(p, os.X_OK)), None)

NOTIFY_STARTS = 100
HOGS = 2
RACED_CYCLES = 20
NAMESPACE_RUNS = 10
ESCAPE_RUNS = 20
NOTIFY_EXAMPLES = 40
LOG_LAUNCHES = 30


# --- helpers ---------------------------------------------------------------------------------


def daemonctx_command(workdir: Path, *argv: str,
                      timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``daemonctx ARGV`` run by :func:`daemonctx.cli.main` in a forked child (bounded wait).

    Stdin is /dev/null; stdout and stderr go to files in ``workdir``.  A traceback (anything
    escaping ``main``) is written to stderr and gives status 99.
    """
    out_path, err_path = workdir / "cli.out", workdir / "cli.err"
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            for fd, path in ((1, out_path), (2, err_path)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            from daemonctx import cli

            code = cli.main(list(argv))
        except SystemExit as stop:
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
            raise WaitTimeoutError(f"daemonctx {list(argv)!r} did not finish in {timeout} s")
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(
        list(argv), os.waitstatus_to_exitcode(status),
        out_path.read_bytes().decode("utf-8", "replace"),
        err_path.read_bytes().decode("utf-8", "replace"))


def is_one_line_error(result: subprocess.CompletedProcess[str]) -> bool:
    """The command failed with exactly one line on stderr (``daemonctx ...``), no traceback."""
    err = result.stderr
    return ("Traceback" not in err and err.startswith("daemonctx") and err.endswith("\n")
            and err.count("\n") == 1 and len(err.splitlines()) == 1)


def lock_holders(path: Path) -> list[int]:
    """Pids holding an flock on the file at ``path``, or on a file removed from that path.

    Read from every process's fds (``/proc/locks`` names the process that took a lock, not
    the children that inherited it): an fd naming ``path`` (or ``path (deleted)``) whose
    inode is flock-locked.
    """
    fd = os.open("/proc/locks", os.O_RDONLY)
    try:
        text = os.read(fd, 1 << 22).decode("ascii", "replace")
    finally:
        os.close(fd)
    locked = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK":
            major, minor, inode = fields[5].split(":")
            locked.add((os.makedev(int(major, 16), int(minor, 16)), int(inode)))
    names = {str(path), f"{path} (deleted)"}
    holders = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for name in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{name}") not in names:
                    continue
                st = os.stat(f"/proc/{entry}/fd/{name}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in locked:
                holders.add(int(entry))
    return sorted(holders)


def keepers(programs: set[int]) -> list[int]:
    """Live notify keepers (daemonctx._notify_keeper) serving one of ``programs``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"daemonctx._notify_keeper" not in argv:
            continue
        for arg in argv:
            if arg.startswith(b"--for-pid=") and int(arg[10:]) in programs:
                found.append(int(entry))
    return found


def left_running(programs: Iterable[int] = (), timeout: float = 15.0) -> dict[int, str]:
    """What this module started and is still running, once exiting processes had their moment.

    Programs (found by :data:`MARK`), and the notify keepers of ``programs``.  Empty means
    nothing was left; otherwise the survivors with their command lines, for the failure.
    """
    served = set(programs)

    def alive() -> dict[int, str]:
        pids = set(census(MARK)) | set(keepers(served))
        found = {}
        for pid in pids:
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") \
                    .decode(errors="replace")
            except OSError:
                continue
        return found

    try:
        wait_for(lambda: not alive(), timeout, "the programs and keepers to end")
    except WaitTimeoutError:
        return alive()
    return {}


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Whatever a test of this module left running (a failing one) is killed by pid."""
    yield
    for pid in census(MARK):
        kill_tree(pid)


def notify_socket_of(program: int) -> str:
    """The NOTIFY_SOCKET in the environment of ``program`` (``@daemonctx-notify/...``)."""
    environ = Path(f"/proc/{program}/environ").read_bytes().split(b"\0")
    (address,) = [v[len(b"NOTIFY_SOCKET="):].decode() for v in environ
                  if v.startswith(b"NOTIFY_SOCKET=")]
    return address


needs_systemd_notify = pytest.mark.skipif(
    SYSTEMD_NOTIFY is None, reason="systemd-notify is not installed (Debian package systemd)")
needs_system_python = pytest.mark.skipif(
    SYSTEM_PYTHON is None, reason="no Python interpreter that nobody may execute")


# --- 1. systemd-notify on a busy machine -----------------------------------------------------


@needs_systemd_notify
def test_hundred_systemd_notify_starts_on_a_busy_machine_all_succeed(
        tmp_path: Path, pid_path: Path, spawned: list[int], figures: Figures) -> None:
    marker = tmp_path / "after"
    script = (f"systemd-notify --ready; systemd-notify --status=serving; echo ok > {marker}; "
              f"exec sleep {MARK}")
    hogs = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"]) for _ in range(HOGS)]
    spawned.extend(hog.pid for hog in hogs)
    starts, succeeded, barrier_failures, failures = 0, 0, 0, []
    programs: set[int] = set()
    began = time.monotonic()
    try:
        for cycle in range(NOTIFY_STARTS):
            marker.unlink(missing_ok=True)
            starts += 1
            result = daemonctx_command(tmp_path, "start", "--notify", "--timeout", "20",
                                       "--pidfile", str(pid_path), "--", "/bin/sh", "-ec",
                                       script)
            if result.returncode != 0:
                failures.append(f"cycle {cycle}: start exit {result.returncode}: "
                                f"{result.stderr.strip()}")
                continue
            program = holder_pid(pid_path)
            if program is not None:
                programs.add(program)
                # `sh -e` got past both systemd-notify calls (both barriers answered), or died
                wait_for(lambda: marker.exists() or not pid_exists(program),  # noqa: B023
                         20, "the script to get past systemd-notify or die")
            if marker.exists():
                succeeded += 1
            else:
                barrier_failures += 1
                failures.append(f"cycle {cycle}: the script died before writing its marker")
            stop = daemonctx_command(tmp_path, "stop", "--pidfile", str(pid_path))
            if stop.returncode != 0 and program is not None:
                failures.append(f"cycle {cycle}: stop exit {stop.returncode}: {stop.stderr}")
    finally:
        hog_states = [hog.poll() is None for hog in hogs]
        for hog in hogs:
            kill_tree(hog.pid)
        elapsed = time.monotonic() - began
        left = left_running(programs)
        figures(starts=starts, succeeded=succeeded, barrier_failures=barrier_failures,
                hogs=HOGS, hogs_ran_throughout=all(hog_states), seconds=f"{elapsed:.1f}",
                ms_per_cycle=f"{1000 * elapsed / max(starts, 1):.0f}",
                left_running=sorted(left))
    assert not failures, failures[:5]
    assert succeeded == NOTIFY_STARTS
    assert all(hog_states), "a CPU hog ended early: the machine was not kept busy"
    assert not left, left


# --- 2. another user racing for the notify socket --------------------------------------------

# Runs as nobody: binds every daemonctx notify socket name it sees in /proc/net/unix, as fast
# as it can; reads whatever a won name receives.  One line per event in its log.
RACER = """
import os, select, signal, socket, sys, time

log = open(sys.argv[1], "a", buffering=1)
stopping = False

def stop(signum, frame):
    global stopping
    stopping = True

signal.signal(signal.SIGTERM, stop)
seen, attempts, won, got = set(), 0, 0, 0
log.write("racing\\n")
while not stopping:
    with open("/proc/net/unix", "rb") as table:
        lines = table.read().splitlines()[1:]
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or not fields[7].startswith(b"@daemonctx-notify"):
            continue
        name = fields[7][1:]
        attempts += 1
        if name not in seen:
            seen.add(name)
            log.write(f"seen {name.decode()}\\n")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(b"\\0" + name)
        except OSError:
            sock.close()
            continue
        won += 1
        log.write(f"won {name.decode()} {time.monotonic()}\\n")
        deadline = time.monotonic() + 0.3
        while (left := deadline - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                got += 1
                log.write(f"got {name.decode()} {sock.recv(65536)!r}\\n")
        sock.close()
log.write(f"attempts {attempts} won {won} got {got}\\n")
"""

# The service: READY=1, then a secret status line every 2 ms (sendto by name each time, as
# systemd-notify does) until SIGTERM; in a file: how many it sent, how many sends failed, and
# (at SIGTERM) the last moment it ran, on the system-wide monotonic clock.  With "fork" (the
# outside review's variant of issue 14 #1), a worker it forked after READY=1 sends the lines
# (its pid in <counts>.worker), and the program itself exits at SIGUSR1.
SECRET_SENDER = """
import os, signal, socket, sys, time

counts = sys.argv[1]
address = os.environ["NOTIFY_SOCKET"]
address = "\\0" + address[1:] if address.startswith("@") else address
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sent, failed = 0, 0

def report(last="-"):
    with open(counts + ".tmp", "w") as out:
        out.write(f"{sent} {failed} {last}")
    os.rename(counts + ".tmp", counts)

def stop(signum, frame):
    report(time.monotonic())
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
sock.sendto(b"READY=1", address)
if sys.argv[3:4] == ["fork"]:  # the worker sends; the program exits at SIGUSR1
    if os.fork():
        signal.sigwait({signal.SIGUSR1})
        os._exit(0)
    with open(counts + ".worker", "w") as out:
        out.write(str(os.getpid()))
while True:
    try:
        sock.sendto(f"STATUS=secret-{sent}".encode(), address)
        sent += 1
    except OSError:
        failed += 1
    if sent % 10 == 0:
        report()
    time.sleep(0.002)
"""


def _sender_counts(path: Path) -> tuple[int, int, float | None]:
    """What the sender reported: (lines sent, sends failed, its last moment or None)."""
    try:
        sent, failed, last = path.read_text().split()
    except (FileNotFoundError, ValueError):
        return 0, 0, None
    return int(sent), int(failed), (None if last == "-" else float(last))


@needs_system_python
def test_local_user_racing_for_the_notify_socket_never_receives_a_message(
        tmp_path: Path, world_dir: Path, pid_path: Path, spawned: list[int],
        figures: Figures) -> None:
    assert SYSTEM_PYTHON is not None
    racer_script = write_script(world_dir, RACER, "racer.py")
    sender = write_script(tmp_path, SECRET_SENDER, "sender.py")
    log = world_dir / "racer.log"
    racer = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                              "--clear-groups", SYSTEM_PYTHON, "-I", str(racer_script),
                              str(log)], stdin=subprocess.DEVNULL)
    spawned.append(racer.pid)
    wait_file_text(log, predicate=lambda text: "racing" in text)
    ended_at: dict[str, float] = {}  # socket name -> the last moment its sender ran
    programs: set[int] = set()
    sent = refused = cycles = worker_cycles = 0
    try:
        for cycle in range(RACED_CYCLES):
            counts = tmp_path / f"counts-{cycle}"
            by_worker = cycle % 2 == 1
            result = daemonctx_command(tmp_path, "start", "--notify", "--timeout", "20",
                                       "--pidfile", str(pid_path), "--", PYTHON,
                                       str(sender), str(counts), MARK,
                                       *(["fork"] if by_worker else []))
            assert result.returncode == 0, result.stderr
            cycles += 1
            program = holder_pid(pid_path)
            assert program is not None
            programs.add(program)
            name = notify_socket_of(program)[1:]
            sender_pid = program
            if by_worker:  # the program exits; its worker goes on sending
                sender_pid = int(wait_file_text(Path(f"{counts}.worker")))
                spawned.append(sender_pid)
                os.kill(program, signal.SIGUSR1)
                wait_pid_gone(program)
                worker_cycles += 1
            before = _sender_counts(counts)[0]
            # the racer tried to take the name while the program sent its secrets
            wait_file_text(log, predicate=lambda text: f"seen {name}\n" in text)  # noqa: B023
            wait_for(lambda: _sender_counts(counts)[0] >= before + 30,  # noqa: B023
                     what="the sender to send 30 secret lines")
            stop = daemonctx_command(tmp_path, "stop", "--pidfile", str(pid_path))
            assert stop.returncode == 0, stop.stderr
            wait_pid_gone(sender_pid)
            these, failed, last = _sender_counts(counts)
            assert last is not None, "the program did not report its end"
            sent, refused, ended_at[name] = sent + these, refused + failed, last
    finally:
        racer.send_signal(signal.SIGTERM)
        try:
            racer.wait(15)
        finally:
            kill_tree(racer.pid)
        events = log.read_text().splitlines() if log.exists() else []
        summary = next((e.split() for e in events if e.startswith("attempts ")), [])
        attempts = int(summary[1]) if summary else -1
        wins = [(e.split()[1], float(e.split()[2])) for e in events if e.startswith("won ")]
        during = [name for name, when in wins if when <= ended_at.get(name, float("inf"))]
        received = [e for e in events if e.startswith("got ")]
        secrets = [e for e in received if "secret-" in e]
        left = left_running(programs)
        figures(cycles=cycles, cycles_sent_by_a_worker_outliving_the_program=worker_cycles,
                bind_attempts=attempts,
                names_raced=sum(1 for e in events if e.startswith("seen ")),
                binds_won_while_serving=len(during),
                binds_won_after_the_program_ended=len(wins) - len(during),
                secret_lines_sent=sent, sends_refused=refused,
                datagrams_received_by_racer=len(received),
                secret_lines_received_by_racer=len(secrets), left_running=sorted(left))
    assert cycles == RACED_CYCLES
    assert attempts > 0, events[-5:]
    assert not during, f"the racer bound a live program's socket: {during}"
    assert not secrets, secrets[:5]
    assert refused == 0, "the program's socket had nobody listening while it ran"
    assert not left, left


# --- 3. recycled pids of failed daemons ------------------------------------------------------


def _run_in_pid_namespace(rundir: Path, timeout: float) -> dict[str, object]:
    """tests/test_launcher_cleanup.py's harness as pid 1 of a fresh pid namespace."""
    app = write_script(rundir, APP, "app.py")
    harness = write_script(rundir, HARNESS, "harness.py")
    # every process of the namespace dies with its pid 1 (the harness): nothing outlives this
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", PYTHON, str(harness),
                             PYTHON, str(app), str(rundir), str(timeout)],
                            capture_output=True, text=True, timeout=90)
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"cannot create a pid namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is missing")
def test_recycled_pids_of_failed_daemons_are_never_signalled(tmp_path: Path,
                                                             figures: Figures) -> None:
    runs = recycled = signalled = helpers_left = 0
    problems: list[str] = []
    exits: dict[str, int] = {}
    try:
        for run in range(NAMESPACE_RUNS):
            rundir = tmp_path / f"run-{run}"
            rundir.mkdir()
            report = _run_in_pid_namespace(rundir, timeout=3.0)
            runs += 1
            daemon, helper = report["daemon"], report["helper"]
            exits[str(report["launcher"])] = exits.get(str(report["launcher"]), 0) + 1
            said = (f"daemon (pid {daemon}) exited with status 3 during start-up; stopped 1 "
                    f"process it left running (pid {helper})")
            if report["launcher"] != 3 or said not in str(report["stderr"]):
                problems.append(f"run {run}: {report}")
            if report["helper_alive"] is not False:
                helpers_left += 1
                problems.append(f"run {run}: helper left running: {report}")
            if report["innocent"] == daemon:
                recycled += 1
                if report["innocent_status"] != "alive":
                    signalled += 1
                    problems.append(f"run {run}: innocent signalled: {report}")
    finally:
        figures(runs=runs, pids_recycled=recycled, innocents_signalled=signalled,
                helpers_left=helpers_left, launcher_exits=exits)
    assert not problems, problems
    assert recycled == runs, "the dead daemon's pid was not always given to an innocent"


# --- 4. children escaping into new sessions --------------------------------------------------


def test_programs_escaping_into_new_sessions_never_outlive_a_failed_start(
        tmp_path: Path, pid_path: Path, figures: Figures) -> None:
    runs = leftovers = holders_after = pidfiles_left = 0
    problems: list[str] = []
    outcomes: dict[str, int] = {}
    try:
        for run in range(ESCAPE_RUNS):
            child_file = tmp_path / f"child-{run}"
            escape = f"setsid /bin/sleep {MARK} & echo $! > {child_file}"
            if run % 2 == 0:
                kind = "exits"
                argv = ["--wait", "10", "--", "/bin/sh", "-c", f"{escape}; exit 0"]
            else:
                kind = "never ready"
                argv = ["--notify", "--timeout", "1", "--", "/bin/sh", "-c",
                        f"{escape}; exec /bin/sleep {MARK}"]
            result = daemonctx_command(tmp_path, "start", "--pidfile", str(pid_path), *argv)
            runs += 1
            child = int(wait_file_text(child_file).strip())
            running = census(MARK)
            holders = lock_holders(pid_path)
            status = daemonctx_command(tmp_path, "status", "--pidfile", str(pid_path))
            named = f"stopped 1 process it left running (pid {child})" in result.stderr
            outcomes[f"{kind}: exit {result.returncode}"] = \
                outcomes.get(f"{kind}: exit {result.returncode}", 0) + 1
            if result.returncode != 3 or not is_one_line_error(result) or not named:
                problems.append(f"run {run} ({kind}): exit {result.returncode}: "
                                f"{result.stderr!r}")
            if running or pid_exists(child):
                leftovers += 1
                problems.append(f"run {run} ({kind}): left running {running}, child {child}")
            if holders:
                holders_after += 1
                problems.append(f"run {run} ({kind}): {holders} hold the pidfile's lock")
            if pid_path.exists():
                pidfiles_left += 1
                problems.append(f"run {run} ({kind}): the pidfile is left")
            if status.returncode != 3:
                problems.append(f"run {run} ({kind}): status exit {status.returncode}: "
                                f"{status.stdout!r}")
            for pid in running:  # so that one leak does not spoil the next runs
                kill_tree(pid)
    finally:
        figures(runs=runs, outcomes=outcomes, leftovers=leftovers,
                lock_holders_after=holders_after, pidfiles_left=pidfiles_left)
    assert not problems, problems[:5]


def test_library_daemons_leaving_helpers_in_new_sessions_never_outlive_a_failed_start(
        tmp_path: Path, figures: Figures) -> None:
    """The outside review's item 3, through DaemonContext (a launcher that is no subreaper).

    Daemons that die during start-up, half of them after forking a helper into a session of
    its own that keeps the pidfile's descriptor: nothing survives, nobody holds the lock, the
    pidfile is gone and ``status`` says 3.
    """
    runs = leftovers = holders_after = pidfiles_left = 0
    problems: list[str] = []
    outcomes: dict[str, int] = {}
    app = write_script(tmp_path, LIBRARY_APP, "app.py")
    try:
        for run in range(ESCAPE_RUNS):
            rundir = tmp_path / f"run-{run}"
            rundir.mkdir()
            mode = "setsid-helper" if run % 2 == 0 else "die"
            result = subprocess.run([PYTHON, str(app), str(rundir), mode, MARK],
                                    capture_output=True, text=True, timeout=60)
            runs += 1
            pidfile = rundir / "app.pid"
            running = census(MARK)
            holders = lock_holders(pidfile)
            status = daemonctx_command(tmp_path, "status", "--pidfile", str(pidfile))
            key = f"{mode}: exit {result.returncode}"
            outcomes[key] = outcomes.get(key, 0) + 1
            if result.returncode != 3:
                problems.append(f"run {run} ({mode}): exit {result.returncode}: "
                                f"{result.stderr!r}")
            if mode == "setsid-helper":
                helper = int(wait_file_text(rundir / "helper.pid"))
                if f"stopped 1 process it left running (pid {helper})" not in result.stderr:
                    problems.append(f"run {run} ({mode}): {result.stderr!r}")
            if running:
                leftovers += 1
                problems.append(f"run {run} ({mode}): left running {running}")
            if holders:
                holders_after += 1
                problems.append(f"run {run} ({mode}): {holders} hold the pidfile's lock")
            if pidfile.exists():
                pidfiles_left += 1
                problems.append(f"run {run} ({mode}): the pidfile is left")
            if status.returncode != 3:
                problems.append(f"run {run} ({mode}): status exit {status.returncode}")
            for pid in running:
                kill_tree(pid)
    finally:
        figures(runs=runs, outcomes=outcomes, leftovers=leftovers,
                lock_holders_after=holders_after, pidfiles_left=pidfiles_left)
    assert not problems, problems[:5]


# --- 5. any sd_notify values -----------------------------------------------------------------

# The program of each example: sends the datagrams of a JSON file, a pause after each, then its
# finale (a last datagram, "exit", or nothing), then sleeps.
SENDER = """
import json, os, signal, socket, sys, time

with open(sys.argv[1], encoding="utf-8") as spec_file:
    spec = json.load(spec_file)
address = os.environ["NOTIFY_SOCKET"]
address = "\\0" + address[1:] if address.startswith("@") else address
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

def send(text):
    try:
        sock.sendto(text.encode(), address)
    except OSError:
        pass  # once the launcher decided, nobody may be listening any more

for datagram in spec["datagrams"]:
    send(datagram)
    time.sleep(spec["pause"])
if spec["finale"] == "exit":
    sys.exit(0)
if spec["finale"]:
    send(spec["finale"])
while True:
    signal.pause()
"""

TEXT = st.text(alphabet=st.characters(exclude_characters="\0\n", exclude_categories=["Cs"]),
               max_size=16)
INTEGER_TEXT = st.integers(min_value=-(10**40), max_value=10**40).map(str)
ERRNO_VALUES = st.one_of(
    st.integers(0, 140).map(str), INTEGER_TEXT,
    st.sampled_from(["2147483648", "99999999999999999999", "-1", "", " ", " 5 ", "0x10", "1e3",
                     "nan", "\u0663", "\u00b2", "5\u00a0"]),
    TEXT)
EXTEND_VALUES = st.one_of(
    st.integers(0, 3_000_000).map(str), INTEGER_TEXT,
    st.sampled_from(["18446744073709551615", str(10**30), "-5", "", "x", "1.5", "\u0663",
                     "1e9"]),
    TEXT)
KNOWN_KEYS = {"READY", "ERRNO", "EXTEND_TIMEOUT_USEC", "STATUS"}
OTHER_KEYS = st.sampled_from(["MAINPID", "WATCHDOG", "WATCHDOG_USEC", "STOPPING", "RELOADING",
                              "FDSTORE", "BARRIER", "NOTIFYACCESS", "X_CUSTOM", "ready",
                              "Ready", ""]) | st.text(
    alphabet=st.characters(codec="ascii", exclude_characters="\0\n="), min_size=1,
    max_size=10).filter(lambda key: key.strip() not in KNOWN_KEYS)
# A status text with what some readers take for a line break (but sd_notify(3) does not: its
# lines are separated by newlines) followed by what would be a decisive line.
LOOKALIKE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
SMUGGLED = st.tuples(TEXT, st.sampled_from(LOOKALIKE_BREAKS),
                     st.sampled_from(["READY=1", "ERRNO=5", "EXTEND_TIMEOUT_USEC=1"])
                     ).map(lambda parts: "STATUS=" + "".join(parts))
LINES = st.one_of(
    st.just("READY=1"), st.just("READY=0"),
    ERRNO_VALUES.map("ERRNO={}".format),
    EXTEND_VALUES.map("EXTEND_TIMEOUT_USEC={}".format),
    TEXT.map("STATUS={}".format), SMUGGLED,
    st.tuples(OTHER_KEYS, TEXT).map("=".join),
    TEXT,  # no "=" at all, or garbage
)
DATAGRAMS = st.lists(st.lists(LINES, min_size=1, max_size=3).map("\n".join), max_size=6)
FINALES = st.sampled_from(["READY=1", "ERRNO=71", "exit", "READY=1", "nothing"])


def sd_notify_lines(datagram: str, return_ends_a_line: bool) -> list[tuple[str, str]]:
    """``(key, value)`` of each line as sd_notify(3) separates them: at newlines only.

    sd_notify(3) says "newline-separated"; systemd's own reader also ends a line at a carriage
    return (its NEWLINE is "\\n\\r"), hence ``return_ends_a_line``.  No other character ends
    a line (not U+2028, U+0085, form feed...).  Keys and values are read as the command
    documents them (``READY=1`` means ready, ``ERRNO=`` with any text means failed), blanks
    around them ignored.
    """
    if return_ends_a_line:
        datagram = datagram.replace("\r", "\n")
    pairs = []
    for line in datagram.split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def expected_outcomes(datagrams: list[str], finale: str) -> tuple[set[int], str | None]:
    """Exit statuses the documented rules allow, and a phrase the error must contain (or None).

    Timing decides only between a READY=1 and what comes in a later datagram: the launcher
    may have returned 0 before it arrived.  A failure (ERRNO=) at or before the first READY=1
    always fails the start, naming it; no READY=1 at all never starts it.  Where the two
    readings of a carriage return disagree, either outcome is allowed.
    """
    sent = [*datagrams, *([finale] if finale not in ("exit", "nothing") else [])]
    allowed: set[int] = set()
    phrases = set()
    for return_ends_a_line in (False, True):
        first_ready = first_errno = None
        for index, datagram in enumerate(sent):
            pairs = sd_notify_lines(datagram, return_ends_a_line)
            if first_ready is None and ("READY", "1") in pairs:
                first_ready = index
            if first_errno is None and any(k == "ERRNO" and v for k, v in pairs):
                first_errno = index
        if first_errno is not None and (first_ready is None or first_errno <= first_ready):
            allowed.add(3)
            phrases.add("reported a start-up failure: ERRNO=")
        elif first_ready is None:
            allowed.add(3)
            phrases.add(None)
        elif first_errno is not None or finale == "exit":
            allowed.update((0, 3))
            phrases.add(None)
        else:
            allowed.add(0)
            phrases.add(None)
    return allowed, (phrases.pop() if len(phrases) == 1 else None)


def check_notify_sequence(tmp_path: Path, program: Path, datagrams: list[str], finale: str,
                          tally: Callable[[str], None]) -> None:
    """One example: start, judge the outcome, stop or check that nothing is left."""
    if finale == "nothing" and any("EXTEND_TIMEOUT_USEC" in d for d in datagrams):
        finale = "exit"  # an extension may be long (a year): something must end the wait
    pid_path = tmp_path / "app.pid"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datagrams": datagrams, "finale": finale, "pause": 0.01}))
    result = daemonctx_command(tmp_path, "start", "--notify", "--timeout", "2", "--verbose",
                               "--pidfile", str(pid_path), "--", PYTHON, str(program),
                               str(spec), MARK, timeout=30)
    allowed, phrase = expected_outcomes(datagrams, finale)
    shown = (f"{datagrams!r} then {finale!r}: exit {result.returncode}, {result.stdout!r}, "
             f"{result.stderr!r}")
    assert "Traceback" not in result.stderr, shown
    assert result.returncode in (0, 3), shown
    if result.returncode == 0 and finale == "exit":
        # ready, then it exits by itself: it and its keeper end, and the lock is free
        left = left_running({pid_in_message(result.stdout)})
        assert not lock_holders(pid_path), shown
        outcome = "started, then exited"
    elif result.returncode == 0:
        program_pid = pid_in_message(result.stdout)
        assert holder_pid(pid_path) == program_pid, shown
        stop = daemonctx_command(tmp_path, "stop", "--pidfile", str(pid_path))
        assert stop.returncode == 0, f"{shown}; stop: {stop.stderr}"
        left = left_running({program_pid})
        outcome = "started"
    else:
        assert is_one_line_error(result), shown
        left = {pid: "" for pid in census(MARK)}
        assert not lock_holders(pid_path), shown
        assert not pid_path.exists(), shown
        reason = result.stderr.split(": ", 1)[1]
        outcome = next((what for what in ("ERRNO=", "sent no READY=1", "exited during start-up")
                        if what in reason), "other")
        assert outcome != "other", shown
        assert not pid_exists(pid_in_message(result.stderr)), shown
    assert not left, f"{shown}; left running: {left}"
    assert result.returncode in allowed, f"{shown}; sd_notify(3) allows only {allowed}"
    if phrase is not None:
        assert phrase in result.stderr, shown
    tally(f"exit {result.returncode}: {outcome}")


@settings(max_examples=NOTIFY_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(datagrams=DATAGRAMS, finale=FINALES)
# status texts holding what str.splitlines() takes for a line break: one line each, for sd_notify
@example(datagrams=["STATUS=loading\u2028READY=1"], finale="nothing")  # never sent READY=1
@example(datagrams=["STATUS=50%\x0cERRNO=5", "READY=1"], finale="nothing")  # never failed
def test_any_notify_values_get_a_documented_outcome_and_leave_nothing(
        tmp_path: Path, tally: Callable[[str], None], datagrams: list[str],
        finale: str) -> None:
    program = tmp_path / "sender.py"
    if not program.exists():
        write_script(tmp_path, SENDER, "sender.py")
    check_notify_sequence(tmp_path, program, datagrams, finale, tally)


# --- 6. links planted in the daemon user's log directory ------------------------------------

PLANT_KINDS = ("symlink", "hardlink", "regular")


def _plant_until_stopped(logs: Path, secret: Path, stop_fd: int) -> dict[str, int]:
    """As nobody: replace ``logs/app.log`` again and again until ``stop_fd`` is closed.

    Each plant is made aside and renamed over the log (the path never stays free): a symbolic
    link to ``secret``, a hard link to it (the kernel refuses: protected_hardlinks), or a
    regular file of nobody's.
    """
    app, aside = logs / "app.log", logs / ".plant"
    counts = {f"{kind} {what}": 0 for kind in PLANT_KINDS for what in ("planted", "refused")}
    turn = 0
    while not select.select([stop_fd], [], [], 0)[0]:
        kind = PLANT_KINDS[turn % len(PLANT_KINDS)]
        turn += 1
        try:
            os.unlink(aside)
        except FileNotFoundError:
            pass
        try:
            if kind == "symlink":
                os.symlink(secret, aside)
            elif kind == "hardlink":
                os.link(secret, aside)
            else:
                os.close(os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            os.rename(aside, app)
        except OSError:
            counts[f"{kind} refused"] += 1
        else:
            counts[f"{kind} planted"] += 1
    return counts


def _start_planter(logs: Path, secret: Path) -> tuple[int, int, int]:
    """Fork the racer, dropped to nobody: (pid, write end of its stop pipe, its report)."""
    stop_r, stop_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(stop_w)
            os.close(report_r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(report_w, json.dumps(_plant_until_stopped(logs, secret, stop_r)).encode())
        finally:
            os._exit(0)
    os.close(stop_r)
    os.close(report_w)
    return pid, stop_w, report_r


def _stop_planter(pid: int, stop_w: int, report_r: int) -> dict[str, int]:
    os.close(stop_w)
    try:
        assert select.select([report_r], [], [], 30)[0], "the racer did not stop"
        report: dict[str, int] = json.loads(os.read(report_r, 65536) or b"{}")
    finally:
        os.close(report_r)
        wait_pid_gone(pid)
    return report


def _fingerprint(path: Path) -> tuple[bytes, int, int, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, st.st_mode


@pytest.fixture
def root_only_dir(tmp_path: Path) -> Path:
    """A directory only root may write, that others may enter (as in test_privileged_paths)."""
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o711)
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    return directory


def test_daemon_user_planting_links_in_its_log_directory_never_gets_roots_write_access(
        root_only_dir: Path, world_dir: Path, tmp_path: Path, pidfiles: list[Path],
        spawned: list[int], figures: Figures) -> None:
    logs = root_only_dir / "logs"  # /var/log/app/ as the docs recommend: the daemon user's
    logs.mkdir()
    os.chown(logs, NOBODY, NOBODY)
    secret = root_only_dir / "shadow"
    secret.write_text("root:secret-hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    before = _fingerprint(secret)
    log = logs / "app.log"
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    refusal = (f"the daemon's user (uid {NOBODY}) cannot open {str(log)!r} for appending: "
               f"Permission denied")
    outcomes: dict[str, int] = {}
    problems: list[str] = []
    planter, stop_w, report_r = _start_planter(logs, secret)
    spawned.append(planter)
    plants: dict[str, int] = {}
    launches = 0
    try:
        for launch in range(LOG_LAUNCHES):
            result = daemonctx_command(
                tmp_path, "start", "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                str(log), "--wait", "0", "--", "/bin/sh", "-c",
                f"echo line-{launch}; exec sleep {MARK}")
            launches += 1
            if result.returncode == 0:
                outcome = "started"
                program = holder_pid(pidfile)
                assert program is not None
                opened = {os.path.realpath(f"/proc/{program}/fd/{fd}")
                          for fd in os.listdir(f"/proc/{program}/fd")}
                if str(secret) in opened:
                    problems.append(f"launch {launch}: the daemon holds the secret open")
                stop = daemonctx_command(tmp_path, "stop", "--pidfile", str(pidfile))
                if stop.returncode != 0:
                    problems.append(f"launch {launch}: stop exit {stop.returncode}")
                wait_pid_gone(program)
            elif (result.returncode == 3 and is_one_line_error(result)
                  and refusal in result.stderr):
                outcome = "refused: cannot open for appending as uid 65534"
            else:
                outcome = f"exit {result.returncode}: {result.stderr.strip()[:120]}"
                problems.append(f"launch {launch}: {outcome}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if _fingerprint(secret) != before:
                problems.append(f"launch {launch}: the secret changed")
    finally:
        plants = _stop_planter(planter, stop_w, report_r)
        after = _fingerprint(secret)
        left = left_running()
        figures(launches=launches, started=outcomes.get("started", 0),
                refused=sum(n for o, n in outcomes.items() if o.startswith("refused")),
                outcomes=outcomes, racer_plants=plants,
                protected_hardlinks=Path("/proc/sys/fs/protected_hardlinks").read_text().strip(),
                secret_untouched=after == before, left_running=sorted(left))
    assert after == before, "root wrote to the file the daemon's user linked to"
    assert not problems, problems[:5]
    assert plants.get("symlink planted", 0) > 0, plants
    assert not left, left
