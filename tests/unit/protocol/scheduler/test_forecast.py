"""Placement by forecast (raven_hpc.protocol.scheduler.forecast): speeds
and overheads learnt from results, earliest predicted finish, backups of
stragglers, hung workers, chunks sized by speed, probes of stale speeds,
and the partners of a voted task's copies.  Driven without MPI."""
from __future__ import annotations

import collections

import pytest

from raven_hpc.protocol.scheduler import DUPLICATE, Scheduler, Task
from raven_hpc.protocol.scheduler.forecast import OVERHEAD_TRUST

from .scenarios import learn, simulate, tasks


def test_faster_worker_preferred_on_ties():
    s = Scheduler([1, 2], prefetch=1)
    s.submit(tasks(2))
    out = dict((r, t) for r, t in s.assign(0.0))
    s.complete(1, out[1].task_id, 10.0)   # slow: 10 s
    s.complete(2, out[2].task_id, 1.0)    # fast: 1 s
    s.submit(tasks(1, start=100))
    ((r, _),) = s.assign(11.0)
    assert r == 2


def test_speed_is_learnt_from_reported_compute_time_and_predicts_arrival():
    s = Scheduler([1], prefetch=1)
    (t,) = tasks(1, samples=100)
    s.submit([t])
    s.assign(0.0)
    assert s.next_expected() is None                  # nothing known yet
    # The master saw 5 s (it slept), the worker computed for 1 s.
    s.complete(1, t.task_id, 5.0, compute_s=1.0)
    assert s.worker_stats()[1]["sec_per_sample"] == pytest.approx(0.01)
    s.submit(tasks(1, start=50, samples=100))
    s.assign(10.0)
    # arrival = assignment + compute (1 s) + OVERHEAD_TRUST of the 4 s the
    # master waited beyond the compute (messages, a worker that sleeps)
    assert s.next_expected() == pytest.approx(10.0 + 1.0 + OVERHEAD_TRUST * 4.0)



def test_backup_copy_for_an_overdue_straggler_on_an_idle_worker():
    s = Scheduler([1, 2], prefetch=1, backup_factor=1.5)
    learn(s, {1: 0.1, 2: 0.1})                       # equally fast, as far as it knows
    s.submit(tasks(2, start=10, samples=100))
    out = dict(s.assign(1.0))
    assert set(out) == {1, 2}
    s.complete(1, out[1].task_id, 1.1, compute_s=0.1)
    assert s.backups(1.15) == []                     # rank 2's copy is not due yet
    t_slow = out[2]
    assert s.backups(1.3) == [(1, t_slow)]           # due at 1.1, still out at 1.3: back it up
    assert s.backups(1.3) == []                      # one backup, and rank 1 is busy now
    backup = [c for c in t_slow.copies if c.backup]
    assert len(backup) == 1 and backup[0].rank == 1
    assert s.complete(1, t_slow.task_id, 1.4, compute_s=0.1).accept
    assert s.complete(2, t_slow.task_id, 1.6, compute_s=0.5).state == DUPLICATE


def test_backup_races_predicted_arrivals_not_compute_times():
    """A task's result lands its compute time *plus* its worker's overhead
    (messages, wake-ups) after it is given.  Both ranks compute 100 samples
    in 0.1 s and lose 0.3 s per copy outside compute.  Rank 2's copy, given
    at 1.0, is due by compute at 1.1 but lands at ~1.4; a backup on rank 1
    would land 0.1 + 0.3 s after it is given.  Judged by compute alone, rank
    2's copy was backed up at 1.2 while still in transit (and the backup
    lost the race); by arrivals, only once it is overdue by the backup's
    own time."""
    s = Scheduler([1, 2], prefetch=1, backup_factor=1.5)
    s.submit(tasks(2, start=900, samples=100))
    first = dict(s.assign(0.0))
    for r in (1, 2):
        s.complete(r, first[r].task_id, 0.4, compute_s=0.1)   # 0.1 s compute + 0.3 s overhead
    st = s.worker_stats()
    assert st[1]["overhead_s"] == pytest.approx(0.3) and st[2]["overhead_s"] == pytest.approx(0.3)
    s.submit(tasks(2, start=10, samples=100))
    out = dict(s.assign(1.0))
    assert set(out) == {1, 2}
    s.complete(1, out[1].task_id, 1.35, compute_s=0.1)
    assert s.backups(1.45) == []        # rank 2 lands at ~1.4; a backup would land at ~1.85
    assert s.backups(1.75) == []
    assert s.backups(1.85) == [(1, out[2])]   # overdue by more than a backup takes: back it up


def test_overhead_is_learnt_from_copies_first_in_their_queue():
    """A queued copy also waits for the copy before it: its latency says
    nothing about messages and wake-ups, so only head copies are sampled."""
    s = Scheduler([1], prefetch=2)
    s.submit(tasks(2, samples=10))
    out = s.assign(0.0)
    assert [r for r, _ in out] == [1, 1]
    heads = [c.head for _, t in out for c in t.copies]
    assert heads == [True, False]
    s.complete(1, out[0][1].task_id, 0.25, compute_s=0.2)   # overhead 0.05
    s.complete(1, out[1][1].task_id, 0.45, compute_s=0.2)   # waited 0.2 for the first: not sampled
    assert s.worker_stats()[1]["overhead_s"] == pytest.approx(0.05)
    # the median of the recent samples: one outlier does not move it
    for i, ovh in enumerate([0.05, 0.05, 2.0, 0.05]):
        (t,) = tasks(1, start=100 + i, samples=10)
        s.submit([t])
        ((_, t),) = s.assign(1.0 + i)
        s.complete(1, t.task_id, 1.0 + i + 0.2 + ovh, compute_s=0.2)
    assert s.worker_stats()[1]["overhead_s"] == pytest.approx(0.05)


def _run_step(s, spt, n=8, samples=32, start=10):
    """Simulate one step of ``n`` tasks on workers computing ``spt[r]`` s per
    task; returns tasks given per rank."""
    s.submit(tasks(n, start=start, samples=samples))
    now, given = 1.0, collections.Counter()
    busy = collections.defaultdict(list)
    for _ in range(100):
        for r, t in s.assign(now):
            given[r] += 1
            busy[r].append(t)
        if not any(busy.values()):
            break
        r = min((r for r in busy if busy[r]), key=lambda r: (spt[r], r))
        t = busy[r].pop(0)
        now += spt[r]
        s.complete(r, t.task_id, now, compute_s=spt[r])
    return given


def test_earliest_finish_gives_a_slow_worker_only_what_it_finishes_in_time():
    """Fast rank 1 (1 ms/sample), rank 2 four times slower: of 8 tasks of 32
    samples, rank 2 gets one -- it finishes it (128 ms) while rank 1 does
    seven (224 ms); more would make it the step's straggler."""
    s = Scheduler([1, 2], prefetch=2)
    learn(s, {1: 0.1, 2: 0.4})
    given = _run_step(s, {1: 0.032, 2: 0.128})
    assert given[1] + given[2] == 8
    assert given[2] == 1


@pytest.mark.parametrize("slow_overhead, slow_tasks", [(0.0, 1), (0.2, 0)])
def test_a_much_slower_worker_is_placed_by_predicted_arrival(slow_overhead, slow_tasks):
    """As above (rank 2 four times slower: 128 ms for the one task it would
    get, while rank 1 does seven in 224 ms), but rank 2 also loses 0.2 s per
    copy outside compute that rank 1 does not: its task would land at ~0.33 s,
    after rank 1 could have done all eight (0.26 s).  So it gets none."""
    s = Scheduler([1, 2], prefetch=2)
    s.submit(tasks(2, start=900, samples=100))
    first = dict(s.assign(0.0))
    s.complete(1, first[1].task_id, 0.1 + 0.01, compute_s=0.1)
    s.complete(2, first[2].task_id, 0.4 + 0.01 + slow_overhead, compute_s=0.4)
    assert _run_step(s, {1: 0.032, 2: 0.128})[2] == slow_tasks


def test_equally_fast_workers_are_not_placed_by_overhead():
    """Workers of about the same speed split the step the same whatever
    their overheads (those differ mostly by the order the master serves
    them)."""
    splits = []
    for overhead in (0.0, 0.3):
        s = Scheduler([1, 2], prefetch=2)
        s.submit(tasks(2, start=900, samples=100))
        first = dict(s.assign(0.0))
        s.complete(1, first[1].task_id, 0.11, compute_s=0.1)
        s.complete(2, first[2].task_id, 0.105 + 0.01 + overhead, compute_s=0.105)   # 5% slower
        given = _run_step(s, {1: 0.032, 2: 0.0336})
        assert given[1] + given[2] == 8 and given[2] >= 1
        splits.append(dict(given))
    assert splits[0] == splits[1]


def test_hung_worker_is_named_after_its_timeout():
    s = Scheduler([1, 2], prefetch=1)
    s.submit(tasks(2))
    out = dict(s.assign(0.0))
    s.complete(1, out[1].task_id, 0.5)
    assert s.hung(5.0, timeout=10.0) == []
    assert s.hung(10.5, timeout=10.0) == [2]
    requeued = s.remove_worker(2, 10.5, "no result for 10 s (hung)")
    assert requeued == [out[2].task_id]
    assert [r for r, _ in s.assign(10.5)] == [1]
    # it comes back: readmitted
    s.add_worker(2, 20.0, "answered again")
    assert s.worker_stats()[2]["live"]
    assert [e["ev"] for e in s.drain_events() if e["ev"] != "copy"] == ["lost", "readmit"]



# -- chunks: queued tasks merged into one batch per worker, sized by speed ------------

def test_chunks_follow_speed_and_cover_every_snippet_once():
    """Rank 2 is four times slower.  The fast rank gets the step's tasks as a
    few large chunks; the slow one only what it finishes in time; every
    snippet is computed once, and the chunk names the tasks it absorbed."""
    s = Scheduler([1, 2], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1, 2: 0.4})
    ts = tasks(8, start=10, samples=32)
    s.submit(ts)
    given = simulate(s, {1: 1e-3, 2: 4e-3})
    snippets = collections.Counter(sn for r in given for t in given[r] for sn in t.snippets)
    assert snippets == {i: 1 for i in range(8)}
    work = {r: sum(t.samples for t in given[r]) for r in given}
    assert work[1] >= 6 * 32 and work.get(2, 0) <= 2 * 32
    assert len(given[1]) < 8                        # merged: fewer messages than tasks
    absorbed = {tid for r in given for t in given[r] for tid in [t.task_id, *t.merged]}
    assert absorbed == {t.task_id for t in ts}
    # the step ends no later than with one task at a time (224 ms: 7 on rank 1)
    s2 = Scheduler([1, 2], prefetch=2, max_chunk=1)
    learn(s2, {1: 0.1, 2: 0.4})
    s2.submit(tasks(8, start=10, samples=32))
    one = simulate(s2, {1: 1e-3, 2: 4e-3})
    assert all(len(t.snippets) == 1 for r in one for t in one[r])


def test_equal_workers_share_a_step_evenly():
    s = Scheduler([1, 2, 3], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1, 2: 0.1, 3: 0.1})
    s.submit(tasks(12, start=10, samples=32))
    given = simulate(s, {1: 1e-3, 2: 1e-3, 3: 1e-3})
    work = {r: sum(t.samples for t in given[r]) for r in given}
    assert work == {1: 128, 2: 128, 3: 128}


def test_chunks_never_mix_steps_kinds_or_tasks_with_copies():
    s = Scheduler([1], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1})
    a = tasks(3, step=5, start=10)
    b = [Task(20 + i, 5, (100 + i,), kind="eval", split="test", samples=32) for i in range(3)]
    c = tasks(3, step=6, start=30)
    s.submit(a + b + c)
    out = s.assign(1.0)
    for _, t in out:
        members = [t] + [x for x in a + b + c if x.task_id in t.merged]
        assert len({(m.step, m.kind, m.split) for m in members}) == 1


def test_without_known_speeds_or_with_max_chunk_1_nothing_merges():
    s = Scheduler([1, 2], prefetch=2, max_chunk=16)
    s.submit(tasks(6))
    assert all(len(t.snippets) == 1 for _, t in s.assign(0.0))
    s = Scheduler([1, 2], prefetch=2, max_chunk=1)
    learn(s, {1: 0.1, 2: 0.1})
    s.submit(tasks(6, start=10))
    assert all(len(t.snippets) == 1 for _, t in s.assign(1.0))


def test_max_chunk_bounds_the_merge():
    s = Scheduler([1], prefetch=1, max_chunk=3)
    learn(s, {1: 0.1})
    s.submit(tasks(8, start=10))
    (r, t), = s.assign(1.0)
    assert len(t.snippets) == 3 and len(t.merged) == 2



# -- probes: a worker measured slow once is measured again -----------------------

def test_a_worker_measured_slow_once_is_probed_again_and_then_shares_the_work():
    """Rank 2's first result was slow (a cold start: 40x rank 1), so earliest
    finish gives it nothing and, learning only from results, it would never
    be measured again.  After ``reprobe_steps`` idle steps it gets an extra
    copy of one task as a probe; that result (really 2x rank 1) replaces the
    estimate, and from then on it takes its share of every step."""
    s = Scheduler([1, 2], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1, 2: 4.0})
    got = {}
    tid = 10
    for step in range(1, 16):
        ts = [Task(tid + i, step, (i,), samples=32) for i in range(8)]
        tid += 8
        s.submit(ts)
        given = simulate(s, {1: 1e-3, 2: 2e-3}, now=float(step))
        got[step] = {r: sum(t.samples for t in given[r]) for r in given}
    assert all(got[st].get(2, 0) == 0 for st in range(1, s.reprobe_steps))
    # the probe: an extra copy of one task; rank 1 still does the whole step
    assert got[s.reprobe_steps] == {1: 256, 2: 32}
    probes = [e for e in s.drain_events() if e["ev"] == "copy" and e["probe"]]
    assert [(e["rank"], e["step"]) for e in probes] == [(2, s.reprobe_steps)]   # marked in the ledger
    assert s.workers[2].sec_per_sample == pytest.approx(2e-3)        # replaced, not averaged
    assert all(got[st].get(2, 0) >= 64 for st in range(s.reprobe_steps + 1, 16))


def probe_steps(s, true_speed, steps, start_step=1):
    """Run ``steps`` steps of 8 x 32 samples; the steps rank 2 was probed at."""
    tid = 100_000 * start_step
    for step in range(start_step, start_step + steps):
        s.submit([Task(tid + i, step, (i,), samples=32) for i in range(8)])
        tid += 8
        simulate(s, {1: 1e-3, 2: true_speed(step)}, now=float(step))
    return [e["step"] for e in s.drain_events() if e["ev"] == "copy" and e["probe"] and e["rank"] == 2]


def test_a_worker_that_stays_too_slow_is_probed_ever_more_rarely():
    """Rank 2 stays 40x slower than rank 1: each probe confirms it is not
    worth any work, so the wait to the next one doubles (10, 20, 40, 80
    steps), up to ``REPROBE_MAX_FACTOR`` x ``reprobe_steps``.  When it
    recovers, the next probe measures it, it is given work again, and later
    probes (if it idles again) come every ``reprobe_steps`` steps."""
    from raven_hpc.protocol.scheduler import REPROBE_MAX_FACTOR

    s = Scheduler([1, 2], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1, 2: 4.0})
    assert REPROBE_MAX_FACTOR == 8 and s.reprobe_steps == 10
    slow = probe_steps(s, lambda step: 4e-2, 400)
    assert slow == [10, 20, 40, 80, 160, 240, 320, 400]
    # it recovers: the probe at step 480 finds it 2x rank 1; it shares the work
    fast = probe_steps(s, lambda step: 2e-3, 100, start_step=401)
    assert fast == [480]
    assert s.workers[2].probe_wait == 0 and s.workers[2].given_step == 500



def test_no_probe_without_a_second_worker_or_when_disabled():
    s = Scheduler([1], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1})
    s.submit([Task(10 + i, 50, (i,), samples=32) for i in range(4)])
    assert s.workers[1].probing is False and s.due_probes(50) == []
    s = Scheduler([1, 2], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1, 2: 4.0})
    s.reprobe_steps = 0
    s.submit([Task(10 + i, 50, (i,), samples=32) for i in range(8)])
    given = simulate(s, {1: 1e-3, 2: 2e-3}, now=50.0)
    assert 2 not in given


# -- copies of a voted task: distinct hosts, rotating partners ----------------------

def test_copies_of_a_voted_task_go_to_distinct_hosts():
    s = Scheduler([1, 2, 3, 4], redundancy=2, quorum=2, prefetch=8)
    for r, host in {1: "a", 2: "a", 3: "b", 4: "b"}.items():
        s.set_host(r, host)
    s.submit([Task(i, 0, (i,), samples=32) for i in range(1, 41)])
    by_task = collections.defaultdict(list)
    for r, t in s.assign(0.0):
        by_task[t.task_id].append(r)
    hosts = {1: "a", 2: "a", 3: "b", 4: "b"}
    assert by_task and all(len({hosts[r] for r in rs}) == 2 for rs in by_task.values())


def test_voted_copies_rotate_partners():
    s = Scheduler([1, 2, 3, 4], redundancy=2, quorum=2, prefetch=64)
    s.submit([Task(i, 0, (i,), samples=32) for i in range(1, 61)])
    by_task = collections.defaultdict(list)
    for r, t in s.assign(0.0):
        by_task[t.task_id].append(r)
    pairs = collections.Counter(frozenset(rs) for rs in by_task.values())
    assert len(pairs) == 6                       # every pair of the 4 workers shares tasks
    assert max(pairs.values()) - min(pairs.values()) <= 2
