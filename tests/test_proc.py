"""The ``/proc`` readers that moved into ``daemonctx._proc`` (issue 15): each answers as the kernel
says, and None/empty where it cannot tell instead of raising."""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemonctx import _proc, steps
from tests.helpers import dead_pid, kill_and_wait


@dataclass
class LockingChild:
    """A forked child holding an ``flock`` on ``path`` until the test ends."""

    pid: int
    path: Path


@pytest.fixture
def locking_child(tmp_path: Path) -> Iterator[LockingChild]:
    path = tmp_path / "app.pid"
    ready_read, ready_write = os.pipe()
    hold_read, hold_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured in the child
        try:
            os.close(ready_read)
            os.close(hold_write)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.write(ready_write, b"x")
            os.read(hold_read, 1)  # until the test closes its end
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(hold_read)
    try:
        assert os.read(ready_read, 1) == b"x"
        yield LockingChild(pid, path)
    finally:
        os.close(ready_read)
        os.close(hold_write)
        kill_and_wait(pid, signal.SIGKILL)


def test_open_fds_lists_an_fd_just_opened_and_not_the_listing_itself() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        fds = _proc.open_fds()
        assert fds is not None and fd in fds and 0 in fds
        assert steps.highest_open_fd() == max(fds)
    finally:
        os.close(fd)
    after = _proc.open_fds()
    assert after is not None and fd not in after


def test_pidfd_pid_names_the_process_and_none_for_an_fd_that_is_not_open() -> None:
    pidfd = os.pidfd_open(os.getpid())
    try:
        assert _proc.pidfd_pid(pidfd) == os.getpid()
    finally:
        os.close(pidfd)
    assert _proc.pidfd_pid(pidfd) is None


def test_real_uid_and_command_name_of_this_process_and_of_none() -> None:
    assert _proc.real_uid(os.getpid()) == os.getuid()
    comm = Path(f"/proc/{os.getpid()}/comm").read_text(encoding="utf-8").strip()
    assert _proc.command_name(os.getpid()) == comm
    gone = dead_pid()
    assert _proc.real_uid(gone) is None
    assert _proc.command_name(gone) is None


def test_parent_session_and_start_of_this_process_come_from_its_stat() -> None:
    me = os.getpid()
    assert _proc.parent_pid(me) == os.getppid()
    assert _proc.session_id(me) == os.getsid(0)
    assert isinstance(_proc.start_ticks(me), int)
    gone = dead_pid()
    assert (_proc.parent_pid(gone), _proc.session_id(gone), _proc.start_ticks(gone)) == (
        None, None, None)


def test_proc_locks_name_the_locker_on_the_device_of_its_mount(
        locking_child: LockingChild) -> None:
    table = _proc.read_locks()
    assert table is not None
    inode = os.stat(locking_child.path).st_ino
    holders = _proc.flock_holders(table, inode)
    assert [locking_child.pid] in holders.values()
    owners = _proc.flock_owners()
    assert owners is not None and locking_child.pid in owners and os.getpid() not in owners
    fd = os.open(locking_child.path, os.O_RDONLY)
    try:
        # The device /proc/locks gives the lock (btrfs: not stat's) is the mount's.
        assert holders.get(_proc.mount_device(fd) or -1) == [locking_child.pid]
    finally:
        os.close(fd)


def test_flock_holder_pidfds_open_the_holder_unless_excluded(
        locking_child: LockingChild) -> None:
    found = _proc.flock_holder_pidfds(str(locking_child.path))
    try:
        assert [pid for pid, _ in found] == [locking_child.pid]
    finally:
        for _, fd in found:
            os.close(fd)
    assert _proc.flock_holder_pidfds(str(locking_child.path), {locking_child.pid}) == []


def test_a_removed_file_still_locked_is_found_through_the_holder(
        locking_child: LockingChild) -> None:
    path = str(locking_child.path)
    os.unlink(path)
    assert _proc.holds_removed_flock(locking_child.pid, path)
    assert not _proc.holds_removed_flock(os.getpid(), path)
    found = _proc.removed_flock_holder_pidfds(path)
    try:
        assert [pid for pid, _ in found] == [locking_child.pid]
    finally:
        for _, fd in found:
            os.close(fd)
    assert _proc.removed_pidfile_writer(path) == locking_child.pid


def test_live_lock_holders_is_the_named_locker_while_it_holds_the_lock(
        locking_child: LockingChild) -> None:
    assert _proc.live_lock_holders(str(locking_child.path), locking_child.pid) == [
        locking_child.pid]
    assert _proc.live_lock_holders(str(locking_child.path), None) == [locking_child.pid]


def test_thread_ids_count_a_thread_the_kernel_runs_and_name_it() -> None:
    import threading

    started = threading.Event()
    finish = threading.Event()

    def run() -> None:
        started.set()
        finish.wait(30)

    thread = threading.Thread(target=run, name="probe")
    thread.start()
    try:
        assert started.wait(30)
        tids = _proc.thread_ids()
        assert tids is not None and threading.get_native_id() in tids
        assert thread.native_id in tids
        assert _proc.thread_name(threading.get_native_id()) == _proc.command_name(os.getpid())
    finally:
        finish.set()
        thread.join()
    assert _proc.thread_name(dead_pid()) is None
