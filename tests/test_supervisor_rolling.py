"""The rolling restart's decisions, driven without forking (issue 15, #4).

:class:`daemonctx.supervisor.rolling.RollingRestart` is told what the master did and asked what
to do next; here the master is a few plain records, so every step of a SIGHUP can be checked in
isolation: one worker at a time, the old one retired only once its successor is ready, a
successor that dies while booting abandons the restart, a worker started after the request is
already new, and a second SIGHUP widens the restart in progress.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemonctx.supervisor.rolling import Finished, Retire, RollingRestart, StartSuccessor


@dataclass(eq=False)
class Record:
    task_id: int
    started: float
    ready: bool = True
    retiring: bool = False


class Master:
    """The current worker of each task id, as the master keeps them."""

    def __init__(self, *records: Record) -> None:
        self.current = {r.task_id: r for r in records}

    def current_of(self, task: int) -> Record | None:
        return self.current.get(task)

    def fork(self, task: int, at: float, rolling: RollingRestart) -> Record:
        worker = Record(task, at, ready=False)
        self.current[task] = worker
        rolling.forked(worker)
        return worker


def test_each_worker_is_replaced_in_turn_and_retired_only_once_its_successor_is_ready() -> None:
    old = [Record(0, 1.0), Record(1, 1.0)]
    master = Master(*old)
    rolling = RollingRestart([1, 0], since=5.0, announce=False)
    for task in (0, 1):
        assert rolling.next_action(master.current_of) == StartSuccessor(task, old[task])
        assert rolling.next_action(master.current_of) is None  # not forked yet
        successor = master.fork(task, 6.0, rolling)
        assert rolling.next_action(master.current_of) is None  # booting
        successor.ready = True
        assert rolling.next_action(master.current_of) == Retire(old[task])
        old[task].retiring = True
        assert rolling.next_action(master.current_of) is None  # the old one is stopping
        assert rolling.exited(old[task]) is None
    assert rolling.next_action(master.current_of) == Finished()


def test_a_successor_dying_before_it_is_ready_abandons_and_keeps_the_old_worker() -> None:
    old = Record(0, 1.0)
    master = Master(old, Record(1, 1.0))
    rolling = RollingRestart([0, 1], since=5.0, announce=True)
    assert rolling.next_action(master.current_of) == StartSuccessor(0, old)
    successor = master.fork(0, 6.0, rolling)
    assert rolling.exited(successor) is old


def test_an_unrelated_fork_of_another_task_is_not_taken_for_the_successor() -> None:
    old = Record(0, 1.0)
    master = Master(old, Record(1, 1.0))
    rolling = RollingRestart([0, 1], since=5.0, announce=False)
    assert rolling.next_action(master.current_of) == StartSuccessor(0, old)
    crashed_replacement = master.fork(1, 6.0, rolling)  # task 1 crashed and was restarted
    crashed_replacement.ready = True
    assert rolling.next_action(master.current_of) is None  # still waiting for task 0's
    successor = master.fork(0, 6.1, rolling)
    successor.ready = True
    assert rolling.next_action(master.current_of) == Retire(old)


def test_workers_started_after_the_request_or_gone_are_skipped() -> None:
    master = Master(Record(0, 9.0), Record(2, 1.0))  # 0 is new, 1 was scaled down
    rolling = RollingRestart([0, 1, 2], since=5.0, announce=False)
    assert rolling.next_action(master.current_of) == StartSuccessor(2, master.current[2])


def test_a_booting_worker_is_replaced_once_it_is_ready() -> None:
    booting = Record(0, 1.0, ready=False)
    master = Master(booting)
    rolling = RollingRestart([0], since=5.0, announce=False)
    assert rolling.next_action(master.current_of) is None
    booting.ready = True
    assert rolling.next_action(master.current_of) == StartSuccessor(0, booting)


def test_a_second_request_widens_the_restart_to_the_workers_started_meanwhile() -> None:
    old = Record(0, 1.0)
    master = Master(old)
    rolling = RollingRestart([0], since=5.0, announce=False)
    assert rolling.next_action(master.current_of) == StartSuccessor(0, old)
    successor = master.fork(0, 6.0, rolling)
    successor.ready = True
    assert rolling.next_action(master.current_of) == Retire(old)
    old.retiring = True
    rolling.widen([0], since=7.0)  # SIGHUP again: the successor (started at 6) goes too
    assert rolling.exited(old) is None
    assert rolling.next_action(master.current_of) == StartSuccessor(0, successor)
