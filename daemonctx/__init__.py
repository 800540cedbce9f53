"""daemonctx: turn a program into a well-behaved Unix daemon, and keep its workers alive.

``import daemonctx as daemon`` is a drop-in for python-daemon::

    with daemonctx.DaemonContext(pidfile=daemonctx.PIDFile("/run/app.pid")):
        main()

Names are imported lazily: a daemon that never uses the supervisor, the systemd helpers or the
pidfile does not pay for importing them.
"""

from __future__ import annotations

from daemonctx.errors import (
    DaemonAlreadyOpenError,
    DaemonError,
    DaemonOptionError,
    DaemonOSEnvironmentError,
    DaemonProcessDetachError,
    DaemonStartupError,
    DaemonThreadWarning,
)

__version__ = "0.1.0"

# Not `from typing import TYPE_CHECKING`: importing typing costs more than the rest of the
# package, and type checkers treat any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from daemonctx.context import DaemonContext
    from daemonctx.handshake import StartupReport, notify_ready
    from daemonctx.pidfile import (
        PIDFile,
        PIDFileError,
        PIDFileLockedError,
        PIDFileLockFailedError,
        PIDFileTimeoutError,
        PIDFileUnsafeError,
        TimeoutPIDLockFile,
        holder_pid,
    )
    from daemonctx.supervisor import (
        RestartPolicy,
        Supervisor,
        SupervisorError,
        fork_processes,
        notify_worker_ready,
        parent_death_fd,
        task_id,
    )

_LAZY = {
    "DaemonContext": "daemonctx.context",
    "StartupReport": "daemonctx.handshake",
    "notify_ready": "daemonctx.handshake",
    "PIDFile": "daemonctx.pidfile",
    "PIDFileError": "daemonctx.pidfile",
    "PIDFileLockedError": "daemonctx.pidfile",
    "PIDFileLockFailedError": "daemonctx.pidfile",
    "PIDFileTimeoutError": "daemonctx.pidfile",
    "PIDFileUnsafeError": "daemonctx.pidfile",
    "TimeoutPIDLockFile": "daemonctx.pidfile",
    "holder_pid": "daemonctx.pidfile",
    "RestartPolicy": "daemonctx.supervisor",
    "Supervisor": "daemonctx.supervisor",
    "SupervisorError": "daemonctx.supervisor",
    "fork_processes": "daemonctx.supervisor",
    "notify_worker_ready": "daemonctx.supervisor",
    "parent_death_fd": "daemonctx.supervisor",
    "task_id": "daemonctx.supervisor",
}

__all__ = [
    "DaemonAlreadyOpenError",
    "DaemonContext",
    "DaemonError",
    "DaemonOSEnvironmentError",
    "DaemonOptionError",
    "DaemonProcessDetachError",
    "DaemonStartupError",
    "DaemonThreadWarning",
    "PIDFile",
    "PIDFileError",
    "PIDFileLockFailedError",
    "PIDFileLockedError",
    "PIDFileTimeoutError",
    "PIDFileUnsafeError",
    "RestartPolicy",
    "StartupReport",
    "Supervisor",
    "SupervisorError",
    "TimeoutPIDLockFile",
    "fork_processes",
    "holder_pid",
    "notify_ready",
    "notify_worker_ready",
    "parent_death_fd",
    "task_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daemonctx' has no attribute {name!r}")
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names: ``__all__``, ``__version__`` and the submodules imported so far."""
    submodules = {name for name, value in globals().items() if not name.startswith("_")
                  and getattr(value, "__name__", None) == f"{__name__}.{name}"}
    return sorted(set(__all__) | {"__version__"} | submodules)
