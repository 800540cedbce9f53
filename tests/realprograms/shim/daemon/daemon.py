"""``daemon.daemon`` of python-daemon, resolved to daemonctx."""

from daemonctx.context import DaemonContext  # noqa: F401
from daemonctx.errors import (  # noqa: F401
    DaemonError,
    DaemonOptionError,
    DaemonOSEnvironmentError,
    DaemonProcessDetachError,
    DaemonStartupError,
)
