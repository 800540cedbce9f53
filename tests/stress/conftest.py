"""Fixtures of the stress suite, and the table of figures printed at the end of the run.

Each stress test records what it tried (runs, rounds, restarts, outcomes) with the ``figures``
fixture; :func:`pytest_terminal_summary` prints them all in one table, so a reader of the CI log
sees how much was exercised, not only that it passed.  Figures are recorded even when a test
fails, up to the point it reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import kill_tree
from tests.stress.support import Fleet

Row = tuple[str, dict[str, object]]
FIGURES = pytest.StashKey[list[Row]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures(runs=100, outcomes=...)``: add figures to this test's row of the summary."""
    rows = request.config.stash.setdefault(FIGURES, [])
    row: dict[str, object] = {}
    rows.append((request.node.name, row))

    def record(**values: object) -> None:
        row.update(values)

    return record


@pytest.fixture
def tally(figures: Callable[..., None]) -> Iterator[Callable[[str], None]]:
    """``tally(outcome)``: count outcomes of a property test; recorded as its figures."""
    counts: dict[str, int] = {}
    yield lambda outcome: counts.__setitem__(outcome, counts.get(outcome, 0) + 1)
    figures(examples=sum(counts.values()), outcomes=dict(sorted(counts.items())))


@pytest.fixture
def fleet(tmp_path: Path, spawned: list[int]) -> Iterator[Fleet]:
    """A warm launcher farm (tests/stress/fleet.py) tagged with ``tmp_path``.

    At the end the farm and everything it adopted (daemons, workers) are killed by pid.
    """
    farm = Fleet(tmp_path, spawned)
    yield farm
    kill_tree(farm.pid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    """Print the figures every stress test recorded, one test per row."""
    rows = [(name, row) for name, row in config.stash.get(FIGURES, []) if row]
    if not rows:
        return
    terminalreporter.section("stress figures")
    width = max(len(name) for name, _ in rows)
    for name, row in rows:
        cells = ", ".join(f"{key}={value}" for key, value in row.items())
        terminalreporter.write_line(f"{name:<{width}}  {cells}")
