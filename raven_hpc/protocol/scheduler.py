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
copy
    one assignment of a task to one worker.  With ``redundancy = R`` a task
    gets R copies on distinct workers; the first acceptable one is used, the
    others are compared and credited (or dropped when they come too late).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import ProtocolError

__all__ = ["Task", "Copy", "Verdict", "Scheduler", "TRANSITIONS", "COPY_STATES"]

# States of a copy and the moves allowed between them.
ASSIGNED = "assigned"      # sent to a worker, result not back yet
ACCEPTED = "accepted"      # first acceptable result: used for the update
DUPLICATE = "duplicate"    # good result after the task was already accepted
LATE = "late"              # result for a task that is closed (step moved on)
REJECTED = "rejected"      # result that failed checks (non-finite, disagreement)
LOST = "lost"              # worker left before returning it
COPY_STATES = (ASSIGNED, ACCEPTED, DUPLICATE, LATE, REJECTED, LOST)
TRANSITIONS = {
    ASSIGNED: {ACCEPTED, DUPLICATE, LATE, REJECTED, LOST},
    ACCEPTED: set(),
    DUPLICATE: set(),
    LATE: set(),
    REJECTED: set(),
    LOST: set(),
}

# Task states.
PENDING = "pending"        # needs (more) copies assigned
RUNNING = "running"        # every wanted copy is out, none accepted yet
DONE = "done"              # one copy accepted
CLOSED = "closed"          # dropped without result (step abandoned)


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


@dataclass(frozen=True)
class Verdict:
    """What the master must do with a result that arrived."""

    accept: bool            # add it to the step's update
    state: str              # the copy's new state
    reason: str = ""


@dataclass
class _Worker:
    rank: int
    live: bool = True
    outstanding: set = field(default_factory=set)   # task ids with an ASSIGNED copy
    done: int = 0
    sec_per_sample: float | None = None             # EWMA of measured speed


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
    """

    def __init__(self, workers: Iterable[int], *, redundancy: int = 1, prefetch: int = 2):
        if redundancy < 1:
            raise ProtocolError(f"redundancy must be >= 1, got {redundancy}")
        if prefetch < 1:
            raise ProtocolError(f"prefetch must be >= 1, got {prefetch}")
        self.redundancy = redundancy
        self.prefetch = prefetch
        self.workers: dict[int, _Worker] = {}
        self.tasks: dict[int, Task] = {}
        self._queue: deque[int] = deque()            # task ids wanting copies, in order
        self._events: list[dict] = []
        for r in workers:
            self.add_worker(r)
        if not self.workers:
            raise ProtocolError("the scheduler needs at least one worker")

    # -- membership ---------------------------------------------------------
    def add_worker(self, rank: int) -> None:
        w = self.workers.get(rank)
        if w is None:
            self.workers[rank] = _Worker(rank)
        else:
            w.live = True

    def live_workers(self) -> list[int]:
        return [r for r, w in self.workers.items() if w.live]

    def remove_worker(self, rank: int, now: float, reason: str = "removed") -> list[int]:
        """Take a worker out; its outstanding copies are lost and their tasks
        go back to the front of the queue.  Returns the requeued task ids."""
        w = self.workers.get(rank)
        if w is None or not w.live:
            return []
        w.live = False
        requeued = []
        for tid in sorted(w.outstanding):
            task = self.tasks[tid]
            for c in task.copies:
                if c.rank == rank and c.state == ASSIGNED:
                    self._move(task, c, LOST, now, reason)
            if task.state in (PENDING, RUNNING):
                task.state = PENDING
                if tid not in self._queue:
                    requeued.append(tid)
        w.outstanding.clear()
        for tid in reversed(requeued):
            self._queue.appendleft(tid)
        if not self.live_workers() and self._open_task_ids():
            raise ProtocolError(f"no live workers left (last one, rank {rank}, {reason})")
        return requeued

    # -- tasks ----------------------------------------------------------------
    def submit(self, tasks: Iterable[Task]) -> None:
        for t in tasks:
            if t.task_id in self.tasks:
                raise ProtocolError(f"task {t.task_id} submitted twice")
            t.state = PENDING
            self.tasks[t.task_id] = t
            self._queue.append(t.task_id)

    def _wanted(self, task: Task) -> int:
        return min(self.redundancy, len(self.live_workers()))

    def _active_copies(self, task: Task) -> list[Copy]:
        return [c for c in task.copies if c.state == ASSIGNED]

    def assign(self, now: float) -> list[tuple[int, Task]]:
        """Give queued tasks to workers with room, least loaded (then fastest) first."""
        out: list[tuple[int, Task]] = []
        keep: deque[int] = deque()
        while self._queue:
            tid = self._queue.popleft()
            task = self.tasks[tid]
            if task.state not in (PENDING, RUNNING):
                continue
            have = {c.rank for c in task.copies if c.state in (ASSIGNED, ACCEPTED, DUPLICATE)}
            rejected = {c.rank for c in task.copies if c.state == REJECTED}
            if set(self.live_workers()) - rejected - have:
                have |= rejected   # a rejected task goes to someone else if anyone is left
            missing = self._wanted(task) - len(self._active_copies(task))
            while missing > 0:
                rank = self._pick_worker(exclude=have)
                if rank is None:
                    break
                c = Copy(tid, rank, now)
                task.copies.append(c)
                self.workers[rank].outstanding.add(tid)
                have.add(rank)
                out.append((rank, task))
                missing -= 1
            if missing > 0:
                keep.append(tid)
                if not self._has_room():
                    break
            else:
                task.state = RUNNING
        keep.extend(self._queue)
        self._queue = keep
        return out

    def _has_room(self) -> bool:
        return any(w.live and len(w.outstanding) < self.prefetch for w in self.workers.values())

    def _pick_worker(self, exclude: set) -> int | None:
        best = None
        for r, w in self.workers.items():
            if not w.live or r in exclude or len(w.outstanding) >= self.prefetch:
                continue
            speed = w.sec_per_sample if w.sec_per_sample is not None else 0.0
            key = (len(w.outstanding), speed, r)
            if best is None or key < best[0]:
                best = (key, r)
        return None if best is None else best[1]

    def complete(self, rank: int, task_id: int, now: float, *, ok: bool = True, reason: str = "",
                 compute_s: float | None = None) -> Verdict:
        """A result for ``task_id`` came back from ``rank``.

        ``ok`` is False when the master's checks failed (non-finite values,
        wrong size, disagreement).  ``compute_s`` is the compute time the
        worker reported; speed is learnt from it when given (the round trip
        seen by the master also holds the master's own delays).  Exactly one
        call per task ever answers ``accept=True``.
        """
        task = self.tasks.get(task_id)
        if task is None:
            raise ProtocolError(f"rank {rank} returned unknown task {task_id}")
        copy = next((c for c in task.copies if c.rank == rank and c.state == ASSIGNED), None)
        if copy is None:
            # Not outstanding: the worker was removed (copy LOST) or it sent twice.
            return Verdict(False, LATE, "copy not outstanding")
        w = self.workers[rank]
        w.outstanding.discard(task_id)
        if not ok:
            self._move(task, copy, REJECTED, now, reason or "failed checks")
            if task.state in (PENDING, RUNNING) and not self._active_copies(task):
                task.state = PENDING
                if task_id not in self._queue:
                    self._queue.appendleft(task_id)
            return Verdict(False, REJECTED, copy.reason)
        self._learn_speed(w, task, compute_s if compute_s is not None else now - copy.assigned_at)
        w.done += 1
        if task.state == DONE:
            self._move(task, copy, DUPLICATE, now, "task already accepted")
            return Verdict(False, DUPLICATE, copy.reason)
        if task.state == CLOSED:
            self._move(task, copy, LATE, now, "task closed")
            return Verdict(False, LATE, copy.reason)
        self._move(task, copy, ACCEPTED, now, "")
        task.state = DONE
        return Verdict(True, ACCEPTED, "")

    def _learn_speed(self, w: _Worker, task: Task, seconds: float) -> None:
        if task.samples <= 0 or seconds <= 0:
            return
        s = seconds / task.samples
        w.sec_per_sample = s if w.sec_per_sample is None else 0.8 * w.sec_per_sample + 0.2 * s

    def close(self, task_ids: Iterable[int], now: float) -> None:
        """Forget tasks (e.g. the run stops); copies still out become late."""
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is not None and task.state in (PENDING, RUNNING):
                task.state = CLOSED

    def forget(self, task_ids: Iterable[int]) -> None:
        """Drop finished tasks whose copies are all settled, to bound memory."""
        for tid in list(task_ids):
            task = self.tasks.get(tid)
            if task is not None and task.state in (DONE, CLOSED) and not self._active_copies(task):
                del self.tasks[tid]

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
            r: {"live": w.live, "outstanding": len(w.outstanding), "done": w.done,
                "sec_per_sample": w.sec_per_sample}
            for r, w in self.workers.items()
        }

    def drain_events(self) -> list[dict]:
        """Ledger records of copies that reached a final state since the last call."""
        ev, self._events = self._events, []
        return ev

    # -- the one place a copy changes state ------------------------------------
    def _move(self, task: Task, copy: Copy, new: str, now: float, reason: str) -> None:
        if new not in TRANSITIONS[copy.state]:
            raise ProtocolError(
                f"illegal transition of task {task.task_id} copy on rank {copy.rank}: {copy.state} -> {new}"
            )
        copy.state = new
        copy.finished_at = now
        copy.reason = reason
        self._events.append({
            "step": task.step,
            "task": task.task_id,
            "kind": task.kind,
            "snippets": list(task.snippets),
            "rank": copy.rank,
            "assigned_t": copy.assigned_at,
            "finished_t": now,
            "state": new,
            "reason": reason,
        })
