"""systemd's service protocols, with the standard library only.

Three small protocols let a daemon cooperate with systemd (or any manager that speaks them, such
as dpkg's ``start-stop-daemon --notify-await``):

* **Notification** (sd_notify(3)): one ``AF_UNIX`` datagram of ``KEY=VALUE`` lines sent to
  ``$NOTIFY_SOCKET`` says "ready", "reloading", "stopping", "still alive" (the watchdog) or a
  status line.  :func:`notify`, :func:`notify_quietly`, :func:`notify_raw`.
* **Watchdog** (sd_watchdog_enabled(3)): ``$WATCHDOG_USEC`` asks for a ``WATCHDOG=1`` ping more
  often than that.  :func:`watchdog_interval`.
* **Socket activation** (sd_listen_fds(3)): the manager binds the listening sockets and hands
  them over as fds 3, 4, ... with ``$LISTEN_FDS``/``$LISTEN_PID``/``$LISTEN_FDNAMES``.
  :func:`listen_fds`, :func:`listen_fds_with_names`, :func:`listen_sockets`.
* **Who started us**: :func:`started_by_service_manager`, the one test of "a service manager
  started this process and watches it" (its parent is the manager, whose name is read from
  ``/proc`` by ``daemonctx._proc``), and :func:`booted` (sd_booted(3)).

Everything is a cheap no-op when the variables are absent, so the same program runs under
systemd, under another supervisor and from a shell.  Nothing here is imported by ``import
daemonctx``, and :mod:`socket` is imported only when a datagram is actually sent or a socket
wrapped, so a daemon that never talks to systemd pays nothing.

Errors: bad arguments raise :class:`~daemonctx.errors.DaemonOptionError` (always, even without
``$NOTIFY_SOCKET``, so mistakes show up in development); a notification that cannot be delivered
raises :class:`SystemdNotifyError`; a malformed ``LISTEN_*``/``WATCHDOG_*`` variable raises
:class:`SystemdEnvironmentError`.  All three are :class:`~daemonctx.errors.DaemonError`.
"""

from __future__ import annotations

import os
import time

from daemonctx import _os, _proc
from daemonctx.errors import DaemonError, DaemonOptionError

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    import socket
    from typing import Literal

__all__ = [
    "LISTEN_FDS_START",
    "NOTIFY_TIMEOUT",
    "SystemdEnvironmentError",
    "SystemdError",
    "SystemdNotifyError",
    "booted",
    "is_socket_activated",
    "listen_fds",
    "listen_fds_with_names",
    "listen_sockets",
    "notify",
    "notify_quietly",
    "notify_raw",
    "notify_socket_path",
    "passed_fd_numbers",
    "started_by_service_manager",
    "watchdog_interval",
]

LISTEN_FDS_START = 3
"""The first fd of socket activation (``SD_LISTEN_FDS_START``): fds 0-2 are stdio."""

NOTIFY_TIMEOUT = 5.0
"""Default bound, in seconds, on how long a notification may block.

A datagram send blocks only while the manager's receive queue is full.  systemd drains it
quickly, so the bound is generous; it exists so that a wedged manager cannot hang the daemon's
start-up or its watchdog loop forever.
"""

_SYSTEMD_RUNTIME_DIR = "/run/systemd/system"

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# Keys with a keyword argument of their own: passing them as extras would bypass its checks.
_DEDICATED_KEYS = {
    "READY": "ready=True",
    "RELOADING": "reloading=True",
    "MONOTONIC_USEC": "reloading=True (it adds MONOTONIC_USEC itself)",
    "STOPPING": "stopping=True",
    "STATUS": "status=...",
    "ERRNO": "errno=...",
    "MAINPID": "mainpid=...",
    "EXTEND_TIMEOUT_USEC": "extend_timeout_usec=...",
    "WATCHDOG": "watchdog=True or watchdog='trigger'",
    "WATCHDOG_USEC": "watchdog_usec=...",
}
# Assignments that only mean something with file descriptors attached (SCM_RIGHTS), which this
# module does not send.
_FD_PASSING_KEYS = frozenset({"FDSTORE", "MAINPIDFD", "BARRIER", "FDPOLL"})
# Other assignments sd_notify(3) documents; anything else must be a private X_ extension, so that
# a typo (REDY=1) fails here instead of being silently ignored by the manager.
_WELL_KNOWN_KEYS = frozenset({
    "BUSERROR", "EXIT_STATUS", "FDNAME", "FDSTOREREMOVE", "MAINPIDFDID", "NOTIFYACCESS",
    "RESTART_RESET", "VARLINKERROR",
})
_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class SystemdError(DaemonError):
    """Base class of the errors of :mod:`daemonctx.systemd`."""


class SystemdNotifyError(SystemdError, OSError):
    """A notification could not be delivered to ``$NOTIFY_SOCKET``.

    Raised when the variable names something that cannot be used (not an absolute path, not an
    abstract name, a ``vsock:`` address), the socket is missing (the manager is gone, or the path
    is not visible after a ``chroot``), nobody listens on it, permission is denied, or the
    manager's queue stayed full for the whole timeout.  ``errno`` is the ``errno`` of the failed
    call when there was one (``ETIMEDOUT`` for the timeout) and ``address`` the variable's
    value.  It is an :class:`OSError`, like the negative errno ``sd_notify()`` returns.
    """

    def __init__(self, message: str, *, address: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.address = address


class SystemdEnvironmentError(SystemdError, ValueError):
    """A ``LISTEN_*`` or ``WATCHDOG_*`` variable breaks its protocol.

    For example ``LISTEN_FDS=two``, or ``LISTEN_FDS=2`` while fd 4 is not open.  ``variable``
    and ``value`` name what was found.  Such an environment means the process was started by
    something that does not follow systemd's conventions; guessing would hand the program the
    wrong file descriptors, so it is an error rather than "no sockets".
    """

    def __init__(self, message: str, *, variable: str, value: str | None) -> None:
        super().__init__(message)
        self.variable = variable
        self.value = value


# --- reading the environment ---------------------------------------------------------------

def _env(name: str) -> str | None:
    """The variable's value; the empty string counts as unset (the usual way to clear one)."""
    value = os.environ.get(name)
    return value or None


def _parse_env_int(variable: str, text: str, minimum: int) -> int:
    # Stricter than int(): no sign, spaces or underscores, as in systemd's own parsers.
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise SystemdEnvironmentError(
            f"{variable}={text!r} is not an integer >= {minimum}: the process was started with a "
            f"malformed {variable}; fix or unset it in whatever launched this program",
            variable=variable, value=text)
    return int(text)


def notify_socket_path() -> str | None:
    """The notification socket the service manager gave us, or None if there is none.

    This is ``$NOTIFY_SOCKET`` as set: an absolute path (``/run/systemd/notify``), or an abstract
    socket name written with a leading ``@``.  An empty value counts as unset.  Use it to decide
    whether readiness notification is expected (``Type=notify``) at all.
    """
    return _env("NOTIFY_SOCKET")


def started_by_service_manager() -> bool:
    """True if a service manager started this process directly and watches it as its main process.

    That is: our parent is the manager -- pid 1, ``$MANAGERPID`` (which a ``systemd --user``
    instance sets), or a process named ``systemd`` -- and the manager left one of its marks in
    our environment: ``$INVOCATION_ID``, ``$NOTIFY_SOCKET``, or a ``$LISTEN_PID`` equal to our
    pid.  Such a process must stay in the foreground: if it forked and exited, the manager would
    consider the service finished.  ``DaemonContext`` uses this to decide not to detach.  The
    parent check keeps the answer false in a child that merely inherited the variables (a shell
    started from a service).
    """
    marked = (_env("INVOCATION_ID") is not None or _env("NOTIFY_SOCKET") is not None
              or _env("LISTEN_PID") == str(os.getpid()))
    return marked and _parent_is_service_manager(os.getppid())


def _parent_is_service_manager(ppid: int) -> bool:
    if ppid == 1 or _env("MANAGERPID") == str(ppid):
        return True
    return _proc.command_name(ppid) == "systemd"


def booted() -> bool:
    """True if the running system was booted with systemd as its init (sd_booted(3)).

    The test is systemd's own: the directory ``/run/systemd/system`` exists.  It says nothing
    about whether *this* process runs under systemd; see :func:`started_by_service_manager`.
    """
    return os.path.isdir(_SYSTEMD_RUNTIME_DIR)


# --- notification --------------------------------------------------------------------------

def notify(*, ready: bool = False, status: str | None = None, stopping: bool = False,
           reloading: bool = False, watchdog: bool | Literal["trigger"] = False,
           mainpid: int | None = None, errno: int | None = None,
           extend_timeout_usec: int | None = None, watchdog_usec: int | None = None,
           unset_environment: bool = False, timeout: float | None = NOTIFY_TIMEOUT,
           **extra: str | int) -> bool:
    """Send one notification to the service manager; return True if a datagram was sent.

    Returns False, sending nothing, when ``$NOTIFY_SOCKET`` is unset: the program was not started
    by a manager that wants notifications, which is not an error.  Raises
    :class:`SystemdNotifyError` when the socket is set but the message cannot be delivered, and
    :class:`~daemonctx.errors.DaemonOptionError` for bad arguments -- checked before anything
    else, so also when no socket is set.  A daemon that must not die over a lost notification
    uses :func:`notify_quietly` instead.

    Each argument adds one assignment, in this order:

    * ``ready=True`` -- ``READY=1``: start-up (or a reload) is complete.
    * ``reloading=True`` -- ``RELOADING=1`` and ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>``, which
      ``Type=notify-reload`` requires; send ``ready=True`` once the reload is done.
    * ``stopping=True`` -- ``STOPPING=1``: shutdown has begun.
    * ``status="..."`` -- ``STATUS=...``: one line of text for ``systemctl status``.
    * ``errno=N`` -- ``ERRNO=N``: the errno-style reason of a failure.
    * ``mainpid=N`` -- ``MAINPID=N``: the service's main process is ``N`` (a process other than
      the main one needs ``NotifyAccess=all`` for the manager to accept it).
    * ``extend_timeout_usec=N`` -- ``EXTEND_TIMEOUT_USEC=N``: still starting/stopping, allow N µs
      more.
    * ``watchdog_usec=N`` -- ``WATCHDOG_USEC=N``: change the watchdog timeout at run time.
    * ``watchdog=True`` -- ``WATCHDOG=1``, the keep-alive ping; ``watchdog="trigger"`` --
      ``WATCHDOG=trigger``, declare the service hung so the manager acts as on a missed ping.
    * ``**extra`` -- further assignments, in the order given: private ones named ``X_...``, and
      the other keys sd_notify(3) documents that need no file descriptors (``EXIT_STATUS``,
      ``BUSERROR``, ``VARLINKERROR``, ``NOTIFYACCESS``, ``RESTART_RESET``, ``FDSTOREREMOVE``,
      ``FDNAME``, ``MAINPIDFDID``).  Other names are refused, so a typo cannot go unnoticed.

    At most one of ``ready``, ``reloading`` and ``stopping`` may be set: the manager acts on only
    one of them per message.  Values are single lines without NUL characters, since the message
    is newline-separated.  The datagram is the assignments joined by newlines, without a trailing
    newline, e.g. ``b"READY=1\\nSTATUS=Serving on :8080"``.

    ``unset_environment=True`` removes ``NOTIFY_SOCKET`` from ``os.environ`` afterwards (also
    when sending failed), so that child processes do not inherit it, as sd_notify(3) does.
    ``timeout`` bounds, in seconds, how long the send may block on a full queue (None: forever).

    Address forms: ``/path`` (a socket file) and ``@name`` (Linux abstract namespace).
    ``vsock:CID:PORT`` (a manager outside a virtual machine) is refused with
    :class:`SystemdNotifyError`: it needs connection-oriented vsock sockets that this module does
    not implement.  Each call opens a fresh close-on-exec datagram socket and closes it: a
    cached one would be inherited by forked workers, closed from under us by
    ``DaemonContext``'s fd cleanup, and go stale if ``NOTIFY_SOCKET`` changes, while a socket
    costs microseconds next to how rarely a daemon notifies.
    """
    message = _format_notification(
        ready=ready, status=status, stopping=stopping, reloading=reloading, watchdog=watchdog,
        mainpid=mainpid, errno=errno, extend_timeout_usec=extend_timeout_usec,
        watchdog_usec=watchdog_usec, extra=extra)
    return notify_raw(message, unset_environment=unset_environment, timeout=timeout)


def notify_quietly(*, ready: bool = False, status: str | None = None, stopping: bool = False,
                   reloading: bool = False, watchdog: bool | Literal["trigger"] = False,
                   mainpid: int | None = None, errno: int | None = None,
                   extend_timeout_usec: int | None = None, watchdog_usec: int | None = None,
                   unset_environment: bool = False, timeout: float | None = NOTIFY_TIMEOUT,
                   **extra: str | int) -> bool:
    """Like :func:`notify`, but a delivery failure returns False instead of raising.

    For notifications the daemon sends on its own behalf (``DaemonContext``'s automatic
    ``READY=1`` and ``STOPPING=1``): a vanished or unreachable manager must not crash a daemon
    that is otherwise fine.  Bad arguments still raise
    :class:`~daemonctx.errors.DaemonOptionError`: they are bugs in the caller, not in the
    environment.
    """
    try:
        return notify(ready=ready, status=status, stopping=stopping, reloading=reloading,
                      watchdog=watchdog, mainpid=mainpid, errno=errno,
                      extend_timeout_usec=extend_timeout_usec, watchdog_usec=watchdog_usec,
                      unset_environment=unset_environment, timeout=timeout, **extra)
    except SystemdNotifyError:
        return False


def notify_raw(text: str | bytes, *, unset_environment: bool = False,
               timeout: float | None = NOTIFY_TIMEOUT) -> bool:
    """Send ``text`` verbatim as one notification datagram; return True if it was sent.

    For assignments :func:`notify` does not model.  ``text`` (``str`` is encoded as UTF-8) must
    be non-empty and free of NUL bytes, which the manager rejects; otherwise it is not checked.
    No-op returning False when ``$NOTIFY_SOCKET`` is unset; :class:`SystemdNotifyError` when
    delivery fails.  ``unset_environment`` and ``timeout`` are as for :func:`notify`.
    """
    if isinstance(text, str):
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DaemonOptionError(
                f"notification text {text!r} cannot be encoded as UTF-8 ({exc.reason}): "
                f"pass valid text or bytes") from exc
    else:
        payload = bytes(text)
    if not payload:
        raise DaemonOptionError("notification text is empty: pass at least one KEY=VALUE line")
    if b"\0" in payload:
        raise DaemonOptionError(
            f"notification text {text!r} contains a NUL character, which the service manager "
            f"rejects: remove it")
    address = notify_socket_path()
    try:
        if address is None:
            return False
        _send_datagram(payload, address, timeout)
        return True
    finally:
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)


def _format_notification(*, ready: bool, status: str | None, stopping: bool, reloading: bool,
                         watchdog: bool | Literal["trigger"], mainpid: int | None,
                         errno: int | None, extend_timeout_usec: int | None,
                         watchdog_usec: int | None, extra: dict[str, str | int]) -> str:
    states = [name for name, wanted in
              (("ready", ready), ("reloading", reloading), ("stopping", stopping)) if wanted]
    if len(states) > 1:
        raise DaemonOptionError(
            f"notify({'=True, '.join(states)}=True): the service manager acts on only one of "
            f"READY=1, RELOADING=1 and STOPPING=1 per message; send them in separate calls")
    lines: list[str] = []
    if ready:
        lines.append("READY=1")
    if reloading:
        lines.append("RELOADING=1")
        lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    if stopping:
        lines.append("STOPPING=1")
    if status is not None:
        lines.append(f"STATUS={_checked_text('status', status)}")
    if errno is not None:
        lines.append(f"ERRNO={_checked_int('errno', errno, 0)}")
    if mainpid is not None:
        lines.append(f"MAINPID={_checked_int('mainpid', mainpid, 1)}")
    if extend_timeout_usec is not None:
        lines.append(
            f"EXTEND_TIMEOUT_USEC={_checked_int('extend_timeout_usec', extend_timeout_usec, 0)}")
    if watchdog_usec is not None:
        lines.append(f"WATCHDOG_USEC={_checked_int('watchdog_usec', watchdog_usec, 1)}")
    if watchdog is True:
        lines.append("WATCHDOG=1")
    elif watchdog == "trigger":
        lines.append("WATCHDOG=trigger")
    elif watchdog is not False:
        raise DaemonOptionError(
            f"notify(watchdog={watchdog!r}): expected True (a keep-alive ping), 'trigger' "
            f"(declare the service hung) or False")
    for key, value in extra.items():
        _check_extra_key(key)
        if isinstance(value, str):
            lines.append(f"{key}={_checked_text(key, value)}")
        else:
            lines.append(f"{key}={_checked_int(key, value, None)}")
    if not lines:
        raise DaemonOptionError(
            "notify() was called with nothing to send: pass ready=True, status='...', "
            "watchdog=True, or another assignment")
    return "\n".join(lines)


def _checked_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise DaemonOptionError(f"notify({name}={value!r}): expected a str")
    if "\n" in value or "\0" in value:
        raise DaemonOptionError(
            f"notify({name}={value!r}): a notification value must be one line without NUL "
            f"characters (the message is newline-separated KEY=VALUE lines); replace the "
            f"newline, e.g. with '; '")
    return value


def _checked_int(name: str, value: object, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (
            minimum is not None and value < minimum):
        bound = "an int" if minimum is None else f"an int >= {minimum}"
        raise DaemonOptionError(f"notify({name}={value!r}): expected {bound}")
    return value


def _check_extra_key(key: str) -> None:
    if key in _DEDICATED_KEYS:
        raise DaemonOptionError(
            f"notify({key}=...): use the keyword argument {_DEDICATED_KEYS[key]} instead")
    if key in _FD_PASSING_KEYS:
        raise DaemonOptionError(
            f"notify({key}=...): {key} needs file descriptors passed along with the message, "
            f"which daemonctx.systemd does not send")
    well_formed = key[:1].isalpha() and set(key) <= _KEY_CHARACTERS
    if not well_formed or not (key.startswith("X_") or key in _WELL_KNOWN_KEYS):
        raise DaemonOptionError(
            f"notify({key}=...): unknown assignment; private extensions are upper-case and start "
            f"with X_ (e.g. X_{key.upper().removeprefix('X_')}), the documented keys have keyword "
            f"arguments or are one of {', '.join(sorted(_WELL_KNOWN_KEYS))}; use notify_raw() to "
            f"send anything else")


def _socket_address(address: str) -> bytes:
    if address.startswith("/"):
        return os.fsencode(address)
    if address.startswith("@"):
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("vsock"):
        raise SystemdNotifyError(
            f"NOTIFY_SOCKET={address!r}: vsock notification sockets are not supported by "
            f"daemonctx.systemd, only AF_UNIX ones ('/path' or '@abstract-name'); have the "
            f"manager inside the machine pass a unix socket, or unset NOTIFY_SOCKET",
            address=address)
    raise SystemdNotifyError(
        f"NOTIFY_SOCKET={address!r} is neither an absolute socket path ('/run/...') nor an "
        f"abstract socket name ('@...'): fix the variable or unset it", address=address)


_ERRNO_HINTS = {
    "ENOENT": "the socket does not exist: the manager is gone, or its path is not visible from "
              "here (after a chroot, send before changing root)",
    "ECONNREFUSED": "nothing listens on it any more: the manager that created it is gone",
    "EACCES": "permission denied: the daemon's user may not write to the socket",
    "EPROTOTYPE": "it is not a datagram socket",
}


def _send_datagram(payload: bytes, address: str, timeout: float | None) -> None:
    import errno as errno_codes
    import socket

    sockaddr = _socket_address(address)
    sock: socket.socket | None = None
    try:
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0))
        if sock.fileno() <= _os.closed_fds_ceiling():
            # In a daemon, a Python object made before DaemonContext.open() may still believe
            # it owns this number and close it when collected: take one above those.
            sock = socket.socket(fileno=_os.above_closed_fds(sock.detach()))
        # Connected, so that a full queue makes poll() wait for room instead of spinning.
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        sock.send(payload)
    except TimeoutError as exc:
        raise SystemdNotifyError(
            f"cannot notify the service manager on NOTIFY_SOCKET={address!r}: its queue stayed "
            f"full for {timeout} s (the manager is not reading); pass a longer timeout or check "
            f"the manager", address=address, errno=errno_codes.ETIMEDOUT) from exc
    except OSError as exc:
        name = errno_codes.errorcode.get(exc.errno or 0, "")
        reason = _ERRNO_HINTS.get(name, exc.strerror or str(exc))
        raise SystemdNotifyError(
            f"cannot notify the service manager on NOTIFY_SOCKET={address!r}: {reason} "
            f"({name or exc}); unset NOTIFY_SOCKET if no manager expects notifications",
            address=address, errno=exc.errno) from exc
    finally:
        if sock is not None:
            sock.close()


# --- watchdog ------------------------------------------------------------------------------

def watchdog_interval(*, unset_environment: bool = False) -> float | None:
    """How often, in seconds, to send ``notify(watchdog=True)``; None if no watchdog is armed.

    Follows sd_watchdog_enabled(3): the watchdog is ours when ``$WATCHDOG_USEC`` is set and
    ``$WATCHDOG_PID`` is unset or equal to our pid (so a forked worker that inherited the
    variables does not think it must ping).  The value returned is *half* the timeout, the
    interval systemd recommends so that one late ping is not fatal; the timeout itself is twice
    the result.  Raises :class:`SystemdEnvironmentError` if either variable is malformed (a
    timeout of 0 included).  ``unset_environment=True`` removes both variables afterwards, so
    child processes do not inherit them.
    """
    try:
        usec_text = _env("WATCHDOG_USEC")
        if usec_text is None:
            return None
        usec = _parse_env_int("WATCHDOG_USEC", usec_text, 1)
        pid_text = _env("WATCHDOG_PID")
        if pid_text is not None and _parse_env_int("WATCHDOG_PID", pid_text, 1) != os.getpid():
            return None
        return usec / 2_000_000
    finally:
        if unset_environment:
            os.environ.pop("WATCHDOG_USEC", None)
            os.environ.pop("WATCHDOG_PID", None)


# --- socket activation ---------------------------------------------------------------------

def is_socket_activated() -> bool:
    """True if the manager passed us at least one fd (``$LISTEN_PID`` is our pid).

    Only reads the environment: it neither changes the fds nor unsets anything, and a malformed
    variable gives False.  Use :func:`listen_fds` to take the fds.
    """
    return bool(passed_fd_numbers())


def passed_fd_numbers() -> range:
    """The fds the manager passed us (``range(3, 3 + $LISTEN_FDS)``), only reading variables.

    Empty when ``$LISTEN_PID`` is not our pid or a variable is malformed: the one reader of
    these variables, shared by :func:`listen_fds_with_names` (which also checks the fds and
    unsets the variables) and ``DaemonContext`` (which keeps these fds open).
    """
    try:
        return _listen_range()
    except SystemdEnvironmentError:
        return range(0)


def _listen_range() -> range:
    """The fds ``$LISTEN_PID``/``$LISTEN_FDS`` pass us; :class:`SystemdEnvironmentError` if
    malformed; empty when they are absent or meant for another process."""
    pid_text, count_text = _env("LISTEN_PID"), _env("LISTEN_FDS")
    if pid_text is None or _parse_env_int("LISTEN_PID", pid_text, 1) != os.getpid():
        return range(0)
    if count_text is None:
        return range(0)
    count = _parse_env_int("LISTEN_FDS", count_text, 0)
    return range(LISTEN_FDS_START, LISTEN_FDS_START + count)


def listen_fds_with_names(unset_environment: bool = True) -> list[tuple[int, str]]:
    """The fds the service manager passed us, each with its name, as ``[(3, "http"), ...]``.

    Follows sd_listen_fds_with_names(3).  The fds are ours only if ``$LISTEN_PID`` equals our
    pid -- otherwise the variables were inherited from an ancestor, and the result is ``[]``.
    ``$LISTEN_FDS`` fds starting at 3 are returned, each set close-on-exec so that programs we
    run do not inherit listening sockets by accident (clear it with ``os.set_inheritable`` to
    pass one on deliberately).  Names come from the colon-separated ``$LISTEN_FDNAMES``
    (``FileDescriptorName=``); an fd without one -- the variable unset or shorter than the list
    -- is named ``"unknown"``, as systemd does; surplus names are ignored and empty entries are
    kept as given.

    ``unset_environment=True`` (the default) removes the three variables in every case, so
    they cannot mislead a child process; pass False to leave them for a later call.  Raises
    :class:`SystemdEnvironmentError` if ``$LISTEN_PID``/``$LISTEN_FDS`` are malformed or an fd
    they promise is not open.
    """
    try:
        fds = _listen_range()
        count, count_text = len(fds), _env("LISTEN_FDS")
        for fd in fds:  # fails at the first fd that is not open, before building any list
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise SystemdEnvironmentError(
                    f"LISTEN_FDS={count_text} promises fds {fds[0]} to {fds[-1]}, but fd {fd} "
                    f"is not open ({exc.strerror}): whatever started this program set "
                    f"LISTEN_FDS without passing the fds", variable="LISTEN_FDS",
                    value=count_text) from exc
        names_text = _env("LISTEN_FDNAMES")
        names = names_text.split(":") if names_text is not None else []
        names += ["unknown"] * (count - len(names))
        return list(zip(fds, names, strict=False))
    finally:
        if unset_environment:
            for variable in _LISTEN_VARIABLES:
                os.environ.pop(variable, None)


def listen_fds(unset_environment: bool = True) -> list[int]:
    """The fds the service manager passed us (``[3, 4, ...]``), or ``[]`` if none are ours.

    sd_listen_fds(3): see :func:`listen_fds_with_names` for the checks (``$LISTEN_PID`` must be
    our pid), the close-on-exec flag, ``unset_environment`` and the errors.  The fds may be any
    kind of file (sockets, FIFOs, special files); the caller owns them.
    """
    return [fd for fd, _ in listen_fds_with_names(unset_environment)]


def listen_sockets(unset_environment: bool = True) -> list[socket.socket]:
    """The passed fds as :class:`socket.socket` objects, in fd order, or ``[]``.

    Each object owns its fd (closing it closes fd 3, 4, ...); family, type and protocol are
    read from the kernel.  Raises :class:`SystemdEnvironmentError`, before wrapping anything, if
    one of the fds is not a socket (a ``ListenFIFO=`` or ``ListenSpecial=`` unit): use
    :func:`listen_fds` for those.  Names: :func:`listen_fds_with_names` gives them in the same
    order.
    """
    import socket
    import stat

    pairs = listen_fds_with_names(unset_environment)
    for fd, name in pairs:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SystemdEnvironmentError(
                f"fd {fd} (named {name!r}) passed by the service manager is not a socket: "
                f"use listen_fds() and open it yourself", variable="LISTEN_FDS",
                value=str(len(pairs)))
    return [socket.socket(fileno=fd) for fd, _ in pairs]
