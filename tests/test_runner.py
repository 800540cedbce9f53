"""daemonctx.runner.DaemonRunner: python-daemon 2.x's runner, on a real app script."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonctx import DaemonError
from daemonctx.pidfile import holder_pid
from daemonctx.runner import (
    DaemonRunner,
    DaemonRunnerError,
    DaemonRunnerInvalidActionError,
    DaemonRunnerStartFailureError,
    DaemonRunnerStopFailureError,
    is_pidfile_stale,
    make_pidlockfile,
)
from tests.helpers import (
    PYTHON,
    kill_and_wait,
    kill_tree,
    pid_exists,
    wait_file_text,
    write_script,
)

APP = """
    import os, sys, time
    from daemonctx.runner import DaemonRunner

    class App:
        stdin_path = "/dev/null"
        stdout_path = {out!r}
        stderr_path = {err!r}
        pidfile_path = {pidfile!r}
        pidfile_timeout = 3

        def run(self):
            print("running as", os.getpid(), flush=True)
            sys.stderr.write("stderr of " + str(os.getpid()) + "\\n")
            while True:
                time.sleep(1)

    DaemonRunner(App()).do_action()
"""


class AppScript:
    """A DaemonRunner app under tmp_path, driven by running it with an action."""

    def __init__(self, tmp_path: Path, pidfile: str | None = None) -> None:
        self.out = tmp_path / "out.log"
        self.err = tmp_path / "err.log"
        self.pidfile = tmp_path / "app.pid"
        path_text = str(self.pidfile) if pidfile is None else pidfile
        self.script = write_script(tmp_path, APP.format(out=str(self.out), err=str(self.err),
                                                        pidfile=path_text), "app.py")

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, str(self.script), action], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL,
                              cwd=self.script.parent)

    def holder(self) -> int:
        pid = holder_pid(self.pidfile)
        assert pid is not None, "the app's daemon holds no lock"
        return pid


@pytest.fixture
def app(tmp_path: Path) -> Iterator[AppScript]:
    script = AppScript(tmp_path)
    yield script
    kill_tree(holder_pid(script.pidfile))


def test_start_detaches_the_app_and_reports_its_pid(app):
    result = app.run("start")
    assert result.returncode == 0, result.stderr
    pid = app.holder()
    assert result.stderr == f"started with pid {pid}\n"
    assert wait_file_text(app.out) == f"running as {pid}\n"
    assert wait_file_text(app.err) == f"stderr of {pid}\n"


def test_start_when_running_raises_start_failure_naming_the_pid(app):
    assert app.run("start").returncode == 0
    pid = app.holder()
    result = app.run("start")
    assert result.returncode == 1
    assert "DaemonRunnerStartFailureError" in result.stderr
    assert f"already locked by pid {pid}" in result.stderr
    assert app.holder() == pid


def test_stop_waits_until_the_daemon_is_gone(app):
    assert app.run("start").returncode == 0
    pid = app.holder()
    result = app.run("stop")
    assert result.returncode == 0, result.stderr
    assert not pid_exists(pid), "stop returned while the daemon was still alive"
    assert holder_pid(app.pidfile) is None
    assert not app.pidfile.exists()


def test_stop_when_not_running_raises_stop_failure(app):
    result = app.run("stop")
    assert result.returncode == 1
    assert "DaemonRunnerStopFailureError" in result.stderr
    assert "not locked" in result.stderr


def test_restart_replaces_the_daemon_and_appends_to_its_logs(app):
    assert app.run("start").returncode == 0
    first = app.holder()
    wait_file_text(app.out)
    result = app.run("restart")
    assert result.returncode == 0, result.stderr
    second = app.holder()
    assert second != first
    assert not pid_exists(first)
    text = wait_file_text(app.out, predicate=lambda t: t.count("\n") == 2)
    assert text == f"running as {first}\nrunning as {second}\n"


def test_stop_does_not_truncate_the_running_daemons_logs(app):
    assert app.run("start").returncode == 0
    wait_file_text(app.out)
    before = app.out.read_text()
    assert app.run("status").returncode == 0
    assert app.out.read_text() == before
    assert app.run("stop").returncode == 0
    assert app.out.read_text() == before


def test_stop_with_a_stale_pidfile_removes_it_silently_like_python_daemon(app):
    app.pidfile.write_text("999999\n")
    result = app.run("stop")
    assert result.returncode == 0, result.stderr
    assert not app.pidfile.exists()


def test_start_takes_over_a_stale_pidfile_of_a_dead_daemon(app):
    app.pidfile.write_text("999999\n")
    result = app.run("start")
    assert result.returncode == 0, result.stderr
    assert int(app.pidfile.read_text()) == app.holder()


def test_status_exit_codes_follow_lsb(app):
    assert app.run("status").returncode == 3
    assert app.run("start").returncode == 0
    running = app.run("status")
    assert running.returncode == 0
    assert f"pid {app.holder()}" in running.stdout
    kill_and_wait(app.holder())
    assert app.run("status").returncode == 1


def test_unknown_action_prints_usage_and_exits_2(app):
    result = app.run("frobnicate")
    assert result.returncode == 2
    assert result.stderr == "usage: app.py start|stop|restart|status\n"


def test_relative_pidfile_path_is_taken_from_the_current_directory(tmp_path):
    script = AppScript(tmp_path, pidfile="relative.pid")
    try:
        assert script.run("start").returncode == 0
        assert holder_pid(tmp_path / "relative.pid") is not None
        assert script.run("stop").returncode == 0
    finally:
        kill_tree(holder_pid(tmp_path / "relative.pid"))


def test_exceptions_keep_python_daemon_bases():
    assert issubclass(DaemonRunnerError, DaemonError)
    assert issubclass(DaemonRunnerInvalidActionError, ValueError)
    assert issubclass(DaemonRunnerStartFailureError, RuntimeError)
    assert issubclass(DaemonRunnerStopFailureError, RuntimeError)
    for cls in (DaemonRunnerInvalidActionError, DaemonRunnerStartFailureError,
                DaemonRunnerStopFailureError):
        assert issubclass(cls, DaemonRunnerError)


def test_invalid_action_set_after_parsing_raises_invalid_action():
    class App:
        pidfile_path = None

        def run(self) -> None:  # pragma: no cover - never started
            raise AssertionError

    runner = DaemonRunner(App(), argv=["prog", "status"])
    runner.action = "bogus"
    with pytest.raises(DaemonRunnerInvalidActionError, match="Unknown action: 'bogus'"):
        runner.do_action()


def test_without_pidfile_path_stop_raises_naming_the_missing_pidfile():
    class App:
        pidfile_path = None

        def run(self) -> None:  # pragma: no cover - never started
            raise AssertionError

    runner = DaemonRunner(App(), argv=["prog", "stop"])
    with pytest.raises(DaemonRunnerStopFailureError, match="no pidfile_path"):
        runner.do_action()


def test_make_pidlockfile_requires_an_absolute_path_like_python_daemon(tmp_path):
    with pytest.raises(ValueError, match="Not an absolute path"):
        make_pidlockfile("relative.pid", None)
    with pytest.raises(ValueError, match="Not a filesystem path"):
        make_pidlockfile(42, None)
    lock = make_pidlockfile(str(tmp_path / "x.pid"), 3)
    assert lock.acquire_timeout == 3


def test_is_pidfile_stale_asks_the_lock_not_the_pid(tmp_path, spawned):
    unrelated = subprocess.Popen(["/bin/sleep", "60"])
    spawned.append(unrelated.pid)
    path = tmp_path / "x.pid"
    path.write_text(f"{unrelated.pid}\n")  # a live pid, but nobody holds the lock
    lock = make_pidlockfile(str(path), None)
    assert is_pidfile_stale(lock)
    lock.acquire()
    try:
        assert not is_pidfile_stale(lock)
    finally:
        lock.release()
