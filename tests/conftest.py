"""Fixtures shared by the test-suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import kill_tree


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
    for parent in tmp_path.parents:
        if parent == Path("/"):
            break
        mode = os.stat(parent).st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o711)
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d
