"""The tutorial's starting point: a greeting service that runs in the foreground of a terminal.

    python examples/tutorial/plain.py greeter.conf 8470

It answers every TCP connection on 127.0.0.1 with the greeting read from the config file and
the name the client sent.  Ctrl-C stops it.  The tutorial turns it, step by step, into
examples/tutorial/app.py, a daemon.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def main() -> None:
    config, port = Path(sys.argv[1]), int(sys.argv[2])
    greeting = config.read_text(encoding="utf-8").strip() or "Hello"
    listener = socket.create_server(("127.0.0.1", port))
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            name = conn.recv(256).decode(errors="replace").strip() or "stranger"
            conn.sendall(f"{greeting}, {name}!\n".encode())
        print(f"greeted {name}", flush=True)


if __name__ == "__main__":
    main()
