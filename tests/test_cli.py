"""The ``daemonctx`` command, run for real in a subprocess against real programs.

Every daemon a test starts is found again through its pidfile's lock and killed (with its
tree) at teardown by the ``pidfiles`` fixture, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from daemonctx.runner import StopSchedule
from tests.helpers import (
    CLI_TIMEOUT,
    PYTHON,
    REPO,
    assert_one_line_error,
    holder,
    kill_and_wait,
    pid_exists,
    pid_in_message,
    proc_status,
    run_cli,
    wait_file_text,
    wait_for,
    wait_pid_gone,
    write_script,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def start_http_server(pid_path: Path, directory: Path, *extra: str) -> tuple[int, int]:
    """Start ``python -m http.server`` on a free loopback port; return (port, pid)."""
    port = free_port()
    result = run_cli("start", "--pidfile", str(pid_path), *extra, "--",
                     PYTHON, "-m", "http.server", "--bind", "127.0.0.1",
                     "--directory", str(directory), str(port))
    assert result.returncode == 0, result.stderr
    return port, holder(pid_path)


SLEEPER = ["--", "/bin/sleep", "60"]


# --- start, status, stop, restart of a real server ------------------------------------------


def test_start_runs_the_program_as_a_daemon_that_serves_requests(tmp_path, pid_path):
    (tmp_path / "hello.txt").write_text("hello from the daemon")
    port, pid = start_http_server(pid_path, tmp_path)
    body = wait_for(lambda: fetch(f"http://127.0.0.1:{port}/hello.txt"), what="the server")
    assert body == "hello from the daemon"
    assert "http.server" in Path(f"/proc/{pid}/cmdline").read_text()
    assert int(pid_path.read_text()) == pid


def test_the_execd_program_itself_holds_the_pidfile_lock_on_a_high_fd(pid_path):
    result = run_cli("start", "--pidfile", str(pid_path), *SLEEPER)
    assert result.returncode == 0, result.stderr
    pid = holder(pid_path)
    assert Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0] == "/bin/sleep"
    lock_fds = [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(pid_path)]
    assert lock_fds and min(lock_fds) >= 10


def test_status_of_a_running_daemon_exits_0_with_pid_command_uptime_and_memory(tmp_path,
                                                                               pid_path):
    port, pid = start_http_server(pid_path, tmp_path)
    result = run_cli("status", "--pidfile", str(pid_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"pid {pid}" in result.stdout
    assert f"http.server --bind 127.0.0.1 --directory {tmp_path} {port}" in result.stdout
    assert "uptime:" in result.stdout
    assert re.search(r"memory:\s+\d+\.\d MiB", result.stdout)


def test_status_json_describes_the_process_tree(tmp_path, pid_path):
    script = write_script(tmp_path, """
        import os, time
        for _ in range(2):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        time.sleep(60)
    """, "forker.py")
    result = run_cli("start", "--pidfile", str(pid_path), "--", PYTHON, str(script))
    assert result.returncode == 0, result.stderr
    pid = holder(pid_path)

    def two_children() -> dict[str, object] | None:
        out = run_cli("status", "--json", "--pidfile", str(pid_path))
        data = json.loads(out.stdout)
        return data if len(data["process"]["children"]) == 2 else None

    data = wait_for(two_children, what="two workers in the status")
    assert isinstance(data, dict)
    assert data["code"] == 0 and data["state"] == "running" and data["pid"] == pid
    assert data["process"]["command"] == [PYTHON, str(script)]
    assert data["process"]["rss_bytes"] > 0
    children = data["process"]["children"]
    assert {c["pid"] for c in children} == set(
        int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def test_stop_ends_the_daemon_releases_the_lock_and_removes_the_pidfile(tmp_path, pid_path):
    port, pid = start_http_server(pid_path, tmp_path)
    result = run_cli("stop", "--pidfile", str(pid_path))
    assert result.returncode == 0, result.stderr
    wait_pid_gone(pid)
    assert holder_pid(pid_path) is None
    assert not pid_path.exists()
    assert fetch(f"http://127.0.0.1:{port}/") is None


def test_status_after_stop_exits_3_not_running(tmp_path, pid_path):
    start_http_server(pid_path, tmp_path)
    assert run_cli("stop", "--pidfile", str(pid_path)).returncode == 0
    result = run_cli("status", "--pidfile", str(pid_path))
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_restart_replaces_the_daemon_with_a_new_one_that_serves(tmp_path, pid_path):
    (tmp_path / "index.txt").write_text("ok")
    port, old = start_http_server(pid_path, tmp_path)
    result = run_cli("restart", "--pidfile", str(pid_path), "--", PYTHON, "-m", "http.server",
                     "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port))
    assert result.returncode == 0, result.stderr
    new = holder(pid_path)
    assert new != old
    assert not pid_exists(old)
    assert wait_for(lambda: fetch(f"http://127.0.0.1:{port}/index.txt"), what="server") == "ok"


def test_restart_when_not_running_just_starts(pid_path):
    result = run_cli("restart", "--pidfile", str(pid_path), *SLEEPER)
    assert result.returncode == 0, result.stderr
    assert holder(pid_path)


def test_restart_with_bad_options_leaves_the_running_daemon_alone(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *SLEEPER).returncode == 0
    pid = holder(pid_path)
    result = run_cli("restart", "--pidfile", str(pid_path), "--user", "no-such-user-x",
                     *SLEEPER)
    assert result.returncode == 3
    assert "unknown user 'no-such-user-x'" in result.stderr
    assert holder(pid_path) == pid


def test_logs_are_appended_across_restarts(tmp_path, pid_path):
    log = tmp_path / "app.log"
    log.write_text("kept from before\n")
    command = ["--", "/bin/sh", "-c", "echo started $$; exec /bin/sleep 60"]
    assert run_cli("start", "--pidfile", str(pid_path), "--stdout", str(log),
                   *command).returncode == 0
    first = holder(pid_path)
    wait_file_text(log, predicate=lambda t: f"started {first}" in t)
    assert run_cli("restart", "--pidfile", str(pid_path), "--stdout", str(log),
                   *command).returncode == 0
    second = holder(pid_path)
    text = wait_file_text(log, predicate=lambda t: f"started {second}" in t)
    assert text == f"kept from before\nstarted {first}\nstarted {second}\n"


def test_stderr_goes_to_the_stdout_file_unless_given(tmp_path, pid_path):
    log = tmp_path / "both.log"
    command = ["--", "/bin/sh", "-c", "echo out; echo err >&2; exec /bin/sleep 60"]
    assert run_cli("start", "--pidfile", str(pid_path), "--stdout", str(log),
                   *command).returncode == 0
    assert sorted(wait_file_text(log, predicate=lambda t: t.count("\n") == 2).split()) == [
        "err", "out"]


# --- start: exit codes and what the program gets -------------------------------------------


def test_start_when_already_running_exits_1_naming_the_pid(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *SLEEPER).returncode == 0
    pid = holder(pid_path)
    result = run_cli("start", "--pidfile", str(pid_path), *SLEEPER)
    assert result.returncode == 1
    assert f"already running as pid {pid}" in result.stderr
    assert_one_line_error(result)
    assert holder(pid_path) == pid


def test_start_when_already_running_with_oknodo_exits_0(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *SLEEPER).returncode == 0
    pid = holder(pid_path)
    result = run_cli("start", "--oknodo", "--pidfile", str(pid_path), *SLEEPER)
    assert result.returncode == 0, result.stderr
    assert holder(pid_path) == pid


def test_start_fails_naming_the_status_when_the_command_exits_during_start_up(tmp_path,
                                                                               pid_path):
    log = tmp_path / "out.log"
    result = run_cli("start", "--pidfile", str(pid_path), "--wait", "10", "--stdout", str(log),
                     "--", "/bin/sh", "-c", "echo bad config; exit 3")
    assert result.returncode == 3
    assert "exited during start-up with status 3" in result.stderr
    assert str(log) in result.stderr
    assert_one_line_error(result)
    assert log.read_text() == "bad config\n"
    assert not pid_path.exists()


def test_start_kills_what_a_failed_command_left_behind(tmp_path, pid_path):
    marker = tmp_path / "child.pid"
    result = run_cli("start", "--pidfile", str(pid_path), "--wait", "10", "--",
                     "/bin/sh", "-c", f"/bin/sleep 60 & echo $! > {marker}; exit 4")
    assert result.returncode == 3
    assert "status 4" in result.stderr
    child = int(wait_file_text(marker).strip())
    wait_pid_gone(child)
    assert holder_pid(pid_path) is None


def test_start_reports_a_program_killed_by_a_signal(pid_path):
    result = run_cli("start", "--pidfile", str(pid_path), "--wait", "10", "--",
                     "/bin/sh", "-c", "kill -KILL $$")
    assert result.returncode == 3
    assert "killed by signal 9 (SIGKILL)" in result.stderr


def test_user_option_runs_the_program_as_that_user_with_its_groups(world_dir, pidfiles):
    import pwd

    nobody = pwd.getpwnam("nobody")
    path = world_dir / "nobody.pid"
    pidfiles.append(path)
    result = run_cli("start", "--pidfile", str(path), "--user", "nobody", *SLEEPER)
    assert result.returncode == 0, result.stderr
    status = proc_status(holder(path))
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert set(status["Groups"].split()) <= {str(g) for g in
                                             os.getgrouplist("nobody", nobody.pw_gid)}
    assert "0" not in status["Groups"].split()


def test_chdir_umask_and_environment_options_reach_the_program(tmp_path, pid_path):
    out = tmp_path / "seen"
    env = dict(os.environ, DAEMONCTX_T_DROP="x", DAEMONCTX_T_KEEP="kept")
    result = run_cli("start", "--pidfile", str(pid_path), "--chdir", str(tmp_path),
                     "--umask", "027", "--clear-env", "--env-keep", "DAEMONCTX_T_KEEP",
                     "--env", "DAEMONCTX_T_SET=a=b", "--",
                     "/bin/sh", "-c", "{ pwd; umask; env; } > seen.tmp && mv seen.tmp seen; "
                                      "exec /bin/sleep 60", env=env)
    assert result.returncode == 0, result.stderr
    lines = wait_file_text(out).splitlines()
    assert lines[0] == str(tmp_path)
    assert lines[1] == "0027"
    env_seen = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
    assert env_seen["DAEMONCTX_T_KEEP"] == "kept"
    assert env_seen["DAEMONCTX_T_SET"] == "a=b"
    assert "DAEMONCTX_T_DROP" not in env_seen
    assert env_seen["PATH"].startswith("/usr/local/sbin:")
    assert "NOTIFY_SOCKET" not in env_seen


def _chroot_with_sleep(root: Path) -> None:
    """A minimal root directory holding /bin/sleep and the libraries it loads."""
    import shutil

    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd is needed to build a chroot")
    libraries = re.findall(r"(/\S+)", subprocess.run([ldd, "/bin/sleep"], capture_output=True,
                                                      text=True, timeout=30).stdout)
    for source in ["/bin/sleep", *libraries]:
        target = root / source.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (root / "run").mkdir()


def test_chroot_runs_the_program_inside_the_new_root(tmp_path, pidfiles):
    root = tmp_path / "root"
    _chroot_with_sleep(root)
    path = root / "run" / "app.pid"
    pidfiles.append(path)
    result = run_cli("start", "--chroot", str(root), "--chdir", "/run", "--pidfile", str(path),
                     *SLEEPER)
    assert result.returncode == 0, result.stderr
    pid = holder(path)
    assert os.readlink(f"/proc/{pid}/root") == str(root)
    assert os.readlink(f"/proc/{pid}/cwd") == str(root / "run")
    assert run_cli("stop", "--pidfile", str(path)).returncode == 0
    wait_pid_gone(pid)


def test_command_that_cannot_be_executed_by_the_user_fails_with_the_reason(world_dir,
                                                                           pidfiles):
    script = world_dir / "root-only.sh"
    script.write_text("#!/bin/sh\nexec /bin/sleep 60\n")
    script.chmod(0o700)
    path = world_dir / "x.pid"
    pidfiles.append(path)
    result = run_cli("start", "--pidfile", str(path), "--user", "nobody", "--", str(script))
    assert result.returncode == 3
    # judged for nobody, not for root, and before anything forked or was created
    assert (f"command {script}: is not executable by the program's user (uid 65534 gid "
            f"65534): mode 0700, owner uid 0 gid 0") in result.stderr
    assert_one_line_error(result)
    assert not path.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["start", "--pidfile", "{tmp}/a.pid", "/bin/sleep", "1"], "missing '--' before the command"),
    (["start", "--pidfile", "{tmp}/a.pid", "--"], "no command after '--'"),
    (["start", "--pidfile", "{tmp}/a.pid", "--", "no-such-command-x"],
     "command 'no-such-command-x' not found"),
    (["start", "--pidfile", "{tmp}/a.pid", "--", "{tmp}/missing.sh"], "missing.sh: not found"),
    (["start", "--pidfile", "{tmp}/a.pid", "--", "{tmp}/plain.txt"],
     "plain.txt: is not executable (mode 0644)"),
    (["start", "--pidfile", "{tmp}/a.pid", "--", "{tmp}"], "is a directory"),
    (["start", "--pidfile", "{tmp}/a.pid", "--user", "no-such-user-x", "--", "/bin/true"],
     "--user: unknown user 'no-such-user-x'"),
    (["start", "--pidfile", "{tmp}/a.pid", "--group", "no-such-group-x", "--", "/bin/true"],
     "--group: unknown group 'no-such-group-x'"),
    (["start", "--pidfile", "{tmp}/a.pid", "--chdir", "{tmp}/nope", "--", "/bin/true"],
     "--chdir: directory {tmp}/nope does not exist"),
    (["start", "--pidfile", "{tmp}/nope/a.pid", "--", "/bin/true"],
     "--pidfile: directory {tmp}/nope does not exist"),
    (["start", "--pidfile", "{tmp}/a.pid", "--umask", "99", "--", "/bin/true"],
     "--umask: '99' is not an octal mode"),
    (["start", "--pidfile", "{tmp}/a.pid", "--env", "NOEQUALS", "--", "/bin/true"],
     "--env: 'NOEQUALS' is not NAME=VALUE"),
    (["start", "--pidfile", "{tmp}/a.pid", "--timeout", "0", "--", "/bin/true"],
     "--timeout: 0 is not a number of seconds from more than 0 to"),
    (["start", "--pidfile", "{tmp}/a.pid", "--stdout", "{tmp}/nope/log", "--", "/bin/true"],
     "--stdout: directory {tmp}/nope does not exist"),
    (["start", "--pidfile", "{tmp}/a.pid", "--chroot", "{tmp}/nope", "--", "/bin/true"],
     "--chroot: directory {tmp}/nope does not exist"),
    (["start", "--pidfile", "/run/outside.pid", "--chroot", "{tmp}", "--", "/bin/true"],
     "--pidfile: /run/outside.pid is outside --chroot"),
    (["stop", "--pidfile", "{tmp}/a.pid", "--signal", "NOSUCHSIG"],
     "--signal: unknown signal 'NOSUCHSIG'"),
    (["stop", "--pidfile", "{tmp}/a.pid", "--retry", "TERM/KILL/5"],
     "signal 'TERM' must be followed by a number of seconds"),
    (["signal", "BOGUS", "--pidfile", "{tmp}/a.pid"], "unknown signal 'BOGUS'"),
    (["stop"], "the following arguments are required: --pidfile"),
    (["stop", "--pidfile", "{tmp}/a.pid", "--", "x"], "only taken by start and restart"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_prints_one_line_and_exits_3_before_doing_anything(tmp_path, args,
                                                                     expected):
    (tmp_path / "plain.txt").write_text("not a program")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(*argv)
    assert result.returncode == 3, result.stderr
    assert expected.replace("{tmp}", str(tmp_path)) in result.stderr
    assert_one_line_error(result)
    assert not (tmp_path / "a.pid").exists()


def test_bad_input_to_status_exits_4():
    result = run_cli("status")
    assert result.returncode == 4
    assert_one_line_error(result)


# --- --notify --------------------------------------------------------------------------------


NOTIFY_READY = """
    import sys, time
    from daemonctx import systemd
    time.sleep(0.3)  # some start-up work before readiness
    systemd.notify(ready=True, status="serving")
    time.sleep(60)
"""


def test_notify_start_exits_0_once_the_program_sent_ready(tmp_path, pid_path):
    script = write_script(tmp_path, NOTIFY_READY, "ready.py")
    result = run_cli("start", "--notify", "--verbose", "--pidfile", str(pid_path), "--",
                     PYTHON, str(script))
    assert result.returncode == 0, result.stderr
    assert "READY=1" in result.stdout
    pid = holder(pid_path)
    assert pid_in_message(result.stdout) == pid
    assert "NOTIFY_SOCKET=@daemonctx-notify/" in Path(f"/proc/{pid}/environ").read_text()


def test_notify_with_a_raw_datagram_from_a_shell_child_is_accepted(tmp_path, pid_path):
    # The readiness message may come from a helper process, as with systemd-notify.
    script = write_script(tmp_path, """
        import os, socket, subprocess, time
        address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
        code = ("import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                "s.sendto(b'STATUS=up\\\\nREADY=1', %r)" % address)
        subprocess.run([os.sys.executable, "-c", code], check=True)
        time.sleep(60)
    """, "raw.py")
    result = run_cli("start", "--notify", "--pidfile", str(pid_path), "--", PYTHON, str(script))
    assert result.returncode == 0, result.stderr
    assert holder(pid_path)


def test_notify_without_ready_times_out_nonzero_and_leaves_nothing_running(tmp_path,
                                                                            pid_path):
    script = write_script(tmp_path, """
        import os, time
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
    """, "silent.py")
    result = run_cli("start", "--notify", "--timeout", "1", "--pidfile", str(pid_path), "--",
                     PYTHON, str(script))
    assert result.returncode == 3
    assert "sent no READY=1 within 1 s" in result.stderr
    assert_one_line_error(result)
    pid = pid_in_message(result.stderr)
    assert not pid_exists(pid)
    assert holder_pid(pid_path) is None
    assert not pid_path.exists()
    leftovers = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                 if str(script) in _cmdline(p)]
    assert leftovers == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_notify_program_exiting_before_ready_fails_naming_its_status(tmp_path, pid_path):
    script = write_script(tmp_path, "raise SystemExit(5)\n", "dies.py")
    result = run_cli("start", "--notify", "--pidfile", str(pid_path), "--", PYTHON, str(script))
    assert result.returncode == 3
    assert "exited during start-up with status 5 before sending READY=1" in result.stderr


def test_notify_errno_fails_the_start_and_stops_the_program(tmp_path, pid_path):
    script = write_script(tmp_path, """
        import time
        from daemonctx import systemd
        systemd.notify(errno=98, status="port in use")
        time.sleep(60)
    """, "errno.py")
    result = run_cli("start", "--notify", "--pidfile", str(pid_path), "--", PYTHON, str(script))
    assert result.returncode == 3
    assert "ERRNO=98 (EADDRINUSE" in result.stderr
    assert "port in use" in result.stderr
    assert not pid_exists(pid_in_message(result.stderr))


def test_notify_extend_timeout_usec_extends_the_wait(tmp_path, pid_path):
    script = write_script(tmp_path, """
        import time
        from daemonctx import systemd
        systemd.notify(extend_timeout_usec=30_000_000)
        time.sleep(2.5)  # longer than --timeout: only the extension lets this succeed
        systemd.notify(ready=True)
        time.sleep(60)
    """, "slow.py")
    result = run_cli("start", "--notify", "--timeout", "1", "--pidfile", str(pid_path), "--",
                     PYTHON, str(script))
    assert result.returncode == 0, result.stderr
    assert holder(pid_path)


# --- stop ------------------------------------------------------------------------------------


def test_stop_when_not_running_exits_1(pid_path):
    result = run_cli("stop", "--pidfile", str(pid_path))
    assert result.returncode == 1
    assert "not running" in result.stderr


def test_stop_when_not_running_with_oknodo_exits_0(pid_path):
    assert run_cli("stop", "--oknodo", "--pidfile", str(pid_path)).returncode == 0


IGNORES_TERM = ["--", PYTHON, "-c", "import signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored_and_exits_0(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *IGNORES_TERM).returncode == 0
    pid = holder(pid_path)
    wait_for(lambda: proc_status(pid)["SigIgn"] != "0000000000000000", what="SIGTERM ignored")
    result = run_cli("stop", "--timeout", "0.5", "--verbose", "--pidfile", str(pid_path))
    assert result.returncode == 0, result.stderr
    assert f"stopped pid {pid}" in result.stdout
    wait_pid_gone(pid)
    assert holder_pid(pid_path) is None


def test_stop_exits_2_when_the_schedule_runs_out(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *IGNORES_TERM).returncode == 0
    pid = holder(pid_path)
    wait_for(lambda: proc_status(pid)["SigIgn"] != "0000000000000000", what="SIGTERM ignored")
    result = run_cli("stop", "--retry", "TERM/0.3", "--pidfile", str(pid_path))
    assert result.returncode == 2
    assert f"pid {pid} is still running after the schedule TERM/0.3" in result.stderr
    assert holder(pid_path) == pid


def test_restart_exits_2_and_starts_nothing_when_the_old_daemon_will_not_stop(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *IGNORES_TERM).returncode == 0
    pid = holder(pid_path)
    wait_for(lambda: proc_status(pid)["SigIgn"] != "0000000000000000", what="SIGTERM ignored")
    result = run_cli("restart", "--retry", "TERM/0.3", "--pidfile", str(pid_path), *SLEEPER)
    assert result.returncode == 2
    assert "still running" in result.stderr
    assert holder(pid_path) == pid


def test_stop_kill_step_also_ends_workers_left_holding_the_lock(tmp_path, pid_path):
    script = write_script(tmp_path, """
        import os, signal, time
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open("worker.ready", "w").write("ready")
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
    """, "sup.py")
    result = run_cli("start", "--pidfile", str(pid_path), "--chdir", str(tmp_path), "--",
                     PYTHON, str(script))
    assert result.returncode == 0, result.stderr
    main = holder(pid_path)
    wait_file_text(tmp_path / "worker.ready")
    (worker,) = (int(p) for p in Path(f"/proc/{main}/task/{main}/children").read_text().split())
    kill_and_wait(main)  # the worker keeps the inherited lock descriptor
    status = run_cli("status", "--pidfile", str(pid_path))
    assert status.returncode == 4
    assert f"pids {worker}" in status.stdout
    result = run_cli("stop", "--retry", "TERM/0.3/KILL/5", "--pidfile", str(pid_path))
    assert result.returncode == 0, result.stderr
    wait_pid_gone(worker)
    assert holder_pid(pid_path) is None


def test_stop_never_signals_an_unrelated_process_that_reused_the_pid(pid_path, spawned):
    unrelated = subprocess.Popen(["/bin/sleep", "60"])
    spawned.append(unrelated.pid)
    pid_path.write_text(f"{unrelated.pid}\n")  # a leftover pidfile, nobody holds its lock
    result = run_cli("stop", "--pidfile", str(pid_path))
    assert result.returncode == 1
    assert unrelated.poll() is None
    assert not pid_path.exists(), "the stale pidfile is removed"


# --- status -----------------------------------------------------------------------------------


def test_status_of_a_pidfile_naming_a_recycled_pid_is_dead_not_running(pid_path, spawned):
    unrelated = subprocess.Popen(["/bin/sleep", "60"])
    spawned.append(unrelated.pid)
    pid_path.write_text(f"{unrelated.pid}\n")
    result = run_cli("status", "--pidfile", str(pid_path))
    assert result.returncode == 1
    assert "not running" in result.stdout
    assert "unrelated process" in result.stdout
    assert "running:" not in result.stdout


def test_status_after_the_daemon_died_exits_1_dead_but_pidfile_exists(pid_path):
    assert run_cli("start", "--pidfile", str(pid_path), *SLEEPER).returncode == 0
    kill_and_wait(holder(pid_path))
    result = run_cli("status", "--json", "--pidfile", str(pid_path))
    assert result.returncode == 1
    assert json.loads(result.stdout)["state"] == "dead"


def test_status_of_a_missing_pidfile_exits_3(pid_path):
    result = run_cli("status", "--json", "--pidfile", str(pid_path))
    assert result.returncode == 3
    assert json.loads(result.stdout) == {
        "pidfile": str(pid_path), "code": 3, "state": "stopped", "pid": None,
        "message": f"not running (no pidfile {pid_path})", "process": None, "holders": []}


def test_status_exits_4_when_the_pidfile_cannot_be_examined(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # ELOOP, even for root
    result = run_cli("status", "--pidfile", str(loop / "app.pid"))
    assert result.returncode == 4
    assert "status unknown" in result.stdout


# --- reload and signal -----------------------------------------------------------------------


SIGNAL_RECORDER = """
    import signal, sys, time
    def record(signum, frame):
        with open("signals.log", "a") as log:
            log.write(signal.Signals(signum).name + "\\n")
    for name in ("SIGHUP", "SIGUSR1"):
        signal.signal(getattr(signal, name), record)
    open("handlers.ready", "w").write("ready")
    while True:
        time.sleep(1)
"""


def _start_recorder(tmp_path: Path, pid_path: Path) -> int:
    script = write_script(tmp_path, SIGNAL_RECORDER, "recorder.py")
    result = run_cli("start", "--pidfile", str(pid_path), "--chdir", str(tmp_path), "--",
                     PYTHON, str(script))
    assert result.returncode == 0, result.stderr
    wait_file_text(tmp_path / "handlers.ready")
    return holder(pid_path)


def test_reload_sends_sighup_to_the_daemon(tmp_path, pid_path):
    _start_recorder(tmp_path, pid_path)
    assert run_cli("reload", "--pidfile", str(pid_path)).returncode == 0
    assert wait_file_text(tmp_path / "signals.log") == "SIGHUP\n"


def test_signal_sends_the_named_signal_to_the_daemon(tmp_path, pid_path):
    pid = _start_recorder(tmp_path, pid_path)
    result = run_cli("signal", "usr1", "--verbose", "--pidfile", str(pid_path))
    assert result.returncode == 0, result.stderr
    assert f"sent SIGUSR1 to pid {pid}" in result.stdout
    assert wait_file_text(tmp_path / "signals.log") == "SIGUSR1\n"


def test_reload_when_not_running_exits_1(pid_path):
    result = run_cli("reload", "--pidfile", str(pid_path))
    assert result.returncode == 1
    assert "not running" in result.stderr


# --- the command itself ----------------------------------------------------------------------


def test_help_explains_the_commands_with_examples():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    for command in ("start", "stop", "restart", "status", "reload", "signal"):
        assert command in result.stdout
    start_help = run_cli("start", "--help").stdout
    assert "--notify" in start_help and "Exit status" in start_help


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "daemonctx"
    if not script.exists():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "status", "--pidfile", "/nonexistent-dir/x.pid"],
                            capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 3


def test_importing_the_cli_module_stays_cheap():
    heavy = ["argparse", "socket", "ctypes", "json", "dataclasses", "lockfile",
             "daemonctx.context", "daemonctx.pidfile", "daemonctx.runner"]
    code = f"import sys, daemonctx.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                            timeout=CLI_TIMEOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# --- stop schedules (pure parsing) -----------------------------------------------------------


@pytest.mark.parametrize(("text", "steps", "repeat"), [
    ("TERM/30/KILL/5", ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)), False),
    ("-HUP/1.5/-15/2", ((signal.SIGHUP, 1.5), (signal.SIGTERM, 2.0)), False),
    ("SIGINT/10/forever", ((signal.SIGINT, 10.0),), True),
    ("20", ((signal.SIGTERM, 20.0), (signal.SIGKILL, 20.0)), False),
])
def test_stop_schedule_parses_start_stop_daemon_syntax(text, steps, repeat):
    schedule = StopSchedule.parse(text)
    assert schedule.steps == steps
    assert schedule.repeat is repeat


@pytest.mark.parametrize("text", ["", "TERM", "30/TERM", "TERM/forever", "forever",
                                  "TERM/5/forever/KILL/5", "BOGUS/5", "TERM/-1"])
def test_stop_schedule_rejects_malformed_schedules(text):
    from daemonctx.errors import DaemonOptionError

    with pytest.raises(DaemonOptionError, match="--retry"):
        StopSchedule.parse(text)


DAEMONCONTEXT_PROGRAM = """
    import os, signal, socket, sys
    import daemonctx

    with daemonctx.DaemonContext(defer_ready=True) as context:
        listener = socket.create_server(("127.0.0.1", 0))
        with open(sys.argv[1], "w") as out:
            out.write(f"{os.getpid()} {listener.getsockname()[1]}")
        context.notify_ready()   # READY=1 to the command's NOTIFY_SOCKET
        signal.pause()
"""


def test_program_using_daemoncontext_is_not_detached_twice_and_keeps_the_lock(tmp_path,
                                                                              pid_path):
    script = write_script(tmp_path, DAEMONCONTEXT_PROGRAM, "ctx_app.py")
    info = tmp_path / "info"
    result = run_cli("start", "--notify", "--pidfile", str(pid_path), "--",
                     PYTHON, str(script), str(info))
    assert result.returncode == 0, result.stderr
    pid = holder(pid_path)
    assert int(info.read_text().split()[0]) == pid, "the program detached a second time"
    lock_fd = dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_text()
                   .split("\0") if "=" in line)["DAEMONCTX_LOCK_FD"]
    assert os.path.exists(f"/proc/{pid}/fd/{lock_fd}"), "DaemonContext closed the lock fd"
    assert run_cli("stop", "--pidfile", str(pid_path)).returncode == 0
    assert holder_pid(pid_path) is None


def test_stop_never_signals_a_process_that_locked_a_pidfile_it_did_not_write(world_dir,
                                                                             pidfiles,
                                                                             spawned):
    # After a crash the pidfile stays, naming a dead pid; any user who can read it can flock
    # it.  Such a holder is not the daemon: stop and status must not take it for one.
    pid_path = world_dir.parent / "app.pid"
    pidfiles.append(pid_path)
    pid_path.write_text("999999\n")
    os.chmod(pid_path, 0o644)
    squatter = write_script(world_dir, f"""
        import fcntl, os, signal
        os.setgid(65534); os.setuid(65534)           # an unprivileged local user
        fd = os.open({str(pid_path)!r}, os.O_RDONLY)  # read access is all flock needs
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        signal.pause()
    """, "squatter.py")
    proc = subprocess.Popen([PYTHON, str(squatter)], stdout=subprocess.PIPE, text=True)
    spawned.append(proc.pid)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    stop = run_cli("stop", "--pidfile", str(pid_path))
    assert stop.returncode == 3
    assert f"held by pid {proc.pid} (uid 65534), which did not write it" in stop.stderr
    assert proc.poll() is None, "the squatter was signalled"
    status = run_cli("status", "--pidfile", str(pid_path))
    assert status.returncode == 4
    proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_status_of_a_path_that_is_no_regular_file_is_unknown(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "app.pid"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    result = run_cli("status", "--pidfile", str(path))
    assert result.returncode == 4, result.stdout
    assert f"status unknown: {path} is a {kind}, not a pidfile" in result.stdout
