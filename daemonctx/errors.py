"""The exception hierarchy of daemonctx.

Every error the library raises on purpose is a :class:`DaemonError`, so one ``except`` clause
catches them all.  The three names python-daemon users already catch keep their bases:
:class:`DaemonOSEnvironmentError` and :class:`DaemonProcessDetachError` are also
:class:`OSError`.  The pidfile errors live in :mod:`daemonctx.pidfile` because they also
subclass :mod:`lockfile`'s exceptions, and importing :mod:`lockfile` is kept off the import
path of a daemon that does not use a pidfile.
"""

from __future__ import annotations

__all__ = [
    "DaemonAlreadyOpenError",
    "DaemonError",
    "DaemonOSEnvironmentError",
    "DaemonOptionError",
    "DaemonProcessDetachError",
    "DaemonStartupError",
    "DaemonThreadWarning",
]


class DaemonError(Exception):
    """Base class of every error raised by daemonctx."""


class DaemonOSEnvironmentError(DaemonError, OSError):
    """A step of the detach sequence failed on an operating-system call.

    Examples: the chroot directory cannot be entered, the uid cannot be set.  The original
    :class:`OSError` is chained as ``__cause__``.
    """


class DaemonProcessDetachError(DaemonError, OSError):
    """The process could not detach: a ``fork`` or ``setsid`` failed."""


class DaemonOptionError(DaemonError, ValueError):
    """An option of :class:`~daemonctx.DaemonContext` (or of the CLI) has a bad value.

    Raised in the launching process, before anything was changed or forked.  The message names
    the option, the value and what was expected.
    """


class DaemonStartupError(DaemonError):
    """The daemon reported a failure, died or timed out before it was ready.

    Seen by code that waits for a daemon's start-up report (the launcher side of the handshake,
    the :mod:`daemonctx.cli` command and tests).  ``exit_status`` is the status the launcher
    exits with.
    """

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class DaemonAlreadyOpenError(DaemonError, RuntimeError):
    """:meth:`~daemonctx.DaemonContext.open` was called while another context is open here.

    A second context inside an open one would detach again: the first one's pidfile lock would
    stay with the process that exits, and the daemon would run without it.  Raised before
    anything changes.
    """


class DaemonThreadWarning(RuntimeWarning):
    """Other threads were running when :meth:`~daemonctx.DaemonContext.open` forked.

    Only the thread that calls ``fork`` exists in the child: the daemon silently loses every
    other thread (a log shipper, a metrics reporter, a thread pool).  Start threads after
    ``open()``.  Shown once per call site, on the launching process's stderr.
    """
