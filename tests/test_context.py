"""DaemonContext on real processes: every step of the detach sequence, seen from outside."""

from __future__ import annotations

import grp
import os
import pty
import pwd
import resource
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import daemonctx
from tests.helpers import (
    PYTHON,
    Subreaper,
    launch_probe,
    open_fds,
    pid_exists,
    proc_stat,
    proc_status,
    read_pid_file,
    wait_file_text,
    wait_pid_gone,
)

NOBODY = pwd.getpwnam("nobody")
HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _signal_set(mask_hex: str) -> set[int]:
    mask = int(mask_hex, 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


# --- process tree, session, terminal -----------------------------------------------------


def test_daemon_runs_in_new_session_without_terminal_and_is_reparented(tmp_path, spawned):
    result, pid = launch_probe({"pid_path": str(tmp_path / "pid")}, spawned)
    assert result.returncode == 0, result.stderr
    assert pid is not None
    stat = proc_stat(pid)
    assert stat.session != pid, "the daemon must not be a session leader (second fork)"
    assert stat.session != os.getsid(0)
    assert stat.pgrp != os.getpgrp()
    assert stat.tty_nr == 0
    assert stat.ppid != os.getpid()
    assert not pid_exists(stat.session), "the session leader (first child) has exited"


def test_daemon_launched_from_pty_session_leader_survives_hangup_without_tty(tmp_path, spawned):
    pid_path = tmp_path / "pid"
    import json

    config = json.dumps({"pid_path": str(pid_path)})
    child, master = pty.fork()
    if child == 0:  # the launcher: session leader of a fresh pty, as under `ssh -t`
        os.execv(PYTHON, [PYTHON, str(Path(__file__).parent / "probe_daemon.py"), config])
    spawned.append(child)
    try:
        while select.select([master], [], [], 15)[0]:
            try:
                if not os.read(master, 1024):
                    break
            except OSError:  # EIO: the launcher exited, the pty hung up
                break
        _, status = os.waitpid(child, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
    daemon = read_pid_file(pid_path)
    spawned.append(daemon)
    assert pid_exists(daemon), "the daemon was killed by the launcher's SIGHUP"
    assert proc_stat(daemon).tty_nr == 0


# --- cwd, umask, root, limits ------------------------------------------------------------


def test_working_directory_and_umask_are_set(tmp_path, spawned):
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {"pid_path": str(tmp_path / "pid"),
              "options": {"working_directory": str(workdir), "umask": 0o027}}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
    assert proc_status(pid)["Umask"] == "0027"


def test_default_working_directory_is_root_and_umask_zero(tmp_path, spawned):
    _, pid = launch_probe({"pid_path": str(tmp_path / "pid")}, spawned)
    assert pid is not None
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert proc_status(pid)["Umask"] == "0000"


def test_core_dumps_are_disabled(tmp_path, spawned):
    _, pid = launch_probe({"pid_path": str(tmp_path / "pid")}, spawned)
    assert pid is not None
    limits = Path(f"/proc/{pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]


def test_chroot_directory_becomes_the_root(tmp_path, spawned):
    jail = tmp_path / "jail"
    (jail / "run").mkdir(parents=True)
    config = {"pid_path": "/run/pid", "options": {"chroot_directory": str(jail)}}
    _, pid = launch_probe(config, spawned, pid_file=jail / "run" / "pid")
    assert pid is not None
    assert os.readlink(f"/proc/{pid}/root") == str(jail)
    assert os.readlink(f"/proc/{pid}/cwd") == str(jail)
    # stdio is /dev/null although the jail has no /dev: it was opened before the chroot
    assert open_fds(pid)[0] == "/dev/null"


# --- privileges ------------------------------------------------------------------------


def test_drop_to_nobody_clears_supplementary_groups(world_dir, spawned):
    config = {"pid_path": str(world_dir / "pid"), "options": {"uid": "nobody"}}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    status = proc_status(pid)
    assert status["Uid"].split() == [str(NOBODY.pw_uid)] * 4
    assert status["Gid"].split() == [str(NOBODY.pw_gid)] * 4
    assert status["Groups"] == "", "root's supplementary groups must not be kept"


def test_initgroups_sets_the_users_groups_and_gid(world_dir, spawned):
    group = grp.getgrgid(NOBODY.pw_gid).gr_name
    config = {"pid_path": str(world_dir / "pid"),
              "options": {"uid": NOBODY.pw_uid, "gid": group, "initgroups": True}}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    status = proc_status(pid)
    expected = sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
    assert sorted(int(g) for g in status["Groups"].split()) == expected
    assert status["Gid"].split() == [str(NOBODY.pw_gid)] * 4


# --- signals ---------------------------------------------------------------------------


def test_signal_mask_and_ignored_signals_are_reset_and_map_installed(tmp_path, spawned):
    config = {"pid_path": str(tmp_path / "pid"),
              "block": ["SIGTERM", "SIGUSR1"], "ignore": ["SIGHUP", "SIGUSR2", "SIGTERM"]}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    status = proc_status(pid)
    assert _signal_set(status["SigBlk"]) == set()
    ignored = _signal_set(status["SigIgn"])
    assert {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU} <= ignored
    assert not {signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM} & ignored
    assert signal.SIGTERM in _signal_set(status["SigCgt"])


def test_sigterm_exits_zero_runs_atexit_and_removes_pidfile(tmp_path, spawned):
    pid_path, pidfile = tmp_path / "pid", tmp_path / "daemon.pid"
    atexit_log = tmp_path / "atexit.log"
    import json

    config = json.dumps({"pid_path": str(pid_path), "atexit_path": str(atexit_log),
                         "options": {"pidfile": str(pidfile)}})
    reaper = Subreaper(tmp_path, [PYTHON, str(Path(__file__).parent / "probe_daemon.py"),
                                  config], spawned)
    daemon = read_pid_file(pid_path)
    spawned.append(daemon)
    assert int(pidfile.read_text()) == daemon
    os.kill(daemon, signal.SIGTERM)
    assert reaper.wait_status(daemon) == ("exit", 0)
    assert atexit_log.read_text() == f"atexit {daemon}\n"
    assert not pidfile.exists()


def test_worker_forked_by_daemon_never_removes_the_pidfile(tmp_path, spawned):
    pidfile = tmp_path / "daemon.pid"
    config = {"pid_path": str(tmp_path / "pid"), "fork_worker": True,
              "atexit_path": str(tmp_path / "atexit.log"),
              "options": {"pidfile": str(pidfile)}}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    # the worker ran its atexit handlers (including DaemonContext.close) and exited
    assert wait_file_text(tmp_path / "atexit.log").startswith("atexit ")
    assert int(pidfile.read_text()) == pid
    assert daemonctx.holder_pid(pidfile) == pid


# --- file descriptors ------------------------------------------------------------------


def test_only_stdio_and_preserved_fds_stay_open(tmp_path, spawned):
    config = {"pid_path": str(tmp_path / "pid"), "stray_fds": [5, 9, 77, 300],
              "preserve": [9, 300]}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    fds = open_fds(pid)
    assert set(fds) == {0, 1, 2, 9, 300}
    assert fds[0] == fds[1] == fds[2] == "/dev/null"


def test_stray_fd_near_hard_limit_is_closed(tmp_path, spawned):
    top = HARD_NOFILE - 2
    config = {"pid_path": str(tmp_path / "pid"), "nofile": [HARD_NOFILE, HARD_NOFILE],
              "stray_fds": [top]}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    assert set(open_fds(pid)) == {0, 1, 2}


def test_stray_fd_closed_when_limit_raised_after_import(tmp_path, spawned):
    # started with a soft limit of 256; probe_daemon imports daemonctx, then raises the
    # limit, then opens the fd (python-daemon computes its fd range at import time)
    config = {"pid_path": str(tmp_path / "pid"), "nofile": [HARD_NOFILE, HARD_NOFILE],
              "stray_fds": [HARD_NOFILE - 100]}
    env = dict(os.environ)
    result = subprocess.run(["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", PYTHON,
                             str(Path(__file__).parent / "probe_daemon.py"),
                             __import__("json").dumps(config)],
                            capture_output=True, text=True, timeout=15, env=env)
    assert result.returncode == 0, result.stderr
    pid = read_pid_file(tmp_path / "pid")
    spawned.append(pid)
    assert set(open_fds(pid)) == {0, 1, 2}


def test_stray_fd_closed_when_soft_limit_lowered_below_it(tmp_path, spawned):
    config = {"pid_path": str(tmp_path / "pid"), "nofile": [HARD_NOFILE, HARD_NOFILE],
              "stray_fds": [5000], "lower_nofile": 64}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    assert set(open_fds(pid)) == {0, 1, 2}


def test_stdout_and_stderr_paths_are_appended(tmp_path, spawned):
    log = tmp_path / "daemon.log"
    log.write_text("old line\n")
    config = {"pid_path": str(tmp_path / "pid"), "print_after": "new line",
              "options": {"stdout": str(log), "stderr": str(log)}}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    assert wait_file_text(log, predicate=lambda t: "new line" in t) == "old line\nnew line\n"
    fds = open_fds(pid)
    assert fds[1] == fds[2] == str(log)
    assert fds[0] == "/dev/null"


def test_logging_file_handler_keeps_working_in_the_daemon(tmp_path, spawned):
    log = tmp_path / "app.log"
    config = {"pid_path": str(tmp_path / "pid"), "log_path": str(log)}
    _, pid = launch_probe(config, spawned)
    assert pid is not None
    assert f"hello from {pid}" in wait_file_text(log, predicate=lambda t: "hello" in t)


def test_text_printed_before_open_is_written_once(tmp_path, spawned):
    config = {"pid_path": str(tmp_path / "pid"), "print_before": "printed before open"}
    result, _ = launch_probe(config, spawned)  # stdout is a pipe: block-buffered
    assert result.stdout == "printed before open\n"


# --- detach auto-detection --------------------------------------------------------------


_REPO = str(Path(__file__).parent.parent)


def _decision_code(expression: str = "daemonctx.DaemonContext().detach_process") -> str:
    return f"import sys, os; sys.path.insert(0, {_REPO!r}); import daemonctx; print({expression})"


def _detach_decision(env: dict[str, str] | None = None, **kwargs: object) -> str:
    result = subprocess.run([PYTHON, "-c", _decision_code()], capture_output=True, text=True,
                            timeout=15, env=env, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, result.stderr
    return str(result.stdout.strip())


def test_detach_when_started_from_a_shell():
    assert _detach_decision() == "True"


def test_no_detach_when_stdin_is_a_socket_as_under_inetd():
    import socket

    left, right = socket.socketpair()
    with left, right:
        assert _detach_decision(stdin=left.fileno()) == "False"


def test_detach_decision_survives_closed_stdin():
    result = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", PYTHON, "-c", _decision_code()],
                            capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_no_detach_under_a_service_manager_parent(tmp_path, spawned):
    out = tmp_path / "decision"
    code = _decision_code().replace("print(", f"open({str(out)!r}, 'w').write(str(") + ")"
    env = dict(os.environ, INVOCATION_ID="0123456789abcdef", SUBREAPER_COMM="systemd")
    reaper = Subreaper(tmp_path, [PYTHON, "-c", code], spawned, env=env)
    assert reaper.wait_exit() is not None
    assert out.read_text() == "False"


def test_detach_when_service_manager_variables_leak_into_a_shell():
    env = dict(os.environ, INVOCATION_ID="0123456789abcdef")
    assert _detach_decision(env=env) == "True"


def test_no_detach_as_pid_one_of_a_pid_namespace():
    code = _decision_code("os.getpid(), daemonctx.DaemonContext().detach_process")
    result = subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", PYTHON, "-c", code],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]


# --- API contract ----------------------------------------------------------------------


def test_options_and_defaults_match_python_daemon():
    import daemon as python_daemon

    ours, theirs = daemonctx.DaemonContext(), python_daemon.DaemonContext()
    for name in ("chroot_directory", "working_directory", "umask", "uid", "gid",
                 "initgroups", "prevent_core", "detach_process", "files_preserve", "pidfile",
                 "stdin", "stdout", "stderr"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.signal_map == {
        k: ("terminate" if v == "terminate" else v) for k, v in theirs.signal_map.items()
    }
    assert ours.is_open is False
    with pytest.raises(AttributeError):
        ours.is_open = True  # type: ignore[misc]


def test_exception_classes_keep_python_daemon_bases():
    assert issubclass(daemonctx.DaemonOSEnvironmentError, daemonctx.DaemonError)
    assert issubclass(daemonctx.DaemonOSEnvironmentError, OSError)
    assert issubclass(daemonctx.DaemonProcessDetachError, daemonctx.DaemonError)
    assert issubclass(daemonctx.DaemonProcessDetachError, OSError)
    assert issubclass(daemonctx.DaemonOptionError, ValueError)


def test_files_preserve_is_not_mutated_and_accepts_any_iterable(tmp_path, spawned):
    import socket

    script = tmp_path / "p.py"
    script.write_text(f"""
import sys, os, socket
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
import daemonctx
sock = socket.socket()
log = open({str(tmp_path / 'keep.log')!r}, 'a')
keep = [sock, log, None]
ctx = daemonctx.DaemonContext(files_preserve=keep, stdout=log)
with ctx:
    assert keep == [sock, log, None], keep
    fds = sorted(int(n) for n in os.listdir('/proc/self/fd'))
    open({str(tmp_path / 'fds')!r}, 'w').write(f"{{fds}} {{sock.fileno()}} {{log.fileno()}}")
""")
    result = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stderr
    text = wait_file_text(tmp_path / "fds")
    fds_text, sock_fd, log_fd = text.rsplit(" ", 2)
    assert {int(sock_fd), int(log_fd)} <= set(eval(fds_text))
    del socket


@pytest.mark.forked
def test_open_and_close_are_idempotent_without_detach(tmp_path):
    pidfile = tmp_path / "x.pid"
    ctx = daemonctx.DaemonContext(detach_process=False, working_directory=str(tmp_path),
                                  pidfile=daemonctx.PIDFile(pidfile), prevent_core=False,
                                  stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr,
                                  files_preserve=list(open_fds(os.getpid())))
    ctx.open()
    ctx.open()
    assert ctx.is_open
    assert int(pidfile.read_text()) == os.getpid()
    ctx.close()
    ctx.close()
    assert not ctx.is_open
    assert not pidfile.exists()


# --- bad input: raised in the launcher, before any fork, nothing left behind -------------


BAD_OPTIONS = [
    ({"working_directory": "/nonexistent/dir"}, "working_directory '/nonexistent/dir'"),
    ({"working_directory": "/etc/passwd"}, "is not a directory"),
    ({"chroot_directory": "/nonexistent/jail"}, "chroot_directory"),
    ({"uid": "no-such-user-xyz"}, "unknown user 'no-such-user-xyz'"),
    ({"gid": "no-such-group-xyz"}, "unknown group 'no-such-group-xyz'"),
    ({"uid": -5}, "uid must be"),
    ({"umask": 0o1000}, "umask must be"),
    ({"umask": "022"}, "umask must be"),
    ({"signal_map": {"SIGNOPE": None}}, "unknown signal name 'SIGNOPE'"),
    ({"signal_map": {signal.SIGKILL: None}}, "SIGKILL cannot be caught"),
    ({"signal_map": {signal.SIGHUP: "no_such_method"}}, "no method 'no_such_method'"),
    ({"signal_map": {signal.SIGHUP: 42}}, "is not callable"),
    ({"files_preserve": [987]}, "file descriptor 987"),
    ({"stdout": "/nonexistent/dir/out.log"}, "stdout: cannot open '/nonexistent/dir/out.log'"),
    ({"pidfile": object()}, "pidfile must be a context manager"),
    ({"startup_timeout": -1}, "startup_timeout"),
]


@pytest.mark.forked
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_option_raises_naming_it_before_forking(options, message, tmp_path):
    before_cwd = os.getcwd()
    os.umask(0o022)
    before_fds = set(open_fds(os.getpid()))
    ctx = daemonctx.DaemonContext(**options)
    with pytest.raises(daemonctx.DaemonError) as caught:
        ctx.open()
    assert message in str(caught.value)
    from tests.helpers import children_of

    assert children_of(os.getpid()) == []
    assert os.getcwd() == before_cwd
    assert os.umask(0o022) == 0o022
    assert set(open_fds(os.getpid())) == before_fds


@pytest.mark.forked
def test_failed_start_removes_the_log_file_it_created(tmp_path):
    log = tmp_path / "new.log"
    ctx = daemonctx.DaemonContext(stdout=str(log), stderr="/nonexistent/dir/err.log")
    with pytest.raises(daemonctx.DaemonOptionError):
        ctx.open()
    assert not log.exists()


@pytest.mark.forked
def test_closed_fd_in_files_preserve_file_object_is_rejected(tmp_path):
    with open(tmp_path / "f", "w") as f:
        pass
    with pytest.raises(daemonctx.DaemonOptionError, match="files_preserve"):
        daemonctx.DaemonContext(files_preserve=[f]).open()


def test_launcher_exit_status_is_zero_only_after_the_daemon_is_running(tmp_path, spawned):
    result, pid = launch_probe({"pid_path": str(tmp_path / "pid")}, spawned)
    assert result.returncode == 0
    assert result.stderr == ""
    assert pid is not None and pid_exists(pid)
    os.kill(pid, signal.SIGTERM)
    wait_pid_gone(pid)
