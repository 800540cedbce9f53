"""Paths as a chrooted daemon sees them, and as the host does: the one mapping between the two.

:func:`host_path` turns a path seen from inside a chroot into the host's; :func:`path_in_root`
is its inverse.  Used where options are resolved (``daemonctx.options``), by the pidfile's
pre-fork check and by the command; it imports nothing of daemonctx.
"""

from __future__ import annotations

import os

__all__ = ["host_path", "path_in_root"]


def host_path(root: str | None, inside: str, cwd: str = "/") -> str:
    """The host's path of ``inside``, a path as the daemon sees it in ``root`` from ``cwd``.

    The one mapping between the two views of a chroot (:func:`path_in_root` is its inverse).
    """
    seen = os.path.normpath(os.path.join(cwd, inside))
    if root is None:
        return os.path.abspath(seen)
    return os.path.join(os.path.abspath(root), seen.lstrip("/"))


def path_in_root(root: str, host: str) -> str | None:
    """The path the daemon sees, in ``root``, for the host's absolute path ``host``; None if
    ``host`` is not below ``root`` (the daemon could not reach it)."""
    relative = os.path.relpath(host, root)
    if relative == os.curdir or relative.startswith(os.pardir):
        return None
    return "/" + relative
