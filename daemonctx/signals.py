"""Building, checking and installing a DaemonContext's signal map.

A signal map is ``{signal number: target}``; a target is ``None`` (ignore the signal), the name
of a method of the context (``"terminate"``), a callable ``handler(signum, frame)``, or
``signal.SIG_DFL`` / ``signal.SIG_IGN``.  It is checked in the launcher, before forking, so a
typo is an error the caller sees instead of a daemon that dies unseen.  Signal names are
looked up and written by ``daemonctx._os`` (``signal_number``, ``signal_name``), the one home
of signal names.
"""

from __future__ import annotations

from daemonctx._os import signal_name, signal_number
from daemonctx._signal_module import signal
from daemonctx.errors import DaemonOptionError

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    import signal as signal_enums  # the enum-based module: for annotations only
    from collections.abc import Callable, Mapping
    from types import FrameType
    from typing import Any

    Handler = Callable[[int, FrameType | None], Any] | int | signal_enums.Handlers | None

__all__ = ["Handler", "default_signal_map", "install_signal_handlers", "resolve_signal_map"]

_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def default_signal_map() -> dict[int, object]:
    """python-daemon's default map: job-control signals ignored, SIGTERM terminates cleanly.

    SIGTSTP, SIGTTIN and SIGTTOU are ignored because a daemon has no terminal to be stopped
    by; SIGHUP and SIGINT keep their defaults.
    """
    names = {"SIGTSTP": None, "SIGTTIN": None, "SIGTTOU": None, "SIGTERM": "terminate"}
    return {getattr(signal, n): target for n, target in names.items() if hasattr(signal, n)}


def _signal_number(key: object) -> int:
    if isinstance(key, str):
        number = signal_number(key, numbers=False)  # imports the enums: only for a name
        if number is None:
            raise DaemonOptionError(f"signal_map: unknown signal name {key!r}")
        return number
    if isinstance(key, bool) or not isinstance(key, int):
        raise DaemonOptionError(
            f"signal_map: key {key!r} is not a signal number (use e.g. signal.SIGHUP)"
        )
    if key not in signal.valid_signals():
        raise DaemonOptionError(f"signal_map: {key!r} is not a valid signal number here")
    return int(key)


def resolve_signal_map(signal_map: Mapping[Any, object], owner: object) -> dict[int, Handler]:
    """Turn a signal map into ``{signum: handler}`` ready for :func:`signal.signal`.

    String targets are looked up as methods of ``owner`` (the context).  Raises
    :class:`~daemonctx.DaemonOptionError` naming the entry for an unknown signal, SIGKILL or
    SIGSTOP, an unknown method name or a target that is not callable.
    """
    if not callable(getattr(signal_map, "items", None)):
        raise DaemonOptionError(
            f"signal_map must be a mapping of signal number to handler, not {signal_map!r}"
        )
    resolved: dict[int, Handler] = {}
    for key, target in signal_map.items():
        signum = _signal_number(key)
        if signum in _UNCATCHABLE:
            raise DaemonOptionError(
                f"signal_map: {signal_name(signum)} cannot be caught or ignored"
            )
        handler: Handler
        if target is None:
            handler = signal.SIG_IGN
        elif isinstance(target, str):
            method = getattr(owner, target, None)
            if method is None or not callable(method):
                owner_name = type(owner).__name__
                raise DaemonOptionError(
                    f"signal_map[{signal_name(signum)}]: {owner_name} has no method {target!r}"
                )
            handler = method
        elif (isinstance(target, int) and not isinstance(target, bool)
              and target in (signal.SIG_DFL, signal.SIG_IGN)) or callable(target):
            handler = target
        else:
            raise DaemonOptionError(
                f"signal_map[{signal_name(signum)}]: {target!r} is not callable, "
                "a method name or None"
            )
        resolved[signum] = handler
    return resolved


def install_signal_handlers(handlers: Mapping[int, Handler]) -> None:
    """Install each handler with :func:`signal.signal`."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
