"""Real third-party programs that use python-daemon, run against daemonctx through a shim."""
