"""``daemon.pidfile`` of python-daemon, resolved to daemonctx."""

from daemonctx.pidfile import *  # noqa: F403
from daemonctx.pidfile import PIDFile, TimeoutPIDLockFile  # noqa: F401
