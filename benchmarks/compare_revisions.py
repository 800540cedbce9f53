"""This checkout against an earlier revision of daemonctx, in one interleaved run.

    python benchmarks/compare_revisions.py REV [--rounds N] [--kills N] [--starts N]

For a change that must not cost speed (a restructuring, a refactor): the figures of two runs
taken minutes apart on a shared machine differ by more than such a change does, so both
versions are measured side by side, each sample of one next to a sample of the other and of
the peer (python-daemon for the detach, tornado for the workers), as ``run.py`` interleaves its
contenders.  REV is checked out with ``git worktree`` into a temporary directory, imported by
the per-sample programs as ``daemonctx@PATH`` contenders, and removed at the end.

Printed: ``open()`` -> main and the launcher's wall time (RLIMIT_NOFILE 1024), the restart of
a crashed worker and the start of 16 workers, each as this checkout / REV (median of paired
ratios) and against the peer.  Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, become_subreaper, log, paired_ratio, reap_strays


def checkout(rev: str, into: Path) -> Path:
    """``git worktree add`` REV (detached) under ``into``; its path."""
    path = into / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev],
                   check=True)
    return path


def compare(base: Path, rounds: int, kills: int, starts: int, scratch: Path) -> dict[str, Any]:
    """Raw samples: detach (base, python-daemon, this checkout) and supervisor (with tornado)."""
    import detach
    import supervisors
    from common import Channel

    here, there = f"daemonctx@{REPO}", f"daemonctx@{base}"
    detach.CONTENDERS = (there, "python-daemon", here)
    detached = detach.run(scratch, [1024], rounds, 10)["by_limit"]["1024"]
    supervisors.CONTENDERS = (there, "tornado", here)
    channel = Channel(scratch, "supervisor.fifo")
    fleet = supervisors.Fleet(scratch, channel)
    errors: dict[str, list[str]] = {}
    try:
        restart = supervisors.run_restart(fleet, kills, errors)
        start = supervisors.run_start(fleet, [16], {16: starts}, errors)["16"]["start_ms"]
    finally:
        fleet.close()
        channel.close()
    return {"here": here, "there": there, "detach": detached, "restart": restart,
            "start16": start, "errors": errors}


def report(rev: str, raw: dict[str, Any]) -> None:
    here, there = raw["here"], raw["there"]
    rows = [("open() -> main", raw["detach"]["latency_ms"], "python-daemon"),
            ("launcher wall time", raw["detach"]["wall_ms"], "python-daemon"),
            ("restart of a crashed worker", raw["restart"], "tornado"),
            ("start of 16 workers", raw["start16"], "tornado")]
    print(f"this checkout against {rev} (medians of paired ratios; below 1 is faster)")
    for name, samples, peer in rows:
        print(f"  {name:30} now/{rev} {paired_ratio(samples[here], samples[there]):.3f}   "
              f"now/{peer} {paired_ratio(samples[here], samples[peer]):.3f}   "
              f"{rev}/{peer} {paired_ratio(samples[there], samples[peer]):.3f}")
    for contender, messages in raw["errors"].items():
        print(f"  errors of {contender}: {len(messages)} ({messages[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=200, help="detach samples per contender")
    parser.add_argument("--kills", type=int, default=400, help="worker restarts per contender")
    parser.add_argument("--starts", type=int, default=60, help="16-worker starts per contender")
    args = parser.parse_args()
    become_subreaper()
    scratch = Path(tempfile.mkdtemp(prefix="daemonctx-compare-"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as run.py: never measure the compiler
    os.environ["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    base = checkout(args.rev, scratch)
    try:
        raw = compare(base, args.rounds, args.kills, args.starts, scratch)
    finally:
        live = reap_strays()
        if live:
            log(f"warning: killed stray processes {live}")
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                       check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    report(args.rev, raw)


if __name__ == "__main__":
    main()
