"""Turn raw results into the docs page, its plots, and the check against issue 9's targets.

The docs page (``docs/benchmarks-results.md``) is for users: it opens with daemonctx next to
python-daemon, tornado and the minimal references (start latency, worker restart, memory) and a
plot, then the details.  The internal targets of issue 9 (met or MISSED) are printed at the end
of every run and kept in ``benchmarks/README.md``, between the markers below, rewritten whenever
the docs page is.  Everything here reads the JSON that ``run.py`` saves, so both can be
regenerated from a saved run (``run.py --from-json``) without measuring again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BENCH_DIR, REPO, log, median, p90, paired_ratio

DETACH_REFERENCE = "reference"
SUPERVISOR_REFERENCE = "minimal-loop"
LABELS = {
    "reference": "minimal reference (double fork, plain Python)",
    "reference-handshake": "minimal reference + 1-byte handshake",
    "daemonctx": "daemonctx (start-up handshake, default)",
    "daemonctx-nowait": "daemonctx, launcher not waiting",
    "python-daemon": "python-daemon",
    "daemonize": "daemonize",
    "minimal-loop": "minimal fork/wait loop",
    "tornado": "tornado.process.fork_processes",
}
SUPERVISOR_LABELS = {"daemonctx": "daemonctx.fork_processes"}
ANALYSIS = BENCH_DIR / "analysis.md"
README = BENCH_DIR / "README.md"
DOCS_PAGE = REPO / "docs" / "benchmarks-results.md"
TARGETS_BEGIN = "<!-- targets: written by benchmarks/report.py from the run's JSON; do not edit -->"
TARGETS_END = "<!-- end of the generated targets -->"
TIMES = "\u00d7"  # the multiplication sign, for ratios
# The RLIMIT_NOFILE of the headline comparison: the usual default soft limit.
HEADLINE_NOFILE = "1024"
# Contenders of the headline tables, in their order (the details list every one).
DETACH_HEADLINE = ("daemonctx", "daemonctx-nowait", "python-daemon", "daemonize", "reference")
SUPERVISOR_HEADLINE = ("daemonctx", "tornado", "minimal-loop")


def label(name: str, supervisor: bool = False) -> str:
    if supervisor and name in SUPERVISOR_LABELS:
        return SUPERVISOR_LABELS[name]
    return LABELS.get(name, name)


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def taken(samples: Sequence[float | None]) -> list[float]:
    return [s for s in samples if s is not None]


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Median of per-round differences ``a - b`` where both were taken."""
    return median([x - y for x, y in zip(a, b, strict=False) if x is not None and y is not None])


# --- the targets ----------------------------------------------------------------------------


@dataclass
class Check:
    """One target of the issue, judged on a measured value."""

    section: str
    target: str
    measured: str
    met: bool | None  # None: not measured

    @property
    def status(self) -> str:
        return "not measured" if self.met is None else ("met" if self.met else "MISSED")


def _ratio_check(section: str, target: str, value: float, limit: float, strict: bool = False,
                 unit: str = "x") -> Check:
    if math.isnan(value):
        return Check(section, target, "n/a", None)
    met = value < limit if strict else value <= limit
    return Check(section, target, f"{value:.2f}{unit}", met)


def checks(results: dict[str, Any]) -> list[Check]:
    """Every target of issue 9 against the results present (absent sections: not measured)."""
    found: list[Check] = []
    detach = results.get("detach")
    if detach:
        for nofile, metrics in detach["by_limit"].items():
            lat = metrics["latency_ms"]
            found.append(_ratio_check(
                "detach", f"open() -> main <= 1.10 x minimal reference (RLIMIT_NOFILE {nofile})",
                paired_ratio(lat["daemonctx"], lat[DETACH_REFERENCE]), 1.10))
            found.append(_ratio_check(
                "detach", f"open() -> main below python-daemon (RLIMIT_NOFILE {nofile})",
                paired_ratio(lat["daemonctx"], lat["python-daemon"]), 1.0, strict=True))
            wall = metrics["wall_ms"]
            diff = paired_difference(wall["daemonctx"], wall["daemonctx-nowait"])
            check = _ratio_check(
                "detach", f"launcher wall time with handshake within 1 ms of without "
                f"(RLIMIT_NOFILE {nofile})", diff, 1.0, unit=" ms")
            found.append(check)
    imports = results.get("imports")
    if imports:
        samples = imports["samples"]
        for name, what in (("daemonctx", "import daemonctx"),
                           ("daemonctx.DaemonContext", "from daemonctx import DaemonContext")):
            found.append(_ratio_check(
                "import", f"`{what}` <= 60 % of `import daemon`",
                paired_ratio(samples[name], samples["python-daemon"]), 0.60))
    sup = results.get("supervisor")
    if sup:
        for n, metrics in sup["start"].items():
            start = metrics["start_ms"]
            found.append(_ratio_check(
                "supervisor", f"start {n} workers <= 1.10 x minimal loop",
                paired_ratio(start["daemonctx"], start[SUPERVISOR_REFERENCE]), 1.10))
            found.append(_ratio_check(
                "supervisor", f"start {n} workers below tornado",
                paired_ratio(start["daemonctx"], start["tornado"]), 1.0, strict=True))
        restart = sup["restart_ms"]
        found.append(_ratio_check(
            "supervisor", "restart of a crashed worker <= 1.10 x minimal loop",
            paired_ratio(restart["daemonctx"], restart[SUPERVISOR_REFERENCE]), 1.10))
        found.append(_ratio_check(
            "supervisor", "restart of a crashed worker below tornado",
            paired_ratio(restart["daemonctx"], restart["tornado"]), 1.0, strict=True))
        ticks = sup["idle_ticks"].get("daemonctx")
        found.append(Check(
            "supervisor", f"idle master CPU 0 ticks over {sup['idle_seconds']:g} s",
            "n/a" if ticks is None else f"{ticks} ticks", None if ticks is None else ticks == 0))
        stop = median(taken(sup["stop_ms"]["daemonctx"]))
        found.append(_ratio_check(
            "supervisor", f"graceful stop of {sup['stop_workers']} workers < 100 ms",
            stop, 100.0, strict=True, unit=" ms"))
    return found


def comparison_text(results: dict[str, Any]) -> str:
    """The plain-text comparison printed at the end of a run."""
    rows = checks(results)
    width = max((len(c.target) for c in rows), default=10)
    lines = ["", "== comparison against issue 9's targets (ratios are medians of paired "
             "ratios) =="]
    for c in rows:
        lines.append(f"{c.status:>12}  {c.target:<{width}}  {c.measured}")
    missed = sum(1 for c in rows if c.met is False)
    lines.append(f"{len(rows) - missed}/{len(rows)} targets met, {missed} MISSED")
    return "\n".join(lines)


def sections_text(results: dict[str, Any]) -> str:
    """Plain-text medians per section (what the smoke test looks for)."""
    out: list[str] = []
    if "detach" in results:
        d = results["detach"]
        for nofile, metrics in d["by_limit"].items():
            out.append(f"== detach latency, RLIMIT_NOFILE {nofile} (ms: open->main median/p90,"
                       " launcher wall median, daemon VmHWM KiB) ==")
            for name in d["contenders"]:
                lat = taken(metrics["latency_ms"][name])
                wall = taken(metrics["wall_ms"][name])
                hwm = taken(metrics["daemon_hwm_kib"][name])
                ratio = paired_ratio(metrics["latency_ms"][name],
                                     metrics["latency_ms"][DETACH_REFERENCE])
                out.append(f"  {name:<18} {fmt(median(lat)):>8} {fmt(p90(lat)):>8} "
                           f"x{fmt(ratio)}  wall {fmt(median(wall)):>7}  "
                           f"rss {fmt(median(hwm), 0)}")
    if "imports" in results:
        imp = results["imports"]
        out.append("== import cost (ms, -X importtime cumulative: median/p90) ==")
        for name in imp["contenders"]:
            s = taken(imp["samples"][name])
            out.append(f"  {imp['statements'][name]:<38} {fmt(median(s)):>8} {fmt(p90(s)):>8}")
    if "supervisor" in results:
        sup = results["supervisor"]
        for n, metrics in sup["start"].items():
            out.append(f"== supervisor start, {n} workers (ms to last worker running) ==")
            for name in sup["contenders"]:
                s = taken(metrics["start_ms"][name])
                out.append(f"  {name:<14} {fmt(median(s)):>8} {fmt(p90(s)):>8}")
        out.append("== supervisor restart of a crashed worker (ms) ==")
        for name in sup["contenders"]:
            s = taken(sup["restart_ms"][name])
            out.append(f"  {name:<14} {fmt(median(s)):>8} {fmt(p90(s)):>8}")
        out.append(f"== supervisor idle master CPU over {sup['idle_seconds']:g} s (ticks) ==")
        for name in sup["contenders"]:
            out.append(f"  {name:<14} {sup['idle_ticks'].get(name, 'n/a')}")
        out.append(f"== supervisor graceful stop of {sup['stop_workers']} workers (ms) ==")
        for name in sup["contenders"]:
            s = taken(sup["stop_ms"][name])
            failed = len(sup["stop_ms"][name]) - len(s)
            note = f"  ({failed} failed: {sup['errors'][name][0]})" if failed else ""
            out.append(f"  {name:<14} {fmt(median(s)):>8} {fmt(p90(s)):>8}{note}")
        out.append("== peak RSS (VmHWM KiB: worker / master, 2 workers) ==")
        smallest = str(min(int(n) for n in sup["start"]))
        for name in sup["contenders"]:
            m = sup["start"][smallest]
            out.append(f"  {name:<14} {fmt(median(taken(m['worker_hwm_kib'][name])), 0):>8} "
                       f"{fmt(median(taken(m['master_hwm_kib'][name])), 0):>8}")
    return "\n".join(out)


# --- the docs page ------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _stats(samples: Sequence[float | None], digits: int = 2) -> list[str]:
    s = taken(samples)
    return [fmt(median(s), digits), fmt(p90(s), digits)]


def _ratio_cells(samples: Sequence[float | None],
                 baselines: Sequence[Sequence[float | None]]) -> list[str]:
    return [fmt(paired_ratio(samples, base)) for base in baselines]


def _headline_nofile(detach: dict[str, Any]) -> str:
    by_limit = detach["by_limit"]
    return HEADLINE_NOFILE if HEADLINE_NOFILE in by_limit else min(by_limit, key=int)


def render_comparison(results: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """The page's opening: daemonctx against python-daemon, tornado and the minimal references."""
    out = ["## daemonctx next to python-daemon and tornado", "",
           "Three numbers decide how daemonctx feels in use: how soon a daemon runs its own "
           "code after `open()`, how soon the supervisor replaces a worker that crashed, and "
           "how much memory the daemon, a worker and the master take. Each table gives the "
           "median and its ratio to the other contenders (below 1: daemonctx is faster or "
           "smaller). The *minimal references* are written for the benchmark: the least any "
           "Python program can do for the same job, without daemonctx's checks and guarantees.",
           ""]
    if "summary" in plots:
        out += [f"![daemonctx next to python-daemon, tornado and the minimal references: start "
                f"latency, worker restart and peak memory]({plots['summary']})", ""]
    detach = results.get("detach")
    if detach:
        nofile = _headline_nofile(detach)
        metrics = detach["by_limit"][nofile]
        lat, wall = metrics["latency_ms"], metrics["wall_ms"]
        names = [n for n in DETACH_HEADLINE if n in detach["contenders"]]
        out += [
            "### Start latency: `open()` → the daemon's main",
            "",
            f"From the call to `open()` until the daemon runs the first line after it "
            f"(RLIMIT_NOFILE {nofile}). daemonctx's launcher waits for the daemon's start-up "
            "report, so that its exit status tells the truth; *launcher not waiting* is "
            "`DaemonContext(startup_timeout=0)`, which exits at once as python-daemon's does. "
            "*Launcher exits* is the time from starting the program until the command you "
            "typed returns (interpreter start-up included).",
            "",
        ]
        rows = [[label(n), fmt(median(taken(lat[n]))),
                 *_ratio_cells(lat[n], [lat["python-daemon"], lat[DETACH_REFERENCE]]),
                 fmt(median(taken(wall[n])), 1), fmt(paired_ratio(wall[n], wall["python-daemon"]))]
                for n in names]
        out += _table(["contender", "open → main (ms)", f"{TIMES} python-daemon",
                       f"{TIMES} minimal reference", "launcher exits (ms)",
                       f"{TIMES} python-daemon"], rows)
    sup = results.get("supervisor")
    if sup:
        restart = sup["restart_ms"]
        names = [n for n in SUPERVISOR_HEADLINE if n in sup["contenders"]]
        out += [
            "### Worker restart: `SIGKILL` to a worker → its replacement running",
            "",
            "The supervisor notices the crash, decides on the restart (budget, backoff) and "
            "forks the replacement, which reports its first instruction.",
            "",
        ]
        rows = [[label(n, True), fmt(median(taken(restart[n]))),
                 *_ratio_cells(restart[n], [restart["tornado"], restart[SUPERVISOR_REFERENCE]])]
                for n in names]
        out += _table(["contender", "ms", f"{TIMES} tornado", f"{TIMES} minimal loop"], rows)
    if detach or sup:
        out += ["### Memory: peak resident set (VmHWM)", "",
                "The daemon once its main runs; a worker and the master of a supervisor "
                "running 2 workers.", ""]
        rows = []
        if detach:
            hwm = detach["by_limit"][_headline_nofile(detach)]["daemon_hwm_kib"]
            for n in [n for n in DETACH_HEADLINE if n in detach["contenders"]]:
                if n == "daemonctx-nowait":
                    continue  # the same process as daemonctx's
                rows.append([f"daemon: {label(n)}", fmt(median(taken(hwm[n])) / 1024, 1),
                             fmt(paired_ratio(hwm[n], hwm["python-daemon"])), "",
                             fmt(paired_ratio(hwm[n], hwm[DETACH_REFERENCE]))])
        if sup:
            smallest = sup["start"][str(min(int(n) for n in sup["start"]))]
            for role, key in (("worker", "worker_hwm_kib"), ("master", "master_hwm_kib")):
                hwm = smallest[key]
                for n in [n for n in SUPERVISOR_HEADLINE if n in sup["contenders"]]:
                    rows.append([f"{role}: {label(n, True)}",
                                 fmt(median(taken(hwm[n])) / 1024, 1), "",
                                 fmt(paired_ratio(hwm[n], hwm["tornado"])),
                                 fmt(paired_ratio(hwm[n], hwm[SUPERVISOR_REFERENCE]))])
        out += _table(["process", "MiB", f"{TIMES} python-daemon", f"{TIMES} tornado",
                       f"{TIMES} minimal reference"], rows)
    return out


def render_page(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The MyST Markdown results page (``plots`` maps a plot name to its path from docs/)."""
    meta = results["meta"]
    machine = meta["machine"]
    version = machine.get("version daemonctx", "?")
    out = [
        "# Benchmark results",
        "",
        f"daemonctx {version} measured against python-daemon, daemonize, tornado's "
        f"`fork_processes` and minimal references on {machine['date']}, with "
        f"`python benchmarks/run.py --{meta['mode']}` (`benchmarks/README.md` in the "
        "repository says how to run it again). Every number is a median over interleaved "
        "runs (contenders taken in turn, A B C, B C A, ...); *p90* is the 90th percentile; "
        f"ratios ({TIMES}) are the median of per-round ratios. The machine is a shared 2-core "
        "virtual machine: read the ratios, not the absolute times.",
        "",
    ]
    out += render_comparison(results, plots)
    out += ["## Details", ""]
    out += ["### The machine", ""]
    # Sorted: the saved JSON has its keys sorted, so a page rendered right after measuring and
    # one rendered from the file (--from-json, tests/test_benchmarks.py) must not differ.
    out += _table(["machine", ""], [[k, v] for k, v in sorted(machine.items())])

    if "detach" in results:
        d = results["detach"]
        out += [
            "### Detach latency at each RLIMIT_NOFILE",
            "",
            "*open → main*: CLOCK_MONOTONIC read in the launcher just before the call that "
            "detaches, and again first thing in the daemon's main. *launcher wall*: spawning "
            "the launcher → the launcher has exited (interpreter start-up and imports "
            "included). *daemon RSS*: the daemon's VmHWM once its main runs. "
            "`daemonctx, launcher not waiting` is `DaemonContext(startup_timeout=0)`: no "
            "start-up handshake, the launcher exits right after the first fork (python-daemon's "
            "behaviour), which isolates the handshake's cost.",
            "",
        ]
        for nofile, metrics in sorted(d["by_limit"].items(), key=lambda item: int(item[0])):
            out += [f"#### RLIMIT_NOFILE {nofile}", ""]
            rows = []
            for name in d["contenders"]:
                lat = metrics["latency_ms"][name]
                rows.append([
                    label(name), *_stats(lat),
                    fmt(paired_ratio(lat, metrics["latency_ms"][DETACH_REFERENCE])),
                    *_stats(metrics["wall_ms"][name], 1),
                    fmt(median(taken(metrics["daemon_hwm_kib"][name])) / 1024, 1),
                ])
            out += _table(["contender", "open → main (ms)", "p90", f"{TIMES} reference",
                           "launcher wall (ms)", "p90", "daemon RSS (MiB)"], rows)
        if "detach" in plots:
            out += [f"![Detach latency against RLIMIT_NOFILE]({plots['detach']})", ""]

    if "imports" in results:
        imp = results["imports"]
        out += [
            "### Import cost",
            "",
            "`python -X importtime`, fresh interpreter per run: the sum of the cumulative "
            "times of the top-level modules the statement imported (modules the interpreter "
            "loaded at start-up cost nothing). The reference is what the minimal "
            "reference daemon imports.",
            "",
        ]
        base = imp["samples"]["python-daemon"]
        rows = [[f"`{imp['statements'][n]}`", *_stats(imp["samples"][n]),
                 fmt(paired_ratio(imp["samples"][n], base))] for n in imp["contenders"]]
        out += _table(["statement", "ms", "p90", f"{TIMES} `import daemon`"], rows)

    if "supervisor" in results:
        sup = results["supervisor"]
        out += [
            "### Supervisor",
            "",
            "Contenders: `daemonctx.fork_processes` (tornado's restart policy: immediate "
            "restarts, no backoff), `tornado.process.fork_processes`, and a minimal loop "
            "written for the benchmark (fork n, block in `os.wait()`, fork a replacement, "
            "forward SIGTERM). Workers report their own CLOCK_MONOTONIC reading first thing.",
            "",
            "#### Start: `fork_processes(n)` called → every worker running",
            "",
        ]
        rows = []
        for n, metrics in sorted(sup["start"].items(), key=lambda item: int(item[0])):
            start = metrics["start_ms"]
            for name in sup["contenders"]:
                rows.append([n, label(name, True), *_stats(start[name]),
                             fmt(paired_ratio(start[name], start["tornado"])),
                             fmt(paired_ratio(start[name], start[SUPERVISOR_REFERENCE]))])
        out += _table(["workers", "contender", "ms", "p90", f"{TIMES} tornado",
                       f"{TIMES} minimal loop"], rows)
        if "workers" in plots:
            out += [f"![Start time against worker count]({plots['workers']})", ""]
        restart = sup["restart_ms"]
        out += ["#### Restart: SIGKILL to a worker → its replacement running", ""]
        rows = [[label(n, True), *_stats(restart[n]),
                 fmt(paired_ratio(restart[n], restart[SUPERVISOR_REFERENCE]))]
                for n in sup["contenders"]]
        out += _table(["contender", "ms", "p90", f"{TIMES} minimal loop"], rows)
        out += [f"#### Idle master and graceful stop ({sup['stop_workers']} workers)", ""]
        rows = []
        for name in sup["contenders"]:
            stop = sup["stop_ms"][name]
            ok = taken(stop)
            if ok:
                stop_text = f"{fmt(median(ok))} (p90 {fmt(p90(ok))})"
            else:
                stop_text = "no graceful stop: " + sup["errors"].get(name, ["failed"])[0].split(
                    ": ", 1)[-1]
            ticks = sup["idle_ticks"].get(name)
            rows.append([label(name, True), "n/a" if ticks is None else str(ticks), stop_text])
        out += _table(["contender", f"master CPU over {sup['idle_seconds']:g} s (ticks)",
                       "SIGTERM → all gone (ms)"], rows)
        smallest = str(min(int(n) for n in sup["start"]))
        m = sup["start"][smallest]
        out += ["#### Peak memory", ""]
        rows = [[label(n, True), fmt(median(taken(m["worker_hwm_kib"][n])) / 1024, 1),
                 fmt(median(taken(m["master_hwm_kib"][n])) / 1024, 1)]
                for n in sup["contenders"]]
        if "detach" in results:
            by_limit = results["detach"]["by_limit"]
            first = by_limit[_headline_nofile(results["detach"])]
            rows += [[f"daemon: {label(n)}",
                      fmt(median(taken(first["daemon_hwm_kib"][n])) / 1024, 1), ""]
                     for n in results["detach"]["contenders"]]
        out += _table(["process", "worker VmHWM (MiB)", "master VmHWM (MiB)"], rows)

    if ANALYSIS.exists():
        out += ["## Where the time goes", "", ANALYSIS.read_text().strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def render_targets(results: dict[str, Any]) -> str:
    """The targets of issue 9 as a Markdown table, met or **MISSED**, for benchmarks/README.md."""
    meta = results["meta"]
    machine = meta["machine"]
    rows = [[c.section, c.target, c.measured, f"**{c.status}**" if c.met is False else c.status]
            for c in checks(results)]
    missed = sum(1 for c in checks(results) if c.met is False)
    lines = [
        TARGETS_BEGIN,
        "",
        f"Measured with daemonctx {machine.get('version daemonctx', '?')} on {machine['date']} "
        f"(`run.py --{meta['mode']}`; the numbers are those of `docs/benchmarks-results.md`): "
        f"{len(rows) - missed} of {len(rows)} targets met, {missed} missed. "
        "`benchmarks/analysis.md` explains what bounds the misses.",
        "",
        *_table(["section", "target", "measured", "status"], rows),
        TARGETS_END,
    ]
    return "\n".join(lines)


def write_targets(results: dict[str, Any], readme: Path = README) -> None:
    """Replace the generated targets section of ``readme`` (or append one) with this run's."""
    text = readme.read_text()
    block = render_targets(results)
    if TARGETS_BEGIN in text and TARGETS_END in text:
        before, rest = text.split(TARGETS_BEGIN, 1)
        after = rest.split(TARGETS_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n## Targets (issue 9)\n\n" + block + "\n"
    readme.write_text(text)


# --- plots --------------------------------------------------------------------------------


def write_plots(results: dict[str, Any], static_dir: Path) -> dict[str, str]:
    """Write the PNG plots; return ``{name: path relative to docs/}`` (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return {}
    static_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    summary = _summary_bars(results)
    if summary:
        fig, axes = plt.subplots(len(summary), 1, figsize=(8, 1.1 + 1.9 * len(summary)),
                                 squeeze=False)
        for ax, (title, bars) in zip(axes[:, 0], summary, strict=True):
            names = [name for name, _, _ in bars][::-1]
            meds = [value for _, value, _ in bars][::-1]
            ends = [max(high, value) for _, value, high in bars][::-1]
            colours = ["#d9480f" if name.startswith(("daemonctx", "daemon: daemonctx",
                                                     "worker: daemonctx"))
                       else "#868e96" for name in names]
            errors = [end - value for end, value in zip(ends, meds, strict=True)]
            ax.barh(names, meds, color=colours,
                    xerr=[[0.0] * len(meds), errors] if any(errors) else None, capsize=3)
            for y, (value, end) in enumerate(zip(meds, ends, strict=True)):
                ax.annotate(f"  {value:.2f}", (end, y), va="center", fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, axis="x", alpha=0.3)
            ax.margins(x=0.15)
        fig.tight_layout()
        path = static_dir / "bench-summary.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written["summary"] = f"_static/{path.name}"
    if "detach" in results:
        d = results["detach"]
        limits = sorted(int(n) for n in d["by_limit"])
        fig, ax = plt.subplots(figsize=(9.5, 4.2))
        for name in d["contenders"]:
            series = [taken(d["by_limit"][str(n)]["latency_ms"][name]) for n in limits]
            meds = [median(s) for s in series]
            highs = [p90(s) - m for s, m in zip(series, meds, strict=True)]
            bars: list[list[float]] = [[0.0] * len(meds), highs]
            ax.errorbar(limits, meds, yerr=bars, marker="o", capsize=3,
                        label=label(name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(limits, [str(n) for n in limits])
        ax.set_xlabel("RLIMIT_NOFILE (soft limit)")
        ax.set_ylabel("open() → daemon main (ms, median; bar to p90)")
        ax.set_title("Detach latency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = static_dir / "bench-detach.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written["detach"] = f"_static/{path.name}"
    if "supervisor" in results:
        sup = results["supervisor"]
        counts = [int(n) for n in sup["start"]]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name in sup["contenders"]:
            series = [taken(sup["start"][str(n)]["start_ms"][name]) for n in counts]
            meds = [median(s) for s in series]
            highs = [p90(s) - m for s, m in zip(series, meds, strict=True)]
            bars = [[0.0] * len(meds), highs]
            ax.errorbar(counts, meds, yerr=bars, marker="o", capsize=3,
                        label=label(name, True))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set_xlabel("workers")
        ax.set_ylabel("fork_processes() → last worker running (ms)")
        ax.set_title("Supervisor start")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = static_dir / "bench-workers.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written["workers"] = f"_static/{path.name}"
    return written


def _summary_bars(results: dict[str, Any]) -> list[tuple[str, list[tuple[str, float, float]]]]:
    """The summary plot's panels: ``(title, [(label, median, p90)])`` for what was measured."""
    panels: list[tuple[str, list[tuple[str, float, float]]]] = []
    detach = results.get("detach")
    sup = results.get("supervisor")
    if detach:
        nofile = _headline_nofile(detach)
        lat = detach["by_limit"][nofile]["latency_ms"]
        bars = [(label(n), median(taken(lat[n])), p90(taken(lat[n])))
                for n in DETACH_HEADLINE if n in detach["contenders"]]
        panels.append(("Start latency: open() \u2192 the daemon's main (ms; median, bar to p90)",
                       bars))
    if sup:
        restart = sup["restart_ms"]
        bars = [(label(n, True), median(taken(restart[n])), p90(taken(restart[n])))
                for n in SUPERVISOR_HEADLINE if n in sup["contenders"]]
        panels.append(("Worker restart: SIGKILL \u2192 replacement runs (ms; median, bar to p90)",
                       bars))
    memory: list[tuple[str, float, float]] = []
    if detach:
        hwm = detach["by_limit"][_headline_nofile(detach)]["daemon_hwm_kib"]
        memory += [(f"daemon: {label(n)}", median(taken(hwm[n])) / 1024,
                    median(taken(hwm[n])) / 1024)
                   for n in DETACH_HEADLINE if n in detach["contenders"]
                   and n != "daemonctx-nowait"]
    if sup:
        hwm = sup["start"][str(min(int(n) for n in sup["start"]))]["worker_hwm_kib"]
        memory += [(f"worker: {label(n, True)}", median(taken(hwm[n])) / 1024,
                    median(taken(hwm[n])) / 1024)
                   for n in SUPERVISOR_HEADLINE if n in sup["contenders"]]
    if memory:
        panels.append(("Peak memory: VmHWM of the daemon, of a worker (MiB; median)", memory))
    return panels


def write_docs(results: dict[str, Any], page: Path) -> None:
    """Write the plots beside ``page`` (in ``_static/``) and the page itself.

    For the published page (``docs/benchmarks-results.md``), also rewrite the targets section
    of ``benchmarks/README.md``, so that both always show the same run.
    """
    plots = write_plots(results, page.parent / "_static")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_page(results, plots))
    written = [str(page.relative_to(REPO) if page.is_relative_to(REPO) else page),
               *(f"docs/{p}" for p in plots.values())]
    if page.resolve() == DOCS_PAGE.resolve():
        write_targets(results)
        written.append(str(README.relative_to(REPO)))
    log("wrote " + ", ".join(written))
