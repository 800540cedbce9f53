"""A pre-fork TCP echo server: one master under DaemonContext, workers sharing one socket.

    python examples/prefork_echo.py RUNDIR [WORKERS]

The daemon binds a loopback port, writes it to ``RUNDIR/echo.port``, and forks WORKERS worker
processes (default 4) that all accept connections on that one socket and echo back what they
receive.  ``RUNDIR/echo.pid`` holds the *master's* pid; its log (the supervisor's messages)
goes to ``RUNDIR/echo.log``.

The launching command exits 0 only once every worker is serving: the context defers readiness
(``defer_ready=True``) and the supervisor reports it when the last worker has called
:func:`~daemonctx.supervisor.notify_worker_ready`.  A bind error or a worker that fails at boot
makes it exit non-zero with the reason instead.

Operate it with signals to the master::

    kill -TERM $(cat RUNDIR/echo.pid)   # stop every worker, then the master; pidfile removed
    kill -HUP  $(cat RUNDIR/echo.pid)   # replace the workers one at a time, without downtime
    kill -TTIN $(cat RUNDIR/echo.pid)   # one worker more (-TTOU: one fewer)

A crashed worker is restarted with backoff; ``kill -9`` of the master takes every worker with it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import daemonctx
from daemonctx.supervisor import RestartPolicy, Supervisor, notify_worker_ready


def echo(listener: socket.socket, task_id: int) -> None:
    """A worker: serve connections one after the other, echoing every byte back."""
    logging.info("worker %d (pid %d) serving", task_id, os.getpid())
    notify_worker_ready()
    while True:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def main() -> None:
    rundir = Path(sys.argv[1]).resolve()
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    rundir.mkdir(parents=True, exist_ok=True)
    context = daemonctx.DaemonContext(
        pidfile=daemonctx.PIDFile(rundir / "echo.pid"),
        stdout=rundir / "echo.log",
        stderr=rundir / "echo.log",
        umask=0o022,
        defer_ready=True,
    )
    with context:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        (rundir / "echo.port").write_text(f"{listener.getsockname()[1]}\n")
        supervisor = Supervisor(workers, policy=RestartPolicy(), graceful_timeout=5,
                                proc_title="prefork-echo")
        supervisor.serve(lambda task_id: echo(listener, task_id))
        # Only the master gets here, once SIGTERM has stopped every worker.


if __name__ == "__main__":
    main()
