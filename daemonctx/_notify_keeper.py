"""The keeper of a ``NOTIFY_SOCKET`` that ``daemonctx start --notify`` gave a program.

systemd keeps listening on a service's notification socket for as long as the service runs.
``daemonctx start`` exits once the program is ready, so without a listener the program's later
messages would fail (``systemd-notify STATUS=...`` exits non-zero, and a ``sh -e`` script with
it), a ``BARRIER=1`` sent right after ``READY=1`` (which ``systemd-notify --ready`` does) would
never be answered, and the socket's name -- readable by anyone in ``/proc/net/unix``, still in
the program's environment -- would be free for another local user to bind and receive what the
program sends next (status text, ``FDSTORE=1`` descriptors).

The keeper is that listener: a small process in a session of its own, started by the launcher
once the program is ready.  It holds the socket, reads every message and closes every descriptor
a message carries (which completes a barrier, and drops stored fds: nobody stores them here),
and exits as soon as the program does (a pidfd on it, taken while it was provably the program).
Started by root for a program running as another user, it drops to that user first.

Run as ``python -S -s -m daemonctx._notify_keeper --for-pid=P --socket-fd=S --pidfd=F
[--uid=U --gid=G]``; :func:`spawn` starts it, or, where the interpreter cannot be executed
(the launcher already dropped to a user who cannot read it, or changed root), runs the same
loop in the forked process.  Either way it holds a pidfd on the program (``Pid:`` in its
``/proc/<pid>/fdinfo``), which is how to find it.
"""

from __future__ import annotations

import os
import select
import sys

__all__ = ["serve", "spawn"]

_MAX_FDS_PER_MESSAGE = 253  # SCM_MAX_FD


def spawn(socket_fd: int, program_pidfd: int, uid: int | None, gid: int | None) -> int:
    """Start the keeper for the socket ``socket_fd``; return its pid (in the caller).

    The keeper is forked, answers anything already queued at once (a barrier that follows
    ``READY=1`` must not wait for an interpreter to start), then executes a fresh interpreter so
    that ``ps`` shows what it is.  The caller keeps its own fds.
    """
    try:
        program_pid = int(_pidfd_pid(program_pidfd))
    except (OSError, ValueError):
        program_pid = 0
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        drain(socket_fd)
        _isolate(socket_fd, program_pidfd)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-S", "-s", "-m", "daemonctx._notify_keeper",
                f"--for-pid={program_pid}", f"--socket-fd={socket_fd}",
                f"--pidfd={program_pidfd}"]
        if uid is not None and gid is not None:
            argv += [f"--uid={uid}", f"--gid={gid}"]
        if sys.executable:
            try:
                os.execve(sys.executable, argv, {"PYTHONPATH": package_parent,
                                                 "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            except OSError:
                pass  # not executable by the user the launcher dropped to, or not in a chroot
        serve(socket_fd, program_pidfd, uid, gid)  # no interpreter to execute: serve from here
    except BaseException:
        pass
    finally:
        os._exit(0)


def _pidfd_pid(pidfd: int) -> bytes:
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as info:  # binary: no codec to import
        for line in info:
            if line.startswith(b"Pid:"):
                return line.split()[1]
    raise ValueError("no Pid: line")


def _isolate(socket_fd: int, program_pidfd: int) -> None:
    """Stdio on /dev/null, every other fd closed, cwd /: hold nothing of the launcher's."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    keep = sorted({socket_fd, program_pidfd})
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        os.set_inheritable(fd, True)
        low = fd + 1
    os.closerange(low, 1 << 20)
    os.chdir("/")


def drain(socket_fd: int) -> int:
    """Read every queued message without waiting; close the fds they carry; how many read."""
    import socket

    space = socket.CMSG_SPACE(_MAX_FDS_PER_MESSAGE * 4) + socket.CMSG_SPACE(12)
    sock = socket.socket(fileno=socket_fd)
    count = 0
    try:
        while True:
            try:
                _, ancillary, _, _ = sock.recvmsg(4096, space,
                                                  socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    whole = len(payload) - len(payload) % 4
                    for index in range(0, whole, 4):
                        try:
                            os.close(int.from_bytes(payload[index:index + 4], sys.byteorder,
                                                    signed=True))
                        except OSError:
                            pass
    finally:
        sock.detach()


def serve(socket_fd: int, program_pidfd: int, uid: int | None, gid: int | None) -> None:
    """Answer the socket until the program exits (its pidfd becomes readable)."""
    import signal

    for name in ("SIGHUP", "SIGINT", "SIGPIPE"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    if uid is not None and gid is not None and os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    poller = select.poll()
    poller.register(socket_fd, select.POLLIN)
    poller.register(program_pidfd, select.POLLIN)
    while True:
        events = poller.poll()
        if any(fd == program_pidfd for fd, _ in events):
            drain(socket_fd)  # what the program sent last, barriers included
            return
        drain(socket_fd)


def main(argv: list[str]) -> int:
    """Parse ``--name=value`` arguments and serve; 2 for bad arguments."""
    values: dict[str, int] = {}
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if not value.lstrip("-").isdigit():
            return 2
        values[name] = int(value)
    if "socket-fd" not in values or "pidfd" not in values:
        return 2
    serve(values["socket-fd"], values["pidfd"], values.get("uid"), values.get("gid"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
