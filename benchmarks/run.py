"""Benchmark daemonctx against python-daemon, daemonize, tornado and minimal references.

    python benchmarks/run.py                 # --full: ~3 minutes, writes the results page
    python benchmarks/run.py --quick --no-write   # a smoke run (< 60 s), writes nothing

Sections (``--sections``, comma-separated): ``detach`` (open() -> daemon main, launcher wall
time, daemon RSS, at several RLIMIT_NOFILE), ``imports`` (-X importtime), ``supervisor``
(start of 2/16/128 workers, restart, idle CPU, graceful stop, worker RSS).  Contenders are
interleaved; medians, p90 and medians of paired ratios are reported, then each of issue 9's
targets as met or MISSED.

Outputs, unless ``--no-write``: the raw samples as JSON (``--out``, default
``benchmarks/results/<mode>.json``) and, for ``--full`` (or with ``--docs``), the results page
``docs/benchmarks-results.md`` with its plots in ``docs/_static/``.  ``--from-json FILE``
re-renders the comparison and the page from a saved run without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, become_subreaper, log, machine_info, reap_strays

SECTIONS = ("detach", "imports", "supervisor")
DEFAULT_PAGE = REPO / "docs" / "benchmarks-results.md"


def settings(mode: str) -> dict[str, Any]:
    """Sample counts per mode: ``quick`` for the smoke test, ``full`` for the results page."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if mode == "quick":
        return {"limits": sorted({1024, top}), "detach_rounds": 3, "import_rounds": 5,
                "counts": [2, 16, 128], "start_rounds": {2: 3, 16: 2, 128: 1}, "kills": 5,
                "stop_rounds": 2, "idle_seconds": 2.0, "warmup": 1}
    return {"limits": sorted({1024, 4096, top}), "detach_rounds": 120, "import_rounds": 60,
            "counts": [2, 16, 128], "start_rounds": {2: 80, 16: 40, 128: 12}, "kills": 300,
            "stop_rounds": 15, "idle_seconds": 5.0, "warmup": 2}


def measure(mode: str, sections: list[str]) -> dict[str, Any]:
    """Run the chosen sections; return the raw results with the machine's description."""
    import detach
    import imports
    import supervisors

    conf = settings(mode)
    become_subreaper()
    results: dict[str, Any] = {"meta": {"mode": mode, "settings": conf,
                                        "machine": machine_info()}}
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="daemonctx-bench-"))
    # Every interpreter started from here caches bytecode under the scratch directory (warm-up
    # rounds fill it): with PYTHONDONTWRITEBYTECODE set and a stale __pycache__, each import
    # would compile from source and the import, wall-time and RSS numbers would measure the
    # compiler.  Nothing is written into the checkout or site-packages.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    try:
        if "detach" in sections:
            results["detach"] = detach.run(scratch, conf["limits"], conf["detach_rounds"],
                                           conf["warmup"])
        if "imports" in sections:
            results["imports"] = imports.run(conf["import_rounds"], conf["warmup"])
        if "supervisor" in sections:
            results["supervisor"] = supervisors.run(
                scratch, conf["counts"], conf["start_rounds"], conf["kills"],
                conf["stop_rounds"], conf["idle_seconds"])
    finally:
        live = reap_strays()
        shutil.rmtree(scratch, ignore_errors=True)
        if live:
            log(f"warning: killed stray processes {live}")
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="few samples (< 60 s); does not write the docs page")
    mode.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="the real run (default, ~3 minutes)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="where to save raw results (JSON)")
    parser.add_argument("--docs", type=Path, nargs="?", const=DEFAULT_PAGE,
                        help=f"write the results page (default for --full: {DEFAULT_PAGE})")
    parser.add_argument("--no-write", action="store_true",
                        help="print only: no JSON, no docs page, no plots")
    parser.add_argument("--from-json", type=Path,
                        help="render a saved run instead of measuring")
    args = parser.parse_args(argv)
    mode_name = args.mode or "full"

    import report

    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(SECTIONS)}")
        results = measure(mode_name, sections)

    print(report.sections_text(results))
    print(report.comparison_text(results))
    print(f"(mode {results['meta']['mode']}, {results['meta'].get('seconds', '?')} s)")
    if args.no_write:
        return 0
    if not args.from_json:
        out = args.out or REPO / "benchmarks" / "results" / f"{mode_name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        log(f"wrote {out}")
    page = args.docs or (DEFAULT_PAGE if results["meta"]["mode"] == "full" else None)
    if page is not None:
        report.write_docs(results, page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
