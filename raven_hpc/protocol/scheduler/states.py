"""States of tasks, copies and workers, the transitions a copy may make, and
the records the scheduler hands out (:class:`Verdict`, :class:`AuditVerdict`).
No policy here: what may happen, not what should."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from ...errors import ProtocolError
from ...ledger_schema import ACCEPTED, DUPLICATE, GRAD, LATE, LOST_COPY, REJECTED, SKIPPED

__all__ = [
    "ASSIGNED", "HELD", "ACCEPTED", "DUPLICATE", "LATE", "REJECTED", "LOST", "SKIPPED", "COPY_STATES",
    "TRANSITIONS", "PENDING", "RUNNING", "DONE", "CLOSED", "ACTIVE", "EXCLUDED", "DRAINED",
    "GONE", "MOVED", "FP_SQ", "FP_LOSS", "FP_CORRECT", "CREDITED_COPIES", "OVERHEAD_SAMPLES", "agree", "Task", "Copy",
    "Verdict", "AuditVerdict", "Worker", "Assignment", "check_move",
]

# States of a copy and the moves allowed between them.  The final states are
# the ledger's copy states (a copy record carries one), spelt once in
# raven_hpc.ledger_schema:
#   ACCEPTED   the result used for the update
#   DUPLICATE  good result after the task was already accepted
#   LATE       result for a task that is closed (step moved on)
#   REJECTED   result that failed checks (non-finite, disagreement)
#   LOST       worker left before returning it
#   SKIPPED    the worker no longer had the parameters it needed
ASSIGNED = "assigned"      # sent to a worker, result not back yet
HELD = "held"              # result back and kept, waiting for a quorum to agree
LOST = LOST_COPY
COPY_STATES = (ASSIGNED, HELD, ACCEPTED, DUPLICATE, LATE, REJECTED, LOST, SKIPPED)
TRANSITIONS = {
    ASSIGNED: {HELD, ACCEPTED, DUPLICATE, LATE, REJECTED, LOST, SKIPPED},
    HELD: {ACCEPTED, DUPLICATE, REJECTED, LATE},
    ACCEPTED: {REJECTED},    # only by the master's arbitration, before the step is applied
    DUPLICATE: set(),
    LATE: set(),
    REJECTED: set(),
    LOST: set(),
    SKIPPED: set(),
}


def check_move(task_id: int, copy: "Copy", new: str) -> None:
    """Refuse (ProtocolError) a move of ``copy``, of task ``task_id``, to
    state ``new`` that :data:`TRANSITIONS` does not allow."""
    if new not in TRANSITIONS[copy.state]:
        raise ProtocolError(
            f"illegal transition of task {task_id} copy on rank {copy.rank}: {copy.state} -> {new}"
        )


# Task states.
PENDING = "pending"        # needs (more) copies assigned
RUNNING = "running"        # every wanted copy is out, none accepted yet
DONE = "done"              # one copy accepted
CLOSED = "closed"          # dropped without result (step abandoned)

# Worker states (for reports; ``live`` says whether it gets work).
ACTIVE = "active"
EXCLUDED = "excluded"
DRAINED = "drained"
GONE = "lost"
MOVED = "moved"      # re-attached to another leader (its collector released its group): never readmitted here

#: fingerprint layout: projections..., squared norm, loss sum, correct count
FP_SQ = -3
FP_LOSS = -2
FP_CORRECT = -1
CREDITED_COPIES = 3


def agree(a: Sequence[float], b: Sequence[float], rtol: float) -> tuple[bool, float]:
    """Whether two fingerprints agree to ``rtol``; and by how much they differ
    in units of the tolerance (<= 1 agrees).

    Projections must match to ``rtol * ||g||``, the squared norms to
    ``2 rtol ||g||^2``, the loss sums to ``rtol`` relative, the correct counts
    within one (an arg-max tie can flip under round-off).
    """
    sq = max(a[FP_SQ], b[FP_SQ], 0.0)
    norm = math.sqrt(sq)
    tiny = 1e-30
    worst = 0.0
    for k in range(len(a) - 3):
        worst = max(worst, abs(a[k] - b[k]) / (rtol * norm + tiny))
    worst = max(worst, abs(a[FP_SQ] - b[FP_SQ]) / (2.0 * rtol * sq + tiny))
    loss_scale = max(abs(a[FP_LOSS]), abs(b[FP_LOSS]))
    worst = max(worst, abs(a[FP_LOSS] - b[FP_LOSS]) / (rtol * loss_scale + tiny))
    if abs(a[FP_CORRECT] - b[FP_CORRECT]) > 1.0:
        worst = max(worst, abs(a[FP_CORRECT] - b[FP_CORRECT]))
    if not all(math.isfinite(v) for v in (*a, *b)):
        worst = math.inf
    return bool(worst <= 1.0), float(worst)


#: a worker's overhead per copy -- the time from assignment to the master
#: holding its result that compute does not explain (parameters and task
#: message out, result back, wake-ups on both sides) -- is the median of its
#: last this many copies that were first in its queue (a queued copy also
#: waits for the one before it).  Backups compare predicted *arrivals*, not
#: compute finishes: for a small task the overhead can exceed the compute, so
#: a backup that would finish its compute first may still land after the slow
#: copy it races -- wasted work that also delays the fast worker's next step.
#: The median of a few recent samples follows a changing load while one
#: outlier (a descheduled wake-up) does not move it.
OVERHEAD_SAMPLES = 8


@dataclass
class Task:
    """A unit of work.  ``snippets`` are snippet ids of ``split``."""

    task_id: int
    step: int
    snippets: tuple
    kind: str = GRAD            # GRAD or EVAL (raven_hpc.ledger_schema)
    split: str = "train"
    version: int = 0            # parameter version the result must be computed on
    samples: int = 0            # number of samples (for speed accounting)
    state: str = PENDING
    copies: list = field(default_factory=list)
    quorum: int = 1             # agreeing copies needed before a result is applied
    wanted: int = 1             # copies to have out at once
    sampled: bool = False       # raised to quorum 2 by sampled verification
    accepted_fp: tuple | None = None
    accepted_verified: bool = False   # the applied result was agreed by a quorum / the master
    credited: int = 0
    merged: list = field(default_factory=list)   # ids of queued tasks absorbed into this chunk
    verify_unit: bool = False   # made to be the sampled-verification copy (a small chunk)
    audit: str | None = None    # trusted audit of the accepted result: None, "pending", "ok", "failed"

    def message(self) -> dict:
        """The assignment as sent to a worker (small, pickled)."""
        return {
            "task": self.task_id,
            "step": self.step,
            "kind": self.kind,
            "split": self.split,
            "version": self.version,
            "snippets": list(self.snippets),
        }


@dataclass
class Copy:
    task_id: int
    rank: int
    assigned_at: float
    state: str = ASSIGNED
    finished_at: float | None = None
    reason: str = ""
    backup: bool = False
    probe: bool = False         # an extra copy to re-measure a worker's speed (_probe)
    audit: bool = False         # a trusted rank's recomputation of an accepted result
    head: bool = False          # first in its worker's queue when given (nothing to wait for)
    compute_s: float | None = None
    fp: tuple | None = None
    verified: bool = False
    agreed: bool | None = None
    credited: bool = False
    disputed: bool = False      # disagreed with an unverified accepted result
    event: dict | None = field(default=None, repr=False, compare=False)   # its ledger record, once final


@dataclass(frozen=True)
class Verdict:
    """What the master must do with a result that arrived.

    ``accept``: add this result to the step's update now (exactly one verdict
    per task ever says so).  ``hold``: keep the result's buffer, the task
    waits for more copies (it is released by a later verdict: the master
    drops held buffers of a task once it is done).  ``arbitrate``: no quorum
    can form; the master must compute the task itself and call
    :meth:`Scheduler.arbitrate`.
    """

    accept: bool
    state: str
    reason: str = ""
    hold: bool = False
    arbitrate: bool = False
    audit: "AuditVerdict | None" = None   # the result was a trusted rank's audit copy


@dataclass(frozen=True)
class AuditVerdict:
    """The outcome of a trusted audit (:meth:`Scheduler.audit`).

    ``ranks``: the workers whose copies agreed with the audited (accepted)
    value.  When ``ok`` is False they are ``guilty`` -- proven wrong and
    excluded -- and ``exonerated`` lists the ranks whose strikes came from
    votes that guilty ranks alone won (cleared; readmitted when excluded).
    ``rollback_to`` is the earliest step at which a result vouched for by
    guilty ranks only was applied (None: none before the current step); the
    run must go back to before it, since those results cannot be trusted.
    """

    ok: bool
    task_id: int
    step: int
    ranks: tuple
    guilty: tuple = ()
    exonerated: tuple = ()
    rollback_to: int | None = None


@dataclass
class Worker:
    rank: int
    live: bool = True
    accepting: bool = True                          # False while drained
    status: str = ACTIVE
    outstanding: set = field(default_factory=set)   # task ids with an ASSIGNED copy
    done: int = 0
    sec_per_sample: float | None = None             # EWMA of measured speed
    last_heard: float | None = None                 # last result (or assignment start)
    strikes: int = 0
    probation_left: int = 0                         # steps of probation still to serve
    excluded_at: int | None = None                  # step it was excluded at
    verify_credit: float = 0.0                      # sampled verification quota
    measured_step: int | None = None                # step of the task its speed was last learnt from
    probing: bool = False                           # a probe is out: its result replaces the estimate
    probe_step: int | None = None                   # step of the last probe given to it
    probe_wait: int = 0                             # steps from a measurement to its next probe (0: reprobe_steps)
    given_step: int | None = None                   # step of the last copy given to it
    overheads: deque = field(default_factory=lambda: deque(maxlen=OVERHEAD_SAMPLES))
    overhead_s: float = 0.0                         # median of ``overheads`` (0 while none is known)
    host: str | None = None                         # node name (copies of a voted task go to distinct hosts)
    strike_log: list = field(default_factory=list)  # (step, accusers or None, reason) per strike held
    slots: int = 1                                  # prefetch multiplier (a collector: its workers)

    def full(self, prefetch: int) -> bool:
        """Holds as many copies as it may (``prefetch`` per slot)."""
        return len(self.outstanding) >= prefetch * self.slots

    @property
    def suspect(self) -> bool:
        return self.strikes > 0 or self.probation_left > 0


class Assignment(NamedTuple):
    """Send ``task`` to ``rank`` (what :meth:`Scheduler.assign`,
    :meth:`Scheduler.backups` return; it unpacks as ``rank, task``)."""

    rank: int
    task: Task
