"""Pre-fork workers: restarted when they crash, stopped when asked, never outliving their master.

Two ways in:

* :func:`fork_processes` keeps tornado 6's contract, so code written for
  ``tornado.process.fork_processes`` behaves the same (same return values, same restart
  counting), and gains what tornado lacks: SIGTERM to the master stops every worker, giving up
  stops the healthy workers first, a killed master takes its workers with it.
* :class:`Supervisor`, configured by a :class:`RestartPolicy`, adds a restart budget as a rate,
  exponential backoff, boot-failure detection, readiness, rolling restarts and scaling::

      supervisor = Supervisor(4, policy=RestartPolicy(restart_burst=5, restart_interval=10))
      worker = supervisor.run()          # returns the task id in each worker
      if worker is None:                 # the master: the service has stopped
          sys.exit(0)
      serve(listening_socket)            # worker code; call notify_worker_ready() once serving

The master blocks in ``poll`` on a signal wake-up fd and a readiness pipe, never polling on a
timer: its idle CPU is zero.  Signal handlers only record the signal; the loop dispatches them to
one method each (``handle_term``, ``handle_hup``...), gunicorn's arbiter model:

* TERM / INT: graceful stop (TERM to every worker, KILL after ``graceful_timeout``); a second
  TERM / INT, or QUIT, kills them at once.
* HUP: rolling restart, one worker at a time, never fewer workers than before.
* TTIN / TTOU: one worker more / fewer (never fewer than one).
* CHLD: wakes the loop, which reaps every child with ``waitpid(-1, WNOHANG)`` -- unknown ones
  too (orphans reparented to a master that is pid 1 or a subreaper), so no zombie accumulates.

The package, one job per module: ``master`` (the loop, the signals, :class:`Supervisor` and
:func:`fork_processes`), ``policy`` (:class:`RestartPolicy` and the restart decisions, pure),
``rolling`` (one rolling restart's state) and ``worker`` (the worker's side: task id,
readiness, its master's death).
"""

from __future__ import annotations

from daemonctx.supervisor.master import Supervisor, SupervisorError, fork_processes
from daemonctx.supervisor.policy import RestartPolicy
from daemonctx.supervisor.worker import notify_worker_ready, parent_death_fd, task_id

__all__ = [
    "RestartPolicy",
    "Supervisor",
    "SupervisorError",
    "fork_processes",
    "notify_worker_ready",
    "parent_death_fd",
    "task_id",
]
