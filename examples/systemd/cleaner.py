"""cleaner: a periodic job that systemd's watchdog keeps alive (examples/systemd/cleaner.service).

    python examples/systemd/cleaner.py --directory /var/cache/cleaner --max-age 86400 --every 60

Every ``--every`` seconds it removes the regular files of ``--directory`` that were last
modified more than ``--max-age`` seconds ago.  Under systemd with ``WatchdogSec=``, the loop
that does this work also sends ``WATCHDOG=1``, at half the watchdog timeout
(:func:`daemonctx.systemd.watchdog_interval`): a round that hangs -- a network file system that
stopped answering -- stops the pings, and systemd kills and restarts the service.  Pings sent
from a separate thread would go on while the work hangs, and prove nothing.

It reports readiness (``READY=1``) once the directory is known to exist, logs to stderr (the
journal), and stops cleanly on SIGTERM with exit status 0.  Without a watchdog (started from a
shell, or a unit without ``WatchdogSec=``) it sends no pings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import daemonctx
from daemonctx import systemd

log = logging.getLogger("cleaner")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Remove old files from a directory, forever.")
    parser.add_argument("--directory", type=Path, required=True, help="the directory to clean")
    parser.add_argument("--max-age", type=float, default=86400.0,
                        help="remove files older than this many seconds (default one day)")
    parser.add_argument("--every", type=float, default=60.0,
                        help="seconds between two rounds (default 60)")
    args = parser.parse_args()
    args.directory = args.directory.resolve()  # the daemon runs in /
    return args


def remove_expired(directory: Path, max_age: float) -> int:
    """Remove the regular files of ``directory`` older than ``max_age`` seconds; say how many."""
    cutoff = time.time() - max_age
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if (entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_mtime < cutoff):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # removed by someone else meanwhile
                continue
    return removed


def clean_forever(directory: Path, max_age: float, every: float) -> None:
    """Run a round every ``every`` seconds; between rounds, ping the watchdog if it is armed."""
    ping_every = systemd.watchdog_interval()  # None: nobody watches, send nothing
    next_round = time.monotonic()
    while True:
        if time.monotonic() >= next_round:
            removed = remove_expired(directory, max_age)
            if removed:
                log.info("removed %d expired files", removed)
            next_round = time.monotonic() + every
        if ping_every is not None:
            systemd.notify_quietly(watchdog=True)
        wait = next_round - time.monotonic()
        if ping_every is not None:
            wait = min(wait, ping_every)
        time.sleep(max(wait, 0.0))  # SIGTERM ends the sleep: DaemonContext exits with status 0


def main() -> None:
    args = parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    if not args.directory.is_dir():
        sys.exit(f"cleaner: --directory {args.directory} is not a directory")
    context = daemonctx.DaemonContext(umask=0o022, stderr=sys.stderr, defer_ready=True)
    with context:
        log.info("cleaning %s every %g s: files older than %g s", args.directory, args.every,
                 args.max_age)
        context.notify_ready()
        try:
            clean_forever(args.directory, args.max_age, args.every)
        finally:
            log.info("stopping")


if __name__ == "__main__":
    main()
