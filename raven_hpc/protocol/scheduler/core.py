"""The scheduler's state machine: membership, submission, assignment,
results, votes, arbitration and the ledger events -- every change of a
copy's state goes through :meth:`Scheduler._move`, checked against
:data:`~.states.TRANSITIONS`.  Placement policy is :class:`~.forecast.Forecast`,
audits and rollback :class:`~.trust.Trust`."""
from __future__ import annotations

import statistics
from collections import deque
from typing import Iterable, Sequence

from ... import ledger_schema as schema
from ...errors import ProtocolError
from .forecast import REPROBE_STEPS, Forecast
from .states import (ACCEPTED, ACTIVE, ASSIGNED, CLOSED, CREDITED_COPIES, DONE, DRAINED, DUPLICATE, EXCLUDED, GONE,
                     HELD, LATE, LOST, MOVED, PENDING, REJECTED, RUNNING, SKIPPED, Assignment, Copy, Task, Verdict,
                     Worker, agree, check_move)
from .trust import Trust

__all__ = ["Scheduler"]


class Scheduler(Forecast, Trust):
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
        self.last_latency_s: float | None = None
        self.max_chunk = max(1, int(max_chunk))
        self.reprobe_steps = REPROBE_STEPS
        self.step = 0
        self.workers: dict[int, Worker] = {}
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
        """Add a worker, or readmit one that left (drained, lost, excluded).
        A rank joining with a ``reason`` (one re-attached from a collector
        that failed or released its group) is recorded as readmitted."""
        w = self.workers.get(rank)
        if w is None:
            w = self.workers[rank] = Worker(rank)
            # seeded phase of the sampled-verification quota, in [0, 1)
            w.verify_credit = ((rank * 0x9E3779B1 + self.seed * 0x85EBCA77) % 2**32) / 2**32
            if reason:
                w.last_heard = now
                self._event(schema.READMIT, rank, reason)
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
            self._event(schema.READMIT, rank, reason or f"was {was}")

    def set_slots(self, rank: int, slots: int) -> None:
        """``rank`` may hold ``prefetch x slots`` copies at once: a collector
        leading ``slots`` workers takes work for all of them."""
        w = self.workers.get(rank)
        if w is not None:
            w.slots = max(1, int(slots))

    def relearn(self, rank: int) -> None:
        """Forget ``rank``'s measured speed and overhead: they are learnt
        again from its next results (a collector that released its group
        computes alone from then on)."""
        w = self.workers.get(rank)
        if w is None:
            return
        w.sec_per_sample = None
        w.measured_step = None
        w.probing = False
        w.overheads.clear()
        w.overhead_s = 0.0

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
            self._event(schema.LOST, rank, reason)
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

    def release(self, rank: int, now: float, reason: str) -> list[int]:
        """``rank`` leaves this scheduler for good: it re-attaches to another
        leader (its collector released its group).  Its copies go as when it
        is removed; it is kept, marked moved, so that a late result of it is
        only late and nothing readmits it here.  Returns the requeued task ids."""
        w = self.workers.get(rank)
        if w is None:
            return []
        requeued = self.remove_worker(rank, now, reason, status=MOVED) if w.live else []
        w.live = False
        w.accepting = False
        w.status = MOVED
        return requeued

    def status(self, rank: int) -> str | None:
        """``rank``'s membership: active, excluded, drained, lost or moved
        (None: not a worker of this scheduler)."""
        w = self.workers.get(rank)
        return None if w is None else w.status

    def drain(self, rank: int, now: float, reason: str = "drained by the operator") -> None:
        """Stop giving ``rank`` work; what it has out still counts."""
        w = self.workers.get(rank)
        if w is None or not w.live or not w.accepting:
            return
        w.accepting = False
        w.status = DRAINED
        self._event(schema.DRAIN, rank, reason)

    def undrain(self, rank: int, now: float, reason: str = "readmitted by the operator") -> None:
        w = self.workers.get(rank)
        if w is None or w.status != DRAINED:
            return
        w.accepting = True
        w.status = ACTIVE
        if not w.live:
            w.live = True
        self._event(schema.UNDRAIN, rank, reason)

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
        self._event(schema.STRIKE, rank, reason, strikes=w.strikes)
        if w.strikes >= self.max_strikes and w.status != EXCLUDED:
            self._exclude(w, now, f"{w.strikes} strikes (last: {reason})", f"excluded after {w.strikes} strikes")
            if self.audit_exclusions and accusers is not None and task is not None:
                self.mark_audit(task.task_id)
            return True
        return False

    def _exclude(self, w: Worker, now: float, why: str, removed: str) -> None:
        w.excluded_at = self.step
        w.probation_left = 0
        self._event(schema.EXCLUDE, w.rank, why)
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
            if t.kind == schema.GRAD:
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

    def assign(self, now: float) -> list[Assignment]:
        """Give queued tasks to workers.

        Once workers' speeds are known, each task goes to the worker predicted
        to *finish* it first (earliest finish time, counting what it already
        has and what this pass planned for it).  When that worker is full
        (``prefetch``), the task waits for it rather than going to a slower
        worker that would finish it later -- so a slow worker gets only the
        share of a step it can finish in time.  Before any speed is known:
        least loaded, then lowest rank.
        """
        out: list[Assignment] = self._assign_audits(now)
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
                    out.append(Assignment(probe, task))
                    plan.free[probe] += task.samples * self.workers[probe].sec_per_sample
                    missing = self._wanted(task) - len(self._active_copies(task)) - self._held(task)
            while missing > 0:
                rank = self._pick_worker(exclude=have, task=task, plan=plan)
                if rank is None:
                    break
                have.add(rank)
                if self.workers[rank].full(self.prefetch):
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
                out.append(Assignment(rank, task))
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

    def _give(self, task: Task, rank: int, now: float, backup: bool = False) -> Copy:
        w = self.workers[rank]
        if task.kind == schema.GRAD and task.quorum < 2:
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
        return (self.verify > 0.0 and task.kind == schema.GRAD and task.quorum < 2 and not w.suspect
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
        return any(w.live and w.accepting and not w.full(self.prefetch) for w in self.workers.values())

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
        #: how long the copy just completed took from assignment to arrival
        #: (compute, messages, a worker's sleeps): what a waiting leader waits
        self.last_latency_s = now - copy.assigned_at
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
        if suspicious and task.quorum < 2 and task.kind == schema.GRAD:
            self._raise_quorum(task)
            task.state = PENDING
        if task.quorum < 2 or copy.fp is None:
            self._accept(task, copy, now, verified=False)
            return Verdict(True, ACCEPTED, "")
        return self._vote(task, copy, now)

    def skipped(self, rank: int, task_id: int, now: float, reason: str | None = None) -> Verdict:
        """``rank`` dropped the task: the parameter version it needed was gone
        (replaced by a later update or a rollback before the copy ran), or
        (``reason``) it could not run it for another reason that is nobody's
        fault.  A task still open gets another copy; a finished one just
        settles."""
        task = self.tasks.get(task_id)
        copy = None if task is None else next(
            (c for c in task.copies if c.rank == rank and c.state == ASSIGNED), None)
        if copy is None:
            return Verdict(False, LATE, "copy not outstanding")
        self.workers[rank].outstanding.discard(task_id)
        self.workers[rank].last_heard = now
        self._move(task, copy, SKIPPED, now, reason or "its parameter version was replaced before it ran")
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
            self._event(schema.ARBITRATED, 0, f"task {task_id} of step {task.step} computed by the master")
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
            self._event(schema.ARBITRATED, 0, f"task {task_id} of step {task.step}: the applied result of rank "
                                         f"{wrong_accepted.rank} was wrong and is replaced by the master's")
            return True
        return False

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

    # -- queries --------------------------------------------------------------
    def _open_task_ids(self) -> list[int]:
        return [t.task_id for t in self.tasks.values() if t.state in (PENDING, RUNNING)]

    def open_tasks(self) -> int:
        return len(self._open_task_ids())

    def task(self, task_id: int) -> Task | None:
        """The task with this id while the scheduler still tracks it."""
        return self.tasks.get(task_id)

    def is_worker(self, rank: int) -> bool:
        return rank in self.workers

    def is_lost(self, rank: int) -> bool:
        """Was ``rank`` given up on (hung, or its process reported dead)?"""
        w = self.workers.get(rank)
        return w is not None and w.status == GONE

    def mark_dead(self, rank: int, now: float, reason: str) -> None:
        """MPI reports ``rank``'s process failed: a live worker leaves (its
        copies are requeued); one already out of the schedule is marked lost."""
        w = self.workers.get(rank)
        if w is None:
            return
        if w.live:
            self.remove_worker(rank, now, reason)
        else:
            w.status = GONE

    def evaluating(self) -> bool:
        """Is an evaluation task open?"""
        return any(t.kind == schema.EVAL and t.state in (PENDING, RUNNING) for t in self.tasks.values())

    def rejected(self, task_id: int) -> set[int]:
        """The ranks whose copies of ``task_id`` were rejected (so far)."""
        task = self.tasks.get(task_id)
        return set() if task is None else {c.rank for c in task.copies if c.state == REJECTED}

    def compared(self, task: Task) -> bool:
        """Will a result of ``task`` be compared with another copy's (so the
        master must fingerprint it)?"""
        return task.quorum > 1 or len(task.copies) > 1

    def disputable(self, task: Task) -> bool:
        """Can a later copy still dispute ``task``'s accepted result before
        the step ends (quorum 1, other copies out)?"""
        return task.quorum < 2 and any(c.state == ASSIGNED for c in task.copies)

    def is_open(self, task: Task) -> bool:
        return task.state in (PENDING, RUNNING)

    def is_done(self, task: Task) -> bool:
        return task.state == DONE

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
        self._events.append({schema.EV: ev, "step": self.step, "rank": rank, "reason": reason, **extra})

    def _move(self, task: Task, copy: Copy, new: str, now: float, reason: str) -> None:
        check_move(task.task_id, copy, new)
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
            schema.EV: schema.COPY,
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
