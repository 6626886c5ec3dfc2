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

import heapq
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..errors import ProtocolError

__all__ = [
    "Task", "Copy", "Verdict", "AuditVerdict", "Scheduler", "TRANSITIONS", "COPY_STATES", "agree",
    "FP_LOSS", "FP_CORRECT", "FP_SQ",
]

# States of a copy and the moves allowed between them.
ASSIGNED = "assigned"      # sent to a worker, result not back yet
HELD = "held"              # result back and kept, waiting for a quorum to agree
ACCEPTED = "accepted"      # the result used for the update
DUPLICATE = "duplicate"    # good result after the task was already accepted
LATE = "late"              # result for a task that is closed (step moved on)
REJECTED = "rejected"      # result that failed checks (non-finite, disagreement)
LOST = "lost"              # worker left before returning it
SKIPPED = "skipped"        # the worker no longer had the parameters it needed
COPY_STATES = (ASSIGNED, HELD, ACCEPTED, DUPLICATE, LATE, REJECTED, LOST, SKIPPED)
FINAL_STATES = (ACCEPTED, DUPLICATE, LATE, REJECTED, LOST, SKIPPED)
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


#: a worker idle this many steps since its speed was last measured gets an
#: extra copy of one task as a probe, whatever its estimate says (see :meth:`Scheduler._probe`)
REPROBE_STEPS = 10

#: a worker whose probe did not earn it any work before its next probe is due
#: waits twice as long for the one after, up to this many times
#: ``reprobe_steps``; any work it is given resets the wait.  A probe costs the
#: worker holding the task's other copy a little (the task is computed apart
#: from that worker's chunk: ~1-1.5 ms of a 12 ms step in the straggler
#: benchmark), so a worker that stays too slow is probed ever more rarely,
#: while one that recovers is noticed within ``reprobe_steps`` x this.
REPROBE_MAX_FACTOR = 8

#: a worker's overhead per copy -- the time from assignment to the master
#: holding its result that compute does not explain (parameters and task
#: message out, result back, wake-ups on both sides) -- is the median of its
#: last this many copies that were first in its queue (a queued copy also
#: waits for the one before it).  Backups compare predicted *arrivals*: on a
#: shared node a 32-sample backup on the fast worker costs ~1 ms of compute
#: but ~3 ms until it lands, while the slow copy it would race is ~2 ms from
#: landing -- judged by compute alone such backups were wasted (and delayed
#: the fast worker's next step) in a third of the straggler benchmark's steps.
OVERHEAD_SAMPLES = 8

#: a slower worker gets a task only when predicted to finish it this much sooner
#: (relative to now) than the fastest would: its predictions are the less
#: certain ones, and on a shared node its compute slows the others
SLOWER_MARGIN = 0.1

#: a worker at least this many times slower than the fastest is ranked by its
#: predicted *arrival*: its finish time plus how much more overhead per copy it
#: has than the fastest worker (see :data:`OVERHEAD_SAMPLES`).  A straggler's
#: share is one small chunk whose result lands after the fast worker's whole
#: share otherwise -- measured in the straggler benchmark (4x slow rank, 256
#: samples per step): steps it took part in ran 0.5-5 ms *longer* than steps
#: without it, although its compute was predicted to finish in time.
#: Workers of about equal speed are not affected (their overheads differ
#: mostly by the order the master serves them).
STRAGGLER_RATIO = 2.0


def _effective(plan: dict, rank: int, speed: float, finish: float) -> float:
    """The predicted finish time worker ``rank`` of ``speed`` (s/sample) is
    ranked by: the fastest worker's as predicted, a slower one's stretched by
    :data:`SLOWER_MARGIN`, a much slower one's (:data:`STRAGGLER_RATIO`) also
    moved by its extra overhead."""
    fastest = plan["fastest"]
    if speed <= fastest * 1.0001:
        return finish
    now = plan["now"]
    t = now + (finish - now) * (1.0 + SLOWER_MARGIN)
    if speed >= STRAGGLER_RATIO * fastest:
        t += max(0.0, plan["overhead"].get(rank, 0.0) - plan["fastest_overhead"])
    return t


def _place(cands: list, plan: dict, spp: dict, first: int) -> dict:
    """Earliest-finish placement of ``cands`` (in order) on the workers of
    ``spp`` from their predicted free times ``plan``: ``{task id: rank}``.
    Ties go to ``first``, then to the lower rank.  With equal-sized tasks
    (the usual case) a heap does it in O(tasks x log workers)."""
    load = {r: plan[r] for r in spp}
    placed = {}

    def key(r, samples):
        return (_effective(plan, r, spp[r], load[r] + samples * spp[r]), r != first, r)

    sizes = {t.samples for t in cands}
    if len(sizes) == 1:
        (size,) = sizes
        heap = [key(r, size) for r in spp]
        heapq.heapify(heap)
        for t in cands:
            r = heapq.heappop(heap)[2]
            load[r] += size * spp[r]
            placed[t.task_id] = r
            heapq.heappush(heap, key(r, size))
        return placed
    for t in cands:
        r = min(spp, key=lambda r: key(r, t.samples))
        load[r] += t.samples * spp[r]
        placed[t.task_id] = r
    return placed


@dataclass
class Task:
    """A unit of work.  ``snippets`` are snippet ids of ``split``."""

    task_id: int
    step: int
    snippets: tuple
    kind: str = "grad"          # "grad" or "eval"
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
class _Worker:
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

    @property
    def suspect(self) -> bool:
        return self.strikes > 0 or self.probation_left > 0


class Scheduler:
    """Assigns tasks to workers and decides which results count.

    Parameters
    ----------
    workers
        ranks that compute (the master's own rank when it trains alone).
    redundancy
        copies per task on distinct workers (capped by the live workers).
    prefetch
        most copies outstanding per worker.
    quorum, verify, rtol, max_strikes, probation_steps, backup_factor, seed
        Proof-of-Calculation settings (see the module docstring and the
        ``[poc]`` config section).
    """

    def __init__(self, workers: Iterable[int], *, redundancy: int = 1, prefetch: int = 2, quorum: int = 1,
                 verify: float = 0.0, rtol: float = 1e-3, max_strikes: int = 3, probation_steps: int = 0,
                 backup_factor: float = 1.5, seed: int = 0, max_chunk: int = 1, trusted: Iterable[int] = ()):
        if redundancy < 1:
            raise ProtocolError(f"redundancy must be >= 1, got {redundancy}")
        if prefetch < 1:
            raise ProtocolError(f"prefetch must be >= 1, got {prefetch}")
        if not 1 <= quorum <= redundancy:
            raise ProtocolError(f"quorum must be between 1 and redundancy ({redundancy}), got {quorum}")
        if not 0.0 <= verify <= 1.0:
            raise ProtocolError(f"verify must be a fraction in [0, 1], got {verify}")
        self.redundancy = redundancy
        self.prefetch = prefetch
        self.quorum = quorum
        self.verify = verify
        self.rtol = rtol
        self.max_strikes = max_strikes
        self.probation_steps = probation_steps
        self.backup_factor = backup_factor
        self.seed = seed
        self.max_chunk = max(1, int(max_chunk))
        self.reprobe_steps = REPROBE_STEPS
        self.step = 0
        self.workers: dict[int, _Worker] = {}
        self.tasks: dict[int, Task] = {}
        self._queue: deque[int] = deque()            # task ids wanting copies, in order
        self._events: list[dict] = []
        self._settling: set[int] = set()             # finished tasks with copies still out
        # pairing of redundant copies: how often two workers held copies of one task
        self._pairs: dict[frozenset, int] = {}
        # trust: the first step at which a result vouched for by exactly this
        # set of ranks (the copies that agreed with it) was applied unaudited,
        # and the ranks proven wrong by audits
        self._vouched: dict[frozenset, int] = {}
        self.guilty: set[int] = set()
        self._audits: deque[int] = deque()           # task ids chosen for an audit, in order
        # ranks the operator trusts like the master: they audit, and a result
        # one of them vouched for is proven
        self.trusted: set[int] = {0, *trusted}
        self.audit_exclusions = False                 # audit the vote that excludes a worker (master: audits on)
        for r in workers:
            self.add_worker(r)
        if not self.workers:
            raise ProtocolError("the scheduler needs at least one worker")

    # -- membership ---------------------------------------------------------
    def add_worker(self, rank: int, now: float | None = None, reason: str = "") -> None:
        """Add a worker, or readmit one that left (drained, lost, excluded)."""
        w = self.workers.get(rank)
        if w is None:
            w = self.workers[rank] = _Worker(rank)
            # seeded phase of the sampled-verification quota, in [0, 1)
            w.verify_credit = ((rank * 0x9E3779B1 + self.seed * 0x85EBCA77) % 2**32) / 2**32
            return
        was = w.status
        if was == EXCLUDED:
            # back on probation: every result verified; a proven-wrong rank
            # is judged again by what it returns from now on
            self.guilty.discard(rank)
            w.probation_left = max(self.probation_steps, 1)
            w.strikes = max(0, self.max_strikes - 1)    # one more strike excludes it again
            w.strike_log = w.strike_log[len(w.strike_log) - w.strikes:] if w.strikes else []
        w.live = True
        w.accepting = True
        w.status = ACTIVE
        w.last_heard = now
        if was != ACTIVE:
            self._event("readmit", rank, reason or f"was {was}")

    def live_workers(self) -> list[int]:
        return [r for r, w in self.workers.items() if w.live]

    def remove_worker(self, rank: int, now: float, reason: str = "removed", status: str = GONE) -> list[int]:
        """Take a worker out; its outstanding and held copies are dropped and
        their tasks go back to the front of the queue.  Returns the requeued
        task ids."""
        w = self.workers.get(rank)
        if w is None or not w.live:
            return []
        w.live = False
        w.status = status
        if status == GONE:
            self._event("lost", rank, reason)
        requeued = []
        for task in list(self.tasks.values()):
            touched = False
            for c in task.copies:
                if c.rank != rank:
                    continue
                if c.state == ASSIGNED:
                    self._move(task, c, LOST, now, reason)
                    touched = True
                elif c.state == HELD:
                    self._move(task, c, REJECTED, now, f"worker left: {reason}")
                    touched = True
            if touched and task.state in (PENDING, RUNNING):
                task.state = PENDING
                if task.task_id not in self._queue:
                    requeued.append(task.task_id)
        w.outstanding.clear()
        for tid in reversed(requeued):
            self._queue.appendleft(tid)
        if not self.live_workers() and self._open_task_ids():
            raise ProtocolError(f"no live workers left (last one, rank {rank}, {reason})")
        return requeued

    def drain(self, rank: int, now: float, reason: str = "drained by the operator") -> None:
        """Stop giving ``rank`` work; what it has out still counts."""
        w = self.workers.get(rank)
        if w is None or not w.live or not w.accepting:
            return
        w.accepting = False
        w.status = DRAINED
        self._event("drain", rank, reason)

    def undrain(self, rank: int, now: float, reason: str = "readmitted by the operator") -> None:
        w = self.workers.get(rank)
        if w is None or w.status != DRAINED:
            return
        w.accepting = True
        w.status = ACTIVE
        if not w.live:
            w.live = True
        self._event("undrain", rank, reason)

    def set_host(self, rank: int, host: str) -> None:
        """The node ``rank`` runs on: copies of a voted task go to distinct
        hosts when the allocation has more than one."""
        if rank in self.workers:
            self.workers[rank].host = host

    def strike(self, rank: int, now: float, reason: str, accusers: Iterable[int] | None = None,
               task: Task | None = None) -> bool:
        """Give ``rank`` a strike; True when that excluded it.

        ``accusers``: the ranks whose agreeing copies outvoted this one (None
        when the strike needs no vote: a non-finite result, or the master's
        own computation).  When an audit later proves every accuser wrong,
        the strike is cleared (:meth:`audit`).  With :attr:`audit_exclusions`
        a vote (on ``task``) that excludes a worker is audited: an honest
        worker outvoted by agreeing wrong ones comes back at once."""
        w = self.workers.get(rank)
        if w is None:
            return False
        w.strikes += 1
        w.strike_log.append((self.step, None if accusers is None else frozenset(accusers) - {0}, reason))
        self._event("strike", rank, reason, strikes=w.strikes)
        if w.strikes >= self.max_strikes and w.status != EXCLUDED:
            self._exclude(w, now, f"{w.strikes} strikes (last: {reason})", f"excluded after {w.strikes} strikes")
            if self.audit_exclusions and accusers is not None and task is not None:
                self.mark_audit(task.task_id)
            return True
        return False

    def _exclude(self, w: _Worker, now: float, why: str, removed: str) -> None:
        w.excluded_at = self.step
        w.probation_left = 0
        self._event("exclude", w.rank, why)
        if w.live:
            self.remove_worker(w.rank, now, removed, status=EXCLUDED)
        w.status = EXCLUDED

    def begin_step(self, step: int, now: float) -> list[int]:
        """A new step starts: count probation down, readmit excluded workers
        whose probation wait is over.  Returns the readmitted ranks."""
        back = []
        for w in self.workers.values():
            if w.status == ACTIVE and w.probation_left > 0 and step > self.step:
                w.probation_left -= step - self.step
                if w.probation_left <= 0:
                    w.probation_left = 0
                    w.strikes = 0
                    w.strike_log.clear()
            if (w.status == EXCLUDED and self.probation_steps > 0 and w.excluded_at is not None
                    and step - w.excluded_at >= self.probation_steps):
                self.add_worker(w.rank, now, f"probation after {step - w.excluded_at} steps excluded")
                back.append(w.rank)
        self.step = step
        return back

    # -- tasks ----------------------------------------------------------------
    def submit(self, tasks: Iterable[Task]) -> None:
        for t in tasks:
            if t.task_id in self.tasks:
                raise ProtocolError(f"task {t.task_id} submitted twice")
            t.state = PENDING
            if t.kind == "grad":
                t.quorum = max(t.quorum, self.quorum)
                t.wanted = max(t.wanted, self.redundancy, t.quorum)
            else:
                t.wanted = max(t.wanted, 1)
            self.tasks[t.task_id] = t
            self._queue.append(t.task_id)

    def _wanted(self, task: Task) -> int:
        return min(task.wanted, len(self.live_workers()))

    def _active_copies(self, task: Task) -> list[Copy]:
        return [c for c in task.copies if c.state == ASSIGNED]

    def assign(self, now: float) -> list[tuple[int, Task]]:
        """Give queued tasks to workers.

        Once workers' speeds are known, each task goes to the worker predicted
        to *finish* it first (earliest finish time, counting what it already
        has and what this pass planned for it).  When that worker is full
        (``prefetch``), the task waits for it rather than going to a slower
        worker that would finish it later -- so a slow worker gets only the
        share of a step it can finish in time.  Before any speed is known:
        least loaded, then lowest rank.
        """
        out: list[tuple[int, Task]] = self._assign_audits(now)
        if not self._queue:
            return out
        keep: deque[int] = deque()
        plan = self._plan_start(now)
        while self._queue:
            tid = self._queue.popleft()
            task = self.tasks.get(tid)
            if task is None or task.state not in (PENDING, RUNNING):
                continue
            have = {c.rank for c in task.copies if c.state in (ASSIGNED, HELD, ACCEPTED, DUPLICATE)}
            rejected = {c.rank for c in task.copies if c.state == REJECTED}
            if set(self._assignable()) - rejected - have:
                have |= rejected   # a rejected task goes to someone else if anyone is left
            missing = self._wanted(task) - len(self._active_copies(task)) - self._held(task)
            deferred = False
            if missing > 0 and plan is not None and not task.copies:
                probe = self._probe(task, exclude=have, plan=plan)
                if probe is not None:
                    # an extra copy: the task still goes where it would have,
                    # so the step never waits for the probe (whose result is
                    # compared with the other copy like any second copy)
                    task.wanted += 1
                    have.add(probe)
                    self._give(task, probe, now).probe = True
                    out.append((probe, task))
                    plan[probe] += task.samples * self.workers[probe].sec_per_sample
                    missing = self._wanted(task) - len(self._active_copies(task)) - self._held(task)
            while missing > 0:
                rank = self._pick_worker(exclude=have, task=task, plan=plan)
                if rank is None:
                    break
                have.add(rank)
                if len(self.workers[rank].outstanding) >= self.prefetch:
                    deferred = True     # its best worker is busy: wait for it
                    missing -= 1
                    continue
                if self.max_chunk > 1 and plan is not None and not task.copies:
                    if self._sample_due(task, rank):
                        # the copy to verify: a small chunk, as many tasks as
                        # there are workers, so the second copy's extra work
                        # adds about one task to every worker's step
                        task.verify_unit = True
                        self._merge(task, rank, plan, limit=min(self.max_chunk, len(self.live_workers())))
                    else:
                        self._merge(task, rank, plan, limit=self.max_chunk)
                self._give(task, rank, now)
                out.append((rank, task))
                missing = self._wanted(task) - len(self._active_copies(task)) - self._held(task)
            if missing > 0 or deferred:
                keep.append(tid)
                if not self._has_room():
                    break
            else:
                task.state = RUNNING
        keep.extend(self._queue)
        self._queue = keep
        return out

    def _probe(self, task: Task, exclude: set, plan: dict) -> int | None:
        """An idle worker whose speed was last measured ``reprobe_steps`` or
        more steps before ``task``'s, to be given ``task`` (unmerged) as a
        probe (an extra copy) -- None when there is none.

        Speeds are learnt only from results, so a worker measured slow once
        (a cold start, a busy neighbour, a page-fault storm) would otherwise
        never be given work again and never be measured again.  A probe is an
        extra copy of one task (the task is assigned as usual besides), at
        most one per worker every ``reprobe_steps`` steps, so the step never
        waits for it.  Its result replaces the old estimate instead of being
        averaged into it, and is compared with the other copy's."""
        if task.kind != "grad" or task.samples <= 0 or self.reprobe_steps <= 0:
            return None
        # the candidates are worked out once per assign pass and step (usually
        # none): this runs for every task given out
        key = ("_stale", task.step)
        stale = plan.get(key)
        if stale is None:
            live = [w for w in self.workers.values() if w.live and w.accepting]
            stale = plan[key] = [] if len(live) < 2 else sorted(
                (w for w in live if w.sec_per_sample is not None and w.measured_step is not None
                 and task.step - max(w.measured_step, w.probe_step or 0) >= self._probe_wait(w)),
                key=lambda w: (w.measured_step, w.rank))
        w = next((w for w in stale if w.rank not in exclude and not w.outstanding), None)
        if w is None:
            return None
        stale.remove(w)
        base = self.reprobe_steps
        if w.probe_step is not None and w.given_step == w.probe_step:
            # nothing given to it since its last probe: that probe did not pay
            w.probe_wait = min(2 * self._probe_wait(w), base * REPROBE_MAX_FACTOR)
        w.probing = True
        w.probe_step = task.step
        return w.rank

    def _probe_wait(self, w: _Worker) -> int:
        return w.probe_wait or self.reprobe_steps

    def _merge(self, task: Task, rank: int, plan: dict, limit: int) -> None:
        """Grow ``task`` (about to get its first copy, on ``rank``) into a
        *chunk* of the queued, untouched tasks of the same step that ``rank``
        would be given anyway.

        The step's remaining tasks are placed one by one on the worker
        predicted to finish each first (from every worker's predicted free
        time and measured speed, the same rule :meth:`assign` follows); those
        that land on ``rank`` join the chunk.  The worker then computes them
        as one batch -- larger matrix products, one result message -- while a
        slow worker keeps only the tasks it can finish in time, so a chunk
        never delays the step.  Absorbed tasks leave the schedule and are
        listed in ``task.merged`` (accepting the chunk settles them).
        """
        same = (task.step, task.kind, task.split, task.version, task.quorum, task.wanted)
        cands = []
        for tid in self._queue:
            t = self.tasks.get(tid)
            if (t is not None and t.state == PENDING and not t.copies and t.samples > 0
                    and (t.step, t.kind, t.split, t.version, t.quorum, t.wanted) == same):
                cands.append(t)
        spp = {r: (w.sec_per_sample or plan["typical"]) for r, w in self.workers.items()
               if w.live and w.accepting and r in plan}
        if not cands or rank not in spp:
            return
        # the placement of the step's remaining tasks is worked out once per
        # assign pass (the plan dict lives that long): recomputing it for
        # every chunk cost O(tasks x workers^2) per step -- 11 s at 256 workers
        cache = plan.setdefault("_placement", {})
        placed = cache.get(same)
        if placed is None:
            placed = cache[same] = _place(cands, plan, spp, rank)
        take = []
        for t in cands:
            if placed.get(t.task_id) == rank:
                take.append(t)
                if len(take) + 1 >= limit:
                    break
        if not take:
            return
        gone = set()
        for t in take:
            task.snippets = tuple(task.snippets) + tuple(t.snippets)
            task.merged.extend([t.task_id, *t.merged])
            task.samples += t.samples
            plan[rank] += t.samples * spp[rank]
            gone.add(t.task_id)
            del self.tasks[t.task_id]
        self._queue = deque(tid for tid in self._queue if tid not in gone)

    def _plan_start(self, now: float) -> dict | None:
        """Per worker: when it is predicted to be free (None: speeds unknown)."""
        measured = sorted((w for w in self.workers.values() if w.live and w.sec_per_sample),
                          key=lambda w: w.sec_per_sample)
        if not measured:
            return None
        typical = measured[len(measured) // 2].sec_per_sample
        plan = {"typical": typical, "fastest": measured[0].sec_per_sample, "now": now,
                "overhead": {w.rank: w.overhead_s for w in measured},
                "fastest_overhead": measured[0].overhead_s}
        for w in self.workers.values():
            if w.live and w.accepting:
                est = self._finish_estimates(w, now, default=typical)
                plan[w.rank] = max([now, *est.values()])
        return plan

    def _give(self, task: Task, rank: int, now: float, backup: bool = False) -> Copy:
        w = self.workers[rank]
        if task.kind == "grad" and task.quorum < 2:
            if w.suspect:
                self._raise_quorum(task)
            elif self.verify > 0.0 and not backup:
                # credit per task of work (a copy of k tasks earns k x verify);
                # once it reaches 1 the next copy is verified and pays k: a
                # fraction ``verify`` of each worker's work is checked.  With
                # chunks, that copy is a small chunk made for it (assign);
                # a large chunk that happens to cross 1 is not verified
                k = 1 + len(task.merged)
                w.verify_credit += self.verify * k
                if w.verify_credit >= 1.0 and (task.verify_unit or k == 1):
                    w.verify_credit = max(w.verify_credit - k, -float(k))
                    task.sampled = True
                    self._raise_quorum(task)
        if w.given_step is not None and task.step > w.given_step and w.given_step == w.probe_step:
            w.probe_wait = 0     # given work after its last probe: probe at the base rate again
        w.given_step = task.step if w.given_step is None else max(w.given_step, task.step)
        for other in task.copies:
            if other.rank != rank and other.state in (ASSIGNED, HELD, ACCEPTED, DUPLICATE):
                key = frozenset((rank, other.rank))
                self._pairs[key] = self._pairs.get(key, 0) + 1
        c = Copy(task.task_id, rank, now, backup=backup, head=not w.outstanding)
        task.copies.append(c)
        w.outstanding.add(task.task_id)
        if w.last_heard is None or not w.outstanding - {task.task_id}:
            w.last_heard = max(w.last_heard or now, now)
        return c

    def _sample_due(self, task: Task, rank: int) -> bool:
        """Will the next copy :meth:`_give` hands ``rank`` be sampled for
        verification?  (Then it is not merged into a chunk.)"""
        w = self.workers[rank]
        return (self.verify > 0.0 and task.kind == "grad" and task.quorum < 2 and not w.suspect
                and w.verify_credit + self.verify >= 1.0)

    def _raise_quorum(self, task: Task) -> None:
        task.quorum = 2
        task.wanted = max(task.wanted, 2)
        if task.task_id not in self._queue:
            self._queue.appendleft(task.task_id)

    def _held(self, task: Task) -> int:
        return sum(1 for c in task.copies if c.state == HELD)

    def _assignable(self) -> list[int]:
        return [r for r, w in self.workers.items() if w.live and w.accepting]

    def _has_room(self) -> bool:
        return any(w.live and w.accepting and len(w.outstanding) < self.prefetch for w in self.workers.values())

    def _pick_worker(self, exclude: set, task: Task | None = None, plan: dict | None = None) -> int | None:
        """The worker for (a copy of) ``task``; may be a full one when it is
        still predicted to finish first (the caller then defers the task).

        A further copy of a task that already has one (redundancy, a vote)
        goes to a worker on another host when there is one, and among the
        workers about as good as the best (:meth:`_partner`) to the one that
        has shared tasks least often with the ranks holding the other copies:
        one node type or one pair of workers cannot outvote the rest every time."""
        holders = [] if task is None else [c.rank for c in task.copies
                                           if c.state in (ASSIGNED, HELD, ACCEPTED, DUPLICATE)]
        if plan is None or task is None or task.samples <= 0:
            cands = []
            for r, w in self.workers.items():
                if not w.live or not w.accepting or r in exclude or len(w.outstanding) >= self.prefetch:
                    continue
                speed = w.sec_per_sample if w.sec_per_sample is not None else 0.0
                cands.append(((len(w.outstanding), speed, r), r))
            if not cands:
                return None
            if holders:
                return self._partner(cands, holders, near=lambda key, best: key[0] == best[0])
            return min(cands)[1]
        cands = []
        for r, w in self.workers.items():
            if not w.live or not w.accepting or r in exclude or r not in plan:
                continue
            speed = w.sec_per_sample or plan["typical"]
            finish = plan[r] + task.samples * speed
            full = len(w.outstanding) >= self.prefetch
            cands.append(((_effective(plan, r, speed, finish), full, speed, r), r))
        if not cands:
            return None
        if holders:
            slack = task.samples * plan["typical"]
            r = self._partner(cands, holders, near=lambda key, best: key[0] <= best[0] + slack)
        else:
            r = min(cands)[1]
        w = self.workers[r]
        plan[r] += task.samples * (w.sec_per_sample or plan["typical"])
        return r

    def _partner(self, cands: list, holders: list, near) -> int:
        """Of ``cands`` ((key, rank), best key first), the rank for a further
        copy of a task held by ``holders``: on another host if any candidate
        is, then among those ``near`` the best key, the one least often
        paired with the holders (ties: the better key)."""
        hosts = {self.workers[h].host for h in holders if h in self.workers}
        apart = [c for c in cands if self.workers[c[1]].host not in hosts]
        if apart:
            cands = apart
        best = min(cands)[0]
        pool = [c for c in cands if near(c[0], best)]
        pairs = self._pairs
        return min(pool, key=lambda c: (sum(pairs.get(frozenset((c[1], h)), 0) for h in holders), c[0]))[1]

    # -- results ------------------------------------------------------------------
    def complete(self, rank: int, task_id: int, now: float, *, ok: bool = True, reason: str = "",
                 compute_s: float | None = None, fp: Sequence[float] | None = None,
                 strike: bool = True, suspicious: bool = False) -> Verdict:
        """A result for ``task_id`` came back from ``rank``.

        ``ok`` is False when the master's checks failed (non-finite values,
        wrong size); that gives the worker a strike unless ``strike`` is
        False.  ``compute_s`` is the compute time the worker reported; speed
        is learnt from it when given.  ``fp`` is the result's fingerprint
        (needed for comparisons; without it copies are trusted).
        ``suspicious`` (e.g. an outlying gradient norm) raises the task to
        quorum 2: the result is held until another copy agrees.
        """
        task = self.tasks.get(task_id)
        if task is None:
            raise ProtocolError(f"rank {rank} returned unknown task {task_id}")
        w = self.workers.get(rank)
        copy = next((c for c in task.copies if c.rank == rank and c.state == ASSIGNED), None)
        if copy is None:
            # Not outstanding: the worker was removed (copy LOST) or it sent twice.
            return Verdict(False, LATE, "copy not outstanding")
        w.outstanding.discard(task_id)
        w.last_heard = now
        copy.compute_s = compute_s
        copy.fp = tuple(fp) if fp is not None else None
        if not ok:
            self._move(task, copy, REJECTED, now, reason or "failed checks")
            self._reopen(task)
            if strike:
                self.strike(rank, now, f"{copy.reason} (task {task_id})")
            return Verdict(False, REJECTED, copy.reason)
        self._learn_speed(w, task, compute_s if compute_s is not None else now - copy.assigned_at)
        if copy.head and compute_s is not None:
            w.overheads.append(max(0.0, now - copy.assigned_at - compute_s))
            w.overhead_s = statistics.median(w.overheads)
        w.done += 1
        if copy.audit:
            return self._audit_copy(task, copy, now)
        if task.state == DONE:
            return self._compare_to_accepted(task, copy, now)
        if task.state == CLOSED:
            self._move(task, copy, LATE, now, "task closed")
            return Verdict(False, LATE, copy.reason)
        if suspicious and task.quorum < 2 and task.kind == "grad":
            self._raise_quorum(task)
            task.state = PENDING
        if task.quorum < 2 or copy.fp is None:
            self._accept(task, copy, now, verified=False)
            return Verdict(True, ACCEPTED, "")
        return self._vote(task, copy, now)

    def skipped(self, rank: int, task_id: int, now: float) -> Verdict:
        """``rank`` dropped the task: the parameter version it needed was gone."""
        task = self.tasks.get(task_id)
        copy = None if task is None else next(
            (c for c in task.copies if c.rank == rank and c.state == ASSIGNED), None)
        if copy is None:
            return Verdict(False, LATE, "copy not outstanding")
        self.workers[rank].outstanding.discard(task_id)
        self.workers[rank].last_heard = now
        self._move(task, copy, SKIPPED, now, "parameters stale")
        self._reopen(task)
        return Verdict(False, SKIPPED, copy.reason)

    def _reopen(self, task: Task) -> None:
        if task.state in (PENDING, RUNNING) and not self._active_copies(task):
            task.state = PENDING
            if task.task_id not in self._queue:
                self._queue.appendleft(task.task_id)

    def _accept(self, task: Task, copy: Copy, now: float, verified: bool) -> None:
        task.state = DONE
        task.accepted_fp = copy.fp
        task.accepted_verified = verified
        copy.verified = verified
        copy.agreed = True if verified else None
        self._credit(task, copy)
        self._move(task, copy, ACCEPTED, now, "")
        # copies still out are now backups of a done task: nobody needs them
        # before the step ends, but their results will still be compared.

    def _credit(self, task: Task, copy: Copy) -> None:
        if task.credited < CREDITED_COPIES:
            task.credited += 1
            copy.credited = True

    def _audit_copy(self, task: Task, copy: Copy, now: float) -> Verdict:
        """A trusted rank's recomputation of an accepted result came back."""
        if task.audit != "pending" or copy.fp is None:
            self._move(task, copy, LATE, now, "audit no longer needed")
            return Verdict(False, LATE, copy.reason)
        v = self.audit(task.task_id, copy.fp, now, by=copy.rank)
        copy.verified, copy.agreed = True, v.ok
        self._move(task, copy, DUPLICATE, now, "audit: " + ("agrees" if v.ok else "the accepted result is wrong"))
        return Verdict(False, DUPLICATE, copy.reason, audit=v)

    def _compare_to_accepted(self, task: Task, copy: Copy, now: float) -> Verdict:
        if task.accepted_fp is None or copy.fp is None:
            self._credit(task, copy)
            self._move(task, copy, DUPLICATE, now, "task already accepted")
            return Verdict(False, DUPLICATE, copy.reason)
        ok, worst = agree(copy.fp, task.accepted_fp, self.rtol)
        copy.verified = True
        copy.agreed = ok
        if ok:
            self._credit(task, copy)
            self._move(task, copy, DUPLICATE, now, "agrees with the accepted result")
            return Verdict(False, DUPLICATE, copy.reason)
        if task.accepted_verified:
            why = f"disagreed with the verified result (off by {worst:.3g} x tolerance)"
            self._move(task, copy, REJECTED, now, why)
            self.strike(copy.rank, now, why, accusers=self.agreers(task), task=task)
            return Verdict(False, REJECTED, why)
        # The applied result was not verified: whoever is wrong is unknown.
        why = f"disputes the accepted result (off by {worst:.3g} x tolerance)"
        copy.disputed = True
        self._move(task, copy, REJECTED, now, why)
        return Verdict(False, REJECTED, why, arbitrate=True)

    def _vote(self, task: Task, copy: Copy, now: float) -> Verdict:
        held = [c for c in task.copies if c.state == HELD]
        agreeing = [c for c in held if agree(copy.fp, c.fp, self.rtol)[0]]
        if len(agreeing) + 1 >= task.quorum:
            for c in agreeing:
                c.verified, c.agreed = True, True
            self._accept(task, copy, now, verified=True)
            for c in held:
                if c in agreeing:
                    self._credit(task, c)
                    self._move(task, c, DUPLICATE, now, "agreed with the quorum")
                else:
                    c.verified, c.agreed = True, False
                    _, worst = agree(c.fp, copy.fp, self.rtol)
                    why = f"disagreed with the quorum (off by {worst:.3g} x tolerance)"
                    self._move(task, c, REJECTED, now, why)
                    self.strike(c.rank, now, why, accusers=[copy.rank, *(a.rank for a in agreeing)], task=task)
            return Verdict(True, ACCEPTED, "quorum")
        self._move(task, copy, HELD, now, "waiting for a quorum")
        held.append(copy)
        # Can the copies still out complete a quorum?  Else ask for one more
        # copy on a worker that has not tried, or for the master to arbitrate.
        best = max(sum(1 for d in held if agree(c.fp, d.fp, self.rtol)[0]) for c in held)
        out = len(self._active_copies(task))
        if best + out >= task.quorum:
            return Verdict(False, HELD, "waiting for a quorum", hold=True)
        tried = {c.rank for c in task.copies}
        if set(self._assignable()) - tried:
            task.wanted = len(held) + out + (task.quorum - best - out)
            task.state = PENDING
            if task.task_id not in self._queue:
                self._queue.appendleft(task.task_id)
            return Verdict(False, HELD, "copies disagree: one more copy", hold=True)
        return Verdict(False, HELD, "copies disagree and no other worker is left", hold=True, arbitrate=True)

    def arbitrate(self, task_id: int, fp: Sequence[float], now: float, replace: bool = False) -> bool:
        """The master computed ``task_id`` itself (fingerprint ``fp``).

        Held copies that agree are credited, the others rejected with a
        strike.  For an open task the master's result is the one applied
        (returns True: apply it).  For a task already done (a dispute about
        an unverified accepted result) the copies that disagree get strikes;
        when the accepted one is among them and ``replace`` is True (the
        master can still take it out of the step's update), it is rejected
        and the master's result becomes the accepted one (True: swap the
        accepted result for the master's); otherwise False.
        """
        task = self.tasks[task_id]
        fp = tuple(fp)
        wrong_accepted = None
        for c in task.copies:
            if c.fp is None or not (c.state in (HELD, ACCEPTED, DUPLICATE) or c.disputed):
                continue
            ok, worst = agree(c.fp, fp, self.rtol)
            c.verified, c.agreed = True, ok
            if ok:
                if c.state == HELD:
                    self._credit(task, c)
                    self._move(task, c, DUPLICATE, now, "agreed with the master")
            else:
                why = f"disagreed with the master's own computation (off by {worst:.3g} x tolerance)"
                if c.state == HELD:
                    self._move(task, c, REJECTED, now, why)
                elif c.state == ACCEPTED:
                    wrong_accepted = c
                c.reason = why
                self.strike(c.rank, now, why)
        if task.state in (PENDING, RUNNING):
            mine = Copy(task_id, 0, now, fp=fp, verified=True, agreed=True)
            task.copies.append(mine)
            self._move(task, mine, ACCEPTED, now, "computed by the master (arbitration)")
            task.state = DONE
            task.accepted_fp = fp
            task.accepted_verified = True
            self._event("arbitrated", 0, f"task {task_id} of step {task.step} computed by the master")
            return True
        if (task.state == DONE and replace and wrong_accepted is not None
                and self._record_pending(wrong_accepted)):
            self._move(task, wrong_accepted, REJECTED, now,
                       f"{wrong_accepted.reason}; replaced by the master's result before the step was applied")
            mine = Copy(task_id, 0, now, fp=fp, verified=True, agreed=True)
            task.copies.append(mine)
            self._move(task, mine, ACCEPTED, now, "computed by the master (arbitration of a dispute)")
            task.accepted_fp = fp
            task.accepted_verified = True
            self._event("arbitrated", 0, f"task {task_id} of step {task.step}: the applied result of rank "
                                         f"{wrong_accepted.rank} was wrong and is replaced by the master's")
            return True
        return False

    # -- trusted audits and rollback -------------------------------------------
    def agreers(self, task: Task) -> list[int]:
        """The ranks whose copies carry the accepted value of ``task``: the
        accepted copy and the copies that agreed with it (0: the master)."""
        return sorted({c.rank for c in task.copies
                       if c.state == ACCEPTED or (c.state == DUPLICATE and c.agreed is True)})

    def mark_audit(self, task_id: int, fp: Sequence[float] | None = None) -> bool:
        """Choose ``task_id``'s accepted result for a trusted audit (the
        master recomputes it and calls :meth:`audit`).  ``fp`` is the accepted
        result's fingerprint when the scheduler has none (an unverified
        quorum-1 result).  False when there is nothing to audit (not a done
        grad task, or the master computed it itself)."""
        task = self.tasks.get(task_id)
        if task is None or task.kind != "grad" or task.state != DONE or task.audit is not None:
            return False
        if task.step != self.step:
            return False    # its parameters are gone (a late copy of an earlier step's task)
        if self.trusted & set(self.agreers(task)):
            return False
        if task.accepted_fp is None:
            if fp is None:
                return False
            task.accepted_fp = tuple(fp)
            acc = next(c for c in task.copies if c.state == ACCEPTED)
            acc.fp = task.accepted_fp
        task.audit = "pending"
        self._audits.append(task_id)
        return True

    def next_audit(self, race: bool = False, now: float | None = None) -> Task | None:
        """The oldest task whose audit is due and that no trusted rank is
        computing (None: none) -- the master's to compute.  ``race``: the
        step waits for nothing else, so also one whose trusted rank is
        overdue (predicted to have landed by ``now``): the first
        recomputation to finish decides, the other is late."""
        while self._audits:
            task = self.tasks.get(self._audits[0])
            if task is not None and task.audit == "pending":
                break
            self._audits.popleft()
        for tid in self._audits:
            task = self.tasks.get(tid)
            if task is None or task.audit != "pending":
                continue
            out = [c for c in task.copies if c.audit and c.state == ASSIGNED]
            if not out or (race and self._overdue(out[0], task, now)):
                return task
        return None

    def _overdue(self, copy: Copy, task: Task, now: float | None) -> bool:
        w = self.workers[copy.rank]
        due = self._finish_estimates(w, now if now is not None else copy.assigned_at).get(task.task_id)
        return due is None or now is None or now > due + w.overhead_s

    def audits_out(self) -> bool:
        """Is a trusted rank still computing an audit?"""
        return any(self._audit_copy_out(self.tasks[t]) for t in self._audits
                   if t in self.tasks and self.tasks[t].audit == "pending")

    def _audit_copy_out(self, task: Task) -> bool:
        return any(c.audit and c.state == ASSIGNED for c in task.copies)

    def _assign_audits(self, now: float) -> list[tuple[int, Task]]:
        """Give each pending audit to a live trusted worker with room (an
        audit may take one slot beyond ``prefetch``) that
        holds no copy of the task, the fastest first; audits no trusted
        worker can take stay with the master (:meth:`next_audit`)."""
        out: list[tuple[int, Task]] = []
        if len(self.trusted) < 2 or not self._audits:
            return out
        for tid in list(self._audits):
            task = self.tasks.get(tid)
            if task is None or task.audit != "pending" or self._audit_copy_out(task):
                continue
            tried = {c.rank for c in task.copies}
            cands = [w for r, w in self.workers.items() if r in self.trusted and r != 0 and w.live and w.accepting
                     and r not in tried and len(w.outstanding) <= self.prefetch]
            if not cands:
                continue
            w = min(cands, key=lambda w: (w.sec_per_sample or 0.0, len(w.outstanding), w.rank))
            c = Copy(task.task_id, w.rank, now, audit=True, head=not w.outstanding)
            c.reason = "audit"
            task.copies.append(c)
            w.outstanding.add(task.task_id)
            if w.last_heard is None or len(w.outstanding) == 1:
                w.last_heard = max(w.last_heard or now, now)
            out.append((w.rank, task))
        return out

    def audit(self, task_id: int, fp: Sequence[float], now: float, by: int = 0) -> AuditVerdict:
        """The master (or trusted rank ``by``) recomputed ``task_id``
        (fingerprint ``fp``) to audit its accepted result.

        Agreement: the result is proven (it no longer counts as vouched for
        by its workers alone).  Disagreement: every rank whose copy carried
        the wrong value is *guilty* -- excluded at once (a trusted
        recomputation is proof, not a vote); strikes that votes won by guilty
        ranks alone gave to others are cleared, and those ranks come back if
        that takes them below ``max_strikes``."""
        task = self.tasks[task_id]
        fp = tuple(fp)
        ranks = tuple(r for r in self.agreers(task) if r not in self.trusted)
        ok, worst = agree(task.accepted_fp, fp, self.rtol) if task.accepted_fp is not None else (False, math.inf)
        task.audit = "ok" if ok else "failed"
        if ok:
            task.accepted_verified = True
            self._event("audit", by, f"task {task_id} of step {task.step}: the accepted result agrees with "
                                     f"{self._auditor(by)}'s recomputation", task=task_id, ok=True, ranks=list(ranks))
            return AuditVerdict(True, task_id, task.step, ranks)
        why = (f"its result of task {task_id} (step {task.step}) disagreed with {self._auditor(by)}'s audit "
               f"(off by {worst:.3g} x tolerance)")
        self._event("audit", by, f"task {task_id} of step {task.step}: {self._auditor(by)}'s recomputation shows "
                                 f"the accepted result of rank{'s' if len(ranks) > 1 else ''} "
                                 f"{', '.join(map(str, ranks))} is wrong (off by {worst:.3g} x tolerance)",
                    task=task_id, ok=False, ranks=list(ranks))
        for c in task.copies:
            if c.state in (ACCEPTED, DUPLICATE) and c.agreed is not False:
                c.verified, c.agreed = True, False
        self.guilty.update(ranks)
        exonerated = self._exonerate(now, f"an audit proved rank{'s' if len(self.guilty) > 1 else ''} "
                                          f"{', '.join(map(str, sorted(self.guilty)))} wrong")
        for r in ranks:
            self._convict(r, now, why)
        return AuditVerdict(False, task_id, task.step, ranks, guilty=ranks, exonerated=tuple(exonerated),
                            rollback_to=self.rollback_point())

    @staticmethod
    def _auditor(rank: int) -> str:
        return "the master" if rank == 0 else f"trusted rank {rank}"

    def _convict(self, rank: int, now: float, why: str) -> None:
        w = self.workers.get(rank)
        if w is None:
            return
        w.strikes = max(w.strikes, self.max_strikes)
        w.strike_log.append((self.step, None, why))
        if w.status != EXCLUDED:
            self._exclude(w, now, f"proven wrong by a trusted audit: {why}", f"proven wrong: {why}")

    def _exonerate(self, now: float, why: str) -> list[int]:
        """Clear the strikes of non-guilty workers that votes won by guilty
        ranks alone gave them; readmit the excluded ones that fall below
        ``max_strikes``.  Returns the ranks with strikes cleared."""
        out = []
        for w in self.workers.values():
            if w.rank in self.guilty or not w.strike_log:
                continue
            keep = [e for e in w.strike_log if not (e[1] and e[1] <= self.guilty)]
            cleared = len(w.strike_log) - len(keep)
            if not cleared:
                continue
            w.strike_log = keep
            w.strikes = max(0, w.strikes - cleared)
            out.append(w.rank)
            self._event("exonerate", w.rank, f"{cleared} strike{'s' if cleared > 1 else ''} cleared: {why}",
                        strikes=w.strikes, cleared=cleared)
            if w.status == EXCLUDED and w.strikes < self.max_strikes:
                w.excluded_at = None
                w.probation_left = 0
                w.live = True
                w.accepting = True
                w.status = ACTIVE
                w.last_heard = now
                self._event("readmit", w.rank, f"exonerated: {why}")
        return out

    def record_applied(self, task_ids: Iterable[int], step: int) -> None:
        """The accepted results of ``task_ids`` went into step ``step``'s
        update: remember, per set of ranks that vouched for a result, the
        first step one was applied unaudited (the rollback point should
        those ranks all be proven wrong later).  Results the master computed
        or audited are proven and not recorded."""
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is None or task.kind != "grad" or task.state != DONE or task.audit == "ok":
                continue
            ranks = frozenset(self.agreers(task))
            if not ranks or ranks & self.trusted:
                continue
            if step < self._vouched.get(ranks, step + 1):
                self._vouched[ranks] = step

    def rollback_point(self, guilty: Iterable[int] | None = None) -> int | None:
        """The first step at which a result vouched for by ``guilty`` ranks
        alone (default: every rank proven wrong so far) was applied; None
        when there is none."""
        g = set(self.guilty if guilty is None else guilty)
        steps = [s for ranks, s in self._vouched.items() if ranks <= g]
        return min(steps) if steps else None

    def distrusted_since(self) -> tuple[int, list[int]] | None:
        """The first step with an applied result that only distrusted ranks
        -- proven wrong, or excluded by their strikes -- vouched for, and
        those ranks; None when there is none.  Such a result is as doubtful
        as its workers: undoing it (a rollback) keeps any wrong update from
        surviving when wrong workers are caught by votes instead of audits."""
        bad = self.guilty | {r for r, w in self.workers.items() if w.status == EXCLUDED}
        hits = [(s, ranks) for ranks, s in self._vouched.items() if ranks <= bad]
        if not hits:
            return None
        first = min(s for s, _ in hits)
        return first, sorted(set().union(*(ranks for s, ranks in hits if s == first)))

    def trust_floor(self) -> int | None:
        """The earliest step any rollback could need (the first step with an
        applied result that is not proven); checkpoints from before it must
        be kept.  None when every applied result is proven."""
        return min(self._vouched.values()) if self._vouched else None

    def vouched_state(self) -> list:
        """What :meth:`record_applied` learnt, for a checkpoint."""
        return [[sorted(r), s] for r, s in sorted(self._vouched.items(), key=lambda kv: (kv[1], sorted(kv[0])))]

    def load_vouched_state(self, items: Iterable) -> None:
        for ranks, step in items:
            key = frozenset(int(r) for r in ranks)
            self._vouched[key] = min(int(step), self._vouched.get(key, int(step)))

    def rollback(self, to_step: int, now: float, reason: str = "rolled back") -> None:
        """Training goes back to step ``to_step`` (a checkpoint, or the start
        of the current step): every open task is dropped -- copies still out
        become late, held ones too -- and what was learnt about results
        applied from ``to_step`` on is forgotten (they are undone)."""
        for task in list(self.tasks.values()):
            for c in task.copies:
                if c.state in (ASSIGNED, HELD):
                    self._move(task, c, LATE, now, reason)
            task.state = CLOSED
        for w in self.workers.values():
            w.outstanding.clear()
        self.tasks.clear()
        self._queue.clear()
        self._settling.clear()
        self._audits.clear()
        self._vouched = {r: s for r, s in self._vouched.items() if s < to_step}
        self.step = to_step

    def _learn_speed(self, w: _Worker, task: Task, seconds: float) -> None:
        if task.samples <= 0 or seconds <= 0:
            return
        s = seconds / task.samples
        if w.sec_per_sample is None or w.probing:
            w.sec_per_sample = s     # first measurement, or a probe of a stale estimate
        else:
            w.sec_per_sample = 0.8 * w.sec_per_sample + 0.2 * s
        w.probing = False
        w.measured_step = task.step if w.measured_step is None else max(w.measured_step, task.step)

    def close(self, task_ids: Iterable[int], now: float) -> None:
        """Forget tasks (e.g. the run stops); copies still out become late."""
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is not None and task.state in (PENDING, RUNNING):
                task.state = CLOSED

    def forget(self, task_ids: Iterable[int]) -> None:
        """Drop finished tasks whose copies are all settled, to bound memory.

        Tasks with copies still out are kept until those settle (their late
        results are still compared with the accepted one), then dropped by a
        later call."""
        self._settling.update(task_ids)
        for tid in list(self._settling):
            task = self.tasks.get(tid)
            if task is None:
                self._settling.discard(tid)
            elif task.state in (DONE, CLOSED) and not any(c.state in (ASSIGNED, HELD) for c in task.copies):
                del self.tasks[tid]
                self._settling.discard(tid)

    # -- stragglers and hung workers -----------------------------------------------
    def _finish_estimates(self, w: _Worker, now: float, default: float | None = None) -> dict[int, float]:
        """Predicted finish time of each copy ``w`` has out, in its order."""
        est = {}
        speed = w.sec_per_sample or default
        if speed is None:
            return est
        copies = sorted((c.assigned_at, tid) for tid in w.outstanding
                        for c in self.tasks[tid].copies if c.rank == w.rank and c.state == ASSIGNED)
        t = w.last_heard if w.last_heard is not None else now
        for assigned_at, tid in copies:
            t = max(t, assigned_at) + self.tasks[tid].samples * speed
            est[tid] = t
        return est

    def backups(self, now: float) -> list[tuple[int, Task]]:
        """Speculative copies of straggling tasks for idle workers.

        Only once every open task has its copies out (end of a step).  A
        task gets a backup on an idle worker when that worker's result is
        predicted to arrive ``backup_factor`` times sooner than the copy out
        would, or the copy out is already overdue by the backup's own time.
        Arrivals are predicted compute finish plus each worker's measured
        overhead (:attr:`_Worker.overhead_s`): the copy out lands at its
        compute finish + its worker's overhead, the backup after its compute
        + the idle worker's overhead.
        """
        if any(self.tasks[t].state == PENDING for t in self._queue if t in self.tasks):
            return []
        idle = [w for w in self.workers.values()
                if w.live and w.accepting and not w.outstanding and w.sec_per_sample is not None]
        if not idle:
            return []
        out = []
        estimates = {w.rank: self._finish_estimates(w, now) for w in self.workers.values() if w.live}
        open_tasks = sorted((t for t in self.tasks.values() if t.state == RUNNING), key=lambda t: t.task_id)
        for task in open_tasks:
            if not idle:
                break
            active = self._active_copies(task)
            if not active:
                continue
            due = min(estimates.get(c.rank, {}).get(task.task_id, math.inf) + self.workers[c.rank].overhead_s
                      for c in active)
            tried = {c.rank for c in task.copies}
            idle.sort(key=lambda w: w.sec_per_sample)
            for w in idle:
                if w.rank in tried:
                    continue
                mine = task.samples * w.sec_per_sample + w.overhead_s
                if due == math.inf or due - now > self.backup_factor * mine or now > due + mine:
                    task.wanted += 1
                    c = self._give(task, w.rank, now, backup=True)
                    c.reason = "backup"
                    out.append((w.rank, task))
                    idle.remove(w)
                    break
        return out

    def stuck(self) -> list[Task]:
        """Open tasks that hold results no quorum can be formed for any more
        (workers left since): the master must arbitrate them."""
        out = []
        assignable = set(self._assignable())
        for t in self.tasks.values():
            if t.state not in (PENDING, RUNNING) or t.quorum < 2 or self._active_copies(t):
                continue
            held = [c for c in t.copies if c.state == HELD]
            if held and not assignable - {c.rank for c in t.copies}:
                out.append(t)
        return out

    def hung(self, now: float, timeout: float) -> list[int]:
        """Live workers with work out that sent nothing for ``timeout`` seconds."""
        return [r for r, w in self.workers.items()
                if w.live and w.outstanding and w.last_heard is not None and now - w.last_heard > timeout]

    # -- queries --------------------------------------------------------------
    def _open_task_ids(self) -> list[int]:
        return [t.task_id for t in self.tasks.values() if t.state in (PENDING, RUNNING)]

    def open_tasks(self) -> int:
        return len(self._open_task_ids())

    def next_expected(self) -> float | None:
        """Earliest time an outstanding copy should come back, from each
        worker's measured speed (None while nothing is known)."""
        best = None
        for w in self.workers.values():
            if not w.live or not w.outstanding or w.sec_per_sample is None:
                continue
            for tid in w.outstanding:
                task = self.tasks[tid]
                for c in task.copies:
                    if c.rank == w.rank and c.state == ASSIGNED:
                        t = c.assigned_at + task.samples * w.sec_per_sample
                        best = t if best is None or t < best else best
        return best

    def outstanding(self, rank: int) -> set:
        return set(self.workers[rank].outstanding)

    def worker_stats(self) -> dict[int, dict]:
        return {
            r: {"live": w.live, "status": w.status, "outstanding": len(w.outstanding), "done": w.done,
                "sec_per_sample": w.sec_per_sample, "overhead_s": w.overhead_s, "strikes": w.strikes, "probation_left": w.probation_left}
            for r, w in self.workers.items()
        }

    def _record_pending(self, copy: Copy) -> bool:
        """Is ``copy``'s ledger record made but not yet drained?"""
        return copy.event is not None and any(e is copy.event for e in self._events)

    def drain_events(self) -> list[dict]:
        """Ledger records (copies that reached a final state, membership
        events) since the last call."""
        ev, self._events = self._events, []
        return ev

    # -- the one place a copy changes state ------------------------------------
    def _event(self, ev: str, rank: int, reason: str, **extra) -> None:
        self._events.append({"ev": ev, "step": self.step, "rank": rank, "reason": reason, **extra})

    def _move(self, task: Task, copy: Copy, new: str, now: float, reason: str) -> None:
        if new not in TRANSITIONS[copy.state]:
            raise ProtocolError(
                f"illegal transition of task {task.task_id} copy on rank {copy.rank}: {copy.state} -> {new}"
            )
        copy.state = new
        copy.finished_at = now
        copy.reason = reason
        if new == HELD:
            return
        if self._record_pending(copy):
            # a final state changes (accepted -> rejected by arbitration, which
            # only does so while the record is not written out): rewrite it
            copy.event.update(state=new, finished=now, reason=reason, verified=copy.verified,
                              agreed=copy.agreed, credited=copy.credited)
            return
        copy.event = {
            "ev": "copy",
            "step": task.step,
            "task": task.task_id,
            "kind": task.kind,
            "snippets": list(task.snippets),
            "samples": task.samples,
            "rank": copy.rank,
            "assigned": copy.assigned_at,
            "finished": now,
            "compute_s": copy.compute_s,
            "latency_s": now - copy.assigned_at,
            "state": new,
            "backup": copy.backup,
            "probe": copy.probe,
            **({"audit": True} if copy.audit else {}),
            "verified": copy.verified,
            "agreed": copy.agreed,
            "credited": copy.credited,
            "reason": reason,
        }
        self._events.append(copy.event)
