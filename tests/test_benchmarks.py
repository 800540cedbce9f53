"""The benchmark suite runs end to end and reports every section (timings are never asserted)."""

from __future__ import annotations

import json
import os
import re
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


def _report():
    sys.path.insert(0, str(BENCH))
    try:
        import report
    finally:
        sys.path.remove(str(BENCH))
    return report


def _synthetic_results() -> dict:
    """Detach results in which daemonctx takes twice the reference's time (a missed target)."""
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
    return json.loads(json.dumps(results))


def test_targets_mark_a_missed_target_in_the_readme_section_and_the_printout():
    """The writer turns a miss into MISSED, from synthetic results (no measurement)."""
    report = _report()
    results = _synthetic_results()
    targets = report.render_targets(results)
    text = report.comparison_text(results)
    assert targets.startswith(report.TARGETS_BEGIN) and targets.endswith(report.TARGETS_END)
    assert "| detach | open() -> main <= 1.10 x minimal reference (RLIMIT_NOFILE 1024) | " \
           "2.00x | **MISSED** |" in targets
    assert "MISSED  open() -> main <= 1.10 x minimal reference (RLIMIT_NOFILE 1024)" in text
    assert "met  launcher wall time with handshake within 1 ms of without" in text


def test_results_page_opens_with_the_comparison_and_leaves_the_targets_out():
    report = _report()
    page = report.render_page(_synthetic_results(), plots={"summary": "_static/s.png"})
    sections = re.findall(r"^## (.+)$", page, re.M)
    assert sections[0] == "daemonctx next to python-daemon and tornado"
    opening = page.split("\n## ", 2)[1]
    assert "![" in opening and "_static/s.png" in opening
    assert "| daemonctx (start-up handshake, default) | 2.00 | 2.00 | 2.00 |" in opening
    assert "MISSED" not in page and "issue 9" not in page


def test_write_targets_replaces_only_the_generated_section(tmp_path):
    report = _report()
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nintro\n\n{report.TARGETS_BEGIN}\nold\n"
                      f"{report.TARGETS_END}\n\nafter\n")
    report.write_targets(_synthetic_results(), readme)
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n" + report.TARGETS_BEGIN)
    assert "old" not in text and "**MISSED**" in text
    assert text.endswith(report.TARGETS_END + "\n\nafter\n")


def test_committed_page_and_readme_targets_are_those_of_the_saved_run():
    """docs/benchmarks-results.md and the README's targets are generated from full.json."""
    report = _report()
    results = json.loads((BENCH / "results" / "full.json").read_text())
    static = REPO / "docs" / "_static"
    plots = {name: f"_static/{file}" for name, file in
             (("summary", "bench-summary.png"), ("detach", "bench-detach.png"),
              ("workers", "bench-workers.png")) if (static / file).exists()}
    assert set(plots) == {"summary", "detach", "workers"}
    page = (REPO / "docs" / "benchmarks-results.md").read_text()
    assert page == report.render_page(results, plots), (
        "docs/benchmarks-results.md is not what benchmarks/report.py renders from "
        "benchmarks/results/full.json: run benchmarks/run.py --from-json "
        "benchmarks/results/full.json")
    assert report.render_targets(results) in (BENCH / "README.md").read_text()


def test_open_profiler_still_names_the_steps_it_wraps():
    """benchmarks/profile_open.py wraps functions by name: a name that moved broke it silently."""
    result = subprocess.run([PYTHON, str(BENCH / "profile_open.py"), "2", "1024"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for step in ("options.resolve", "Launch.daemon_side", "steps.close_inherited_fds",
                 "handshake.notify_ready"):
        assert step in result.stdout, result.stdout


def test_revision_comparison_runs_both_checkouts_and_removes_its_worktree(tmp_path):
    """compare_revisions.py measures this checkout next to a git revision, then cleans up."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no revision to compare with")
    marker = f"DAEMONCTX_BENCH_SMOKE={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = dict(os.environ, **{key: value}, TMPDIR=str(tmp_path))
    before = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True,
                            text=True, check=True).stdout
    result = subprocess.run([PYTHON, str(BENCH / "compare_revisions.py"), "HEAD", "--rounds", "2",
                             "--kills", "3", "--starts", "1"],
                            capture_output=True, text=True, timeout=240, env=env,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    leftovers = _processes_with_env(marker)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("open() -> main", "launcher wall time", "restart of a crashed worker",
                "start of 16 workers"):
        line = next((line for line in result.stdout.splitlines() if row in line), "")
        assert re.search(r"now/HEAD \d+\.\d{3}", line), result.stdout
    assert "errors of" not in result.stdout, result.stdout
    assert leftovers == [], f"the comparison left processes running: {leftovers}"
    after = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True,
                           text=True, check=True).stdout
    assert after == before, "the comparison left a git worktree behind"
    assert not list(tmp_path.iterdir()), "the comparison left files in its temporary directory"
