"""Import cost, from ``python -X importtime`` in a fresh interpreter per sample.

A marker written to stderr separates the interpreter's own start-up imports from the statement
under test; the cost of a statement is the sum of the cumulative times of the top-level modules
it imported (modules already loaded at start-up, such as ``os``, cost nothing).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from common import PYTHON, REPO, BenchError, interleave, log

MARKER = "--bench-import-marker--"
STATEMENTS = {
    "daemonctx": "import daemonctx",
    "daemonctx.DaemonContext": "from daemonctx import DaemonContext",
    "python-daemon": "import daemon",
    "reference": "import os, resource",
    "tornado.process": "import tornado.process",
}
METRICS = ("import_ms",)


def parse_importtime(stderr: str) -> float:
    """Sum (in ms) of the cumulative times of top-level imports printed after the marker."""
    lines = stderr.splitlines()
    try:
        start = lines.index(MARKER) + 1
    except ValueError:
        raise BenchError(f"no marker in -X importtime output: {stderr[-300:]!r}") from None
    total_us = 0
    for line in lines[start:]:
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  "):  # depth 0: one space
            total_us += int(cumulative)
    return total_us / 1000


def take(name: str) -> dict[str, float]:
    """One fresh interpreter importing ``STATEMENTS[name]``."""
    code = f"import sys; sys.stderr.write({MARKER!r} + '\\n'); {STATEMENTS[name]}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([PYTHON, "-X", "importtime", "-c", code], check=False,
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"{STATEMENTS[name]!r} failed: {proc.stderr.strip()[-300:]}")
    return {"import_ms": parse_importtime(proc.stderr)}


def run(rounds: int, warmup: int) -> dict[str, Any]:
    """Interleave the import statements ``rounds`` times; return raw samples."""
    names = list(STATEMENTS)
    log(f"imports: {rounds} rounds x {len(names)}")
    errors: dict[str, list[str]] = {}
    samples = interleave(names, rounds, warmup, take, METRICS, errors)
    return {"contenders": names, "statements": STATEMENTS, "rounds": rounds,
            "samples": samples["import_ms"], "errors": errors}
