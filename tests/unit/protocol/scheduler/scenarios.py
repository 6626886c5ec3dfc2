"""Drivers of the scheduler tests, without MPI: tasks, hand-made
fingerprints, a worker's speed learnt, a queue run to its end, a voted step."""
from __future__ import annotations

import collections

from raven_hpc.protocol.scheduler import Scheduler, Task

GOOD = (1.0, -2.0, 3.0, 0.5, 30.0, 5.0, 10.0)       # 4 projections, |g|^2, loss, correct


def fp(scale=1.0, noise=0.0):
    """The fingerprint GOOD scaled by ``scale`` (-1: a wrong copy), its
    projections moved by ``noise`` (round-off)."""
    p = [v * scale + noise for v in GOOD[:4]]
    return (*p, GOOD[4] * scale * scale, GOOD[5], GOOD[6])


WRONG = fp(-1.0)


def tasks(n, step=0, start=1, samples=32):
    return [Task(start + i, step, (i,), samples=samples) for i in range(n)]


def copies_of(out, tid):
    return sorted(r for r, t in out if t.task_id == tid)


def learn(s, speeds, samples=100):
    """One task per worker, completed at the given seconds per task."""
    s.submit(tasks(len(speeds), start=900, samples=samples))
    out = dict(s.assign(0.0))
    for r, sec in speeds.items():
        s.complete(r, out[r].task_id, sec, compute_s=sec)


def simulate(s, speeds, now=1.0, complete_order=None, rng=None):
    """Run the queue to the end: each worker computes its copies in order at
    ``speeds[r]`` seconds per sample; returns {rank: [task, ...]} as given."""
    given = collections.defaultdict(list)
    free = {r: now for r in speeds}
    inflight = []   # (finish time, rank, task)
    for _ in range(10_000):
        for r, t in s.assign(now):
            given[r].append(t)
            start = max(free[r], now)
            free[r] = start + t.samples * speeds[r]
            inflight.append((free[r], r, t))
        if not inflight:
            break
        inflight.sort(key=lambda x: x[0])
        fin, r, t = inflight.pop(0)
        now = max(now, fin)
        s.complete(r, t.task_id, now, compute_s=t.samples * speeds[r])
    return given


def run_voted_step(s: Scheduler, step: int, tid: int, answers: dict) -> Task:
    """One task of ``step`` computed by every rank in ``answers`` (rank ->
    fingerprint), all copies given before any returns."""
    s.begin_step(step, float(step))
    t = Task(tid, step, (tid,), samples=32)
    s.submit([t])
    t.wanted = len(answers)
    given = {r for r, tt in s.assign(float(step)) if tt.task_id == tid}
    assert given == set(answers), (given, answers)
    for r, f in answers.items():
        s.complete(r, tid, step + 0.5, fp=f)
    return t


def pair_scheduler(**kw) -> Scheduler:
    return Scheduler([1, 2, 3], redundancy=3, quorum=2, prefetch=4, **kw)
