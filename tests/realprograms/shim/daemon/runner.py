"""``daemon.runner`` of python-daemon, resolved to daemonctx."""

from daemonctx.runner import *  # noqa: F403
