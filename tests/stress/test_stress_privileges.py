"""A daemon that dropped root to ``nobody`` keeps nothing of root: ids, groups, caps, files.

A root launcher (forked by the warm farm) starts a daemon with ``uid="nobody"``.  The daemon
itself then tries to get root back -- ``setuid(0)``, ``seteuid(0)``, ``setreuid``,
``setresuid``, ``setgid(0)``, ``setegid(0)``, ``setgroups([0])`` -- and to read a root-only
file, and writes what happened to a report file; the test also reads its
``/proc/<pid>/status`` and its pidfile's owner and mode from outside.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import signal
import stat
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.helpers import open_fds, proc_status, wait_file_text, wait_pid_gone
from tests.stress.support import Fleet, wait_tagged_settle

pytestmark = pytest.mark.stress

NOBODY = pwd.getpwnam("nobody")
SECRET = "root's eyes only\n"
Started = tuple[int, Path, Path, dict[str, str]]
"""The daemon's pid, its run directory, its pidfile and what it reported."""


@pytest.fixture
def started(tmp_path: Path, world_dir: Path,
            fleet: Fleet) -> Started:
    """A daemon dropped to nobody by a root launcher: (pid, run dir, pidfile, its report)."""
    rundir = tmp_path / "run"  # like /run/app/: owned by the daemon's user, 0755
    rundir.mkdir()
    os.chown(rundir, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chmod(rundir, 0o755)
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    os.chmod(secret, 0o600)
    assert secret.read_text() == SECRET, "the root launcher can read it"
    pidfile = rundir / "app.pid"
    program = {"options": {"uid": "nobody", "pidfile": str(pidfile)},
               "privileges": {"report": str(rundir / "report.json"), "secret": str(secret)},
               "pid_path": str(rundir / "pid")}
    reply = fleet.request("launch", program=program, stderr=str(tmp_path / "launcher.err"))
    assert reply["code"] == 0, reply["stderr"]
    daemon = holder_pid(pidfile)
    assert daemon is not None
    report = json.loads(wait_file_text(rundir / "report.json"))
    return daemon, rundir, pidfile, report


EPERM = f"PermissionError errno {errno.EPERM}"


@pytest.mark.parametrize("attempt", ["setuid", "seteuid", "setreuid", "setresuid", "setgid",
                                     "setegid", "setgroups"])
def test_daemon_dropped_to_nobody_cannot_regain_root(started: Started, attempt: str) -> None:
    _, _, _, report = started
    assert report[attempt] == EPERM, report


def test_daemon_dropped_to_nobody_cannot_read_a_root_only_file(started: Started) -> None:
    daemon, _, _, report = started
    assert report["read_secret"] == f"PermissionError errno {errno.EACCES}"
    assert not any(target.endswith("/secret") for target in open_fds(daemon).values())


def test_daemon_dropped_to_nobody_has_no_root_id_group_or_capability(started: Started) -> None:
    daemon, _, _, report = started
    status = proc_status(daemon)
    assert status["Uid"].split() == [str(NOBODY.pw_uid)] * 4
    assert status["Gid"].split() == [str(NOBODY.pw_gid)] * 4
    assert "0" not in status["Groups"].split()
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps} {status[caps]}"
    assert report["ids"] == repr(((NOBODY.pw_uid,) * 3, (NOBODY.pw_gid,) * 3, []))


def test_pidfile_of_a_daemon_dropped_to_nobody_is_not_writable_by_it_or_others(
        started: Started, fleet: Fleet) -> None:
    daemon, _, pidfile, _ = started
    st = os.lstat(pidfile)
    assert stat.S_ISREG(st.st_mode)
    # taken before the drop, by root: root's file, which the daemon holds read-only
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    for fd, target in open_fds(daemon).items():
        if target == str(pidfile):
            flags = Path(f"/proc/{daemon}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
            assert int(flags, 8) & os.O_ACCMODE == os.O_RDONLY
    assert int(pidfile.read_text()) == daemon
    os.kill(daemon, signal.SIGTERM)  # and, unprivileged, it still removes it on SIGTERM
    wait_pid_gone(daemon)
    assert fleet.reap([daemon])[daemon] == 0
    assert not pidfile.exists()
    wait_tagged_settle(pidfile.parent.parent, set(), [fleet.pid])
