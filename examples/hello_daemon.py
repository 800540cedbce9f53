"""A tiny daemon: answers "hello <name>" on a loopback TCP port until SIGTERM.

    python examples/hello_daemon.py RUNDIR

RUNDIR receives ``hello.pid`` (the locked pidfile), ``hello.port`` (the port it listens on) and
``hello.log`` (its stdout/stderr).  The launching command exits 0 only once the daemon is
listening: readiness is declared after the socket is bound (``defer_ready=True``).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import daemonctx


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        with conn:
            name = conn.recv(1024).decode(errors="replace").strip() or "stranger"
            conn.sendall(f"hello {name}, from daemon pid {os.getpid()}\n".encode())
            print(f"greeted {name}", flush=True)


def main() -> None:
    rundir = Path(sys.argv[1]).resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    context = daemonctx.DaemonContext(
        pidfile=daemonctx.PIDFile(rundir / "hello.pid"),
        stdout=rundir / "hello.log",
        stderr=rundir / "hello.log",
        umask=0o022,
        defer_ready=True,
    )
    with context:
        listener = socket.create_server(("127.0.0.1", 0))
        (rundir / "hello.port").write_text(str(listener.getsockname()[1]))
        print(f"listening on port {listener.getsockname()[1]}", flush=True)
        context.notify_ready()  # only now does the launching shell get exit status 0
        serve(listener)


if __name__ == "__main__":
    main()
