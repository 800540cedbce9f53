"""Import shim: ``import daemon`` (python-daemon's name) resolves to daemonctx.

Put ``tests/realprograms/shim`` first on ``PYTHONPATH`` to run an unchanged program that uses
python-daemon against daemonctx.  Only for the real-program tests; not part of the library.
"""

from daemonctx import *  # noqa: F403
from daemonctx import (  # noqa: F401
    DaemonContext,
    DaemonError,
    DaemonOptionError,
    DaemonOSEnvironmentError,
    DaemonProcessDetachError,
    DaemonStartupError,
)
from daemonctx import __version__ as daemonctx_version  # noqa: F401

#: lets a test (or a curious user) tell the shim from the real python-daemon
SHIM_FOR = "daemonctx"
