"""What a careless program or a full disk does to a start, and what it must not do.

Issue 14, #7: a start that fails writing the pidfile (ENOSPC) left an empty pidfile, and
``status`` then said "dead" for a daemon that never ran.  #8: a context opened inside an open
one detached again and left the outer pidfile unlocked.  And threads running at ``open()``
vanish in the daemon, silently -- now with a warning.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import (
    PYTHON,
    REPO,
    adopt_lock_holder,
    holder,
    read_pid_file,
    run_python,
    wait_file_text,
    write_script,
)

# A tmpfs of one page, filled: a new file can be created, nothing can be written.  Run in a
# mount namespace of its own, so the mount disappears with it.
FULL_DISK = """
mount -t tmpfs -o size=4k,mode=0755 tmpfs "$DIR" || exit 97
head -c 4096 /dev/zero > "$DIR/filler"
"$@"; echo "start=$?"
PYTHONPATH="$REPO" "$PYTHON" -m daemonctx status --pidfile "$DIR/app.pid"; echo "status=$?"
ls -A "$DIR"
"""


def _on_a_full_disk(tmp_path: Path, *argv: str) -> tuple[str, list[str]]:
    """Run ``argv`` on a full disk: (its stdout and stderr, the files left on that disk)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    directory = tmp_path / "full"
    directory.mkdir()
    env = {"DIR": str(directory), "REPO": str(REPO), "PYTHON": PYTHON, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             FULL_DISK, "sh", *argv], capture_output=True, text=True,
                            timeout=60, env=env)
    if result.returncode == 97 or "unshare failed" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    listing = result.stdout.rpartition("status=")[2]
    return result.stdout + result.stderr, listing.splitlines()[1:]


def test_command_failing_to_write_its_pid_leaves_no_pidfile(tmp_path: Path) -> None:
    output, left = _on_a_full_disk(tmp_path, PYTHON, "-m", "daemonctx", "start", "--pidfile",
                                   str(tmp_path / "full" / "app.pid"), "--", "/bin/sleep", "600")
    assert "start=3" in output, output
    assert "cannot write pidfile" in output and "No space left on device" in output, output
    assert "status=3" in output, output  # not running: not "dead, pidfile exists"
    assert left == ["filler"], output


def test_library_failing_to_write_its_pid_leaves_no_pidfile(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        import signal, sys, daemonctx
        with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(sys.argv[1])):
            signal.pause()
    """, "app.py")
    output, left = _on_a_full_disk(tmp_path, PYTHON, str(script),
                                   str(tmp_path / "full" / "app.pid"))
    assert "start=1" in output, output
    assert "No space left on device" in output, output
    assert "status=3" in output, output
    assert left == ["filler"], output


NESTED = """
import json, os, signal, sys
import daemonctx

rundir = sys.argv[1]
outer = daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(os.path.join(rundir, "outer.pid")),
                                defer_ready=True)
with outer:
    try:
        with daemonctx.DaemonContext(
                pidfile=daemonctx.PIDFile(os.path.join(rundir, "inner.pid"))):
            result = {"opened": True}
    except daemonctx.DaemonAlreadyOpenError as error:
        result = {"error": str(error), "pid": os.getpid()}
    with open(os.path.join(rundir, "nested.json"), "w") as out:
        json.dump(result, out)
    outer.notify_ready()
    while True:
        signal.pause()
"""


def test_a_context_opened_inside_an_open_one_is_refused(tmp_path: Path,
                                                       spawned: list[int]) -> None:
    script = write_script(tmp_path, NESTED, "nested.py")
    result = run_python(script, str(tmp_path))
    adopt_lock_holder(tmp_path / "outer.pid", spawned)
    adopt_lock_holder(tmp_path / "inner.pid", spawned)
    assert result.returncode == 0, result.stderr
    daemon = read_pid_file(tmp_path / "outer.pid")
    nested = json.loads(wait_file_text(tmp_path / "nested.json"))
    assert nested["pid"] == daemon  # no second detach happened
    assert "a DaemonContext is already open in this process" in nested["error"]
    assert f"holding pidfile {tmp_path / 'outer.pid'}" in nested["error"]
    assert holder(tmp_path / "outer.pid") == daemon
    assert not (tmp_path / "inner.pid").exists()


THREADED = """
import os, signal, sys, threading, time, warnings
import daemonctx

if sys.argv[3:] == ["error"]:
    warnings.simplefilter("error", daemonctx.DaemonThreadWarning)

threading.Thread(target=time.sleep, args=(600,), name="metrics-pusher", daemon=True).start()
context = daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(sys.argv[1]))
with context:
    with open(sys.argv[2], "w") as out:
        out.write(",".join(t.name for t in threading.enumerate()))
    while True:
        signal.pause()
"""


def test_threads_running_at_open_are_named_in_a_warning_on_the_launchers_stderr(
        tmp_path: Path, spawned: list[int]) -> None:
    script = write_script(tmp_path, THREADED, "threaded.py")
    pidfile = tmp_path / "app.pid"
    result = run_python(script, str(pidfile), str(tmp_path / "threads"))
    adopt_lock_holder(pidfile, spawned)
    assert result.returncode == 0, result.stderr
    assert "DaemonThreadWarning: 1 other thread running when DaemonContext.open() forks " \
           "('metrics-pusher')" in result.stderr
    assert "with context:" in result.stderr  # the warning points at the caller's line
    assert wait_file_text(tmp_path / "threads") == "MainThread"  # it did vanish


def test_the_thread_warning_as_an_error_stops_open_before_anything_changed(
        tmp_path: Path, spawned: list[int]) -> None:
    script = write_script(tmp_path, THREADED, "threaded.py")
    pidfile = tmp_path / "app.pid"
    result = run_python(script, str(pidfile), str(tmp_path / "threads"), "error")
    adopt_lock_holder(pidfile, spawned)
    assert result.returncode == 1
    assert "daemonctx.errors.DaemonThreadWarning" in result.stderr
    assert not pidfile.exists()
    assert holder_pid(pidfile) is None


LOW_LEVEL_THREADS = """
import _thread, os, signal, sys, time
import daemonctx

started = []
def run(name):
    started.append(name)
    time.sleep(600)
# Threads the threading module never hears of, like those a C extension starts (OpenBLAS's).
for name in ("a", "b"):
    _thread.start_new_thread(run, (name,))
while len(started) < 2 or len(os.listdir("/proc/self/task")) < 3:
    time.sleep(0.001)
with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile(sys.argv[1])):
    with open(sys.argv[2], "w") as out:
        out.write(str(len(os.listdir("/proc/self/task"))))
    while True:
        signal.pause()
"""


def test_threads_unknown_to_threading_are_counted_and_named_by_the_kernel(
        tmp_path: Path, spawned: list[int]) -> None:
    """Issue 14, threads: only threading's threads were warned about; a C extension's (or
    _thread's) vanished without a word, and the count was short."""
    script = write_script(tmp_path, LOW_LEVEL_THREADS, "lowlevel.py")
    pidfile = tmp_path / "app.pid"
    result = run_python(script, str(pidfile), str(tmp_path / "tasks"))
    adopt_lock_holder(pidfile, spawned)
    assert result.returncode == 0, result.stderr
    warning = re.search(r"DaemonThreadWarning: (\d+) other threads running when "
                        r"DaemonContext\.open\(\) forks \((.*)\)", result.stderr)
    assert warning is not None, result.stderr
    assert warning.group(1) == "2"
    assert len(re.findall(r"\(thread \d+, not started by threading\)", warning.group(2))) == 2
    assert wait_file_text(tmp_path / "tasks") == "1"  # they did vanish
