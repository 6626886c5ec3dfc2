"""Trust: trusted audits of accepted results (by the master or operator-
trusted ranks), convictions, cleared strikes, and what a rollback must
undo.  Votes tolerate wrong workers only when they fail independently;
an audit is proof."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from ... import ledger_schema as schema
from .states import ACCEPTED, Assignment, ACTIVE, ASSIGNED, CLOSED, DONE, DUPLICATE, EXCLUDED, HELD, LATE, AuditVerdict, Copy, Task, agree

__all__ = ["Trust"]


class Trust:
    """Audits and rollback bookkeeping of :class:`~.core.Scheduler` (a mixin)."""

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
        if task is None or task.kind != schema.GRAD or task.state != DONE or task.audit is not None:
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

    def _assign_audits(self, now: float) -> list[Assignment]:
        """Give each pending audit to a live trusted worker with room (an
        audit may take one slot beyond ``prefetch``) that
        holds no copy of the task, the fastest first; audits no trusted
        worker can take stay with the master (:meth:`next_audit`)."""
        out: list[Assignment] = []
        if len(self.trusted) < 2 or not self._audits:
            return out
        for tid in list(self._audits):
            task = self.tasks.get(tid)
            if task is None or task.audit != "pending" or self._audit_copy_out(task):
                continue
            tried = {c.rank for c in task.copies}
            cands = [w for r, w in self.workers.items() if r in self.trusted and r != 0 and w.live and w.accepting
                     and r not in tried and len(w.outstanding) <= self.prefetch * w.slots]
            if not cands:
                continue
            w = min(cands, key=lambda w: (w.sec_per_sample or 0.0, len(w.outstanding), w.rank))
            c = Copy(task.task_id, w.rank, now, audit=True, head=not w.outstanding)
            c.reason = "audit"
            task.copies.append(c)
            w.outstanding.add(task.task_id)
            if w.last_heard is None or len(w.outstanding) == 1:
                w.last_heard = max(w.last_heard or now, now)
            out.append(Assignment(w.rank, task))
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
            self._event(schema.AUDIT, by, f"task {task_id} of step {task.step}: the accepted result agrees with "
                                     f"{self._auditor(by)}'s recomputation", task=task_id, ok=True, ranks=list(ranks))
            return AuditVerdict(True, task_id, task.step, ranks)
        why = (f"its result of task {task_id} (step {task.step}) disagreed with {self._auditor(by)}'s audit "
               f"(off by {worst:.3g} x tolerance)")
        self._event(schema.AUDIT, by, f"task {task_id} of step {task.step}: {self._auditor(by)}'s recomputation shows "
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

    def _convict(self, rank: int, now: float, why: str, proof: str = "a trusted audit") -> None:
        w = self.workers.get(rank)
        if w is None:
            return
        w.strikes = max(w.strikes, self.max_strikes)
        w.strike_log.append((self.step, None, why))
        if w.status != EXCLUDED:
            self._exclude(w, now, f"proven wrong by {proof}: {why}", f"proven wrong: {why}")

    def convict(self, rank: int, now: float, why: str) -> None:
        """``rank`` was proven wrong by a trusted recomputation (a collector
        checking its group's part of a result its parent rejected; the
        master, a collector whose parts were all right but whose sum was
        not): excluded at once, like a failed audit."""
        self._convict(rank, now, why, proof="a trusted recomputation")

    def pardon(self, rank: int, now: float, why: str) -> None:
        """Clear ``rank``'s last strike: the fault was found in a rank below
        it (a collector whose group's wrong worker was named).  An exclusion
        that strike caused is undone."""
        w = self.workers.get(rank)
        if w is None or not w.strikes:
            return
        w.strikes -= 1
        if w.strike_log:
            w.strike_log.pop()
        self._cleared(w, 1, now, why, "pardoned")

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
            self._cleared(w, cleared, now, why, "exonerated")
        return out

    def _cleared(self, w, cleared: int, now: float, why: str, how: str) -> None:
        """Record ``cleared`` strikes taken off ``w``; readmit it when that
        brings an excluded worker below ``max_strikes``."""
        self._event(schema.EXONERATE, w.rank, f"{cleared} strike{'s' if cleared > 1 else ''} cleared: {why}",
                    strikes=w.strikes, cleared=cleared)
        if w.status == EXCLUDED and w.strikes < self.max_strikes:
            w.excluded_at = None
            w.probation_left = 0
            w.live = True
            w.accepting = True
            w.status = ACTIVE
            w.last_heard = now
            self._event(schema.READMIT, w.rank, f"{how}: {why}")

    def record_applied(self, task_ids: Iterable[int], step: int) -> None:
        """The accepted results of ``task_ids`` went into step ``step``'s
        update: remember, per set of ranks that vouched for a result, the
        first step one was applied unaudited (the rollback point should
        those ranks all be proven wrong later).  Results the master computed
        or audited are proven and not recorded."""
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is None or task.kind != schema.GRAD or task.state != DONE or task.audit == "ok":
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
