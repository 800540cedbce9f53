"""The ``daemonctx`` command: start, stop, restart, reload, signal and ask the status of a program.

``daemonctx start --pidfile PATH [options] -- COMMAND [ARG...]`` turns any program into a
daemon: it validates every option, detaches with :class:`~daemonctx.DaemonContext`, and
``exec``\\ s the command in the daemon, which keeps holding the pidfile's lock (the lock's
descriptor is inherited across ``exec``; the pid does not change).  The launching ``daemonctx``
waits and exits 0 only once the program runs -- and, with ``--notify``, once it has sent
``READY=1`` on a ``NOTIFY_SOCKET`` that daemonctx provides (start-stop-daemon's
``--notify-await``).  ``stop``, ``status``, ``reload`` and ``signal`` find the daemon through
the pidfile's lock (:mod:`daemonctx.control`, :mod:`daemonctx.status`), so a recycled pid is
never signalled.

Exit codes (start-stop-daemon's, and LSB's for ``status``):

=========  ===========================================================================
start      0 running; 1 already running (0 with ``--oknodo``); 3 not started
           (bad input, command not found, exited during start-up, no READY in time)
stop       0 stopped; 1 was not running (0 with ``--oknodo``); 2 still running after
           the schedule; 3 error (bad input, not permitted)
restart    as stop (2, 3) if stopping fails, else as start
reload,    0 signal sent; 1 not running; 3 error
signal
status     0 running; 1 not running but the pidfile exists; 3 not running; 4 unknown
           (including bad input)
=========  ===========================================================================

Errors are one line on stderr, never a traceback.  ``import daemonctx.cli`` imports nothing
heavy: :mod:`argparse`, the context and the pidfile are imported when a command runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from daemonctx.errors import DaemonError, DaemonOptionError

if TYPE_CHECKING:
    import argparse
    import pwd

    from daemonctx.context import DaemonContext
    from daemonctx.control import StopSchedule
    from daemonctx.handshake import StartupReport
    from daemonctx.launcher import Launch, NotifyListener
    from daemonctx.pidfile import PIDFile

__all__ = ["EXIT_ERROR", "EXIT_NOTHING_DONE", "EXIT_OK", "EXIT_STILL_RUNNING", "main"]

PROG = "daemonctx"
EXIT_OK = 0
"""The action was performed (started, stopped, signal sent)."""
EXIT_NOTHING_DONE = 1
"""Nothing to do: already running (start) or not running (stop, reload, signal)."""
EXIT_STILL_RUNNING = 2
"""stop: the daemon was still running when the schedule ran out."""
EXIT_ERROR = 3
"""Anything else: bad input, not permitted, the program did not start."""

COMMANDS = ("start", "stop", "restart", "status", "reload", "signal")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_UMASK = 0o022
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_SETTLE = 0.5
# The program's copy of the pidfile descriptor is moved at or above this number, out of the
# range (0-9) that shell redirections such as `exec 3>file` use, so a wrapper script does not
# close the lock by accident.
_LOCK_FD_MIN = 10


# --- the command line -----------------------------------------------------------------------

_EPILOG = """\
examples:
  daemonctx start --pidfile /run/web.pid --user www-data --chdir /srv/web \\
      --stdout /var/log/web.log -- /usr/bin/python3 -m http.server 8080
  daemonctx start --pidfile /run/app.pid --notify --timeout 30 -- /usr/sbin/app --foreground
  daemonctx status --pidfile /run/web.pid          # exit 0 running, 1 dead, 3 stopped
  daemonctx status --pidfile /run/web.pid --json
  daemonctx reload --pidfile /run/app.pid          # SIGHUP
  daemonctx signal USR1 --pidfile /run/app.pid
  daemonctx stop --pidfile /run/web.pid --retry TERM/30/KILL/5
  daemonctx restart --pidfile /run/web.pid --user www-data --chdir /srv/web \\
      --stdout /var/log/web.log -- /usr/bin/python3 -m http.server 8080

The daemon is whatever process holds the pidfile's lock (flock): a leftover pidfile naming a
dead or recycled pid is never taken for a running daemon, and never signalled.
"""

_START_DESCRIPTION = """\
Detach from the terminal (double fork, new session), then run COMMAND as a daemon holding the
pidfile's lock for its whole life.  Exit 0 only once COMMAND runs: it survived --wait seconds,
or, with --notify, it sent READY=1 on $NOTIFY_SOCKET.  COMMAND must stay in the foreground (a
program that forks into the background itself would exit and be reported as failed).

Exit status: 0 running; 1 already running (0 with --oknodo); 3 not started (the reason is
printed: bad option, command not found, exited during start-up with status S, no READY=1).
"""

_START_EPILOG = """\
The program gets: stdin /dev/null; stdout/stderr appended to --stdout/--stderr (else
/dev/null; --stderr defaults to --stdout's file); umask 022 unless --umask; working directory /
unless --chdir; the caller's environment plus --env (only PATH, --env-keep names and --env with
--clear-env) and, with --user, HOME, USER and LOGNAME of that user and its supplementary
groups; default signal dispositions; one extra inherited descriptor, numbered 10 or above,
holding the pidfile's lock (closing it gives up the lock).

--notify: daemonctx listens on a private socket (abstract namespace, accepting messages from
root and the program's user only) and passes it as NOTIFY_SOCKET to the program (not to
itself).  READY=1 means started; EXTEND_TIMEOUT_USEC=N extends the wait; ERRNO=N or the program
exiting means failed.  Barriers (BARRIER=1, sent by systemd-notify) are answered.  Once the
program is ready, a small keeper process answers the socket until the program exits, as
systemd does, so later messages succeed and no other user can take the socket's name.

A failed start (bad exit, no READY=1, timeout) leaves nothing running: the program and every
process it started (also in sessions of their own) are stopped, SIGTERM then SIGKILL after
5 s, and its pidfile removed.

examples:
  daemonctx start --pidfile /run/app.pid --user app --stdout /var/log/app.log -- /usr/bin/app
  daemonctx start --pidfile /run/app.pid --clear-env --env-keep LANG --env MODE=prod -- app
"""

_STOP_DESCRIPTION = """\
Send the stop signal to the process holding the pidfile's lock (through a pidfd, never to a
recycled pid), wait for it to exit and for the lock to be released, and escalate to SIGKILL
after --timeout seconds (or follow --retry).  A KILL step also kills the daemon's descendants
and any process still holding the lock, so the lock is free afterwards.  The leftover pidfile
is removed.  A daemon whose pidfile was removed by hand is found by the lock it still holds on
the removed file (the process whose open "PATH (deleted)" file carries the lock and names its
own pid), as are status, reload and signal.

Exit status: 0 stopped; 1 not running (0 with --oknodo); 2 still running after the schedule;
3 error (e.g. not permitted to signal it).
"""

_STATUS_DESCRIPTION = """\
Report whether the daemon runs, from the pidfile's lock: pid, command line, uptime, resident
memory and the tree of child processes (a supervisor's workers).  If the pidfile was removed
while the daemon runs, the daemon is found by the lock it still holds on the removed file.

Exit status (LSB): 0 running; 1 not running but the pidfile exists (the daemon died, or the pid
in the file now belongs to an unrelated process); 3 not running; 4 unknown (the pidfile cannot
be examined).
"""


class _Parser:
    """Builds the argparse parser lazily; its errors become one-line DaemonOptionErrors."""

    @staticmethod
    def build() -> argparse.ArgumentParser:
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message: str) -> NoReturn:
                raise DaemonOptionError(f"{message} (see '{self.prog} --help')")

        raw = argparse.RawDescriptionHelpFormatter
        parser = Parser(
            prog=PROG, formatter_class=raw, epilog=_EPILOG,
            description="Run any program as a Unix daemon and control it through its pidfile.")
        from daemonctx import __version__

        parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
        commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

        start = commands.add_parser(
            "start", formatter_class=raw, description=_START_DESCRIPTION,
            epilog=_START_EPILOG, help="start COMMAND as a daemon",
            usage="%(prog)s --pidfile PATH [options] -- COMMAND [ARG...]")
        _add_start_options(start)

        restart = commands.add_parser(
            "restart", formatter_class=raw, help="stop the daemon if it runs, then start it",
            description="Stop the daemon if it runs (as 'stop', waiting until its lock is "
                        "released), then start COMMAND (as 'start'). Every option is checked "
                        "before anything is stopped.\n\nExit status: as 'stop' (2, 3) if "
                        "stopping fails, else as 'start'.",
            usage="%(prog)s --pidfile PATH [options] -- COMMAND [ARG...]")
        _add_start_options(restart)
        restart.add_argument("--retry", metavar="SCHEDULE", default=None,
                             help="how to stop the running daemon, as for 'stop' "
                                  "(default TERM/30/KILL/5)")

        stop = commands.add_parser("stop", formatter_class=raw, help="stop the daemon",
                                   description=_STOP_DESCRIPTION)
        _add_pidfile(stop)
        stop.add_argument("--signal", "-s", default="TERM", metavar="NAME",
                          help="the signal that asks the daemon to stop (default TERM)")
        stop.add_argument("--timeout", "-t", type=float, default=None,
                          metavar="S", help="seconds to wait before SIGKILL (default 30); "
                                            "then 5 s more for the kill")
        stop.add_argument("--retry", "-R", metavar="SCHEDULE", default=None,
                          help="start-stop-daemon's schedule instead of --signal/--timeout: "
                               "SIGNAL/SECONDS/... with an optional final /forever "
                               "(e.g. TERM/30/KILL/5, HUP/10/TERM/20/forever); a lone "
                               "number N means TERM/N/KILL/N")
        stop.add_argument("--oknodo", action="store_true",
                          help="exit 0 also when the daemon was not running")
        _add_verbose(stop)

        status = commands.add_parser("status", formatter_class=raw, help="is it running?",
                                     description=_STATUS_DESCRIPTION)
        _add_pidfile(status)
        status.add_argument("--json", action="store_true",
                            help="print one JSON object (state, code, pid, process tree) "
                                 "instead of text")

        reload = commands.add_parser(
            "reload", help="send SIGHUP to the daemon",
            description="Send SIGHUP to the process holding the pidfile's lock. Exit status: "
                        "0 sent; 1 not running; 3 error.")
        _add_pidfile(reload)
        _add_verbose(reload)

        signal_cmd = commands.add_parser(
            "signal", help="send a signal to the daemon",
            description="Send signal NAME (TERM, HUP, USR1, ... or a number) to the process "
                        "holding the pidfile's lock. Exit status: 0 sent; 1 not running; "
                        "3 error.")
        signal_cmd.add_argument("signal_name", metavar="NAME", help="the signal to send")
        _add_pidfile(signal_cmd)
        _add_verbose(signal_cmd)
        return parser


def _add_pidfile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pidfile", "-p", required=True, metavar="PATH",
                        help="the daemon's pidfile; the daemon is the process holding its lock")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="say what was done on stdout (errors always go to stderr)")


def _add_start_options(parser: argparse.ArgumentParser) -> None:
    _add_pidfile(parser)
    parser.add_argument("--user", "-u", metavar="USER[:GROUP]",
                        help="run as this user (name or uid), with its primary group and "
                             "supplementary groups (root only)")
    parser.add_argument("--group", "-g", metavar="GROUP",
                        help="run with this group (name or gid) instead of the user's")
    parser.add_argument("--chdir", "-d", metavar="DIR", default=None,
                        help="working directory (default /; inside --chroot if given)")
    parser.add_argument("--umask", metavar="MODE", default=None,
                        help="file creation mask, octal (default 022)")
    parser.add_argument("--chroot", "-r", metavar="DIR",
                        help="change the root directory first (COMMAND, --chdir and the "
                             "pidfile, which must lie inside it, are then seen from the new root)")
    parser.add_argument("--stdout", "-o", metavar="FILE",
                        help="append the program's stdout (and, by default, stderr) to FILE")
    parser.add_argument("--stderr", "-e", metavar="FILE",
                        help="append the program's stderr to FILE (default: --stdout's file)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set an environment variable for the program (repeatable)")
    parser.add_argument("--clear-env", action="store_true",
                        help="start the program with an empty environment: only PATH "
                             f"({DEFAULT_PATH}), --env-keep and --env (daemon(7) step 4)")
    parser.add_argument("--env-keep", action="append", default=[], metavar="NAME",
                        help="with --clear-env, keep this variable of the caller (repeatable)")
    parser.add_argument("--notify", action="store_true",
                        help="wait for READY=1 on $NOTIFY_SOCKET (sd_notify) before exiting 0")
    parser.add_argument("--timeout", "-t", type=float, default=DEFAULT_START_TIMEOUT,
                        metavar="S", help="with --notify: seconds to wait for READY=1; "
                                          "otherwise the bound on detaching (default 60)")
    parser.add_argument("--wait", "-w", type=float, default=DEFAULT_SETTLE, metavar="S",
                        help="without --notify: seconds the program must survive to count as "
                             "started (default 0.5; 0 skips the check)")
    parser.add_argument("--oknodo", action="store_true",
                        help="exit 0 also when the daemon is already running")
    _add_verbose(parser)


def _split_command(args: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first ``--``: (daemonctx's arguments, the command or None)."""
    if "--" in args:
        index = list(args).index("--")
        return list(args[:index]), list(args[index + 1:])
    return list(args), None


def _command_name(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg == "--":
            return None
        if arg in COMMANDS:
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daemonctx`` command with ``argv`` (default ``sys.argv[1:]``); return the status.

    Never raises for bad input or a failed action: the reason is printed on stderr as one line
    (``daemonctx start: ...``) and the status says what happened (see the module
    documentation).  ``--help`` and ``--version`` exit through :class:`SystemExit` (0).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    command = _command_name(args)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except (DaemonError, OSError) as exc:
        _error(command, _one_line(exc))
        if command == "status":
            from daemonctx.status import STATUS_UNKNOWN  # LSB's "unknown", bad input included

            return STATUS_UNKNOWN
        return EXIT_ERROR


def _dispatch(args: list[str]) -> int:
    own, program = _split_command(args)
    namespace, unknown = _Parser.build().parse_known_args(own)
    command: str = namespace.command
    if unknown and not (command in ("start", "restart") and program is None):
        raise DaemonOptionError(f"unrecognized arguments: {' '.join(unknown)} "
                                f"(see '{PROG} {command} --help')")
    if command in ("start", "restart"):
        if program is None:
            raise DaemonOptionError(
                f"missing '--' before the command: {PROG} {command} --pidfile PATH "
                f"[options] -- COMMAND [ARG...]")
        if not program:
            raise DaemonOptionError(f"no command after '--': {PROG} {command} --pidfile PATH "
                                    f"[options] -- COMMAND [ARG...]")
    elif program is not None:
        raise DaemonOptionError(f"'--' and a command are only taken by start and restart, "
                                f"not {command}")
    if command == "start":
        return _run_start(_plan_start(namespace, program or []))
    if command == "restart":
        return _cmd_restart(namespace, program or [])
    if command == "stop":
        return _cmd_stop(namespace)
    if command == "status":
        return _cmd_status(namespace)
    if command == "reload":
        import signal

        return _cmd_signal(namespace, int(signal.SIGHUP))
    from daemonctx.control import parse_signal

    return _cmd_signal(namespace, parse_signal(namespace.signal_name, "signal NAME"))


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, DaemonError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    return " ".join(text.split())


def _error(command: str | None, message: str) -> None:
    prefix = f"{PROG} {command}" if command else PROG
    _write(2, f"{prefix}: {' '.join(message.split())}")  # always one line


def _say(verbose: bool, command: str, message: str) -> None:
    if verbose:
        _write(1, f"{PROG} {command}: {message}")


def _write(fd: int, line: str) -> None:
    # os.write, not print: the launcher may exit with os._exit, which flushes nothing.  Every
    # line is made printable: it may quote a daemon's text (STATUS=, its command line).
    from daemonctx._os import printable, write_all

    text = "\n".join(printable(part) for part in line.rstrip("\n").split("\n"))
    write_all(fd, (text + "\n").encode("utf-8", "replace"))


# --- start: checking every option before forking --------------------------------------------


class _StartPlan(NamedTuple):
    """Everything `start` needs, checked; paths as the daemon will see them (inside chroot).

    (A NamedTuple, not a dataclass: importing dataclasses would double this module's cost.)
    """

    command_name: str
    pidfile: str                 # as the caller sees it (for messages, stop, status)
    daemon_pidfile: str          # as the daemon sees it (inside the chroot)
    chroot: str | None
    workdir: str
    umask: int
    uid: int | None
    gid: int | None
    initgroups: bool
    program_uid: int
    stdout: str | None
    stderr: str | None
    executable: str
    argv: list[str]
    env: dict[str, str]
    caller_cwd: str = "/"        # where relative paths the user typed were meant from
    notify: bool = False
    timeout: float = DEFAULT_START_TIMEOUT
    settle: float = DEFAULT_SETTLE
    oknodo: bool = False
    verbose: bool = False


def _plan_start(ns: argparse.Namespace, program: list[str]) -> _StartPlan:
    """Check every start option against the system; raise DaemonOptionError naming the option."""
    from daemonctx import options

    timeout = _positive_seconds("--timeout", ns.timeout, allow_zero=False)
    settle = _positive_seconds("--wait", ns.wait, allow_zero=True)
    umask = _parse_umask(ns.umask)
    uid, gid, user_entry = _resolve_identity(ns.user, ns.group)
    chroot = options.existing_directory("--chroot", ns.chroot) if ns.chroot else None
    workdir = "/" if ns.chdir is None else options.working_directory(
        "--chdir", ns.chdir, chroot, root_option="--chroot")
    pidfile, daemon_pidfile = _pidfile_paths(ns.pidfile, chroot)
    stdout = _log_path("--stdout", ns.stdout) if ns.stdout else None
    stderr = _log_path("--stderr", ns.stderr) if ns.stderr else stdout
    env = _program_environment(ns, user_entry)
    identity = None
    if uid is not None and gid is not None:
        name = user_entry.pw_name if user_entry is not None else None
        groups = options.supplementary_groups(uid, gid, name, initgroups=name is not None)
        identity = _Identity(uid, gid, list(groups if groups is not None else (gid,)))
    executable = _resolve_command(program[0], env.get("PATH", ""), chroot, workdir, identity)
    return _StartPlan(
        command_name=ns.command, pidfile=pidfile, daemon_pidfile=daemon_pidfile, chroot=chroot,
        workdir=workdir, umask=umask, uid=uid, gid=gid, initgroups=user_entry is not None,
        program_uid=os.geteuid() if uid is None else uid, stdout=stdout, stderr=stderr,
        executable=executable, argv=list(program), env=env, caller_cwd=_caller_cwd(),
        notify=bool(ns.notify),
        timeout=timeout, settle=settle, oknodo=bool(ns.oknodo), verbose=bool(ns.verbose))


def _caller_cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # removed from under the caller
        return "/"


def _relative_path_hint(plan: _StartPlan) -> str:
    """Why a program that exited at once may not have found a file: it runs elsewhere.

    The program's working directory is ``/`` (or ``--chdir``), not the caller's: an argument
    such as ``ticker.py`` that names a file in the caller's directory names nothing there.
    """
    if plan.chroot is not None or os.path.realpath(plan.caller_cwd) == \
            os.path.realpath(plan.workdir):
        return ""
    for arg in plan.argv[1:]:
        if not arg or arg.startswith("-") or os.path.isabs(arg) or "\0" in arg:
            continue
        if os.path.exists(os.path.join(plan.caller_cwd, arg)) and \
                not os.path.exists(os.path.join(plan.workdir, arg)):
            return (f"; note: it runs in {plan.workdir}, where the relative path {arg!r} names "
                    f"nothing (it is a file in {plan.caller_cwd}): give --chdir "
                    f"{plan.caller_cwd}, or an absolute path")
    return ""


def _positive_seconds(option: str, value: float, *, allow_zero: bool) -> float:
    from daemonctx.options import MAX_STARTUP_TIMEOUT

    # `not <=` also refuses NaN; the cap keeps every wait within what select() accepts
    if not 0 <= value <= MAX_STARTUP_TIMEOUT or (value == 0 and not allow_zero):
        low = "0" if allow_zero else "more than 0"
        raise DaemonOptionError(
            f"{option}: {value:g} is not a number of seconds from {low} to "
            f"{MAX_STARTUP_TIMEOUT} (a year)")
    return float(value)


def _parse_umask(text: str | None) -> int:
    if text is None:
        return DEFAULT_UMASK
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise DaemonOptionError(f"--umask: {text!r} is not an octal mode from 000 to 777 "
                                f"(e.g. 022 or 027)")
    return value


def _resolve_identity(user: str | None, group: str | None
                      ) -> tuple[int | None, int | None, pwd.struct_passwd | None]:
    """(uid, gid, passwd entry) for --user/--group; None where not given.

    ``--user USER:GROUP`` is split here; the names are resolved and checked by the library's
    one resolver (:func:`daemonctx.options.identity`).
    """
    from daemonctx.options import identity

    if user is not None and ":" in user:
        user, _, group_part = user.partition(":")
        if group is not None and group_part:
            raise DaemonOptionError("give the group either as --user USER:GROUP or as --group, "
                                    "not both")
        group = group_part or group
    if user is None and group is None:
        return None, None, None
    uid, gid, entry = identity(os.geteuid() if user is None else user, group,
                               user_option="--user", group_option="--group",
                               need_entry=user is not None)
    return (None if user is None else uid), gid, entry


def _pidfile_paths(path: str, chroot: str | None) -> tuple[str, str]:
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise DaemonOptionError(f"--pidfile: directory {directory} {what}; create it first "
                                f"(e.g. systemd's RuntimeDirectory=, or mkdir -p)")
    if chroot is None:
        return full, full
    from daemonctx._paths import path_in_root

    inside = path_in_root(chroot, full)
    if inside is None:
        raise DaemonOptionError(f"--pidfile: {full} is outside --chroot {chroot}; the daemon "
                                f"could not reach it (put it inside, e.g. {chroot}/run/app.pid)")
    return full, inside


def _log_path(option: str, path: str) -> str:
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        raise DaemonOptionError(f"{option}: directory {directory} does not exist")
    if os.path.isdir(full):
        raise DaemonOptionError(f"{option}: {full} is a directory, not a file")
    return full


def _program_environment(ns: argparse.Namespace,
                         user_entry: pwd.struct_passwd | None) -> dict[str, str]:
    if ns.env_keep and not ns.clear_env:
        raise DaemonOptionError("--env-keep only makes sense with --clear-env (without it the "
                                "whole environment is kept)")
    if ns.clear_env:
        env = {"PATH": DEFAULT_PATH}
        for name in ns.env_keep:
            if not name or "=" in name or "\0" in name:
                raise DaemonOptionError(f"--env-keep: {name!r} is not a variable name")
            if name in os.environ:
                env[name] = os.environ[name]
    else:
        env = dict(os.environ)
    if user_entry is not None:
        env.update(HOME=user_entry.pw_dir, USER=user_entry.pw_name,
                   LOGNAME=user_entry.pw_name)
    for item in ns.env:
        name, sep, value = item.partition("=")
        if not sep or not name or "\0" in item:
            raise DaemonOptionError(f"--env: {item!r} is not NAME=VALUE")
        env[name] = value
    return env


class _Identity(NamedTuple):
    """Who the program will run as (--user/--group), for permission checks made as root."""

    uid: int
    gid: int
    groups: list[int]


def _resolve_command(command: str, search_path: str, chroot: str | None, workdir: str,
                     identity: _Identity | None = None) -> str:
    """The path to exec, as the daemon sees it; checked to be executable by the program's user.

    With ``--user``, the check is made for that user (the permission bits of the file and of
    every directory on the way), not for the caller: root may execute what the user may not.
    A ``#!`` script is followed to the interpreter it names (see :func:`_not_executable`).
    """
    if not command or "\0" in command:
        raise DaemonOptionError(f"command {command!r} is not a program name")
    if "/" in command:
        if chroot is None:
            inside = os.path.abspath(command)
        else:
            inside = os.path.normpath(os.path.join(workdir, command))
        problem = _not_executable(inside, identity, chroot, workdir)
        if problem:
            raise DaemonOptionError(f"command {command}: {problem}")
        return inside
    rejected: list[str] = []
    for entry in search_path.split(os.pathsep):
        # An empty entry means the current directory, which for the daemon is workdir.
        directory = os.path.join(workdir, entry or ".")
        inside = os.path.normpath(os.path.join(directory, command))
        problem = _not_executable(inside, identity, chroot, workdir)
        if problem is None:
            return inside
        if problem != "not found":
            rejected.append(f"{inside} {problem}")
    where = f" inside --chroot {chroot}" if chroot else ""
    if rejected:
        raise DaemonOptionError(f"command {command!r} not usable{where}: {rejected[0]}")
    raise DaemonOptionError(f"command {command!r} not found{where} in PATH={search_path}")


def _not_executable(inside: str, identity: _Identity | None = None, chroot: str | None = None,
                    workdir: str = "/", depth: int = 0) -> str | None:
    """Why the program's user could not ``exec`` ``inside`` (as the daemon sees it), or None.

    The kernel runs a ``#!`` script by executing the interpreter its first line names, with
    the same user's rights: that one must be reachable and executable too (a script's
    interpreter under ``/root``, say, is not, for ``--user``), and so on while interpreters are
    scripts, as deep as the kernel follows (``_os.MAX_SCRIPT_DEPTH`` scripts).  A problem
    found there is said of the interpreter: ``its #! line names /opt/py/bin/python, which is
    not reachable by the program's user ...``.
    """
    import errno
    import stat

    from daemonctx import _os
    from daemonctx._paths import host_path

    walk = _os.walk_path(inside, chroot or "/")
    host = host_path(chroot, inside)
    if walk.target is None:
        return "not found" if walk.error == errno.ENOENT else \
            f"cannot be examined: {os.strerror(walk.error)}"
    st = walk.target
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    interpreter = _os.script_interpreter(host)
    if identity is None:
        if not os.access(host, os.X_OK):
            return f"is not executable (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        who = f"uid {identity.uid} gid {identity.gid}"
        problem = _unreachable(inside, identity, chroot)
        if problem is not None:
            return f"is not reachable by the program's user ({who}): {problem}"
        if not _os.permits(st, *identity, want=0o1 if interpreter is None else 0o5):
            return (f"is not executable by the program's user ({who}): mode "
                    f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid} gid {st.st_gid}")
    if interpreter is None:
        return None
    if depth >= _os.MAX_SCRIPT_DEPTH:
        return (f"is a #! script too, {depth + 1} scripts deep: more than the kernel follows "
                f"({_os.MAX_SCRIPT_DEPTH} at most)")
    if not interpreter:
        return "has no interpreter on its #! line"
    named = os.path.normpath(os.path.join(workdir, interpreter))
    problem = _not_executable(named, identity, chroot, workdir, depth + 1)
    if problem is None:
        return None
    if problem.startswith("its #! line names "):
        return f"its #! line names {interpreter}, whose{problem[len('its'):]}"
    return f"its #! line names {interpreter}, which " + (
        "does not exist" if problem == "not found" else problem)


def _unreachable(inside: str, identity: _Identity, chroot: str | None) -> str | None:
    """Why ``identity`` cannot search its way to ``inside`` (in ``chroot``), or None if it can.

    Every directory a name is looked up in on the way, including those met through symbolic
    links (and the links their targets meet).
    """
    import stat

    from daemonctx import _os
    from daemonctx._paths import host_path

    for lookup in _os.walk_path(inside, chroot or "/").lookups:
        dir_st = lookup.directory_st
        if not _os.permits(dir_st, *identity, want=0o1):
            return (f"directory {host_path(chroot, lookup.directory)} (mode "
                    f"{stat.S_IMODE(dir_st.st_mode):04o}, owner uid {dir_st.st_uid}) is not "
                    f"searchable by it")
    return None


# --- start: the launcher and the daemon -----------------------------------------------------


def _preload_modules() -> None:
    """Import now what the launcher and the daemon need after the detach.

    Both drop privileges and may chroot before they need these, and then may no longer be
    able to read Python's library (a Python installed under /root, say).
    """
    import errno
    import fcntl
    import select
    import signal
    import struct
    import time

    import daemonctx._notify_keeper
    import daemonctx._os
    import daemonctx._proc
    import daemonctx.control
    import daemonctx.errors
    import daemonctx.handshake
    import daemonctx.launcher
    import daemonctx.status

    # prctl loaded now makes the launcher a subreaper before it forks: every process the
    # program orphans is then re-parented to it, however early (see daemonctx.launcher).
    daemonctx._os.load_prctl()
    del errno, fcntl, select, signal, struct, time, daemonctx


def _run_start(plan: _StartPlan) -> int:
    from daemonctx.control import find_removed_pidfile_holder
    from daemonctx.launcher import NotifyListener, lock_holders_phrase
    from daemonctx.pidfile import PIDFile, PIDFileLockedError

    _preload_modules()
    removed_holder = find_removed_pidfile_holder(plan.pidfile)
    if removed_holder is not None:
        # Its pidfile was deleted from under it: a new file would lock, and two would run.
        if plan.oknodo:
            _say(plan.verbose, plan.command_name, f"already running as pid {removed_holder}")
            return EXIT_OK
        _error(plan.command_name, f"already running as pid {removed_holder}, which still holds "
                                  f"the lock of its pidfile {plan.pidfile} although the file was "
                                  f"removed; stop it first ('{PROG} stop --pidfile "
                                  f"{plan.pidfile}' finds it)")
        return EXIT_NOTHING_DONE
    notify = NotifyListener({0, plan.program_uid}) if plan.notify else None
    env = dict(plan.env)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.address  # the program's environment only, not ours
    start = _CommandStart(plan, notify, PIDFile(plan.daemon_pidfile))
    context = _command_context(start)
    try:
        context.open()  # in the launcher this does not return: see on_startup_report
    except PIDFileLockedError as exc:
        if notify is not None:
            notify.close()
        # the live holders: the pid that took the lock may have exited, leaving it to others
        holder = lock_holders_phrase(plan.pidfile, exc.pid)
        if plan.oknodo:
            _say(plan.verbose, plan.command_name, f"already running as {holder}")
            return EXIT_OK
        _error(plan.command_name, f"already running as {holder} (pidfile {plan.pidfile})")
        return EXIT_NOTHING_DONE
    except BaseException:
        if notify is not None:
            notify.close()
        raise
    _exec_program(context, start, env)


def _exec_program(context: DaemonContext, start: _CommandStart,
                  env: dict[str, str]) -> NoReturn:
    """In the daemon: hand the pidfile's lock to the program and exec it; never returns."""
    from daemonctx import _os, handshake
    from daemonctx.errors import DaemonStartupError

    plan = start.plan
    try:
        if start.notify is not None:
            start.notify.forget()
        import fcntl
        import signal

        # F_DUPFD makes an inheritable copy of the locked descriptor: the program holds the
        # lock (same open file description) for its whole life; the original is close-on-exec.
        lowest = max(_LOCK_FD_MIN, _os.closed_fds_ceiling() + 1)
        lock_fd = fcntl.fcntl(start.pidfile.fileno(), fcntl.F_DUPFD, lowest)
        # A program that uses DaemonContext itself sees it is already a daemon (no second
        # detach) and keeps this fd open: see steps.daemonctx_command_lock_fd().
        env = dict(env, **{_os.COMMAND_LOCK_FD_ENV: str(lock_fd),
                           _os.COMMAND_PID_ENV: str(os.getpid())})
        for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these; the program must not
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        handshake.prepare_exec()
        os.execve(plan.executable, plan.argv, env)
    except BaseException as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        handshake.report_failure(
            DaemonStartupError(f"cannot execute {plan.executable}: {reason}", 127), 127)
        try:
            context.close()  # removes the pidfile: nothing runs
        except BaseException:
            pass
    os._exit(127)


class _CommandStart:
    """The command's side of a start: what the launcher waits for once the program runs."""

    def __init__(self, plan: _StartPlan, notify: NotifyListener | None,
                 pidfile: PIDFile) -> None:
        self.plan = plan
        self.notify = notify
        self.pidfile = pidfile

    def finish(self, report: StartupReport, launch: Launch) -> NoReturn:
        """Judge the report (waiting for READY=1 or the settle time), clean up and exit."""
        from daemonctx.launcher import LaunchInterrupted, keep_the_verdict

        code, message, to_stderr = EXIT_ERROR, "", True
        try:
            try:
                code, message, to_stderr = _judge_start(self.plan, self.notify, report, launch)
            except LaunchInterrupted as stop:  # SIGTERM or SIGINT: nobody will hear of a start
                code = 128 + stop.signum
                message = (f"interrupted by {stop.name} while waiting for {self.plan.argv[0]} "
                           f"(pid {report.pid}) to start"
                           f"{_clean_up_failed_start(self.plan, launch)}")
            except BaseException as exc:  # the launcher must exit, whatever happens
                message = f"launcher error: {exc!r}{_clean_up_failed_start(self.plan, launch)}"
            keep_the_verdict()
            if self.notify is not None:
                self.notify.close()
            if message:
                if to_stderr:
                    _error(self.plan.command_name, message)
                else:
                    _say(self.plan.verbose, self.plan.command_name, message)
        except BaseException:
            pass  # a signal between the verdict and keep_the_verdict(): the verdict stands
        finally:
            os._exit(code)


def _command_context(start: _CommandStart) -> DaemonContext:
    """A DaemonContext for the plan, whose launcher hands the report to ``start``."""
    from daemonctx.context import DaemonContext

    plan = start.plan
    return DaemonContext(
        chroot_directory=plan.chroot, working_directory=plan.workdir, umask=plan.umask,
        uid=plan.uid, gid=plan.gid, initgroups=plan.initgroups,
        # The program's own business: no core-dump limit, default signal dispositions.
        prevent_core=False, signal_map={},
        detach_process=True, pidfile=start.pidfile, stdout=plan.stdout, stderr=plan.stderr,
        startup_timeout=plan.timeout, defer_ready=True, startup_policy=start.finish)


def _judge_start(plan: _StartPlan, notify: NotifyListener | None, report: StartupReport,
                 launch: Launch) -> tuple[int, str, bool]:
    """In the launcher: (exit status, message, message is an error) for the daemon's report."""
    if report.state == "ready":
        return EXIT_OK, f"started pid {report.pid}", False
    if report.state != "exec":
        # The launcher already stopped whatever the failed start left (Launch.conclude).
        text = report.detail if report.error_type in ("DaemonStartupError",
                                                      "PIDFileLockedError") else report.message
        if report.error_type == "PIDFileLockedError":
            # Another start won the race for the lock after our pre-fork check.
            return (EXIT_OK if plan.oknodo else EXIT_NOTHING_DONE), text, not plan.oknodo
        _forget_failed_start(plan)
        return EXIT_ERROR, text, True
    pid = report.pid
    if pid is None or launch.daemon_pidfd is None:
        return EXIT_ERROR, (f"cannot follow the program (no pidfd for pid {pid})"
                            f"{_clean_up_failed_start(plan, launch)}"), True
    who = f"{os.path.basename(plan.argv[0])} (pid {pid})"
    if notify is not None:
        failure = launch.await_ready(notify, plan.timeout, who)
    else:
        failure = launch.await_settle(plan.settle, who)
    if failure is not None:
        log_hint = f"; its output is in {plan.stderr}" if plan.stderr else ""
        return EXIT_ERROR, (failure + _clean_up_failed_start(plan, launch) + log_hint
                            + _relative_path_hint(plan)), True
    if notify is not None:
        notify.hand_over(launch.daemon_pidfd, plan.uid, plan.gid)
        return EXIT_OK, f"started {who}: READY=1", False
    return EXIT_OK, f"started {who}", False


def _clean_up_failed_start(plan: _StartPlan, launch: Launch) -> str:
    """Stop everything the failed start left running, free the pidfile; say what was done."""
    # The launcher is inside the chroot (if any), like the daemon.
    return launch.clean_up(plan.daemon_pidfile if plan.chroot else plan.pidfile, plan.pidfile)


def _forget_failed_start(plan: _StartPlan) -> None:
    """Remove the pidfile the failed program left (unlocked), so status says 'not running'."""
    from daemonctx.pidfile import remove_stale_pidfile

    # The launcher is inside the chroot (if any), like the daemon.
    remove_stale_pidfile(plan.daemon_pidfile if plan.chroot else plan.pidfile)


# --- stop, restart, status, signal ----------------------------------------------------------


def _stop_schedule(retry: str | None, signal_text: str, timeout: float | None) -> StopSchedule:
    from daemonctx.control import (
        DEFAULT_KILL_TIMEOUT,
        DEFAULT_STOP_TIMEOUT,
        StopSchedule,
        parse_signal,
    )

    if timeout is None:
        timeout = DEFAULT_STOP_TIMEOUT
    if retry is not None:
        return StopSchedule.parse(retry, option="--retry")
    signum = parse_signal(signal_text, "--signal")
    wait = _positive_seconds("--timeout", timeout, allow_zero=True)
    return StopSchedule.signal_then_kill(signum, wait, DEFAULT_KILL_TIMEOUT)


def _cmd_stop(ns: argparse.Namespace) -> int:
    from daemonctx.control import stop_daemon

    schedule = _stop_schedule(ns.retry, ns.signal, ns.timeout)
    result = stop_daemon(ns.pidfile, schedule)
    code = result.exit_status  # start-stop-daemon's: 0 stopped, 1 not running, 2 still running
    if code == EXIT_NOTHING_DONE and ns.oknodo:
        code = EXIT_OK
    if code == EXIT_OK:
        _say(ns.verbose, "stop", result.message)
    else:
        _error("stop", result.message)
    return code


def _cmd_restart(ns: argparse.Namespace, program: list[str]) -> int:
    from daemonctx.control import stop_daemon
    from daemonctx.pidfile import PIDFile

    plan = _plan_start(ns, program)  # every option checked before anything is stopped
    # ... and checked as the new instance will need them (the pidfile's directory and the logs
    # for the program's user, say), so that a start bound to fail never stops the service.
    start = _CommandStart(plan, None, PIDFile(plan.daemon_pidfile))
    _command_context(start).check_options(running=True)
    schedule = _stop_schedule(ns.retry, "TERM", None)
    result = stop_daemon(plan.pidfile, schedule)
    if result.outcome == "still-running":
        _error("restart", result.message)
        return EXIT_STILL_RUNNING
    if result.outcome == "stopped":
        _say(ns.verbose, "restart", result.message)
    # The lock is released: stop_daemon returned only after that.  A start racing us may win
    # it now; then this start reports "already running" (exit 1), which is the truth.
    return _run_start(plan)


def _cmd_status(ns: argparse.Namespace) -> int:
    from daemonctx.status import daemon_status

    status = daemon_status(ns.pidfile)
    if ns.json:
        import json

        _write(1, json.dumps(status.as_dict()))
    else:
        _write(1, status.summary())
    return status.code


def _cmd_signal(ns: argparse.Namespace, signum: int) -> int:
    from daemonctx.control import signal_daemon, signal_name

    pid = signal_daemon(ns.pidfile, signum)
    if pid is None:
        _error(ns.command, f"not running (no process holds the lock of "
                           f"{os.path.abspath(ns.pidfile)})")
        return EXIT_NOTHING_DONE
    _say(ns.verbose, ns.command, f"sent SIG{signal_name(signum)} to pid {pid}")
    return EXIT_OK
