"""The benchmark suite runs end to end and reports every section (timings are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import PYTHON, REPO

BENCH = REPO / "benchmarks"

pytest.importorskip("daemon", reason="python-daemon (the bench extra) is not installed")
pytest.importorskip("daemonize", reason="daemonize (the bench extra) is not installed")
pytest.importorskip("tornado", reason="tornado (the bench extra) is not installed")


def _processes_with_env(marker: str) -> list[int]:
    """Pids whose environment holds ``marker`` (what a run leaves behind, if anything)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(int(name))
    return found


def test_quick_run_reports_every_section_and_leaves_no_process(tmp_path):
    marker = f"DAEMONCTX_BENCH_SMOKE={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = dict(os.environ, **{key: value}, TMPDIR=str(tmp_path))
    result = subprocess.run([PYTHON, str(BENCH / "run.py"), "--quick", "--no-write"],
                            capture_output=True, text=True, timeout=240, env=env,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    leftovers = _processes_with_env(marker)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for header in ("== detach latency, RLIMIT_NOFILE 1024", "== import cost",
                   "== supervisor start, 2 workers", "== supervisor start, 128 workers",
                   "== supervisor restart", "== supervisor idle master CPU",
                   "== supervisor graceful stop", "== peak RSS",
                   "== comparison against issue 9's targets"):
        assert header in out, f"missing section {header!r} in:\n{out}"
    for contender in ("reference", "daemonctx", "python-daemon", "daemonize", "minimal-loop",
                      "tornado"):
        assert contender in out
    verdicts = [line for line in out.splitlines()
                if line.strip().startswith(("met ", "MISSED ", "not measured "))]
    assert len(verdicts) >= 14, out
    assert "targets met" in out
    assert leftovers == [], f"the benchmark left processes running: {leftovers}"
    assert not list(tmp_path.iterdir()), "the benchmark left files in its temporary directory"


def test_results_page_marks_a_missed_target(tmp_path):
    """The writer turns a miss into MISSED, from synthetic results (no measurement)."""
    sys.path.insert(0, str(BENCH))
    try:
        import report
    finally:
        sys.path.remove(str(BENCH))
    rounds = 3
    contenders = ["reference", "reference-handshake", "daemonctx", "daemonctx-nowait",
                  "python-daemon", "daemonize"]

    def flat(value: float) -> list[float | None]:
        return [value] * rounds

    latency = {c: flat(1.0) for c in contenders} | {"daemonctx": flat(2.0)}
    results = {
        "meta": {"mode": "quick", "machine": {"date": "today", "cpu": "test"}},
        "detach": {
            "contenders": contenders,
            "by_limit": {"1024": {"latency_ms": latency,
                                  "wall_ms": {c: flat(20.0) for c in contenders},
                                  "daemon_hwm_kib": {c: flat(8192.0) for c in contenders}}},
        },
    }
    page = report.render_page(json.loads(json.dumps(results)), plots={})
    text = report.comparison_text(results)
    assert "| detach | open() -> main <= 1.10 x minimal reference (RLIMIT_NOFILE 1024) | " \
           "2.00x | **MISSED** |" in page
    assert "MISSED  open() -> main <= 1.10 x minimal reference (RLIMIT_NOFILE 1024)" in text
    assert "met  launcher wall time with handshake within 1 ms of without" in text
