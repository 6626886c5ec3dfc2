"""The scheduler: which worker computes which task, and which result counts.

Pure by design: no MPI, no files, no clock.  The master loop feeds it events
(``submit``, ``assign``, ``complete``, ``remove_worker`` ...) with the time as
an argument and carries out what it answers.  Every state change of a task
copy goes through :meth:`Scheduler._move`, checked against
:data:`TRANSITIONS`, so tests can drive it exhaustively without mpirun.

Vocabulary
----------
task
    (step, task id, snippet ids, kind) -- the unit of work.  A step's snippets
    are cut into tasks; every task of a step must be *accepted exactly once*,
    which is how each snippet contributes to the update exactly once.
chunk
    tasks of one step merged into one before their first copy is given out
    (``max_chunk``): a worker computes them as one batch and returns one
    result, and a slow worker is given only the share it can finish in time
    (:meth:`Scheduler._merge`).  A chunk is a task like any other; it lists
    the ids it absorbed in ``merged``.
copy
    one assignment of a task to one worker.  With ``redundancy = R`` a task
    gets R copies on distinct workers; the first acceptable one is used, the
    others are compared and credited (or dropped when they come too late).

Proof-of-Calculation
--------------------
Every gradient result comes with a *fingerprint* (a few shared-seed random
projections of the gradient, its squared norm, the loss; see
:func:`raven_hpc.kernels.reduce.fingerprint`).  Two honest copies of a task
agree to float32 round-off (:func:`agree`).

* **Quorum.**  A task with ``quorum = q >= 2`` is *held* until q copies agree;
  then one of them is applied and the others are credited.  A copy that
  disagrees with the quorum is rejected and its worker gets a strike.  When
  the copies out can no longer form a quorum, the task gets another copy on
  a worker that has not tried it, or -- when none is left -- the verdict asks
  the master to *arbitrate*: it computes the task itself (it is trusted) and
  calls :meth:`Scheduler.arbitrate`.
* **Sampled verification.**  ``verify = f`` raises a fraction f of the other
  tasks to quorum 2, spread evenly over each worker's work (every 1/f-th task
  of each worker, from a seeded phase; a chunk of k tasks counts k).  With
  chunks the verified copy is a small chunk of as many tasks as there are
  workers, so its second copy adds about one task to each worker's step; a
  wrong worker is caught within ~1/f tasks of its own work.  Workers with a strike, or on probation after
  readmission, have every task verified.
* **Strikes.**  Non-finite results and disagreements give strikes;
  ``max_strikes`` exclude the worker (its outstanding and held copies are
  dropped, none of its disputed results is used).  After
  ``probation_steps`` steps it is readmitted on probation.
* **Disputes under quorum 1.**  With ``redundancy >= 2`` and ``quorum = 1``
  the first result is applied at once; a later copy that disagrees with it
  makes the master compute the task itself.  If that proves the applied
  result wrong while its step is still open, the master swaps it for its own
  (:meth:`Scheduler.arbitrate` with ``replace``): the wrong copy becomes
  *rejected* and the master's copy the accepted one.  A dispute settled after
  the step's update was applied can only strike the worker: quorum >= 2 (or
  sampled verification) is what guarantees that no wrong result is used.
* **Fastest three.**  The first three copies of a task that were accepted or
  agreed with the accepted result are *credited*.
* **Stragglers.**  :meth:`Scheduler.backups` gives a task whose copies sit on
  a slow worker a speculative copy on an idle one when that one's result is
  predicted to *arrive* first -- compute time plus each worker's measured
  overhead (messages and wake-ups around a task, see :data:`OVERHEAD_SAMPLES`);
  :meth:`Scheduler.hung` names workers silent past a timeout, which the master
  then removes.
"""
from __future__ import annotations

from .core import Scheduler
from .forecast import REPROBE_MAX_FACTOR, REPROBE_STEPS, SLOWER_MARGIN, STRAGGLER_RATIO, Plan
from .states import (ACCEPTED, ACTIVE, ASSIGNED, CLOSED, COPY_STATES, CREDITED_COPIES, DONE, DRAINED, DUPLICATE,
                     EXCLUDED, FP_CORRECT, FP_LOSS, FP_SQ, GONE, HELD, LATE, LOST, MOVED, OVERHEAD_SAMPLES,
                     PENDING, REJECTED, RUNNING, SKIPPED, TRANSITIONS, Assignment, AuditVerdict, Copy, Task, Verdict,
                     Worker, agree, check_move)

__all__ = [
    "Task", "Copy", "Verdict", "AuditVerdict", "Assignment", "Scheduler", "Plan", "Worker", "TRANSITIONS",
    "COPY_STATES", "agree", "FP_LOSS", "FP_CORRECT", "FP_SQ", "ASSIGNED", "HELD", "ACCEPTED",
    "DUPLICATE", "LATE", "REJECTED", "LOST", "SKIPPED", "PENDING", "RUNNING", "DONE", "CLOSED", "ACTIVE",
    "EXCLUDED", "DRAINED", "GONE", "MOVED", "CREDITED_COPIES", "OVERHEAD_SAMPLES", "REPROBE_STEPS", "REPROBE_MAX_FACTOR",
    "SLOWER_MARGIN", "STRAGGLER_RATIO", "check_move",
]
