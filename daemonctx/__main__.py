"""``python -m daemonctx``: the ``daemonctx`` command (see :mod:`daemonctx.cli`)."""

from daemonctx.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
