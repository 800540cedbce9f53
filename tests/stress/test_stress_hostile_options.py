"""Hostile option values for DaemonContext: only our documented errors, and only before forking.

Hypothesis draws any subset of DaemonContext's options, each from plausible values mixed with
values of every other type (huge and negative ints, NaN, infinities, bytes, NUL bytes, lists,
dicts, objects).  Each example runs ``DaemonContext(**options).open()`` in a child forked from
the test process, which reports back what happened:

* a :class:`~daemonctx.DaemonError` raised in the calling process, which must then be exactly as
  before: same working directory, umask, ids, groups, session, signal mask, core limit and open
  fds, no child process, no file left behind ("never a half-detached process");
* or the start went ahead and succeeded (the daemon then declares itself ready and exits);
* anything else fails the test: another exception type, or a start that failed after the fork
  (an option that should have been refused up front).

Each bug the property test found is pinned by a test of its own at the end (they were fixed:
non-ASCII digit and NUL names, fds beyond a C int, NaN or huge start-up timeouts, handlers
equal to SIG_DFL/SIG_IGN but not ints).  While a bug is open, :data:`KNOWN_BUGS` lets the
property test skip its examples (and a strict ``xfail`` marks its test).
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import select
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.helpers import kill_tree
from tests.stress.support import fresh_scratch

pytestmark = pytest.mark.stress

EXAMPLES = 150

ANYTHING = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(exclude_characters="/"), max_size=12),
    st.binary(max_size=8),
    st.lists(st.integers(-3, 70), max_size=3),
    st.dictionaries(st.integers(-3, 70), st.none(), max_size=2),
    st.builds(object),
)


def _paths(*candidates: str) -> st.SearchStrategy[str]:
    return st.sampled_from(candidates)


def option_strategies() -> dict[str, st.SearchStrategy[Any]]:
    """Per option: plausible values (paths under the scratch directory) or anything at all.

    Text drawn at random never contains "/", so a relative path can only name something in the
    scratch directory (the child's working directory): nothing outside it is ever created.
    """
    fds = st.sampled_from([0, 1, 2, 99_999, -1, 2**40])
    handlers = st.sampled_from([None, "terminate", "no_such_method", 0, 1, 1.0, 0.0, True,
                                "SIGTERM", print])
    signals = st.sampled_from([signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL, 0, 99_999,
                               "HUP", "SIGUSR2", "NOPE", -1, 2**70, 1.5])
    return {
        "chroot_directory": ANYTHING | _paths("scratch-dir", "/nonexistent", "a-file", "\0x"),
        "working_directory": ANYTHING | _paths("/", "scratch-dir", "/nonexistent", "a-file"),
        "umask": ANYTHING | st.integers(0, 0o777),
        "uid": ANYTHING | st.sampled_from(["nobody", 65534, 0, "root", "no-such-user", "²",
                                           "a\0b", "65534", str(2**40), 2**32 - 1]),
        "gid": ANYTHING | st.sampled_from(["nogroup", 65534, 0, "root", "no-such-group", "³",
                                           "a\0b", "65534", str(2**40), 2**32 - 1]),
        "initgroups": ANYTHING,
        "prevent_core": ANYTHING,
        "detach_process": ANYTHING,
        "files_preserve": ANYTHING | st.lists(fds, max_size=3),
        "pidfile": ANYTHING | st.just("PIDFILE"),
        "stdin": ANYTHING | fds | _paths("in.txt", "missing.txt", "scratch-dir"),
        "stdout": ANYTHING | fds | _paths("out.log", "scratch-dir", "no-dir/out.log"),
        "stderr": ANYTHING | fds | _paths("err.log", "a-file"),
        "signal_map": ANYTHING | st.dictionaries(signals, handlers, max_size=3),
        "startup_timeout": ANYTHING | st.floats(min_value=5, max_value=1e9),
        "defer_ready": ANYTHING,
    }


OPTIONS = st.fixed_dictionaries({}, optional=option_strategies())


def _process_state(scratch: Path) -> dict[str, Any]:
    """Everything a refused start must leave as it was, read in the child itself."""
    mask = os.umask(0o022)
    os.umask(mask)
    return {
        "cwd": os.getcwd(), "umask": mask, "uid": os.getresuid(), "gid": os.getresgid(),
        "groups": sorted(os.getgroups()), "sid": os.getsid(0), "pgrp": os.getpgrp(),
        "sigmask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "fds": sorted(os.listdir("/proc/self/fd")),
        "files": sorted(p.name for p in scratch.iterdir()),
    }


def _own_children() -> list[int]:
    pid = os.getpid()
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _child(options: dict[str, Any], scratch: Path, report_fd: int) -> None:
    """In the forked child: try to open the context, report what happened on ``report_fd``."""
    import daemonctx

    # The test process may hold garbage with open files (pipes of finished subprocesses): a
    # collection during open() would close one of them and look like a leak or a stray close.
    gc.collect()
    gc.disable()
    os.chdir(scratch)
    if options.get("pidfile") == "PIDFILE":
        options["pidfile"] = daemonctx.PIDFile(scratch / "app.pid")
    before = _process_state(scratch)
    result: dict[str, Any]
    try:
        context = daemonctx.DaemonContext(**options)
        context.open()
    except daemonctx.DaemonError as exc:
        result = {"kind": "refused", "error": f"{type(exc).__name__}: {exc}",
                  "children": _own_children(), "before": before,
                  "after": _process_state(scratch)}
    except BaseException as exc:
        result = {"kind": "undocumented", "error": f"{type(exc).__name__}: {exc}",
                  "trace": traceback.format_exc()}
    else:
        # The daemon (or, without detaching, this process): the report pipe may be closed
        # and its number reused, so write nothing; tell the launcher and leave.
        daemonctx.notify_ready()
        os._exit(0)
    os.write(report_fd, json.dumps(result, default=repr).encode())
    os._exit(0)


def run_in_child(options: dict[str, Any], scratch: Path,
                 timeout: float = 30.0) -> tuple[dict[str, Any] | None, int, str]:
    """Fork, run :func:`_child`; return its report (None if it went ahead), status, stderr."""
    read_fd, write_fd = os.pipe()
    err_path = scratch.parent / "child.err"
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            os.close(err)
            _child(options, scratch, write_fd)
        finally:
            os._exit(99)
    os.close(write_fd)
    data = b""
    try:
        while True:
            if not select.select([read_fd], [], [], timeout)[0]:
                raise AssertionError(f"the child hung with options {options!r}")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_fd)
        kill_tree(pid)
    return (json.loads(data) if data else None, os.waitstatus_to_exitcode(status),
            err_path.read_text(errors="replace"))


def _acceptable_late_failure(options: dict[str, Any], stderr: str) -> bool:
    """A start that failed after the fork for a reason no pre-fork check can know.

    Only one: a ``startup_timeout`` (a valid number) too short for this machine.
    """
    timeout = options.get("startup_timeout", 60.0)
    is_number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    tight = is_number and math.isfinite(timeout) and 0 < timeout < 5
    return tight and ("did not report readiness in time" in stderr
                      or "no start-up report within" in stderr)


def check_options(base: Path, options: dict[str, Any], tally: Callable[[str], None]) -> None:
    """Run one example and hold it to the contract in the module docstring."""
    scratch = fresh_scratch(base)
    report, status, stderr = run_in_child(dict(options), scratch)
    if report is None:
        if status == 0:
            tally("started")
            return
        assert _acceptable_late_failure(options, stderr), (
            f"accepted before the fork, failed after it (exit {status}): {stderr.strip()!r} "
            f"with options {options!r}")
        tally("late failure: timeout too short")
        return
    assert report["kind"] == "refused", (
        f"{report['error']} (not a DaemonError) with options {options!r}\n{report['trace']}")
    assert report["children"] == [], f"a child was forked before refusing: {report}"
    before, after = report["before"], report["after"]
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"refused ({report['error']}) but changed {changed} for {options!r}"
    tally(report["error"].split(":", 1)[0])


KNOWN_BUGS: dict[str, Callable[[dict[str, Any]], bool]] = {}  # none open: see the end


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(options=OPTIONS)
def test_any_option_values_give_a_documented_error_before_forking_or_a_started_daemon(
        tmp_path: Path, tally: Callable[[str], None], options: dict[str, Any]) -> None:
    known = [name for name, hits in KNOWN_BUGS.items() if hits(options)]
    if known:
        tally(f"skipped (known bug: {known[0]})")
    assume(not known)
    check_options(tmp_path, options, tally)


# --- regressions: each bug the property test found, pinned by its own test --------------


def _must_refuse(tmp_path: Path, options: dict[str, Any], option: str) -> None:
    report, status, stderr = run_in_child(options, fresh_scratch(tmp_path))
    assert report is not None, f"not refused before forking: exit {status}, {stderr.strip()!r}"
    assert report["kind"] == "refused", report["error"]
    assert report["children"] == []
    assert option in report["error"], report["error"]


@pytest.mark.parametrize("option, value", [("uid", "²"), ("gid", "³")])
def test_uid_or_gid_of_non_ascii_digits_is_refused_as_an_option_error(
        tmp_path: Path, option: str, value: str) -> None:
    _must_refuse(tmp_path, {option: value, "uid": 0} if option == "gid" else {option: value},
                 option)


@pytest.mark.parametrize("option", ["uid", "gid"])
def test_uid_or_gid_with_a_nul_byte_is_refused_as_an_option_error(tmp_path: Path,
                                                                   option: str) -> None:
    _must_refuse(tmp_path, {option: "a\0b"}, option)


@pytest.mark.parametrize("option, value", [("stdout", 2**31), ("stdin", 2**40),
                                           ("files_preserve", [2**40])])
def test_file_descriptor_beyond_c_int_is_refused_as_an_option_error(
        tmp_path: Path, option: str, value: object) -> None:
    _must_refuse(tmp_path, {option: value}, option)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 1e300])
def test_startup_timeout_nan_or_infinite_is_refused_before_forking(tmp_path: Path,
                                                                   timeout: float) -> None:
    _must_refuse(tmp_path, {"startup_timeout": timeout}, "startup_timeout")


@pytest.mark.parametrize("target", [0.0, 1.0, True])
def test_signal_map_target_equal_to_a_disposition_but_not_one_is_refused_before_forking(
        tmp_path: Path, target: object) -> None:
    _must_refuse(tmp_path, {"signal_map": {signal.SIGHUP: target}}, "signal_map")
