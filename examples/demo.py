"""Start the example daemon, talk to it, stop it, and show each step.

    python examples/demo.py

This is the README's first command: it proves on this machine that a daemon detaches, reports
readiness truthfully, answers, and stops cleanly with its pidfile removed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import daemonctx

HERE = Path(__file__).resolve().parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="daemonctx-demo-") as tmp:
        pidfile = Path(tmp) / "hello.pid"
        try:
            return demo(Path(tmp), pidfile)
        finally:  # whatever happened above, leave no daemon behind
            leftover = daemonctx.holder_pid(pidfile)
            if leftover is not None:
                os.kill(leftover, signal.SIGKILL)


def demo(rundir: Path, pidfile: Path) -> int:
    print(f"$ python examples/hello_daemon.py {rundir}")
    started = subprocess.run([sys.executable, str(HERE / "hello_daemon.py"), str(rundir)],
                             timeout=60, check=False)
    print(f"  launcher exited with status {started.returncode} (0 = the daemon is ready)")
    if started.returncode != 0:
        return 1
    pid = daemonctx.holder_pid(pidfile)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ppid, session, tty = int(stat[1]), int(stat[3]), int(stat[4])
    print(f"  pidfile {pidfile.name} is locked by pid {pid}: parent pid {ppid}, "
          f"session {session} (not its own), "
          f"{'no controlling terminal' if tty == 0 else 'a terminal!'}")
    port = int((rundir / "hello.port").read_text())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"demo\n")
        print(f"  asked on port {port}, it answered: {conn.recv(1024).decode().strip()}")
    print(f"$ kill -TERM {pid}")
    assert pid is not None
    pidfd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGTERM)
    gone = select.select([pidfd], [], [], 10)[0]
    os.close(pidfd)
    print(f"  daemon {'stopped' if gone else 'did NOT stop'}; pidfile removed: "
          f"{not pidfile.exists()}")
    print("  its log:\n    " + (rundir / "hello.log").read_text().strip().replace("\n", "\n    "))
    return 0 if gone and not pidfile.exists() else 1


if __name__ == "__main__":
    sys.exit(main())
