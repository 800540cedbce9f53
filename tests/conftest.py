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
