"""PIDFile, holder_pid, TimeoutPIDLockFile and preflight, checked with real processes and files.

A "holder" here is a separate Python process that takes the pidfile and keeps it until its
stdin is closed; everything about it is observed from outside (the file, /proc/locks,
/proc/<pid>/fd).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lockfile  # type: ignore[import-untyped]
import pytest

from daemonctx.errors import DaemonOptionError
from daemonctx.pidfile import (
    PIDFile,
    PIDFileError,
    PIDFileLockedError,
    PIDFileLockFailedError,
    PIDFileTimeoutError,
    PIDFileUnsafeError,
    TimeoutPIDLockFile,
    _flock_holders,
    _holder_on_other_device,
    _holder_pid_by_probe,
    holder_pid,
)
from tests.helpers import (
    PYTHON,
    dead_pid,
    fork_call,
    kill_and_wait,
    open_fds,
    read_pid_file,
    run_python,
    wait_child_status,
    wait_for,
    wait_pid_gone,
    write_script,
)

NOBODY = 65534

HOLDER_SCRIPT = """
import os, sys
from daemonctx.pidfile import PIDFile, PIDFileError
path, timeout = sys.argv[1], sys.argv[2]
pidfile = PIDFile(path, acquire_timeout=None if timeout == "none" else float(timeout))
try:
    pidfile.acquire()
except PIDFileError as exc:
    print("error", type(exc).__name__, exc, flush=True)
    sys.exit(3)
print("locked", os.getpid(), os.fstat(pidfile.fileno()).st_ino, flush=True)
sys.stdin.read()
pidfile.release()
print("released", flush=True)
"""


class Holder:
    """A process running HOLDER_SCRIPT; ``pid`` is its pid."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def line(self, timeout: float = 15.0) -> str:
        """The next line the holder prints (bounded wait)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"holder {self.pid} printed nothing within {timeout} s"
        return self.proc.stdout.readline().strip()

    def wait_locked(self) -> int:
        """Wait for "locked <pid> <ino>"; return the inode it locked."""
        words = self.line().split()
        assert words[:2] == ["locked", str(self.pid)], words
        return int(words[2])

    def let_go(self) -> None:
        """Close its stdin: it releases the pidfile and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()


@pytest.fixture
def start_holder(tmp_path: Path) -> Iterator[Callable[..., Holder]]:
    """Start holder processes; each is killed and reaped at the end of the test."""
    script = write_script(tmp_path, HOLDER_SCRIPT, "holder.py")
    started: list[Holder] = []

    def start(path: Path, timeout: str = "0", wait: bool = True) -> Holder:
        proc = subprocess.Popen([PYTHON, str(script), str(path), timeout],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holder = Holder(proc)
        started.append(holder)
        if wait:
            holder.wait_locked()
        return holder

    yield start
    for holder in started:
        kill_and_wait(holder.pid)
        holder.proc.wait(timeout=15)
        for stream in (holder.proc.stdin, holder.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def flock_lines(path: Path) -> list[str]:
    """The /proc/locks lines (holders and waiters) for the file at ``path``."""
    ino = os.stat(path).st_ino
    return [line for line in Path("/proc/locks").read_text().splitlines()
            if line.split()[-3].endswith(f":{ino}")]


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    """Content, inode, mode and mtime of ``path``: to show a file was left untouched."""
    st = os.lstat(path)
    return path.read_bytes(), st.st_ino, st.st_mode, st.st_mtime_ns


# --- holding and refusing ------------------------------------------------------------------


def test_holder_writes_its_pid_and_holds_an_exclusive_flock(tmp_path: Path,
                                                           start_holder: Callable[..., Holder]
                                                           ) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    assert path.read_text() == f"{holder.pid}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert any(line.split()[1:5] == ["FLOCK", "ADVISORY", "WRITE", str(holder.pid)]
               for line in flock_lines(path))


def test_second_start_fails_naming_running_pid_and_leaves_file_alone(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    before = snapshot(path)
    with pytest.raises(PIDFileLockedError) as caught:
        PIDFile(path).acquire()
    assert str(caught.value) == f"pidfile {path} is held by pid {holder.pid}: already running"
    assert (caught.value.pid, caught.value.path) == (holder.pid, str(path))
    assert snapshot(path) == before


def test_second_start_from_another_process_is_refused(tmp_path: Path,
                                                      start_holder: Callable[..., Holder]
                                                      ) -> None:
    path = tmp_path / "app.pid"
    first = start_holder(path)
    second = start_holder(path, wait=False)
    assert second.line() == (f"error PIDFileLockedError pidfile {path} is held by pid "
                             f"{first.pid}: already running")
    assert second.proc.wait(timeout=15) == 3


def test_start_after_sigkill_of_holder_succeeds_at_once_and_rewrites_pid(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    kill_and_wait(holder.pid)
    assert path.read_text() == f"{holder.pid}\n"  # the file outlives its holder...
    pidfile = PIDFile(path)
    pidfile.acquire(timeout=0)  # ...but not the lock
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        assert holder_pid(path) == os.getpid()
    finally:
        pidfile.release()


def test_file_naming_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{dead_pid()}\n")
    with PIDFile(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_file_with_garbage_is_taken_over_and_fully_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_bytes(b"not a pid\x00\xff" * 100)
    with PIDFile(path):
        assert path.read_bytes() == f"{os.getpid()}\n".encode()


def test_symlink_at_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("precious data\n")
    os.chmod(target, 0o600)
    before = snapshot(target)
    path = tmp_path / "app.pid"
    path.symlink_to(target)
    with pytest.raises(PIDFileUnsafeError, match="symbolic link"):
        PIDFile(path).acquire()
    assert snapshot(target) == before
    assert path.is_symlink()


def test_dangling_symlink_is_refused_and_its_target_not_created(tmp_path: Path) -> None:
    target = tmp_path / "created-by-attacker"
    path = tmp_path / "app.pid"
    path.symlink_to(target)
    with pytest.raises(PIDFileUnsafeError):
        PIDFile(path).acquire()
    assert not target.exists()


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket"])
def test_non_regular_file_at_path_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "app.pid"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    with pytest.raises(PIDFileUnsafeError, match="not a regular file"):
        PIDFile(path).acquire()
    assert not stat.S_ISREG(os.lstat(path).st_mode)


def test_hard_linked_file_is_refused_and_the_other_name_untouched(tmp_path: Path) -> None:
    other = tmp_path / "config"
    other.write_text("setting = 1\n")
    path = tmp_path / "app.pid"
    os.link(other, path)
    before = snapshot(other)
    with pytest.raises(PIDFileUnsafeError, match="hard links"):
        PIDFile(path).acquire()
    assert snapshot(other) == before


def test_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(PIDFileUnsafeError, match="sticky"):
        PIDFile(shared / "app.pid").acquire()
    assert list(shared.iterdir()) == []


def test_world_writable_directory_with_sticky_bit_is_accepted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with PIDFile(shared / "app.pid"):
        assert (shared / "app.pid").read_text() == f"{os.getpid()}\n"


def test_file_of_another_user_in_sticky_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    path = shared / "app.pid"
    path.write_text("1\n")
    os.chown(path, NOBODY, NOBODY)
    before = snapshot(path)
    with pytest.raises(PIDFileUnsafeError, match=f"belongs to uid {NOBODY}"):
        PIDFile(path).acquire()
    assert snapshot(path) == before


@pytest.mark.forked
def test_new_file_gets_mode_0644_whatever_the_umask(tmp_path: Path) -> None:
    os.umask(0o077)
    with PIDFile(tmp_path / "app.pid"):
        assert stat.S_IMODE(os.stat(tmp_path / "app.pid").st_mode) == 0o644


def test_mode_option_sets_the_file_mode(tmp_path: Path) -> None:
    with PIDFile(tmp_path / "app.pid", mode=0o600):
        assert stat.S_IMODE(os.stat(tmp_path / "app.pid").st_mode) == 0o600


def test_missing_directory_fails_with_lock_failed_keeping_errno(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "app.pid"
    with pytest.raises(lockfile.LockFailed) as caught:
        PIDFile(path).acquire()
    assert isinstance(caught.value, PIDFileLockFailedError)
    assert caught.value.errno == errno.ENOENT
    assert f"directory {tmp_path / 'missing'} does not exist" in str(caught.value)


def test_acquiring_twice_with_one_object_is_refused_naming_this_process(tmp_path: Path
                                                                       ) -> None:
    with PIDFile(tmp_path / "app.pid") as pidfile:
        with pytest.raises(PIDFileLockedError) as caught:
            pidfile.acquire()
        assert caught.value.pid == os.getpid()


def test_relative_path_means_the_directory_the_pidfile_was_created_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pidfile = PIDFile("app.pid")
    assert pidfile.path == str(tmp_path / "app.pid")
    monkeypatch.chdir("/")  # as a daemon's: the path still means the caller's app.pid
    with pidfile:
        assert (tmp_path / "app.pid").read_text() == f"{os.getpid()}\n"
        assert not Path("/app.pid").exists()
    assert not (tmp_path / "app.pid").exists()


# --- waiting ---------------------------------------------------------------------------------


def test_positive_timeout_waits_then_raises_timeout_naming_holder(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    started = time.monotonic()
    with pytest.raises(PIDFileTimeoutError) as caught:
        PIDFile(path, acquire_timeout=0.3).acquire()
    assert time.monotonic() - started >= 0.3
    assert caught.value.pid == holder.pid
    assert str(caught.value).startswith(f"pidfile {path} is held by pid {holder.pid}: ")


def test_negative_timeout_fails_at_once_as_already_locked(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    start_holder(path)
    with pytest.raises(PIDFileLockedError):
        PIDFile(path).acquire(timeout=-1)


def test_positive_timeout_gets_the_lock_when_the_holder_lets_go(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    first = start_holder(path)
    waiter = start_holder(path, "30", wait=False)
    # The waiter has the file open (it is retrying its lock) while the first still holds it.
    wait_for(lambda: str(path) in open_fds(waiter.pid).values(), what="waiter opening file")
    first.let_go()
    waiter.wait_locked()
    assert path.read_text() == f"{waiter.pid}\n"


def test_waiter_woken_by_release_relocks_the_new_file_at_the_path(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    first = start_holder(path)
    waiter = start_holder(path, "none", wait=False)
    wait_for(lambda: any(f"-> FLOCK  ADVISORY  WRITE {waiter.pid} " in line
                         for line in flock_lines(path)), what="waiter blocked in flock")
    # The first holder unlinks the file, then unlocks: the waiter wakes up holding a lock
    # on a removed file, and must start over on a fresh file at the path.
    first.let_go()
    locked_inode = waiter.wait_locked()
    assert os.stat(path).st_ino == locked_inode
    assert path.read_text() == f"{waiter.pid}\n"
    assert holder_pid(path) == waiter.pid


# --- release ---------------------------------------------------------------------------------


def test_release_removes_the_file_and_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = PIDFile(path)
    pidfile.acquire()
    pidfile.release()
    assert not path.exists()
    assert not pidfile.is_locked()
    with PIDFile(path):
        pass


def test_release_leaves_a_file_put_there_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = PIDFile(path)
    pidfile.acquire()
    path.unlink()
    path.write_text("4242\n")
    pidfile.release()
    assert path.read_text() == "4242\n"


def test_release_in_forked_child_keeps_parent_lock_and_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    pidfile = PIDFile(path)
    pidfile.acquire()

    def in_child() -> int:
        if pidfile.i_am_locking():
            return 2
        pidfile.release()
        pidfile.__exit__(None, None, None)
        return 0

    try:
        assert wait_child_status(fork_call(in_child)) == 0
        assert path.read_text() == f"{os.getpid()}\n"
        assert holder_pid(path) == os.getpid()
        assert pidfile.i_am_locking()
        with pytest.raises(PIDFileLockedError):
            PIDFile(path).acquire()
    finally:
        pidfile.release()


def test_release_without_the_lock_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text("4242\n")
    PIDFile(path).release()
    assert path.read_text() == "4242\n"


def test_break_lock_removes_a_leftover_file(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{dead_pid()}\n")
    PIDFile(path).break_lock()
    assert not path.exists()


def test_break_lock_refuses_a_held_lock_and_keeps_its_file(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    with pytest.raises(PIDFileLockedError):
        PIDFile(path).break_lock()
    assert path.read_text() == f"{holder.pid}\n"


def test_fileno_is_the_locked_descriptor_and_close_on_exec(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    with PIDFile(path) as pidfile:
        fd = pidfile.fileno()
        assert os.readlink(f"/proc/self/fd/{fd}") == str(path)
        assert not os.get_inheritable(fd)
        assert "lock:\t" in Path(f"/proc/self/fdinfo/{fd}").read_text()
    with pytest.raises(PIDFileError, match="not locked"):
        pidfile.fileno()


def test_lock_survives_exec_when_the_descriptor_is_inherited(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    script = write_script(tmp_path, """
        import os, sys
        from daemonctx.pidfile import PIDFile
        pidfile = PIDFile(sys.argv[1])
        pidfile.acquire()
        os.set_inheritable(pidfile.fileno(), True)
        program = "import sys; print('exec done', flush=True); sys.stdin.read()"
        os.execv(sys.executable, [sys.executable, "-c", program])
    """)
    proc = subprocess.Popen([PYTHON, str(script), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        # The exec'd program knows nothing of the pidfile, yet holds it under the same pid.
        assert Holder(proc).line() == "exec done"
        assert holder_pid(path) == proc.pid
        assert path.read_text() == f"{proc.pid}\n"
    finally:
        kill_and_wait(proc.pid)
        proc.wait(timeout=15)
        for stream in (proc.stdin, proc.stdout):
            assert stream is not None
            stream.close()
    assert holder_pid(path) is None


# --- holder_pid ------------------------------------------------------------------------------


def test_holder_pid_is_none_for_a_live_unrelated_pid_without_lock(tmp_path: Path,
                                                                  spawned: list[int]) -> None:
    other = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    spawned.append(other.pid)
    path = tmp_path / "app.pid"
    path.write_text(f"{other.pid}\n")
    try:
        assert holder_pid(path) is None
        assert not PIDFile(path).is_locked()
        assert PIDFile(path).read_pid() == other.pid
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=15)


def test_holder_pid_reports_the_holder_not_a_waiter(tmp_path: Path,
                                                    start_holder: Callable[..., Holder]
                                                    ) -> None:
    path = tmp_path / "app.pid"
    first = start_holder(path)
    waiter = start_holder(path, "none", wait=False)
    wait_for(lambda: any(f"-> FLOCK  ADVISORY  WRITE {waiter.pid} " in line
                         for line in flock_lines(path)), what="waiter blocked in flock")
    assert holder_pid(path) == first.pid
    assert PIDFile(path).is_locked()


def test_holder_pid_is_none_for_missing_file(tmp_path: Path) -> None:
    assert holder_pid(tmp_path / "app.pid") is None


def test_holder_pid_does_not_follow_a_symlink_to_a_held_pidfile(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    start_holder(path)
    link = tmp_path / "other.pid"
    link.symlink_to(path)
    assert holder_pid(link) is None


def test_holder_pid_probe_fallback_reports_holder_then_none(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    # The path taken where /proc/locks is missing (other systems, a chroot without /proc).
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    assert _holder_pid_by_probe(str(path)) == holder.pid
    kill_and_wait(holder.pid)
    assert _holder_pid_by_probe(str(path)) is None


def test_proc_locks_parsing_skips_waiters_and_other_inodes() -> None:
    table = ("1: FLOCK  ADVISORY  WRITE 100 fe:00:42 0 EOF\n"
             "1: -> FLOCK  ADVISORY  WRITE 101 fe:00:42 0 EOF\n"
             "2: POSIX  ADVISORY  WRITE 102 fe:00:42 0 EOF\n"
             "3: FLOCK  ADVISORY  WRITE 103 fe:00:43 0 EOF\n"
             "4: FLOCK  ADVISORY  WRITE 104 00:27:42 0 EOF\n")
    assert _flock_holders(table, 42) == {os.makedev(0xfe, 0): [100], os.makedev(0, 0x27): [104]}


def test_lock_on_same_inode_of_unknown_device_counts_only_if_file_names_that_pid(
        tmp_path: Path) -> None:
    # Where stat's device is not the kernel's lock device (see holder_pid), the inode alone
    # could match a lock on another file system: the file's own pid must agree.
    path = tmp_path / "app.pid"
    path.write_text("4242\n")
    st = os.stat(path)
    elsewhere = os.makedev(0xab, 0xcd)
    assert _holder_on_other_device(str(path), st, {elsewhere: [4242]}) == 4242
    assert _holder_on_other_device(str(path), st, {elsewhere: [4343]}) is None


# --- lockfile and python-daemon compatibility ------------------------------------------------


def test_lockfile_already_locked_catches_a_held_pidfile(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    start_holder(path)
    with pytest.raises(lockfile.AlreadyLocked):
        PIDFile(path).acquire()


def test_lockfile_lock_timeout_catches_a_timed_out_wait(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    start_holder(path)
    with pytest.raises(lockfile.LockTimeout):
        PIDFile(path).acquire(timeout=0.1)


def test_lockfile_lock_failed_catches_an_unsafe_path(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(lockfile.LockFailed):
        PIDFile(path).acquire()


def test_pidfile_errors_survive_pickling(tmp_path: Path) -> None:
    import pickle

    error = PIDFileLockedError("pidfile /run/app.pid is held by pid 7: already running",
                               "/run/app.pid", 7)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.path, copy.pid) == (
        PIDFileLockedError, str(error), "/run/app.pid", 7)


def test_timeout_pidlockfile_without_timeout_fails_at_once(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    lock = TimeoutPIDLockFile(str(path))
    with pytest.raises(lockfile.AlreadyLocked) as caught:
        lock.acquire()
    assert isinstance(caught.value, PIDFileLockedError)
    assert caught.value.pid == holder.pid


def test_timeout_pidlockfile_with_timeout_waits_then_lock_timeout(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    start_holder(path)
    lock = TimeoutPIDLockFile(str(path), 0.3)
    started = time.monotonic()
    with pytest.raises(lockfile.LockTimeout) as caught:
        lock.__enter__()
    assert isinstance(caught.value, PIDFileTimeoutError)
    assert time.monotonic() - started >= 0.3


def test_timeout_pidlockfile_as_context_manager_writes_then_removes(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    with TimeoutPIDLockFile(str(path), 5) as lock:
        assert lock.read_pid() == os.getpid()
        assert lock.i_am_locking()
    assert not path.exists()


def test_timeout_pidlockfile_takes_lockfile_positional_arguments(tmp_path: Path) -> None:
    lock = TimeoutPIDLockFile(str(tmp_path / "app.pid"), None, False, 2.5)
    assert (lock.acquire_timeout, lock.timeout) == (None, 2.5)


# --- preflight -------------------------------------------------------------------------------


def preflight_as(pidfile: PIDFile, uid: int = 0, gid: int = 0, groups: tuple[int, ...] = (),
                 root: str | None = None, cwd: str = "/") -> None:
    pidfile.preflight(uid=uid, gid=gid, groups=list(groups), root=root, cwd=cwd)


def test_preflight_names_the_holder_without_touching_the_file(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    path = tmp_path / "app.pid"
    holder = start_holder(path)
    before = snapshot(path)
    with pytest.raises(PIDFileLockedError, match=f"held by pid {holder.pid}: already running"):
        preflight_as(PIDFile(path))
    assert snapshot(path) == before
    assert len(flock_lines(path)) == 1


def test_preflight_missing_directory_raises_lock_failed(tmp_path: Path) -> None:
    with pytest.raises(PIDFileLockFailedError, match="does not exist"):
        preflight_as(PIDFile(tmp_path / "missing" / "app.pid"))
    assert list(tmp_path.iterdir()) == []


def test_preflight_root_owned_0755_directory_is_not_writable_for_nobody(
        world_dir: Path) -> None:
    directory = world_dir / "run"
    directory.mkdir(mode=0o755)
    with pytest.raises(PIDFileLockFailedError, match=f"not writable by uid {NOBODY}"):
        preflight_as(PIDFile(directory / "app.pid"), uid=NOBODY, gid=NOBODY)
    preflight_as(PIDFile(directory / "app.pid"), uid=0, gid=0)
    assert list(directory.iterdir()) == []


def test_preflight_refuses_a_symlink_and_leaves_its_target(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("data\n")
    before = snapshot(target)
    (tmp_path / "app.pid").symlink_to(target)
    with pytest.raises(PIDFileUnsafeError):
        preflight_as(PIDFile(tmp_path / "app.pid"))
    assert snapshot(target) == before


def test_preflight_refuses_world_writable_directory_without_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(PIDFileUnsafeError, match="sticky"):
        preflight_as(PIDFile(shared / "app.pid"))


def test_preflight_accepts_a_leftover_file_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.pid"
    path.write_text(f"{dead_pid()}\n")
    before = snapshot(path)
    preflight_as(PIDFile(path))
    assert snapshot(path) == before
    assert holder_pid(path) is None


def test_preflight_sees_an_absolute_path_inside_the_chroot(
        tmp_path: Path, start_holder: Callable[..., Holder]) -> None:
    jail = tmp_path / "jail"
    (jail / "srv" / "app").mkdir(parents=True)
    host_path = jail / "srv" / "app" / "app.pid"
    holder = start_holder(host_path)
    with pytest.raises(PIDFileLockedError) as caught:
        preflight_as(PIDFile("/srv/app/app.pid"), root=str(jail), cwd="/srv/app")
    assert (caught.value.path, caught.value.pid) == (str(host_path), holder.pid)


def test_preflight_refuses_a_relative_path_with_a_chroot_naming_what_it_resolved_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jail = tmp_path / "jail"
    jail.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DaemonOptionError, match=f"resolved .* to {tmp_path}/app.pid; with "
                                                f"chroot_directory"):
        preflight_as(PIDFile("app.pid"), root=str(jail))


def _layout(base: Path, case: str) -> Path:
    """A directory for the pidfile, set up as ``case`` says; returns the pidfile path."""
    if case == "root 0755":
        directory = base / "d"
        directory.mkdir(mode=0o755)
    elif case == "sticky 1777":
        directory = base / "d"
        directory.mkdir()
        os.chmod(directory, 0o1777)
    elif case == "group nobody 0775":
        directory = base / "d"
        directory.mkdir()
        os.chown(directory, 0, NOBODY)
        os.chmod(directory, 0o775)
    elif case == "owned by nobody 0700":
        directory = base / "d"
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
    elif case == "ancestor 0700":
        directory = base / "a" / "d"
        directory.mkdir(parents=True)
        os.chmod(base / "a", 0o700)
        os.chmod(directory, 0o1777)
    elif case == "root file 0644":
        directory = base / "d"
        directory.mkdir()
        os.chmod(directory, 0o1777)
        (directory / "app.pid").write_text("1\n")
        os.chmod(directory / "app.pid", 0o644)
    else:
        raise AssertionError(case)
    return directory / "app.pid"


@pytest.mark.parametrize("case", ["root 0755", "sticky 1777", "group nobody 0775",
                                  "owned by nobody 0700", "ancestor 0700", "root file 0644"])
def test_preflight_verdict_for_nobody_matches_a_real_acquire_as_nobody(
        world_dir: Path, case: str) -> None:
    path = _layout(world_dir, case)
    try:
        preflight_as(PIDFile(path), uid=NOBODY, gid=NOBODY)
        predicted = "ok"
    except PIDFileLockFailedError:
        predicted = "failed"
    assert acquire_as_nobody(path) == predicted
    if case in ("root 0755", "ancestor 0700", "root file 0644"):
        assert predicted == "failed"


def acquire_as_nobody(path: Path) -> str:
    """Try ``PIDFile(path)`` in a forked process running as nobody (no groups): ok/failed."""

    def as_nobody() -> int:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            with PIDFile(path):
                return 0
        except PIDFileLockFailedError:
            return 1

    code = wait_child_status(fork_call(as_nobody))
    return {0: "ok", 1: "failed"}.get(code, f"exit status {code}")


# --- through DaemonContext (needs daemonctx.context) -----------------------------------------

DAEMON_SCRIPT = """
import os, signal, sys
from pathlib import Path
import daemonctx
from daemonctx.pidfile import PIDFile
from lockfile.pidlockfile import PIDLockFile
kind, pidfile_path, marker = sys.argv[1:4]
pidfile = PIDLockFile(pidfile_path) if kind == "lockfile" else PIDFile(pidfile_path)
with daemonctx.DaemonContext(pidfile=pidfile, working_directory=os.path.dirname(marker)):
    Path(marker).write_text(f"{os.getpid()}\\n")
    while True:
        signal.pause()
"""


def test_lockfile_pidlockfile_works_as_daemoncontext_pidfile(tmp_path: Path,
                                                             spawned: list[int]) -> None:
    script = write_script(tmp_path, DAEMON_SCRIPT, "daemon.py")
    path, marker = tmp_path / "app.pid", tmp_path / "daemon-pid"
    launched = run_python(script, "lockfile", str(path), str(marker))
    assert launched.returncode == 0, launched.stderr
    daemon = read_pid_file(marker)
    spawned.append(daemon)
    assert path.read_text() == f"{daemon}\n"
    os.kill(daemon, signal.SIGTERM)
    wait_pid_gone(daemon)
    assert not path.exists()


def test_daemoncontext_pidfile_holds_the_daemon_pid_and_blocks_a_second_start(
        tmp_path: Path, spawned: list[int]) -> None:
    script = write_script(tmp_path, DAEMON_SCRIPT, "daemon.py")
    path, marker = tmp_path / "app.pid", tmp_path / "daemon-pid"
    launched = run_python(script, "pidfile", str(path), str(marker))
    assert launched.returncode == 0, launched.stderr
    daemon = read_pid_file(marker)
    spawned.append(daemon)
    assert path.read_text() == f"{daemon}\n"
    assert holder_pid(path) == daemon
    second = run_python(script, "pidfile", str(path), str(tmp_path / "second-pid"))
    assert second.returncode != 0
    assert f"pidfile {path} is held by pid {daemon}: already running" in second.stderr
    assert not (tmp_path / "second-pid").exists()
    os.kill(daemon, signal.SIGTERM)
    wait_pid_gone(daemon)
    assert not path.exists()
