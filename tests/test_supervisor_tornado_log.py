"""``fork_processes`` logs what tornado's logs, where tornado's users look (issue 13, #3).

Code that watches tornado's lines (``child 1 (pid 4242) exited with status 3, restarting`` on
the ``tornado.general`` logger) must keep working when daemonctx's ``fork_processes`` replaces
tornado's; tornado's own ``process_test`` is run that way in ``tests/realprograms``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_python, write_script

SCRIPT = """
import logging, os, sys
if sys.argv[2] == "tornado":
    import tornado.log  # what a tornado application has loaded
logging.basicConfig(filename=sys.argv[1], level=logging.INFO,
                    format="%(name)s %(levelname)s %(message)s")
from daemonctx import fork_processes

options = {"logger": sys.argv[3]} if len(sys.argv) > 3 else {}
marker = sys.argv[1] + ".crashed"
task = fork_processes(2, max_restarts=2, **options)
if task == 0 and not os.path.exists(marker):
    open(marker, "w").close()
    os._exit(3)                 # restarted once, then exits normally
os._exit(0)
"""


def _run(tmp_path: Path, *args: str) -> list[str]:
    script = write_script(tmp_path, SCRIPT, "forking.py")
    log = tmp_path / "log"
    result = run_python(script, str(log), *args)
    assert result.returncode == 0, result.stderr  # the master's sys.exit(0)
    return log.read_text().splitlines()


def _expected(logger: str) -> list[str]:
    return [f"{logger} INFO Starting 2 processes",
            f"{logger} WARNING child 0 (pid *) exited with status 3, restarting",
            f"{logger} INFO child 0 (pid *) exited normally",
            f"{logger} INFO child 1 (pid *) exited normally"]


def _matching(lines: list[str], logger: str) -> list[str]:
    import re

    wanted = []
    for pattern in _expected(logger):
        regex = re.escape(pattern).replace(r"\*", r"\d+")
        wanted.extend(line for line in lines if re.fullmatch(regex, line))
    return wanted


def test_tornado_words_on_tornado_general_when_tornado_is_loaded(tmp_path: Path) -> None:
    pytest.importorskip("tornado")
    lines = _run(tmp_path, "tornado")
    assert len(_matching(lines, "tornado.general")) == 4, lines


def test_tornado_words_on_daemonctx_supervisor_without_tornado(tmp_path: Path) -> None:
    lines = _run(tmp_path, "plain")
    assert len(_matching(lines, "daemonctx.supervisor")) == 4, lines


def test_logger_option_chooses_where_the_lines_go(tmp_path: Path) -> None:
    lines = _run(tmp_path, "plain", "myapp.workers")
    assert len(_matching(lines, "myapp.workers")) == 4, lines
