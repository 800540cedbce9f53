"""Every code block of the docs marked runnable runs, as written (issue 16, #3).

The blocks are found by ``tests.docs_blocks`` (``% runnable: NAME`` before a fenced block, or
``<!-- runnable: NAME -->`` in the README).  Each name has a scenario here, which runs the
block's own text; :func:`test_every_runnable_block_has_a_scenario` fails for a block without one
and for a scenario whose block is gone.  Where a block cannot run literally on a test machine,
the scenario says exactly what it substitutes (a system user, a file name in ``/run``), and
nothing else.

The tutorial's first part is one walk-through: its console blocks, in the page's order, typed
into one real ``bash`` (in a network namespace of its own, so the page's port 8470 is free),
from a directory holding the repository's ``examples/``, each command's output compared with
what the page shows.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemonctx.pidfile import holder_pid
from tests.docs_blocks import (
    Block,
    ConsoleSession,
    commands_of,
    output_matches,
    runnable_blocks,
)
from tests.helpers import (
    PYTHON,
    REPO,
    WaitTimeoutError,
    kill_tree,
    let_others_traverse,
    proc_status,
    wait_for,
    wait_pid_gone,
    write_script,
)

BLOCKS = runnable_blocks()
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _run_console_block(session: ConsoleSession, block: Block) -> None:
    """Type ``block``'s commands into ``session``; each output must be what the page shows.

    ``background``: the last command is started as in a second terminal, and its first line
    of output awaited.  ``settle``: a command whose output is not yet what the page shows (the
    daemon is still stopping) is typed again, for a bounded time, as a user would.
    """
    commands = commands_of(block)
    if "background" in block.how:
        *commands, last = commands
    for command in commands:
        lines, status = session.run(command.text)
        if "settle" in block.how and not output_matches(command.expected, lines, session.home):
            def again(text: str = command.text,
                      expected: list[str] = command.expected) -> tuple[list[str], int] | None:
                result = session.run(text)
                return result if output_matches(expected, result[0], session.home) else None

            try:
                lines, status = wait_for(again, 15.0)
            except WaitTimeoutError:
                pass  # reported below, with the last output
        assert output_matches(command.expected, lines, session.home), (
            f"{block.where} ({block.name}): $ {command.text}\n--- the page shows:\n"
            + "\n".join(command.expected) + "\n--- the shell printed:\n" + "\n".join(lines)
            + f"\n(exit status {status})")
    if "background" in block.how:
        session.start_in_background(last.text, last.expected[0])


@pytest.fixture
def tutorial_home(tmp_path: Path) -> Iterator[Path]:
    """The reader's directory: the repository's examples/ and nothing else; cleaned up."""
    (tmp_path / "examples").symlink_to(REPO / "examples")
    yield tmp_path
    for pidfile in tmp_path.glob("run/*.pid"):
        kill_tree(holder_pid(pidfile))


@needs_root
def test_tutorial_part_1_walk_through(tutorial_home: Path) -> None:
    names = sorted((name for name in BLOCKS if re.fullmatch(r"tutorial-\d+-.*", name)
                    and name != "tutorial-0-install"),
                   key=lambda name: int(name.split("-")[1]))
    assert names, "the tutorial has no runnable blocks"
    session = ConsoleSession(tutorial_home, own_network=True)
    try:
        previous_in_background = False
        for name in names:
            block = BLOCKS[name]
            _run_console_block(session, block)
            if previous_in_background:
                session.interrupt_background()  # "stop it with Ctrl-C before you go on"
            previous_in_background = "background" in block.how
        session.interrupt_background()
    finally:
        session.close()
    for pidfile in tutorial_home.glob("run/*.pid"):
        assert holder_pid(pidfile) is None, f"the walk-through left {pidfile} held"


def test_tutorial_install_from_a_checkout(tmp_path: Path) -> None:
    """tutorial-0-install: a venv, then ``pip install ./daemonctx`` from a copy of the checkout
    (a copy, so the build leaves nothing in the repository); needs PyPI for the build tools."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    checkout = tmp_path / "daemonctx"
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = checkout / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # This machine's pip configuration names local indexes that may not exist, and pip warns
    # about them: a reader's pip has no such configuration.
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    session = ConsoleSession(tmp_path, env=env, timeout=300)
    try:
        _run_console_block(session, BLOCKS["tutorial-0-install"])
    finally:
        session.close()


# --- the headline examples: README and the docs' front page ------------------------------------


MAIN = '''
import json, os, signal, sys

def main():
    """The application: says who it runs as, then serves until SIGTERM."""
    with open(REPORT, "w") as out:
        json.dump({"pid": os.getpid(), "ids": [os.getresuid(), os.getresgid()]}, out)
    signal.pause()

'''


def _python_of(block: Block) -> str:
    assert block.language == "python", f"{block.where} is not a Python block"
    return block.text


def _run_headline(tmp_path: Path, block: Block, substitutions: dict[str, str],
                  pidfile: Path) -> tuple[int, dict[str, object]]:
    """Run ``block`` with ``main`` defined as above; return the daemon's pid and its report."""
    import json

    source = _python_of(block)
    for old, new in substitutions.items():
        assert old in source, f"{block.where} no longer says {old!r}"
        source = source.replace(old, new)
    report = tmp_path / "report.json"
    let_others_traverse(tmp_path)  # the daemon writes its report as nobody
    os.chmod(tmp_path, 0o777)
    script = write_script(tmp_path, f"REPORT = {str(report)!r}\n" + MAIN + source, "app.py")
    started = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    pid = holder_pid(pidfile)
    assert started.returncode == 0, started.stderr
    assert pid is not None, f"nobody holds {pidfile}"
    data = json.loads(wait_for(lambda: (report.exists() and report.read_text()) or None))
    assert data["pid"] == pid
    return pid, data


@pytest.fixture
def run_pidfile() -> Iterator[Path]:
    """A pidfile name right in root's /run, removed (and its holder stopped) afterwards."""
    path = Path("/run") / f"daemonctx-docs-{secrets.token_hex(4)}.pid"
    yield path
    pid = holder_pid(path)
    if pid is not None:
        kill_tree(pid)
    path.unlink(missing_ok=True)


@needs_root
def test_readme_headline_example_runs_as_root_dropping_to_a_system_user(
        tmp_path: Path, run_pidfile: Path) -> None:
    """readme-headline, with user nobody for "app" and a fresh name in /run for app.pid."""
    pid, data = _run_headline(tmp_path, BLOCKS["readme-headline"],
                              {'uid="app"': 'uid="nobody"',
                               '"/run/app.pid"': repr(str(run_pidfile))}, run_pidfile)
    assert data["ids"] == [[NOBODY] * 3, [NOBODY] * 3]
    assert proc_status(pid)["Uid"].split() == [str(NOBODY)] * 4
    assert run_pidfile.read_text() == f"{pid}\n"
    os.kill(pid, signal.SIGTERM)
    wait_pid_gone(pid)
    assert holder_pid(run_pidfile) is None  # left by nobody in root's /run, but unlocked


@needs_root
def test_front_page_example_runs_with_its_pidfile_in_a_run_directory(tmp_path: Path) -> None:
    """index-headline, with a fresh directory in /run for /run/app/."""
    directory = Path("/run") / f"daemonctx-docs-{secrets.token_hex(4)}"
    directory.mkdir()
    try:
        pidfile = directory / "app.pid"
        pid, _ = _run_headline(tmp_path, BLOCKS["index-headline"],
                               {'"/run/app/app.pid"': repr(str(pidfile))}, pidfile)
        os.kill(pid, signal.SIGTERM)
        wait_pid_gone(pid)
        assert not pidfile.exists()
    finally:
        kill_tree(holder_pid(directory / "app.pid"))
        shutil.rmtree(directory)


# --- every marked block has a scenario ------------------------------------------------------------

SCENARIOS: dict[str, Callable[..., None]] = {
    "readme-headline": test_readme_headline_example_runs_as_root_dropping_to_a_system_user,
    "index-headline": test_front_page_example_runs_with_its_pidfile_in_a_run_directory,
    "tutorial-0-install": test_tutorial_install_from_a_checkout,
}


def _covered() -> set[str]:
    from tests.test_docs_howtos import SCENARIOS as HOWTO_SCENARIOS

    covered = set(SCENARIOS) | set(HOWTO_SCENARIOS)
    covered |= {name for name in BLOCKS if re.fullmatch(r"tutorial-\d+-.*", name)}
    return covered


def test_every_runnable_block_has_a_scenario() -> None:
    from tests.test_docs_howtos import SCENARIOS as HOWTO_SCENARIOS

    blocks = set(BLOCKS)
    assert blocks - _covered() == set(), "marked runnable, but no scenario runs them"
    assert (set(SCENARIOS) | set(HOWTO_SCENARIOS)) - blocks == set(), (
        "scenarios whose block is no longer marked")
