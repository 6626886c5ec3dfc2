"""The forecast: each worker's measured speed and overhead per copy, and the
placement rules built on them -- earliest predicted finish, chunks sized
by speed, probes of stale estimates, speculative backups, hung workers.
Tuning constants live here; replacing this policy does not touch the
transitions that keep each task accepted exactly once (:mod:`.core`)."""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from ... import ledger_schema as schema
from .states import ACCEPTED, ASSIGNED, DUPLICATE, HELD, PENDING, RUNNING, Assignment, Task, Worker

__all__ = ["Plan", "Forecast", "REPROBE_STEPS", "REPROBE_MAX_FACTOR", "SLOWER_MARGIN", "STRAGGLER_RATIO",
           "effective", "place"]


#: a worker idle this many steps since its speed was last measured gets an
#: extra copy of one task as a probe, whatever its estimate says (see :meth:`Scheduler._probe`)
REPROBE_STEPS = 10

#: a worker whose probe did not earn it any work before its next probe is due
#: waits twice as long for the one after, up to this many times
#: ``reprobe_steps``; any work it is given resets the wait.  A probe costs the
#: worker holding the task's other copy a little (that task is computed apart
#: from the worker's chunk, as a separate small batch), so a worker that stays
#: too slow is probed ever more rarely, while one that recovers is noticed
#: within ``reprobe_steps`` x this.
REPROBE_MAX_FACTOR = 8

#: a slower worker gets a task only when predicted to finish it this much sooner
#: (relative to now) than the fastest would: its predictions are the less
#: certain ones, and on a shared node its compute slows the others
SLOWER_MARGIN = 0.1

#: a worker at least this many times slower than the fastest is ranked by its
#: predicted *arrival*: its finish time plus how much more overhead per copy it
#: has than the fastest worker (see :data:`OVERHEAD_SAMPLES`).  A straggler's
#: share is one small chunk, and with its larger overhead that chunk can land
#: after the fast worker's whole share even when its compute is predicted to
#: finish in time, making the step longer than without it.  Workers of about
#: equal speed are not affected (their overheads differ mostly by the order
#: the master serves them).
STRAGGLER_RATIO = 2.0

#: share of a worker's measured overhead that the predicted arrival counts.
#: The overhead is measured when a leader *notices* a result; a leader that
#: sleeps until a prediction counting all of it would notice no earlier, so
#: the estimate could never shrink.  Counting a share below 1 wakes the
#: leader before the usual arrival (it then polls) and lets the estimate
#: fall geometrically when results start coming sooner.
OVERHEAD_TRUST = 0.75


@dataclass
class Plan:
    """The forecast one assign pass works from: when each worker is
    predicted to be free (``free``, advanced as the pass gives out work),
    the speeds that set the margins, and what the pass works out once
    (placement of a step's tasks, probe candidates)."""

    now: float
    typical: float                  # median seconds per sample of the measured workers
    fastest: float                  # seconds per sample of the fastest one
    fastest_overhead: float         # its overhead per copy
    overhead: dict                  # rank -> overhead per copy
    free: dict = field(default_factory=dict)        # rank -> predicted free time
    placement: dict = field(default_factory=dict)   # (step, kind, split, version, quorum, wanted) -> {task: rank}
    stale: dict = field(default_factory=dict)       # step -> workers due a probe


def effective(plan: Plan, rank: int, speed: float, finish: float) -> float:
    """The predicted finish time worker ``rank`` of ``speed`` (s/sample) is
    ranked by: the fastest worker's as predicted, a slower one's stretched by
    :data:`SLOWER_MARGIN`, a much slower one's (:data:`STRAGGLER_RATIO`) also
    moved by its extra overhead."""
    fastest = plan.fastest
    if speed <= fastest * 1.0001:
        return finish
    now = plan.now
    t = now + (finish - now) * (1.0 + SLOWER_MARGIN)
    if speed >= STRAGGLER_RATIO * fastest:
        t += max(0.0, plan.overhead.get(rank, 0.0) - plan.fastest_overhead)
    return t


def place(cands: list, plan: Plan, spp: dict, first: int) -> dict:
    """Earliest-finish placement of ``cands`` (in order) on the workers of
    ``spp`` from their predicted free times ``plan``: ``{task id: rank}``.
    Ties go to ``first``, then to the lower rank.  With equal-sized tasks
    (the usual case) a heap does it in O(tasks x log workers)."""
    load = {r: plan.free[r] for r in spp}
    placed = {}

    def key(r, samples):
        return (effective(plan, r, spp[r], load[r] + samples * spp[r]), r != first, r)

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


class Forecast:
    """Placement policy of :class:`~.core.Scheduler` (a mixin: it reads the
    scheduler's workers and tasks, and changes no copy's state)."""

    def _plan_start(self, now: float) -> Plan | None:
        """Per worker: when it is predicted to be free (None: speeds unknown)."""
        measured = sorted((w for w in self.workers.values() if w.live and w.sec_per_sample),
                          key=lambda w: w.sec_per_sample)
        if not measured:
            return None
        typical = measured[len(measured) // 2].sec_per_sample
        plan = Plan(now=now, typical=typical, fastest=measured[0].sec_per_sample,
                    fastest_overhead=measured[0].overhead_s, overhead={w.rank: w.overhead_s for w in measured})
        for w in self.workers.values():
            if w.live and w.accepting:
                est = self._finish_estimates(w, now, default=typical)
                plan.free[w.rank] = max([now, *est.values()])
        return plan

    def _probe(self, task: Task, exclude: set, plan: Plan) -> int | None:
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
        if task.kind != schema.GRAD or task.samples <= 0 or self.reprobe_steps <= 0:
            return None
        # the candidates are worked out once per assign pass and step (usually
        # none): this runs for every task given out
        stale = plan.stale.get(task.step)
        if stale is None:
            stale = plan.stale[task.step] = self._stale(task.step)
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

    def _stale(self, step: int) -> list[Worker]:
        live = [w for w in self.workers.values() if w.live and w.accepting]
        return [] if len(live) < 2 else sorted(
            (w for w in live if w.sec_per_sample is not None and w.measured_step is not None
             and step - max(w.measured_step, w.probe_step or 0) >= self._probe_wait(w)),
            key=lambda w: (w.measured_step, w.rank))

    def due_probes(self, step: int) -> list[int]:
        """The ranks due a probe at ``step``, the longest unmeasured first:
        live, accepting workers whose speed was last measured (or probed) at
        least their probe wait before it.  None with fewer than two such
        workers, or with probes off (``reprobe_steps`` 0)."""
        if self.reprobe_steps <= 0:
            return []
        return [w.rank for w in self._stale(step)]

    def _probe_wait(self, w: Worker) -> int:
        return w.probe_wait or self.reprobe_steps

    def _merge(self, task: Task, rank: int, plan: Plan, limit: int) -> None:
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
        spp = {r: (w.sec_per_sample or plan.typical) for r, w in self.workers.items()
               if w.live and w.accepting and r in plan.free}
        if not cands or rank not in spp:
            return
        # the placement of the step's remaining tasks is worked out once per
        # assign pass (a Plan lives that long) instead of once per chunk,
        # which is O(tasks x workers^2) per step
        cache = plan.placement
        placed = cache.get(same)
        if placed is None:
            placed = cache[same] = place(cands, plan, spp, rank)
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
            plan.free[rank] += t.samples * spp[rank]
            gone.add(t.task_id)
            del self.tasks[t.task_id]
        self._queue = deque(tid for tid in self._queue if tid not in gone)

    def _pick_worker(self, exclude: set, task: Task | None = None, plan: Plan | None = None) -> int | None:
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
                if not w.live or not w.accepting or r in exclude or w.full(self.prefetch):
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
            if not w.live or not w.accepting or r in exclude or r not in plan.free:
                continue
            speed = w.sec_per_sample or plan.typical
            finish = plan.free[r] + task.samples * speed
            full = w.full(self.prefetch)
            cands.append(((effective(plan, r, speed, finish), full, speed, r), r))
        if not cands:
            return None
        if holders:
            slack = task.samples * plan.typical
            r = self._partner(cands, holders, near=lambda key, best: key[0] <= best[0] + slack)
        else:
            r = min(cands)[1]
        w = self.workers[r]
        plan.free[r] += task.samples * (w.sec_per_sample or plan.typical)
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

    def _learn_speed(self, w: Worker, task: Task, seconds: float) -> None:
        if task.samples <= 0 or seconds <= 0:
            return
        s = seconds / task.samples
        if w.sec_per_sample is None or w.probing:
            w.sec_per_sample = s     # first measurement, or a probe of a stale estimate
        else:
            w.sec_per_sample = 0.8 * w.sec_per_sample + 0.2 * s
        w.probing = False
        w.measured_step = task.step if w.measured_step is None else max(w.measured_step, task.step)

    # -- stragglers and hung workers -----------------------------------------------
    def _finish_estimates(self, w: Worker, now: float, default: float | None = None) -> dict[int, float]:
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

    def backups(self, now: float) -> list[Assignment]:
        """Speculative copies of straggling tasks for idle workers.

        Only once every open task has its copies out (end of a step).  A
        task gets a backup on an idle worker when that worker's result is
        predicted to arrive ``backup_factor`` times sooner than the copy out
        would, or the copy out is already overdue by the backup's own time.
        Arrivals are predicted compute finish plus each worker's measured
        overhead (:attr:`Worker.overhead_s`): the copy out lands at its
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
                    out.append(Assignment(w.rank, task))
                    idle.remove(w)
                    break
        return out

    def hung(self, now: float, timeout: float) -> list[int]:
        """Live workers with work out that sent nothing for ``timeout`` seconds."""
        return [r for r, w in self.workers.items()
                if w.live and w.outstanding and w.last_heard is not None and now - w.last_heard > timeout]

    def next_expected(self) -> float | None:
        """Earliest time an outstanding copy should come back: its assignment,
        its compute at the worker's measured speed, and :data:`OVERHEAD_TRUST`
        of the worker's measured overhead (messages, wake-ups, a worker that
        sleeps or waits on its network); None while nothing is known."""
        best = None
        for w in self.workers.values():
            if not w.live or not w.outstanding or w.sec_per_sample is None:
                continue
            for tid in w.outstanding:
                task = self.tasks[tid]
                for c in task.copies:
                    if c.rank == w.rank and c.state == ASSIGNED:
                        t = c.assigned_at + task.samples * w.sec_per_sample + OVERHEAD_TRUST * w.overhead_s
                        best = t if best is None or t < best else best
        return best
