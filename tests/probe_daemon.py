"""A configurable daemon for the tests: detaches with DaemonContext, then waits for signals.

    python tests/probe_daemon.py CONFIG_JSON

CONFIG_JSON keys (all optional but ``pid_path``):

* ``options``: keyword arguments for DaemonContext (JSON values; ``pidfile`` is a path wrapped
  in :class:`daemonctx.PIDFile`);
* ``pid_path``: where the daemon writes its pid once open() returned (path as the daemon sees
  it, so inside a chroot it is relative to the new root);
* ``atexit_path``: the daemon appends ``atexit <pid>`` there when its atexit handlers run;
* ``stray_fds``: fds opened (on /dev/null, inheritable) in the launcher before ``open()``;
* ``preserve``: fds from ``stray_fds`` to pass in ``files_preserve`` (as a tuple);
* ``nofile``: ``[soft, hard]`` RLIMIT_NOFILE, set after importing daemonctx, before strays;
* ``lower_nofile``: a soft limit set after the strays are opened (below some of them);
* ``block`` / ``ignore``: signal names blocked / ignored in the launcher before ``open()``;
* ``log_path``: a :class:`logging.FileHandler` is configured there before ``open()`` and the
  daemon logs ``hello from <pid>`` through it;
* ``fork_worker``: the daemon forks a child that exits through ``sys.exit(0)`` (running atexit)
  before the pid is written;
* ``print_before``: text printed (not flushed) before ``open()``;
* ``print_after``: text printed and flushed by the daemon (to its stdout target).
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import daemonctx


def main() -> None:
    config = json.loads(sys.argv[1])
    options = dict(config.get("options", {}))
    if "pidfile" in options:
        options["pidfile"] = daemonctx.PIDFile(options["pidfile"])
    if "nofile" in config:
        resource.setrlimit(resource.RLIMIT_NOFILE, tuple(config["nofile"]))
    for fd in config.get("stray_fds", []):
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, fd)
        os.close(null)
    if "lower_nofile" in config:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (config["lower_nofile"], hard))
    if config.get("preserve"):
        options["files_preserve"] = tuple(config["preserve"])
    if config.get("block"):
        signal.pthread_sigmask(signal.SIG_BLOCK, [getattr(signal, s) for s in config["block"]])
    for name in config.get("ignore", []):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    logger = None
    if "log_path" in config:
        import logging

        logging.basicConfig(filename=config["log_path"], level=logging.INFO)
        logger = logging.getLogger("probe")
    if "print_before" in config:
        print(config["print_before"])
    atexit_path = config.get("atexit_path")

    with daemonctx.DaemonContext(**options):
        if atexit_path:
            atexit.register(lambda: _append(atexit_path, f"atexit {os.getpid()}\n"))
        if logger is not None:
            logger.info("hello from %d", os.getpid())
        if "print_after" in config:
            print(config["print_after"], flush=True)
        if config.get("fork_worker"):
            child = os.fork()
            if child == 0:
                sys.exit(0)
            os.waitpid(child, 0)
        tmp = config["pid_path"] + ".tmp"
        with open(tmp, "w") as out:
            out.write(str(os.getpid()))
        os.rename(tmp, config["pid_path"])
        park()


def park() -> None:
    """Wait for signals forever, losing none, and opening no fd (the tests count them).

    Not a loop of ``signal.pause()``: a signal that arrives between the interpreter's last
    check and ``pause()`` is handled by the C handler only, and ``pause()`` then waits for the
    next one.  A short sleep bounds that window: the Python handler runs when it returns.
    """
    while True:
        time.sleep(0.05)


def _append(path: str, text: str) -> None:
    with open(path, "a") as out:
        out.write(text)


if __name__ == "__main__":
    main()
