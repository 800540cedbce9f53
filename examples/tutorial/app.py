"""greeter: the tutorial's program, a small TCP service that runs as a well-behaved daemon.

    python examples/tutorial/app.py --config greeter.conf --port 8470 \\
        --pidfile run/greeter.pid --log run/greeter.log

Started from a shell, it detaches and the command returns once the service is listening (exit
status 0), or prints why it could not start (exit status 1).  Under systemd (``Type=notify``)
or as pid 1 of a container it stays in the foreground instead; ``--log -`` then sends the log
to stderr, for the journal or ``docker logs``.  SIGHUP re-reads the greeting and reopens the log
file; SIGTERM stops it cleanly and removes the pidfile.

Each client sends a name and gets one line back: ``Hello, Ada!``.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import daemonctx
from daemonctx import systemd
from daemonctx.signals import default_signal_map

log = logging.getLogger("greeter")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A greeting service, run as a daemon.")
    parser.add_argument("--config", type=Path, required=True,
                        help="file holding the greeting (re-read on SIGHUP)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8470, help="TCP port to listen on")
    parser.add_argument("--pidfile", type=Path, help="pidfile to lock while running")
    parser.add_argument("--log", default="-", help="log file, or - for stderr (the default)")
    args = parser.parse_args()
    # The daemon runs in /, so every path is made absolute while the shell's directory is known.
    args.config = args.config.resolve()
    if args.pidfile is not None:
        args.pidfile = args.pidfile.resolve()
    if args.log != "-":
        args.log = str(Path(args.log).resolve())
    return args


def setup_logging(target: str) -> logging.Handler:
    """Log to ``target`` (a file, appended to) or to stderr for ``-``."""
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


class Greeter:
    """The service: answers connections, reloads on request."""

    def __init__(self, config: Path, log_handler: logging.Handler) -> None:
        self.config = config
        self.log_handler = log_handler
        self.greeting = self.read_greeting()  # a missing config fails here, in the shell
        self.reload_requested = False

    def read_greeting(self) -> str:
        return self.config.read_text(encoding="utf-8").strip() or "Hello"

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        """The SIGHUP handler: only note the request; the main loop does the work."""
        self.reload_requested = True

    def reload(self) -> None:
        """Re-read the greeting and reopen the log file (after logrotate moved it)."""
        systemd.notify_quietly(reloading=True)  # a no-op unless systemd started us
        reopen_log(self.log_handler)
        try:
            self.greeting = self.read_greeting()
        except OSError as exc:
            log.error("reload failed, keeping greeting %r: %s", self.greeting, exc)
        else:
            log.info("reloaded: greeting is %r", self.greeting)
        systemd.notify_quietly(ready=True)

    def answer(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            name = conn.recv(256).decode(errors="replace").strip() or "stranger"
            conn.sendall(f"{self.greeting}, {name}!\n".encode())
        log.info("greeted %s", name)

    def serve_forever(self, listener: socket.socket) -> None:
        # Signals wake the loop through this socket pair (signal.set_wakeup_fd): no polling.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            events = selector.select()
            # A reload asked for before a client connected applies to that client: the
            # handler has run by now (Python runs it right after the wait returns).
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            for key, _ in events:
                if key.fileobj is listener:
                    self.answer(listener)
                else:
                    wake_r.recv(512)  # the signal numbers; the handlers already noted them


def reopen_log(handler: logging.Handler) -> None:
    """Point the log handler, and stderr, at a fresh file of the same name."""
    if not isinstance(handler, logging.FileHandler):
        return
    stream = open(handler.baseFilename, "a", encoding="utf-8")  # noqa: SIM115
    os.dup2(stream.fileno(), 2)  # tracebacks follow the log into the new file
    old = handler.setStream(stream)
    if old is not None:
        old.close()


def open_listener(host: str, port: int) -> socket.socket:
    """The socket systemd passed us (socket activation), else one of our own."""
    activated = systemd.listen_sockets()
    if activated:
        return activated[0]
    return socket.create_server((host, port))


def main() -> None:
    args = parse_args()
    try:
        handler = setup_logging(args.log)
        greeter = Greeter(args.config, handler)
    except OSError as exc:  # a missing directory or config: say so in the shell
        sys.exit(f"greeter: {exc}")
    context = daemonctx.DaemonContext(
        pidfile=daemonctx.PIDFile(args.pidfile) if args.pidfile else None,
        umask=0o022,
        stderr=sys.stderr if args.log == "-" else args.log,
        # The default map (SIGTERM: a clean exit; job-control signals ignored), plus SIGHUP.
        signal_map={**default_signal_map(), signal.SIGHUP: greeter.request_reload},
        defer_ready=True,
    )
    try:
        with context:
            listener = open_listener(args.host, args.port)
            host, port = listener.getsockname()[:2]
            log.info("listening on %s:%d", host, port)
            context.notify_ready()  # the shell's command returns 0 now; systemd gets READY=1
            try:
                greeter.serve_forever(listener)
            finally:
                log.info("stopping")
    except daemonctx.DaemonError as exc:  # refused before forking, e.g. already running
        sys.exit(f"greeter: {exc}")


if __name__ == "__main__":
    main()
