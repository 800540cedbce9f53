"""As pid 1 of a container: stay pid 1 as a minimal init, run the application in a child.

The kernel re-parents every orphan of the pid namespace to its pid 1 and delivers it only the
signals it installed a handler for, so an application running as pid 1 collects zombies and
ignores ``SIGINT``/``SIGTERM`` sent by the runtime.  :func:`become_init` does what ``tini``
does: the original process stays pid 1, forwards termination signals to the application,
reaps everything, and exits with the application's status.  :class:`~daemonctx.DaemonContext`
calls it instead of detaching when it runs as pid 1.
"""

from __future__ import annotations

import os

from daemonctx import steps
from daemonctx._signal_module import signal

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    from types import FrameType

__all__ = ["FORWARDED_SIGNALS", "become_init"]

#: The signals pid 1 passes on to the application.
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def become_init(uid: int, gid: int, groups: tuple[int, ...] | None) -> None:
    """Fork: in the child (the application) return; in pid 1, never (see the module docs).

    pid 1 closes what it does not need, drops to ``uid``/``gid``/``groups`` as the application
    will, forwards :data:`FORWARDED_SIGNALS`, reaps every process that ends in the namespace,
    and exits with the application's status (``128 + N`` after signal N).
    """
    child = os.fork()
    if child == 0:
        return
    highest = steps.highest_open_fd()
    if highest is not None and highest >= 3:
        os.closerange(3, highest + 1)
    try:
        steps.change_process_owner(uid, gid, groups)  # as the application will
    except OSError:
        pass  # the application's own drop reports the error; this init only waits

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for name in FORWARDED_SIGNALS:
        signal.signal(getattr(signal, name), forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            if os.WIFSIGNALED(status):
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.waitstatus_to_exitcode(status))

