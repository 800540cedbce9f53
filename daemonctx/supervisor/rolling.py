"""A rolling restart (SIGHUP): every worker replaced, one at a time, never fewer than before.

:class:`RollingRestart` owns the whole state of one: the task ids still to replace and the step
in progress (the old worker, its successor).  For each task id in turn: a successor is started
with the same task id; once it is ready the old worker is retired (SIGTERM, then the graceful
timeout); once the old worker has exited, the next task id follows.  A successor that dies before
it is ready abandons the restart: the old workers keep serving.

The master asks it what to do next (:meth:`RollingRestart.next_action`) and tells it what
happened (:meth:`forked`, :meth:`exited`); it never forks or signals anything itself, so tests
drive it with plain records.  Dropping the object abandons the restart (a stop does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["Finished", "Retire", "RollingRestart", "StartSuccessor"]


class Worker(Protocol):
    """What a rolling restart looks at in the master's record of a worker."""

    task_id: int
    started: float
    ready: bool
    retiring: bool


class StartSuccessor(NamedTuple):
    """Start a new worker for ``task_id``, which will replace ``old``."""

    task_id: int
    old: Worker


class Retire(NamedTuple):
    """The successor is ready: stop ``worker``, the old one, gracefully."""

    worker: Worker


class Finished(NamedTuple):
    """Every worker started before the restart was asked for has been replaced."""


class RollingRestart:
    """One rolling restart in progress; ``announce``: tell systemd when it is over."""

    def __init__(self, tasks: Iterable[int], since: float, *, announce: bool) -> None:
        self._pending = sorted(tasks)
        self.since = since
        self.announce = announce
        self._old: Worker | None = None
        self._successor: Worker | None = None

    def widen(self, tasks: Iterable[int], since: float) -> None:
        """Another SIGHUP: replace every worker started before ``since`` too."""
        self._pending = sorted(set(self._pending) | set(tasks))
        self.since = since

    def next_action(self, current_of: Callable[[int], Worker | None]
                    ) -> StartSuccessor | Retire | Finished | None:
        """What the master should do now (``None``: wait for a worker to get ready or exit).

        ``current_of(task_id)`` is the master's current worker of a task id (``None`` if the
        task id is gone, scaled down by SIGTTOU).  A worker started after the restart was asked
        for is already new; one that is still booting is replaced once it is ready.
        """
        old = self._old
        if old is not None:
            successor = self._successor
            if successor is not None and successor.ready and not old.retiring:
                return Retire(old)
            return None  # the successor is being forked, or booting; or the old one stopping
        while self._pending:
            task = self._pending[0]
            current = current_of(task)
            if current is None or current.retiring or current.started > self.since:
                self._pending.pop(0)
                continue
            if not current.ready:
                return None
            self._pending.pop(0)
            self._old = current
            return StartSuccessor(task, current)
        return Finished()

    def forked(self, worker: Worker) -> None:
        """The master forked ``worker``: the successor, if the step in progress waits for one of
        its task id (the master forks workers from one queue, in order)."""
        old = self._old
        if old is not None and self._successor is None and worker.task_id == old.task_id \
                and worker is not old:
            self._successor = worker

    def exited(self, worker: Worker) -> Worker | None:
        """A worker exited; if that abandons the restart, the old worker to keep, else None.

        The old worker's exit ends the step (the next task id follows); a successor that dies
        before it is ready abandons the whole restart.
        """
        if worker is self._old:
            self._old = self._successor = None
            return None
        if worker is self._successor and not worker.ready:
            old = self._old
            self._old = self._successor = None
            return old
        return None
