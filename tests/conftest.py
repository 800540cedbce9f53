"""Fixtures shared by the test-suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import kill_tree, let_others_traverse


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """A list a test appends every pid it starts to; each is killed (with its tree) at the end."""
    pids: list[int] = []
    yield pids
    for pid in reversed(pids):
        kill_tree(pid)


@pytest.fixture
def world_dir(tmp_path: Path) -> Path:
    """A temporary directory that an unprivileged user (nobody) can enter and write to."""
    os.chmod(tmp_path, 0o755)
    let_others_traverse(tmp_path)
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


@pytest.fixture
def pidfiles(spawned: list[int]) -> Iterator[list[Path]]:
    """Pidfiles the test uses; at the end, whatever holds each one's lock is killed."""
    from daemonctx.pidfile import holder_pid

    paths: list[Path] = []
    yield paths
    for path in paths:
        try:
            pid = holder_pid(path)
        except Exception:
            pid = None
        kill_tree(pid)


@pytest.fixture
def pid_path(tmp_path: Path, pidfiles: list[Path]) -> Path:
    """``tmp_path/app.pid``, its holder killed at the end."""
    path = tmp_path / "app.pid"
    pidfiles.append(path)
    return path


@pytest.fixture(scope="session")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML documentation, built once for the whole run as CI builds it (-W -n)."""
    import subprocess
    import sys

    from tests.helpers import REPO

    tmp = tmp_path_factory.mktemp("docs")
    out = tmp / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(tmp / "doctrees"), str(REPO / "docs"), str(out)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=240, check=False)
    assert build.returncode == 0, build.stderr
    return out
