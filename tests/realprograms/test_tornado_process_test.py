"""Tornado's own ``tornado.test.process_test``, run unchanged and on daemonctx's fork_processes.

``daemonctx.fork_processes`` claims ``tornado.process.fork_processes``'s contract, so tornado's
own test of it must pass when daemonctx's ``fork_processes`` and ``task_id`` replace tornado's.
process_test's ``test_multi_process`` runs its body in a fresh interpreter (``python -c``), so
patching the pytest process is not enough: a ``sitecustomize.py``, first on ``PYTHONPATH``,
patches ``tornado.process`` in every Python process of the run before any user code imports
from it (the script does ``from tornado.process import fork_processes, task_id`` at import
time, after ``site`` ran).

The script asserts, in the master: ``fork_processes`` ends with ``SystemExit(0)`` once every
worker exited 0, ``task_id()`` is ``None`` there; in the workers: ``task_id()`` equals the
returned id, workers exiting 2, 3, 4 are restarted (``max_restarts=3``), those exiting 0 are
not; and, around it all, ``ExpectLog(gen_log, "(Starting .* processes|child .* exited|uncaught
exception)")`` requires at least one matching record on the ``tornado.general`` logger.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.realprograms

tornado = pytest.importorskip("tornado", reason="tornado is not installed")
pytest.importorskip("tornado.test.process_test",
                    reason="this tornado ships without its test-suite (tornado.test)")

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120.0

SITECUSTOMIZE = textwrap.dedent("""\
    # Written by tests/realprograms/test_tornado_process_test.py: runs in every Python process
    # of the run (unless started with -I / -S) and puts daemonctx's fork_processes and task_id
    # into tornado.process.
    import os
    import sys

    import tornado.process
    from daemonctx.supervisor import fork_processes, task_id

    _originals = {"fork_processes": tornado.process.fork_processes,
                  "task_id": tornado.process.task_id}
    _replacements = {"fork_processes": fork_processes, "task_id": task_id}
    # Any module that already did `from tornado.process import ...` (none does in tornado 6,
    # which uses attribute access; kept for safety) gets the replacement too.
    for _module in list(sys.modules.values()):
        for _name, _original in _originals.items():
            try:
                if getattr(_module, _name, None) is _original:
                    setattr(_module, _name, _replacements[_name])
            except Exception:
                pass
    tornado.process.fork_processes = fork_processes
    tornado.process.task_id = task_id

    _evidence = os.environ.get("DAEMONCTX_TORNADO_PATCH_EVIDENCE")
    if _evidence:
        _fd = os.open(_evidence, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(_fd, ("%d %r\\n" % (os.getpid(), sys.orig_argv)).encode())
        finally:
            os.close(_fd)
""")


def _session_members(sid: int) -> list[str]:
    """Live (non-zombie) processes of session ``sid``, as ``"pid cmdline"`` strings."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry} {command}")
    return found


def _run_process_test(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run tornado's process_test in its own session; fail if any process of it outlives it."""
    command = [sys.executable, "-m", "tornado.test.runtests", "--verbose",
               "tornado.test.process_test"]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sid = proc.pid
    try:
        try:
            out, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(sid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"tornado.test.process_test still running after {TIMEOUT} s; output:\n"
                        f"{out}")
        # Workers bound themselves with alarm(5), daemonctx's with PR_SET_PDEATHSIG too: give
        # any of them a moment to finish exiting, then none may be left.
        deadline = time.monotonic() + 10.0
        leftovers = _session_members(sid)
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = _session_members(sid)
        assert not leftovers, ("processes left behind by tornado.test.process_test:\n"
                               + "\n".join(leftovers) + f"\noutput:\n{out}")
    finally:
        try:
            os.killpg(sid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, None)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAEMONCTX_TORNADO_")}
    env.pop("PYTHONPATH", None)
    return env


def _check(result: subprocess.CompletedProcess[str], variant: str) -> None:
    assert result.returncode == 0, (
        f"tornado.test.process_test ({variant}) exited with status {result.returncode}; "
        f"output:\n{result.stdout}")
    # Every test of the module ran (none skipped) and passed.
    assert re.search(r"^Ran [1-9][0-9]* tests? in ", result.stdout, re.M), result.stdout
    assert re.search(r"^OK$", result.stdout, re.M), result.stdout


def test_tornado_process_test_control(tmp_path: Path) -> None:
    """Tornado's process_test, with tornado's own fork_processes: the harness itself works."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = _run_process_test(cwd, _base_env())
    _check(result, "control: tornado's fork_processes")


def test_tornado_process_test_on_daemonctx(tmp_path: Path) -> None:
    """Tornado's process_test with daemonctx's fork_processes and task_id in every process."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    evidence = tmp_path / "patched-processes.txt"
    env = _base_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site_dir), str(REPO)])
    env["DAEMONCTX_TORNADO_PATCH_EVIDENCE"] = str(evidence)

    result = _run_process_test(cwd, env)

    # The patch must have reached the runner and test_multi_process's `python -c` script (the
    # process that calls fork_processes); otherwise this run would prove nothing.
    patched = evidence.read_text().splitlines() if evidence.exists() else []
    assert any("'-m', 'tornado.test.runtests'" in line for line in patched), patched
    assert any("'-c'," in line and "fork_processes" in line for line in patched), (
        "daemonctx was not patched into test_multi_process's script process:\n"
        + "\n".join(patched) + f"\noutput:\n{result.stdout}")
    _check(result, "daemonctx's fork_processes and task_id patched into tornado.process")
