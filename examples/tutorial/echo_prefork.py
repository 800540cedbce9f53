"""A pre-fork TCP echo server: a daemon whose master supervises N workers sharing one socket.

    python examples/tutorial/echo_prefork.py RUNDIR [WORKERS]

RUNDIR receives ``echo.pid`` (the master's pidfile), ``echo.port`` (the port, chosen by the
kernel) and ``echo.log``.  The command returns once every worker is ready.  SIGTERM to the
master's pid stops the workers, then the master; SIGHUP replaces the workers one at a time;
SIGTTIN / SIGTTOU add or remove one.  Used by docs/howto/prefork-workers.md.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import daemonctx
from daemonctx.supervisor import notify_worker_ready


def echo(listener: socket.socket, task: int) -> None:
    """A worker: answer connections on the shared socket until told to stop."""
    notify_worker_ready()  # the master reports "ready" once every worker has said so
    while True:
        conn, _ = listener.accept()
        with conn:
            data = conn.recv(1024)
            conn.sendall(f"worker {task} (pid {os.getpid()}): ".encode() + data)


def main() -> None:
    rundir = Path(sys.argv[1]).resolve()
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    # Bound before forking, so that every worker inherits the same listening socket and the
    # kernel spreads the connections among them.
    listener = socket.create_server(("127.0.0.1", 0))
    (rundir / "echo.port").write_text(f"{listener.getsockname()[1]}\n")
    context = daemonctx.DaemonContext(
        pidfile=daemonctx.PIDFile(rundir / "echo.pid"),
        files_preserve=[listener],
        stderr=rundir / "echo.log",
        umask=0o022,
        defer_ready=True,  # ready when the workers are, not when the master is
    )
    with context:
        supervisor = daemonctx.Supervisor(workers, proc_title="echo")
        supervisor.serve(lambda task: echo(listener, task))
        # Only the master gets here, after SIGTERM stopped every worker.


if __name__ == "__main__":
    main()
