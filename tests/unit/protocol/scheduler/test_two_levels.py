"""Two levels of schedulers, as a collector tree runs them, without MPI.

Rank 0's scheduler sees two collectors (1 and 5) as workers that may hold
``prefetch x slots`` copies; each collector's scheduler cuts the tasks it
gets into sub-tasks for its own workers and reports one result per task
when every sub-task is accepted -- the flow of ``protocol/collector.py``
driven by hand with a fake clock.
"""
from __future__ import annotations

import collections
import heapq

from raven_hpc.protocol.scheduler import Scheduler, Task

GROUPS = {1: [2, 3, 4], 5: [6, 7, 8]}
SPEED = {2: 0.01, 3: 0.01, 4: 0.04, 6: 0.01, 7: 0.02, 8: 0.01}   # seconds per sample


def run_step(root, groups, step, n_tasks, *, slow_group=None):
    """One step: ``n_tasks`` tasks of 2 snippets (32 samples each) through
    both levels; returns (accepted root copies, accepted sub-task snippets,
    the largest number of copies a collector held)."""
    root.begin_step(step, 0.0)
    for g in groups.values():
        g.begin_step(step, 0.0)
    tasks = [Task(100 * step + i, step, (2 * i, 2 * i + 1), samples=64) for i in range(n_tasks)]
    root.submit(tasks)
    now = 0.0
    events = []                   # (time, kind, who, id)
    parent_of, open_subs, sub_id = {}, {}, [10_000 * (step + 1)]
    accepted_root, accepted_subs = [], []
    held = collections.Counter()

    def give_root():
        for rank, t in root.assign(now):
            held[rank] = max(held[rank], len(root.outstanding(rank)))
            subs = []
            for s in t.snippets:                      # one sub-task per snippet
                sub_id[0] += 1
                subs.append(Task(sub_id[0], step, (s,), samples=32))
                parent_of[sub_id[0]] = (rank, t.task_id)
            open_subs[(rank, t.task_id)] = {x.task_id for x in subs}
            groups[rank].submit(subs)
        for c, g in groups.items():
            for w, sub in g.assign(now):
                delay = sub.samples * SPEED[w] * (5 if c == slow_group else 1)
                heapq.heappush(events, (now + delay, w, c, sub.task_id, delay))

    give_root()
    while events:
        now, w, c, sid, delay = heapq.heappop(events)
        v = groups[c].complete(w, sid, now, compute_s=delay)
        if v.accept:
            accepted_subs.append(groups[c].task(sid).snippets)
            key = parent_of[sid]
            open_subs[key].discard(sid)
            if not open_subs[key]:
                # the group's speed is learnt from the time the task took
                rv = root.complete(c, key[1], now)
                if rv.accept:
                    accepted_root.append(key)
        give_root()
    return accepted_root, accepted_subs, held


def make(prefetch=1):
    root = Scheduler(list(GROUPS), prefetch=prefetch)
    for c, kids in GROUPS.items():
        root.set_slots(c, len(kids))
    groups = {c: Scheduler(kids, prefetch=prefetch) for c, kids in GROUPS.items()}
    return root, groups


def test_every_snippet_once_through_two_levels_and_both_groups_work():
    root, groups = make()
    for step in range(3):
        acc_root, acc_subs, held = run_step(root, groups, step, 12)
        tids = [t for _, t in acc_root]
        assert sorted(tids) == [100 * step + i for i in range(12)]          # each task accepted once
        snippets = sorted(s for sn in acc_subs for s in sn)
        assert snippets == list(range(24))                                  # each snippet counted once
        assert {c for c, _ in acc_root} == set(GROUPS)                      # both groups had work
        assert all(1 < held[c] <= 3 for c in GROUPS)                        # prefetch x slots, no more
        root.forget(tids)


def test_without_slots_a_collector_holds_one_task_and_its_group_idles():
    root = Scheduler(list(GROUPS), prefetch=1)
    groups = {c: Scheduler(kids, prefetch=1) for c, kids in GROUPS.items()}
    _, _, held = run_step(root, groups, 0, 12)
    assert max(held.values()) == 1


def test_a_slow_group_gets_a_smaller_share_once_its_speed_is_known():
    root, groups = make()
    counts = collections.Counter()
    for step in range(4):
        acc_root, _, _ = run_step(root, groups, step, 12, slow_group=5)
        if step >= 2:
            counts.update(c for c, _ in acc_root)
        root.forget(t for _, t in acc_root)
    assert counts[1] > counts[5] > 0
