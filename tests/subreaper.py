"""Run a command as a child subreaper and report how every descendant ended.

    python tests/subreaper.py OUTFILE COMMAND [ARG...]

A daemon is re-parented to the nearest subreaper when its launcher exits, so this harness can
reap it and learn its real exit status (which nothing else can).  One line per reaped process
is appended to OUTFILE: ``<pid> exit <code>`` or ``<pid> signal <number>``.  The harness exits
when it has no child left; the tests kill it (and so its tree) by pid.  Optional environment:
``SUBREAPER_COMM`` renames the harness (``systemd``, to look like a service manager).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    comm = os.environ.pop("SUBREAPER_COMM", None)
    if comm:
        libc.prctl(PR_SET_NAME, comm.encode(), 0, 0, 0)
    outfile, *command = sys.argv[1:]
    first = os.fork()
    if first == 0:
        os.execvp(command[0], command)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        if os.WIFSIGNALED(status):
            line = f"{pid} signal {os.WTERMSIG(status)}\n"
        else:
            line = f"{pid} exit {os.WEXITSTATUS(status)}\n"
        with open(outfile, "a") as out:
            out.write(line)


if __name__ == "__main__":
    main()
