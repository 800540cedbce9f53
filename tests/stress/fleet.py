"""A warm launcher farm for the stress tests: forks real launchers that call DaemonContext.open().

    python tests/stress/fleet.py TAG

Starting an interpreter costs ~30 ms here; forking one that has already imported daemonctx
costs ~0.3 ms.  So the stress tests fork their launchers from this process: hundreds of real
launchers fit in seconds, and launchers released together really start together.  Each forked
launcher behaves like a program whose ``main`` opens a :class:`daemonctx.DaemonContext`: an
uncaught exception prints its traceback on the launcher's stderr and exits 1, atexit handlers
run at exit (:func:`run_as_program`).  ``TAG`` (the test's tmp path) is only there so that every
process of the farm can be found by its command line.

The farm is a child subreaper: the intermediate children and daemons its launchers leave are
re-parented to it, so it reaps every one of them and tells how each ended.  SIGCHLD stays
blocked in the farm (waited for with ``sigtimedwait``) and is unblocked in every forked child.

Commands arrive as one JSON object per line on stdin; each gets one JSON line on stdout:

* ``{"cmd": "race", "count": N, "program": P, "stderr": PREFIX}``: fork N launchers, hold them
  at a gate until all N are blocked on it, release them at once (closing the gate pipe), wait
  for them.  Reply ``{"launchers": [[pid, code, stderr], ...], "spread_us": S}`` where ``code``
  is the exit status or ``-signal`` and ``S`` the spread of the release instants.
* ``{"cmd": "launch", "program": P, "stderr": PATH, "kill": {"target": T, "delay": D}}``: fork
  one launcher; with ``kill``, ``D`` seconds after the fork SIGKILL the ``T`` process
  (``launcher``, ``intermediate`` or ``daemon``) if it exists then.  Reply ``{"launcher": pid,
  "code": c, "stderr": text, "elapsed": s, "snapshot": {...}, "killed": pid or null}``; the
  snapshot describes the start-up at the kill instant (see :func:`snapshot`).
* ``{"cmd": "loops", "loops": L, "iterations": K, "program": P, "stderr": PREFIX}``: L processes
  each run K start/stop cycles against P's pidfile (start a launcher; if it succeeded, SIGTERM
  the pidfile's holder and wait for it to go).  Reply ``{"loops": [[pid, code, started,
  stopped], ...]}`` once all have finished.
* ``{"cmd": "reap", "wait": [pids], "timeout": s}``: reap every exited child, waiting (bounded)
  until each pid in ``wait`` was reaped.  Reply ``{"reaped": {pid: code}, "missing": [pids],
  "children": [pids]}``: everything reaped since the last ``reap`` and the children left.

A program ``P`` (what each launcher runs) is a JSON object:

* ``options``: DaemonContext keyword arguments (``pidfile`` is a path, wrapped in PIDFile);
* ``log``: the daemon appends ``start <pid> <ns> ok|nolock`` right after ``open()`` returned and
  ``stop <pid> <ns> ok|nolock`` before it releases the pidfile (``ok``: it holds the pidfile's
  lock and the locked file is the one at the path); a daemon stopped by SIGTERM before it
  logged ``start`` logs only ``stop``;
* ``pid_path``: the daemon writes its pid there (atomically) once started;
* ``privileges``: ``{"report": path, "secret": path}``: the daemon tries to regain root and to
  read ``secret``, and writes what happened to ``report`` as JSON;
* ``supervisor``: ``{"workers": n, "policy": {...}, "crash": bool, "snapshots": [n, ...],
  "stop_after": n, "progress": path, "progress_every": n}``: the daemon runs a
  :class:`daemonctx.supervisor.Supervisor`; crashing workers exit 1 at once, the others declare
  themselves ready (with ``defer_ready`` the launcher then exits 0 once all are); the master counts
  worker exits, writes the count to ``progress`` every ``progress_every`` (1000) exits, stops
  itself (SIGSTOP, for the test to measure it from outside) after each count in ``snapshots``
  and sends itself SIGTERM after ``stop_after``.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import daemonctx
import daemonctx.context  # warm: imported once, before any fork
from daemonctx.pidfile import PIDFile, holder_pid

PR_SET_CHILD_SUBREAPER = 36
ORIGINAL_MASK: set[int] = set()
Program = dict[str, Any]


# --- the daemon program -------------------------------------------------------------------


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as out:
        out.write(text)
    os.rename(tmp, path)


def _log_event(program: Program, kind: str, pidfile: PIDFile | None) -> None:
    path = program.get("log")
    if not path:
        return
    ok = pidfile is None or (pidfile.i_am_locking() and holder_pid(pidfile.path) == os.getpid())
    _append(path, f"{kind} {os.getpid()} {time.monotonic_ns()} {'ok' if ok else 'nolock'}\n")


def park() -> None:
    """Sleep until a signal handler raises; never returns otherwise.

    Not a loop of ``signal.pause()``: a signal that arrives after the interpreter's last check
    and before ``pause()`` starts is handled by the C handler only, and ``pause()`` then waits
    for another signal (a lost SIGTERM, seen here once in a few hundred starts).  The wake-up
    fd gets a byte from that C handler, so ``select`` returns at once and the Python handler
    runs right after.
    """
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    while True:
        select.select([read_fd], [], [])
        os.read(read_fd, 512)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _try_privileges(spec: dict[str, str]) -> None:
    """Try everything a daemon that dropped root should no longer be able to do."""
    results: dict[str, str] = {}
    attempts: dict[str, Callable[[], object]] = {
        "setuid": lambda: os.setuid(0),
        "seteuid": lambda: os.seteuid(0),
        "setreuid": lambda: os.setreuid(0, 0),
        "setresuid": lambda: os.setresuid(0, 0, 0),
        "setgid": lambda: os.setgid(0),
        "setegid": lambda: os.setegid(0),
        "setgroups": lambda: os.setgroups([0]),
        "read_secret": lambda: _read_bytes(spec["secret"]),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            results[name] = "succeeded"
        except OSError as exc:
            results[name] = f"{type(exc).__name__} errno {exc.errno}"
    results["ids"] = repr((os.getresuid(), os.getresgid(), os.getgroups()))
    _write_atomically(spec["report"], json.dumps(results))


def _run_supervisor(spec: dict[str, Any]) -> None:
    from daemonctx.supervisor import RestartPolicy, Supervisor, notify_worker_ready

    policy = RestartPolicy(**spec.get("policy", {}))
    snapshots = set(spec.get("snapshots", []))
    stop_after = spec.get("stop_after")
    progress = spec.get("progress")
    every = spec.get("progress_every", 1000)
    exits = 0

    def on_worker_exit(task: int, pid: int, code: int) -> None:
        nonlocal exits
        exits += 1
        if progress and (exits in snapshots or exits == stop_after or exits % every == 0):
            _write_atomically(progress, str(exits))
        if exits in snapshots:
            os.kill(os.getpid(), signal.SIGSTOP)  # the test measures us from outside, then CONT
        if exits == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)

    def worker(task: int) -> None:
        if spec.get("crash"):
            os._exit(1)
        notify_worker_ready()
        park()

    supervisor = Supervisor(spec.get("workers", 2), policy=policy,
                            graceful_timeout=spec.get("graceful_timeout", 10.0),
                            on_worker_exit=on_worker_exit)
    supervisor.serve(worker)


def daemon_main(program: Program) -> None:
    """What each launcher runs: open a DaemonContext, then be the daemon ``program`` asks for."""
    options = dict(program.get("options", {}))
    pidfile: PIDFile | None = None
    if "pidfile" in options:
        pidfile = options["pidfile"] = PIDFile(options["pidfile"])
    context = daemonctx.DaemonContext(**options)
    try:
        context.open()  # in the launcher this never returns
        _log_event(program, "start", pidfile)
        if "privileges" in program:
            _try_privileges(program["privileges"])
        if "pid_path" in program:
            _write_atomically(program["pid_path"], str(os.getpid()))
        if "supervisor" in program:
            _run_supervisor(program["supervisor"])
        else:
            park()
    finally:
        if context.is_open:  # the daemon, even if SIGTERM came before "start" was logged
            # Racing stoppers may send a second SIGTERM: it must not cut the log line (or the
            # pidfile's release, in atexit) short.  The daemon is exiting anyway.
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
            _log_event(program, "stop", pidfile)


def run_as_program(main: Callable[[], object]) -> NoReturn:
    """Run ``main`` in a forked child as the interpreter would run a script, then exit.

    An uncaught exception prints its traceback and exits 1, ``SystemExit`` gives its status,
    atexit handlers run (DaemonContext registers its ``close`` there), and nothing returns into
    the farm's own code.
    """
    code = 0
    try:
        main()
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    finally:
        os._exit(code)


# --- forking launchers ------------------------------------------------------------------------


def _child_setup(stderr_path: str, close: list[int]) -> None:
    """In a freshly forked child: stdio away from the farm's pipes, farm fds closed."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ORIGINAL_MASK)
    for fd in close:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    os.close(err)


def fork_launcher(program: Program, stderr_path: str, close: list[int] | None = None,
                  gate: tuple[int, int] | None = None) -> int:
    """Fork a launcher running ``program`` with its stderr in ``stderr_path``; return its pid.

    With ``gate`` = ``(ready_w, gate_r)`` the launcher first writes one byte on ``ready_w``
    (armed), blocks reading ``gate_r`` until the gate pipe is closed, then writes
    ``<pid> <release ns>`` on ``ready_w`` and goes on.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _child_setup(stderr_path, close or [])
            if gate is not None:
                ready_w, gate_r = gate
                os.write(ready_w, b".")
                os.read(gate_r, 1)  # end of file: every launcher is released at this instant
                released = time.monotonic_ns()
                os.write(ready_w, f"{os.getpid()} {released}\n".encode())
                os.close(ready_w)
                os.close(gate_r)
        except BaseException:
            os._exit(99)
        run_as_program(lambda: daemon_main(program))
    return pid


# --- reaping --------------------------------------------------------------------------------


class Reaper:
    """Reaps every child of the farm, remembering how each ended."""

    def __init__(self) -> None:
        self.reaped: dict[int, int] = {}
        self.unreported: dict[int, int] = {}

    def drain(self) -> None:
        """Reap every child that has exited, without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            self.reaped[pid] = code
            self.unreported[pid] = code

    def wait(self, pids: list[int], timeout: float) -> list[int]:
        """Reap until every pid in ``pids`` was reaped; the ones still missing at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            missing = [p for p in pids if p not in self.reaped]
            remaining = deadline - time.monotonic()
            if not missing or remaining <= 0:
                return missing
            signal.sigtimedwait([signal.SIGCHLD], remaining)

    def report(self) -> dict[str, int]:
        """``{pid: code}`` of the children reaped since the last report (JSON keys)."""
        out = {str(pid): code for pid, code in self.unreported.items()}
        self.unreported.clear()
        return out


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# --- process snapshots ------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[3])


def _children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):  # ESRCH: it exited meanwhile
            continue
    return found


def snapshot(launcher: int, pidfile: str | None) -> dict[str, Any]:
    """Who exists in this launcher's start-up right now.

    ``launcher``/``intermediate``/``daemon``: ``None`` (not there), or ``[pid, state]``;
    ``daemon_locked``: the daemon holds the pidfile's lock; ``daemon_children``: how many
    children the daemon has (a supervisor's workers).  The intermediate is the launcher's
    first child: leader of its own session after ``setsid``, in the farm's session before.  The
    daemon is the intermediate's child, or an orphan the farm adopted that leads no session.
    """
    me = os.getpid()
    own_session = os.getsid(0)
    info: dict[str, Any] = {"launcher": None, "intermediate": None, "daemon": None,
                            "daemon_locked": False, "daemon_children": 0}
    stat = _stat(launcher)
    if stat is not None:
        info["launcher"] = [launcher, stat[0]]
    first_level = _children(launcher) + [c for c in _children(me) if c != launcher]
    for pid in first_level:
        stat = _stat(pid)
        if stat is None:
            continue
        if stat[2] in (pid, own_session):
            info["intermediate"] = [pid, stat[0]]
            for child in _children(pid):
                child_stat = _stat(child)
                if child_stat is not None:
                    info["daemon"] = [child, child_stat[0]]
        else:
            info["daemon"] = [pid, stat[0]]
    daemon = info["daemon"]
    if daemon is not None:
        info["daemon_children"] = len(_children(daemon[0]))
        if pidfile:
            try:
                info["daemon_locked"] = holder_pid(pidfile) == daemon[0]
            except daemonctx.DaemonError:
                pass
    return info


# --- commands ---------------------------------------------------------------------------------


def race(reaper: Reaper, request: dict[str, Any]) -> dict[str, Any]:
    """The ``race`` command (module docstring): N launchers released at one instant."""
    count = int(request["count"])
    ready_r, ready_w = os.pipe()
    gate_r, gate_w = os.pipe()
    pids = [
        fork_launcher(request["program"], f"{request['stderr']}-{i}", close=[ready_r, gate_w],
                      gate=(ready_w, gate_r))
        for i in range(count)
    ]
    os.close(ready_w)
    os.close(gate_r)
    armed = b""
    deadline = time.monotonic() + 30
    while len(armed) < count and time.monotonic() < deadline:
        if select.select([ready_r], [], [], 1.0)[0]:
            chunk = os.read(ready_r, count - len(armed))
            if not chunk:
                break
            armed += chunk
    os.close(gate_w)  # every launcher is blocked on the gate: release them all at once
    releases: list[int] = []
    buffer = b""
    while True:
        if not select.select([ready_r], [], [], 30.0)[0]:
            break
        chunk = os.read(ready_r, 4096)
        if not chunk:
            break
        buffer += chunk
    os.close(ready_r)
    for line in buffer.decode().splitlines():
        releases.append(int(line.split()[1]))
    missing = reaper.wait(pids, 60.0)
    return {
        "armed": len(armed),
        "spread_us": (max(releases) - min(releases)) // 1000 if releases else None,
        "launchers": [[pid, reaper.reaped.get(pid), _read_text(f"{request['stderr']}-{i}")]
                      for i, pid in enumerate(pids)],
        "missing": missing,
    }


def launch(reaper: Reaper, request: dict[str, Any]) -> dict[str, Any]:
    """The ``launch`` command: one launcher, and maybe a SIGKILL at a chosen instant.

    The victim is waited for (pidfd) before the launcher is, so when the reply comes the
    kernel has released whatever the victim held (its lock, its end of the start-up pipe).
    """
    program = request["program"]
    kill = request.get("kill")
    pidfile = program.get("options", {}).get("pidfile")
    started = time.monotonic()
    pid = fork_launcher(program, request["stderr"])
    info: dict[str, Any] | None = None
    victim = None
    if kill:
        remaining = started + float(kill["delay"]) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        info = snapshot(pid, pidfile)
        target = info.get(kill["target"])
        if target is not None and target[1] != "Z":
            try:
                pidfd = os.pidfd_open(target[0])
            except ProcessLookupError:
                pidfd = None  # it exited since the snapshot: nothing to kill
            if pidfd is not None:
                victim = target[0]
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    select.select([pidfd], [], [], 30.0)  # dead (its lock released) on return
                finally:
                    os.close(pidfd)
        info["kill_at_us"] = int((time.monotonic() - started) * 1e6)
    missing = reaper.wait([pid], 60.0)
    elapsed = time.monotonic() - started
    return {"launcher": pid, "code": reaper.reaped.get(pid), "missing": missing,
            "stderr": _read_text(request["stderr"]), "elapsed": elapsed,
            "snapshot": info, "killed": victim}


def _start_stop_loop(program: Program, iterations: int, stderr_prefix: str) -> NoReturn:
    """K start/stop cycles: start a launcher, and if it succeeded stop the pidfile's holder."""
    pidfile = program["options"]["pidfile"]
    started = stopped = 0
    for i in range(iterations):
        launcher = fork_launcher(program, f"{stderr_prefix}-{i}")
        _, status = os.waitpid(launcher, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            continue
        started += 1
        holder = holder_pid(pidfile)
        if holder is None:
            continue  # another loop stopped it already
        try:
            pidfd = os.pidfd_open(holder)
        except ProcessLookupError:
            continue
        try:
            os.kill(holder, signal.SIGTERM)
        except ProcessLookupError:
            os.close(pidfd)
            continue
        stopped += 1
        if not select.select([pidfd], [], [], 30.0)[0]:
            os._exit(3)
        os.close(pidfd)
    _append(f"{stderr_prefix}-summary", f"{started} {stopped}\n")
    os._exit(0)


def loops(reaper: Reaper, request: dict[str, Any]) -> dict[str, Any]:
    """The ``loops`` command: L processes running start/stop cycles side by side."""
    pids = []
    for n in range(int(request["loops"])):
        prefix = f"{request['stderr']}-{n}"
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, ORIGINAL_MASK)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.close(null)
            except BaseException:
                os._exit(99)
            _start_stop_loop(request["program"], int(request["iterations"]), prefix)
        pids.append((pid, prefix))
    missing = reaper.wait([pid for pid, _ in pids], float(request.get("timeout", 120)))
    result = []
    for pid, prefix in pids:
        summary = _read_text(f"{prefix}-summary").split()
        started, stopped = (int(summary[0]), int(summary[1])) if summary else (-1, -1)
        result.append([pid, reaper.reaped.get(pid), started, stopped])
    return {"loops": result, "missing": missing}


def reap(reaper: Reaper, request: dict[str, Any]) -> dict[str, Any]:
    """The ``reap`` command: what ended since last time, and which children are left."""
    missing = reaper.wait([int(p) for p in request.get("wait", [])],
                          float(request.get("timeout", 15)))
    return {"reaped": reaper.report(), "missing": missing, "children": _children(os.getpid())}


COMMANDS: dict[str, Callable[[Reaper, dict[str, Any]], dict[str, Any]]] = {
    "race": race, "launch": launch, "loops": loops, "reap": reap,
}


def main() -> None:
    """Become a subreaper, then answer commands from stdin until it closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    ORIGINAL_MASK.update(signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD]))
    reaper = Reaper()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            reply = COMMANDS[request["cmd"]](reaper, request)
        except Exception as exc:  # the test reads the error instead of a hung pipe
            reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
