"""The worker's side of the supervisor: its task id, its readiness, its master's death.

A worker is a process the master forked; :func:`set_up` runs in it right after the fork, before
any code of the application: it arranges for the worker to die with its master
(``PR_SET_PDEATHSIG``, or a watcher thread where that is missing), gives back the signal
handlers, mask and wake-up fd the master had before :meth:`Supervisor.run`, closes the master's
internal descriptors and the start-up pipe, and records the task id.  The rest of this module is
what worker code calls: :func:`task_id`, :func:`notify_worker_ready`, :func:`parent_death_fd`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from daemonctx import _os, handshake, steps
from daemonctx._signal_module import signal as c_signal

__all__ = ["notify_worker_ready", "parent_death_fd", "task_id"]

# This process as a worker (set by set_up(), in the worker only).
_task_id: int | None = None
_ready_fd: int | None = None
_parent_death_fd: int | None = None
# False makes workers use the parent-death pipe watcher instead of PR_SET_PDEATHSIG, as on systems
# without prctl; the test-suite sets it to exercise that path on Linux.
_use_pdeathsig = True

_SignalHandler = Callable[[int, Any], Any] | int | None


def task_id() -> int | None:
    """The task id of this worker (0..n-1), or ``None`` outside a worker (in the master too).

    Same contract as ``tornado.process.task_id``.  A worker restarted after a crash, or replaced
    by a rolling restart, gets the same task id as the one it replaces.
    """
    return _task_id


def notify_worker_ready() -> bool:
    """Tell the master that this worker is ready to serve; idempotent.

    Call it once the worker can do its job (listening, configuration loaded).  Until then, its
    death counts as a boot failure; the master reports the service ready only when every worker
    is.  Returns ``True`` if the report was sent, ``False`` outside a worker, when the policy makes
    workers ready on start, or when it was already sent.
    """
    global _ready_fd
    fd = _ready_fd
    if fd is None:
        return False
    _ready_fd = None
    try:
        return _os.write_all(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def parent_death_fd() -> int | None:
    """A file descriptor that becomes readable (end of file) when this worker's master is gone.

    On Linux every worker also gets ``PR_SET_PDEATHSIG`` and is killed when its master dies; on
    other systems a thread of the worker watches this fd and sends the death signal.  An event
    loop can watch it too (``loop.add_reader(parent_death_fd(), stop)``) to stop gracefully.
    Only the master holds the pipe's write end, so end of file means the master is gone.  Never
    read from it except to detect end of file.  ``None`` outside a worker.
    """
    return _parent_death_fd


def load_pdeathsig_setter() -> Callable[[int], None] | None:
    """``prctl(PR_SET_PDEATHSIG, sig)``, loaded in the master; None off Linux."""
    if not sys.platform.startswith("linux") or not _use_pdeathsig:
        return None
    try:
        _os.load_prctl()
    except (OSError, AttributeError):
        return None
    return _os.set_parent_death_signal


def set_up(task: int, *, master_pid: int, pdeathsig: Callable[[int], None] | None,
           death_signal: int, wakeup_fd: int, handlers: dict[int, _SignalHandler],
           internal_fds: Iterable[int], ready_w: int | None, death_r: int,
           proc_title: str | None, signal_mask: Iterable[int]) -> None:
    """In a freshly forked worker: become worker ``task`` (see the module documentation).

    ``ready_w`` is the readiness pipe's write end (None when workers are ready on start); every
    other internal fd but ``death_r`` is closed.  On failure the traceback is printed and the
    worker ends with status 1: it never returns into the master's code.
    """
    global _task_id, _ready_fd, _parent_death_fd
    try:
        if pdeathsig is not None:
            pdeathsig(death_signal)
        if os.getppid() != master_pid:
            # The master died before PR_SET_PDEATHSIG took effect: no signal will come.
            os._exit(1)
        c_signal.set_wakeup_fd(wakeup_fd)
        for signum, handler in handlers.items():
            c_signal.signal(signum, c_signal.SIG_DFL if handler is None else handler)
        keep = {death_r} | ({ready_w} if ready_w is not None else set())
        for fd in internal_fds:
            if fd not in keep:
                os.close(fd)
        handshake.close_in_child()
        _task_id = task
        _ready_fd = ready_w
        _parent_death_fd = death_r
        if pdeathsig is None:
            _start_parent_death_watcher(death_r, death_signal)
        if proc_title is not None:
            set_proc_title(f"{proc_title} worker {task}")
        c_signal.pthread_sigmask(c_signal.SIG_SETMASK, signal_mask)
    except BaseException:
        report_and_exit()


def exit_code_of(stop: SystemExit) -> int:
    """The exit status ``sys.exit(code)`` means (a message is printed, status 1)."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def report_and_exit() -> NoReturn:
    """In a worker whose set-up failed: print the traceback and end with status 1."""
    try:
        print_exception()
        steps.flush_standard_streams()
    finally:
        os._exit(1)


def print_exception() -> None:
    """Print the exception being handled: a traceback if it can be imported, else one line.

    Inside a chroot, or as a user who cannot read the Python installation, no module can be
    imported any more; the error must still be seen.
    """
    try:
        import traceback
    except ImportError:
        error = sys.exc_info()[1]
        _os.write_all(2, f"{type(error).__name__}: {error}\n".encode("utf-8", "replace"))
        return
    traceback.print_exc()


def set_proc_title(title: str) -> None:
    """Title the process if the optional setproctitle package is installed."""
    try:
        module = __import__("setproctitle")
    except ImportError:
        return
    module.setproctitle(title)


def _start_parent_death_watcher(fd: int, signum: int) -> None:
    """Where PR_SET_PDEATHSIG is missing: a thread that signals this worker at the pipe's EOF."""
    import threading

    def watch() -> None:
        while True:
            try:
                if os.read(fd, 1):
                    continue
            except InterruptedError:
                continue
            except OSError:
                return
            os.kill(os.getpid(), signum)
            return

    threading.Thread(target=watch, name="daemonctx-parent-death", daemon=True).start()
