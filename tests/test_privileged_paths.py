"""Root acting for a less privileged daemon: checked as that user, never tricked by that user.

Issue 14, #5: ``restart --user`` stopped the service, then failed a check it could have made
first (the pidfile's directory, a command the user cannot execute: both judged as root).
Issue 14, #6: with the log directory the docs recommend (writable by the daemon's user), that
user replaced ``app.log`` with a symbolic link to a root-only file, and the next start by root
appended to it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, holder, let_others_traverse, run_cli

NOBODY = 65534


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *argv], capture_output=True, text=True, timeout=30)


@pytest.fixture
def root_only_dir(tmp_path: Path) -> Path:
    """A directory only root may write, that others may enter."""
    os.chmod(tmp_path, 0o755)
    let_others_traverse(tmp_path)
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    return directory


def test_restart_with_a_log_the_user_cannot_open_refuses_before_stopping(
        root_only_dir: Path, pidfiles: list[Path]) -> None:
    # (Before issue 16 this was a pidfile directory the user could not write; the pidfile is
    # now created by root before the drop, so that restart succeeds: see
    # tests/test_runtime_directory.py.)  A log in another user's directory is opened with the
    # daemon's user's rights, who may not write there: found before the service is stopped.
    pidfile = root_only_dir / "app.pid"
    pidfiles.append(pidfile)
    others = root_only_dir / "others-logs"
    others.mkdir(mode=0o755)
    os.chown(others, 4242, 4242)  # some other (non-root) user's directory
    assert run_cli("start", "--pidfile", str(pidfile), "--", "/bin/sleep", "600").returncode == 0
    running = holder(pidfile)
    result = run_cli("restart", "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                     str(others / "app.log"), "--", "/bin/sleep", "600")
    assert result.returncode == 3
    assert f"the daemon's user (uid {NOBODY}) cannot open" in result.stderr
    assert_one_line_error(result)
    assert holder(pidfile) == running, "the service must still be up"
    assert not (others / "app.log").exists()


def test_restart_with_a_command_the_user_cannot_execute_refuses_before_stopping(
        root_only_dir: Path, world_dir: Path, pidfiles: list[Path]) -> None:
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    script = root_only_dir / "root-only.sh"
    script.write_text("#!/bin/sh\nexec /bin/sleep 600\n")
    script.chmod(0o700)
    assert run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--",
                   "/bin/sleep", "600").returncode == 0
    running = holder(pidfile)
    result = run_cli("restart", "--pidfile", str(pidfile), "--user", "nobody", "--", str(script))
    assert result.returncode == 3
    assert "is not executable by the program's user (uid 65534 gid 65534)" in result.stderr
    assert holder(pidfile) == running, "the service must still be up"


@pytest.fixture
def nobodys_log_dir(root_only_dir: Path) -> Path:
    """``/var/log/app/`` as the docs recommend: owned by the daemon's user."""
    logs = root_only_dir / "logs"
    logs.mkdir()
    os.chown(logs, NOBODY, NOBODY)
    return logs


@pytest.fixture
def root_secret(root_only_dir: Path) -> Path:
    secret = root_only_dir / "shadow"
    secret.write_text("root:secret\n")
    secret.chmod(0o600)
    return secret


def test_a_link_planted_by_the_daemons_user_is_not_followed_with_roots_rights(
        nobodys_log_dir: Path, root_secret: Path, world_dir: Path, pidfiles: list[Path]) -> None:
    log = nobodys_log_dir / "app.log"
    planted = _as_nobody("ln", "-s", str(root_secret), str(log))
    assert planted.returncode == 0, planted.stderr
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    for command in ("start", "restart"):
        result = run_cli(command, "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                         str(log), "--", "/bin/sh", "-c", "echo owned; exec sleep 600")
        assert result.returncode == 3, result.stderr
        assert (f"the daemon's user (uid {NOBODY}) cannot open {str(log)!r} for appending: "
                f"Permission denied") in result.stderr
        assert_one_line_error(result)
    assert root_secret.read_text() == "root:secret\n"
    assert not pidfile.exists()


def test_the_library_opens_a_stream_path_in_a_users_directory_as_that_user(
        nobodys_log_dir: Path, root_secret: Path, tmp_path: Path) -> None:
    import daemonctx
    from daemonctx.errors import DaemonOptionError

    log = nobodys_log_dir / "app.log"
    assert _as_nobody("ln", "-s", str(root_secret), str(log)).returncode == 0
    context = daemonctx.DaemonContext(uid="nobody", stdout=str(log))
    with pytest.raises(DaemonOptionError, match=r"cannot open .* for appending: Permission"):
        context.check_options()
    assert root_secret.read_text() == "root:secret\n"


def test_a_log_in_the_users_directory_is_created_by_and_for_that_user(
        nobodys_log_dir: Path, world_dir: Path, pidfiles: list[Path]) -> None:
    log = nobodys_log_dir / "app.log"
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    result = run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                     str(log), "--", "/bin/sh", "-c", "echo hello; exec sleep 600")
    assert result.returncode == 0, result.stderr
    assert log.stat().st_uid == NOBODY
    from tests.helpers import wait_file_text

    assert wait_file_text(log) == "hello\n"


def test_a_log_in_a_directory_only_root_writes_is_still_opened_by_root(
        root_only_dir: Path, world_dir: Path, pidfiles: list[Path]) -> None:
    log = root_only_dir / "app.log"  # /var/log/app.log: the daemon writes through root's fd
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    result = run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                     str(log), "--", "/bin/sh", "-c", "echo hello; exec sleep 600")
    assert result.returncode == 0, result.stderr
    assert log.stat().st_uid == 0
    from tests.helpers import wait_file_text

    assert wait_file_text(log) == "hello\n"


# --- symbolic links anywhere on the way (issue 14, #6, as the review found it) --------------


@pytest.fixture
def root_private(root_only_dir: Path) -> Path:
    """A directory only root may enter (0700), holding a root-only file ``existing.log``."""
    private = root_only_dir / "private"
    private.mkdir(mode=0o700)
    existing = private / "existing.log"
    existing.write_text("ROOT ONLY\n")
    existing.chmod(0o600)
    return private


def _plant_directory_link(layout: str, root_only_dir: Path, nobodys_log_dir: Path,
                          root_private: Path) -> Path:
    """Let nobody plant a link to ``root_private`` and return the log path through it."""
    if layout == "log directory is the user's link":
        home = root_only_dir / "home"  # the user's own directory, holding the "log directory"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        planted = _as_nobody("ln", "-s", str(root_private), str(home / "logs"))
        log = home / "logs" / "existing.log"
    else:
        planted = _as_nobody("ln", "-s", str(root_private), str(nobodys_log_dir / "current"))
        name = "new.log" if layout.endswith("new file") else "existing.log"
        log = nobodys_log_dir / "current" / name
    assert planted.returncode == 0, planted.stderr
    return log


DIRECTORY_LINK_LAYOUTS = ("directory component, existing file",
                          "directory component, new file",
                          "log directory is the user's link")


@pytest.mark.parametrize("layout", DIRECTORY_LINK_LAYOUTS)
def test_a_link_the_daemons_user_planted_as_a_directory_on_the_way_is_not_followed_by_root(
        layout: str, root_only_dir: Path, nobodys_log_dir: Path, root_private: Path,
        world_dir: Path, pidfiles: list[Path]) -> None:
    """Issue 14, #6 (review): root followed nobody's ``logs/current -> /root-only-dir``.

    ``only_root_can_change`` resolved the directory with ``realpath()`` and judged only the
    target, a directory only root may write: so root appended to its own 0600 file there, or
    created a root-owned file in its 0700 directory.  The path must be judged as given, link by
    link: the link lies in a directory nobody may write, so the file is opened as nobody.
    """
    log = _plant_directory_link(layout, root_only_dir, nobodys_log_dir, root_private)
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    for command in ("start", "restart"):
        result = run_cli(command, "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                         str(log), "--wait", "0", "--", "/bin/sh", "-c",
                         "echo owned; exec sleep 600")
        assert result.returncode == 3, result.stderr
        assert (f"the daemon's user (uid {NOBODY}) cannot open {str(log)!r} for appending: "
                f"Permission denied") in result.stderr
        assert_one_line_error(result)
    assert (root_private / "existing.log").read_text() == "ROOT ONLY\n"
    assert sorted(os.listdir(root_private)) == ["existing.log"], "root created a file there"
    assert not pidfile.exists()


@pytest.mark.parametrize("layout", DIRECTORY_LINK_LAYOUTS)
def test_the_library_does_not_follow_a_directory_link_of_the_daemons_user_with_roots_rights(
        layout: str, root_only_dir: Path, nobodys_log_dir: Path, root_private: Path) -> None:
    """Issue 14, #6 (review), through ``DaemonContext(uid=..., stdout=path)``."""
    import daemonctx
    from daemonctx.errors import DaemonOptionError

    log = _plant_directory_link(layout, root_only_dir, nobodys_log_dir, root_private)
    context = daemonctx.DaemonContext(uid="nobody", stdout=str(log))
    with pytest.raises(DaemonOptionError, match=r"cannot open .* for appending: Permission"):
        context.check_options()
    assert (root_private / "existing.log").read_text() == "ROOT ONLY\n"
    assert sorted(os.listdir(root_private)) == ["existing.log"]


def test_a_log_directory_reached_through_roots_own_links_is_still_opened_by_root(
        root_only_dir: Path, world_dir: Path, pidfiles: list[Path]) -> None:
    """Debian's ``/var/run -> /run``: links root made in directories only root may write.

    Judging the path link by link (issue 14, #6) must keep such a chain root's: the log is
    opened by root, in root's directory, for the daemon to write through root's descriptor.
    """
    real = root_only_dir / "real-logs"
    real.mkdir()
    var = root_only_dir / "var"
    var.mkdir()
    (var / "log").symlink_to("../real-logs")  # relative, as /var/run -> /run is on some systems
    (root_only_dir / "log").symlink_to(var / "log")  # absolute, to a link
    log = root_only_dir / "log" / "app.log"
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    result = run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                     str(log), "--", "/bin/sh", "-c", "echo hello; exec sleep 600")
    assert result.returncode == 0, result.stderr
    assert (real / "app.log").stat().st_uid == 0
    from tests.helpers import wait_file_text

    assert wait_file_text(real / "app.log") == "hello\n"


def test_a_new_log_in_a_sticky_shared_directory_is_created_by_the_daemons_user(
        world_dir: Path, pidfiles: list[Path]) -> None:
    """Issue 14, #6: in a sticky directory (``/tmp``) any user may create a name root has not.

    A name missing there could be taken (a link planted) between root's check and root's open,
    so the file is created by the daemon's user; an entry root owns there stays root's to open,
    since the sticky bit lets no one else remove or rename it.
    """
    log = world_dir / "app.log"
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    result = run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--stdout",
                     str(log), "--", "/bin/sh", "-c", "echo hello; exec sleep 600")
    assert result.returncode == 0, result.stderr
    assert log.stat().st_uid == NOBODY


# --- a #! interpreter the program's user cannot run (issue 14, #5, as the review found it) ---


@pytest.fixture
def running_as_nobody(world_dir: Path, pidfiles: list[Path]) -> tuple[Path, int]:
    """A service running as nobody: (its pidfile, its pid)."""
    pidfile = world_dir / "app.pid"
    pidfiles.append(pidfile)
    assert run_cli("start", "--pidfile", str(pidfile), "--user", "nobody", "--",
                   "/bin/sleep", "600").returncode == 0
    return pidfile, holder(pidfile)


def _script(path: Path, interpreter: str | Path, body: str = "") -> Path:
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("reached", ["directly", "through a link", "through a script"])
def test_restart_into_a_script_whose_interpreter_the_user_cannot_reach_refuses_before_stopping(
        reached: str, root_only_dir: Path, root_private: Path,
        running_as_nobody: tuple[Path, int]) -> None:
    """Issue 14, #5 (review): ``#!/work/main/.venv/bin/python``, under /root (0700).

    The check looked at the script only: the service was stopped, then the new start failed.
    The interpreter named by the ``#!`` line (and its own, for a script interpreter) must be
    reachable and executable by the program's user too.
    """
    pidfile, running = running_as_nobody
    interpreter = _script(root_private / "interpreter", "/bin/sh", "exec /bin/sleep 600\n")
    if reached == "through a link":  # a venv's bin/python -> a Python under /root
        (root_only_dir / "python").symlink_to(interpreter)
        interpreter = root_only_dir / "python"
    elif reached == "through a script":
        interpreter = _script(root_only_dir / "wrapper", interpreter)
    script = _script(root_only_dir / "app", interpreter)
    result = run_cli("restart", "--pidfile", str(pidfile), "--user", "nobody", "--",
                     str(script))
    assert result.returncode == 3, result.stderr
    assert f"its #! line names {interpreter}" in result.stderr
    assert (f"is not reachable by the program's user (uid {NOBODY} gid {NOBODY}): directory "
            f"{root_private} (mode 0700, owner uid 0) is not searchable by it") in result.stderr
    assert_one_line_error(result)
    assert holder(pidfile) == running, "the service must still be up"


def test_restart_into_a_script_whose_interpreter_is_missing_refuses_before_stopping(
        root_only_dir: Path, pid_path: Path) -> None:
    """Issue 14, #5 (review), without ``--user``: the caller's own check follows ``#!`` too."""
    assert run_cli("start", "--pidfile", str(pid_path), "--", "/bin/sleep", "600"
                   ).returncode == 0
    running = holder(pid_path)
    script = _script(root_only_dir / "app", root_only_dir / "no-such-python")
    result = run_cli("restart", "--pidfile", str(pid_path), "--", str(script))
    assert result.returncode == 3, result.stderr
    assert (f"its #! line names {root_only_dir / 'no-such-python'}, which does not exist"
            in result.stderr)
    assert_one_line_error(result)
    assert holder(pid_path) == running, "the service must still be up"


def _script_chain(directory: Path, scripts: int) -> Path:
    """``scripts`` scripts, each the ``#!`` interpreter of the next; the first runs /bin/sh."""
    interpreter: str | Path = "/bin/sh"
    for level in range(scripts):
        interpreter = _script(directory / f"level{level}", interpreter,
                              "exec /bin/sleep 600\n" if level == 0 else "")
    assert isinstance(interpreter, Path)
    return interpreter


def test_a_command_with_as_many_script_interpreters_as_the_kernel_follows_starts(
        root_only_dir: Path, pid_path: Path) -> None:
    """Linux runs a script whose interpreters are scripts up to five scripts deep."""
    command = _script_chain(root_only_dir, 5)
    result = run_cli("start", "--pidfile", str(pid_path), "--user", "nobody", "--",
                     str(command))
    assert result.returncode == 0, result.stderr


def test_restart_into_more_script_interpreters_than_the_kernel_follows_refuses_before_stopping(
        root_only_dir: Path, running_as_nobody: tuple[Path, int]) -> None:
    """Issue 14, #5: six scripts deep, exec fails (ELOOP): found before the service stops."""
    pidfile, running = running_as_nobody
    command = _script_chain(root_only_dir, 6)
    result = run_cli("restart", "--pidfile", str(pidfile), "--user", "nobody", "--",
                     str(command))
    assert result.returncode == 3, result.stderr
    assert "more than the kernel follows" in result.stderr
    assert_one_line_error(result)
    assert holder(pidfile) == running, "the service must still be up"
