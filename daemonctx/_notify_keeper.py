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
a message carries (which completes a barrier, and drops stored fds: nobody stores them here).
Started by root for a program running as another user, it drops to that user first (before it
holds anything but the socket and the pidfd), so only root and that user can signal it.

**How long it answers.**  Not only while the program runs: a worker the program forked, or a
program it executed, keeps ``NOTIFY_SOCKET`` in its environment and may send to it after the
program exited; a name nobody listens on would then be free for another local user to bind.
So the keeper answers for as long as *any* process has ``NOTIFY_SOCKET=<this address>`` in its
environment.  It waits on pidfds, never polls: first on the program's (taken while it was
provably the program), then, each time every process it waits on has exited, it scans
``/proc/*/environ`` for the processes that still carry the address and waits on those
(:func:`find_carriers`); it exits when a scan finds none.  A process gets the variable from
one that had it (by ``fork``, or ``exec`` keeping the environment) and was alive then, so a
scan made when the last carrier the keeper knew of has exited finds every carrier that exists;
one forked by a carrier that exited during the scan itself is caught by scanning again the
pids that appeared meanwhile.  (A carrier that later executes a program without the
variable keeps the keeper until it exits: a pidfd tells an exit, not an ``exec``.  Listening
longer than needed is the safe side.)  The keeper runs as the program's user, so it reads the
environments of that user's processes (root's keeper reads every process's).  Not seen, by a
keeper that is not root: a process that changed its user ids (a setuid program it ran) or made
itself non-dumpable.  In a chroot without ``/proc`` the keeper answers until the program exits.
(``/proc`` is read through ``daemonctx._proc``: the environments, the program's pid from its
pidfd.)
Whoever can signal the keeper (root, the program's user) can end it early: outside the threat
model, like killing the program.

Why not a socket file in a private directory instead, which no other user could bind at all?
The abstract name reaches a program in a chroot and leaves nothing to clean up; a file would
need a directory on the program's side of any chroot, and would have to stay (with its
directory) until nobody can send to it any more -- the same question of lifetime, answered by
leaving files behind.
"""

from __future__ import annotations

import os
import select
import sys

from daemonctx import _proc

__all__ = ["find_carriers", "serve", "spawn"]

_MAX_FDS_PER_MESSAGE = 253  # SCM_MAX_FD
# Bound on the pidfds waited on at once (the rest are found by the scan after these exit).
_MAX_WATCHED = 512
# Scans of the pids that appeared during the previous one, when it found no carrier.
_SCAN_ROUNDS = 4


def spawn(socket_fd: int, program_pidfd: int, uid: int | None, gid: int | None) -> int:
    """Start the keeper for the socket ``socket_fd``; return its pid (in the caller).

    The keeper is forked, answers anything already queued at once (a barrier that follows
    ``READY=1`` must not wait for an interpreter to start), then executes a fresh interpreter so
    that ``ps`` shows what it is.  The caller keeps its own fds.
    """
    named = _proc.pidfd_pid(program_pidfd)
    program_pid = 0 if named is None else named
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        _drop_privileges(uid, gid)  # first: never root longer than the fork
        drain(socket_fd)
        _isolate(socket_fd, program_pidfd)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-S", "-s", "-m", "daemonctx._notify_keeper",
                f"--for-pid={program_pid}", f"--socket-fd={socket_fd}",
                f"--pidfd={program_pidfd}"]
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
    """Answer the socket while any process has its address in ``NOTIFY_SOCKET``.

    First while the program runs (its pidfd becomes readable when it exits), then while the
    processes :func:`find_carriers` finds run, again and again, until a scan finds none.
    """
    import signal

    for name in ("SIGHUP", "SIGINT", "SIGPIPE"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    _drop_privileges(uid, gid)
    entry = environment_entry(socket_fd)
    poller = select.poll()
    poller.register(socket_fd, select.POLLIN)
    watched = {program_pidfd}
    poller.register(program_pidfd, select.POLLIN)
    while True:
        events = poller.poll()
        drain(socket_fd)  # before an exit is handled: what the process sent last, barriers too
        for fd, _ in events:
            if fd in watched:
                poller.unregister(fd)
                watched.discard(fd)
                os.close(fd)
        if watched:
            continue
        carriers = find_carriers(entry) if entry is not None else []
        if not carriers:
            drain(socket_fd)
            return
        for fd in carriers:
            poller.register(fd, select.POLLIN)
            watched.add(fd)


def environment_entry(socket_fd: int) -> bytes | None:
    """``b"NOTIFY_SOCKET=@<name>"`` for the abstract socket ``socket_fd`` (as the launcher sets
    it in the program's environment), or None."""
    import socket

    sock = socket.socket(fileno=socket_fd)
    try:
        address: str | bytes = sock.getsockname()
    except OSError:
        return None
    finally:
        sock.detach()
    name = address.encode("utf-8", "surrogateescape") if isinstance(address, str) else address
    if not name.startswith(b"\0"):
        return None
    return b"NOTIFY_SOCKET=@" + name[1:]


def find_carriers(entry: bytes) -> list[int]:
    """Pidfds on the live processes with ``entry`` in their environment (at most a bound).

    The environment is checked again after the pidfd is opened, so each pidfd names a carrier
    (or one that exited since: readable at once).  When no carrier is found, the pids that
    appeared during the scan are scanned too (a carrier may have forked one and exited while
    the scan ran), a few rounds at most.  Empty if there is none, or no ``/proc`` to read.
    """
    listed: set[int] = set()
    for _ in range(_SCAN_ROUNDS):
        pids = _proc.process_ids()
        if pids is None:
            return []
        new = [pid for pid in pids if pid not in listed]
        if not new:
            return []
        listed.update(new)
        carriers = _proc.processes_with_environment_entry(entry, new) or []
        found = _proc.pidfds_if(carriers[:_MAX_WATCHED],
                                lambda pid: _proc.has_environment_entry(pid, entry))
        if found:
            return [fd for _, fd in found]
    return []


def _drop_privileges(uid: int | None, gid: int | None) -> None:
    if uid is not None and gid is not None and os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


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
