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


GIVING_UP = """
import logging, os, sys
import tornado.log
logging.basicConfig(filename=sys.argv[1], level=logging.DEBUG,
                    format="%(name)s %(levelname)s %(message)s")
from daemonctx import fork_processes

try:
    task = fork_processes(2, max_restarts=1)
except RuntimeError as exc:
    with open(sys.argv[1] + ".raised", "w") as out:
        out.write(f"{type(exc).__name__}|{exc}|{exc.task_id}|{exc.exit_status}")
    sys.exit(0)
os._exit(5 if task == 1 else 0)
"""

# Every line tornado's fork_processes logs (tornado/process.py), and nothing else.
TORNADO_LINES = [r"INFO Starting \d+ processes",
                 r"WARNING child \d+ \(pid \d+\) (exited with status|killed by signal) \d+, "
                 r"restarting",
                 r"INFO child \d+ \(pid \d+\) exited normally"]


def test_only_tornados_lines_on_tornado_general_the_masters_own_on_daemonctx(
        tmp_path: Path) -> None:
    """Issue 13, #3: the master's own events (workers started, ready, stopping) were logged
    on tornado.general too, where tornado logs only its three kinds of lines."""
    import re

    pytest.importorskip("tornado")
    script = write_script(tmp_path, GIVING_UP, "giving_up.py")
    log = tmp_path / "log"
    result = run_python(script, str(log))
    assert result.returncode == 0, result.stderr
    kind, text, task, status = (tmp_path / "log.raised").read_text().split("|")
    assert kind == "SupervisorError"  # a RuntimeError, as tornado's
    assert text.startswith("Too many child restarts, giving up: child 1 (pid ")
    assert (task, status) == ("1", "5")  # the details are attributes
    lines = log.read_text().splitlines()
    on_tornado = [line.removeprefix("tornado.general ") for line in lines
                  if line.startswith("tornado.general ")]
    assert on_tornado, lines
    strays = [line for line in on_tornado
              if not any(re.fullmatch(pattern, line) for pattern in TORNADO_LINES)]
    assert not strays, strays
    ours = [line for line in lines if line.startswith("daemonctx.supervisor ")]
    assert any("Too many child restarts, giving up: child 1" in line for line in ours), lines
    assert any("worker 0 started" in line for line in ours), lines
