"""Proof-of-Calculation in the scheduler: quorum, strikes, exclusion,
probation, sampled verification, backups, hung workers, drain, credits.
Driven without MPI, with hand-made fingerprints."""
from __future__ import annotations

import collections
import math
import random

import pytest

from raven_hpc.errors import ProtocolError
from raven_hpc.protocol.scheduler import (
    ACCEPTED, DUPLICATE, EXCLUDED, HELD, REJECTED, Scheduler, Task, agree,
)

GOOD = (1.0, -2.0, 3.0, 0.5, 30.0, 5.0, 10.0)       # 4 projections, |g|^2, loss, correct


def fp(scale=1.0, noise=0.0):
    p = [v * scale + noise for v in GOOD[:4]]
    return (*p, GOOD[4] * scale * scale, GOOD[5], GOOD[6])


def tasks(n, step=0, start=1, samples=32):
    return [Task(start + i, step, (i,), samples=samples) for i in range(n)]


def copies_of(out, tid):
    return sorted(r for r, t in out if t.task_id == tid)


def test_agree_tolerates_round_off_and_catches_corruption():
    assert agree(fp(), fp(noise=1e-6), 1e-3)[0]
    ok, worst = agree(fp(), fp(scale=-1.0), 1e-3)
    assert not ok and worst > 100
    assert not agree(fp(), fp(scale=1.01), 1e-3)[0]
    assert agree(fp(), fp(scale=1.0001), 1e-3)[0]
    nan = (math.nan,) + fp()[1:]
    assert agree(fp(), nan, 1e-3)[1] == math.inf
    loss_off = fp()[:5] + (5.1, 10.0)
    assert not agree(fp(), loss_off, 1e-3)[0]


def test_quorum_holds_until_two_agree_then_credits_both():
    s = Scheduler([1, 2, 3], redundancy=2, quorum=2)
    (t,) = tasks(1)
    s.submit([t])
    out = s.assign(0.0)
    assert copies_of(out, t.task_id) == [1, 2]
    v = s.complete(1, t.task_id, 1.0, fp=fp())
    assert not v.accept and v.hold and v.state == HELD
    v = s.complete(2, t.task_id, 2.0, fp=fp(noise=1e-7))
    assert v.accept and v.state == ACCEPTED
    states = {c.rank: (c.state, c.verified, c.agreed, c.credited) for c in t.copies}
    assert states == {1: (DUPLICATE, True, True, True), 2: (ACCEPTED, True, True, True)}


def test_disagreement_gets_a_tie_breaker_and_strikes_the_odd_one():
    s = Scheduler([1, 2, 3], redundancy=2, quorum=2, prefetch=1)
    (t,) = tasks(1)
    s.submit([t])
    assert copies_of(s.assign(0.0), t.task_id) == [1, 2]
    assert s.complete(1, t.task_id, 1.0, fp=fp(scale=-1)).hold       # rank 1 corrupts
    v = s.complete(2, t.task_id, 2.0, fp=fp())
    assert v.hold and not v.arbitrate                                   # rank 3 can break the tie
    assert copies_of(s.assign(2.0), t.task_id) == [3]
    v = s.complete(3, t.task_id, 3.0, fp=fp())
    assert v.accept
    assert s.worker_stats()[1]["strikes"] == 1
    assert s.worker_stats()[2]["strikes"] == s.worker_stats()[3]["strikes"] == 0
    c1 = next(c for c in t.copies if c.rank == 1)
    assert c1.state == REJECTED and c1.agreed is False and "quorum" in c1.reason


def test_no_worker_left_for_a_tie_breaker_asks_the_master_to_arbitrate():
    s = Scheduler([1, 2], redundancy=2, quorum=2)
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    s.complete(1, t.task_id, 1.0, fp=fp())
    v = s.complete(2, t.task_id, 2.0, fp=fp(scale=2.0))
    assert v.hold and v.arbitrate and not v.accept
    assert s.arbitrate(t.task_id, fp(), 3.0) is True      # master's result is applied
    st = s.worker_stats()
    assert st[2]["strikes"] == 1 and st[1]["strikes"] == 0
    assert {c.rank: c.state for c in t.copies} == {1: DUPLICATE, 2: REJECTED, 0: ACCEPTED}
    assert any(e["ev"] == "arbitrated" for e in s.drain_events())


def test_strikes_exclude_then_probation_readmits_with_every_task_verified():
    s = Scheduler([1, 2, 3], redundancy=2, quorum=2, max_strikes=2, probation_steps=5, prefetch=1)
    tid = 1
    for step in range(2):
        s.begin_step(step, float(step))
        (t,) = tasks(1, step=step, start=tid)
        tid += 1
        s.submit([t])
        out = s.assign(float(step))
        for r in copies_of(out, t.task_id):
            s.complete(r, t.task_id, step + 0.5, fp=fp(scale=3.0) if r == 1 else fp())
        for r, _ in s.assign(step + 0.5):
            s.complete(r, t.task_id, step + 0.6, fp=fp())
        assert t.state == "done"
    st = s.worker_stats()[1]
    assert st["status"] == EXCLUDED and not st["live"]
    ev = s.drain_events()
    assert [e["ev"] for e in ev if e["rank"] == 1 and e["ev"] != "copy"] == ["strike", "strike", "exclude"]
    # Excluded: gets no work.
    s.begin_step(3, 3.0)
    s.submit(tasks(3, step=3, start=100))
    assert 1 not in {r for r, _ in s.assign(3.0)}
    # Probation over (5 steps after exclusion at step 1): back, suspect, verified.
    assert s.begin_step(6, 6.0) == [1]
    st = s.worker_stats()[1]
    assert st["live"] and st["probation_left"] == 5 and st["strikes"] == 1
    assert any(e["ev"] == "readmit" and e["rank"] == 1 for e in s.drain_events())


def test_sampled_verification_raises_every_kth_copy_of_each_worker():
    s = Scheduler([1, 2, 3], verify=0.25, prefetch=100)
    ts = tasks(40)
    s.submit(ts)
    out = s.assign(0.0)
    verified = [t for t in ts if t.sampled]
    assert all(t.quorum == 2 and t.wanted == 2 for t in verified)
    # every worker's 4th copy starts a verified task: about 1/4 of the tasks
    # each worker *started*; each verified task has 2 copies
    assert 8 <= len(verified) <= 12
    for t in verified:
        assert len(copies_of(out, t.task_id)) == 2
    unverified = [t for t in ts if not t.sampled]
    assert all(len(copies_of(out, t.task_id)) == 1 for t in unverified)


def test_a_suspect_worker_is_always_verified():
    s = Scheduler([1, 2], prefetch=4)
    s.submit(tasks(1))
    ((r, t),) = s.assign(0.0)
    s.complete(r, t.task_id, 1.0, ok=False, reason="non-finite result")
    assert s.worker_stats()[r]["strikes"] == 1
    s.submit(tasks(4, start=10))
    out = s.assign(1.0)
    mine = [tk for rr, tk in out if rr == r]
    assert mine and all(tk.quorum == 2 and tk.wanted == 2 for tk in mine)
    others = [tk for rr, tk in out if rr != r and tk not in mine]
    assert all(tk.quorum == 1 for tk in others)


def learn(s, speeds, samples=100):
    """One task per worker, completed at the given seconds per task."""
    s.submit(tasks(len(speeds), start=900, samples=samples))
    out = dict(s.assign(0.0))
    for r, sec in speeds.items():
        s.complete(r, out[r].task_id, sec, compute_s=sec)


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


def test_drained_worker_finishes_its_copy_but_gets_no_new_work():
    s = Scheduler([1, 2], prefetch=1)
    s.submit(tasks(2))
    out = dict(s.assign(0.0))
    s.drain(2, 0.1)
    assert s.complete(2, out[2].task_id, 0.5).accept
    assert s.complete(1, out[1].task_id, 0.5).accept
    s.submit(tasks(2, start=10))
    assert {r for r, _ in s.assign(0.6)} == {1}
    s.undrain(2, 0.7)
    assert {r for r, _ in s.assign(0.7)} == {2}
    assert [e["ev"] for e in s.drain_events() if e["ev"] != "copy"] == ["drain", "undrain"]


def test_only_the_three_fastest_copies_are_credited():
    s = Scheduler([1, 2, 3, 4, 5], redundancy=5)
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    for i, r in enumerate([4, 2, 5, 1, 3]):
        s.complete(r, t.task_id, 1.0 + i, fp=fp())
    credited = sorted(c.rank for c in t.copies if c.credited)
    assert credited == [2, 4, 5]


@pytest.mark.parametrize("chunks", [False, True])
def test_exactly_once_and_corruption_never_accepted_under_quorum(chunks):
    """Random completion order, one corrupting worker, quorum 2 -- and with
    ``chunks``, learned speeds and tasks merged into chunks: every snippet is
    settled exactly once, by an accepted (or arbitrated) copy, never with the
    corrupt fingerprint."""
    rng = random.Random(11 if chunks else 3)
    for trial in range(40):
        ranks = list(range(1, rng.randint(3, 6)))
        bad = rng.choice(ranks)
        s = Scheduler(ranks, redundancy=2, quorum=2, prefetch=rng.randint(1, 3), max_strikes=2,
                      max_chunk=rng.randint(2, 8) if chunks else 1)
        if chunks:
            learn(s, {r: rng.uniform(0.05, 0.5) for r in ranks})
        ts = tasks(rng.randint(1, 20), step=1, start=10)   # learn()'s tasks are step 0
        s.submit(ts)
        settled, done = collections.Counter(), []
        inflight, now = [], 1.0
        for _ in range(10_000):
            inflight += s.assign(now)
            if not inflight:
                for t in s.stuck():      # its partners were excluded: the master decides
                    assert s.arbitrate(t.task_id, fp(), now)
                    settled.update(t.snippets if t.step else ())
                inflight += s.assign(now)
            if not inflight:
                break
            rng.shuffle(inflight)
            r, t = inflight.pop()
            now += rng.random()
            if not s.workers[r].live:
                continue
            v = s.complete(r, t.task_id, now, compute_s=rng.uniform(0.01, 1.0) if chunks else None,
                           fp=fp(scale=-1.0) if r == bad else fp(noise=rng.uniform(-1e-7, 1e-7)))
            if t.step == 0:
                continue
            if v.arbitrate:
                assert s.arbitrate(t.task_id, fp(), now)
            elif v.accept:
                assert r != bad
            if v.arbitrate or v.accept:
                settled.update(t.snippets)
                done.append(t)
        assert settled == {i: 1 for i in range(len(ts))}, trial
        assert all(agree(t.accepted_fp, fp(), 1e-3)[0] for t in done)


def test_bad_settings_are_refused():
    with pytest.raises(ProtocolError):
        Scheduler([1, 2], redundancy=1, quorum=2)
    with pytest.raises(ProtocolError):
        Scheduler([1], verify=1.5)


# -- chunks: queued tasks merged into one batch per worker, sized by speed ------------

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


def test_sampled_verification_with_chunks_checks_small_chunks_at_the_rate_of_work():
    """verify = 1/8 with chunks: one task in 8 of each worker's work is
    verified; the verified copy is a small chunk (at most one task per
    worker), and the large chunks are never raised to quorum 2."""
    s = Scheduler([1, 2], prefetch=2, max_chunk=16, verify=0.125, seed=5)
    learn(s, {1: 0.1, 2: 0.1})
    work, verified = collections.Counter(), collections.Counter()
    for step in range(1, 41):
        ts = tasks(8, step=step, start=1000 * step)
        s.submit(ts)
        given = simulate(s, {1: 1e-3, 2: 1e-3}, now=float(step))
        for r, got in given.items():
            for t in got:
                if t.copies[0].rank != r:
                    continue          # the second copy of a verified chunk
                work[r] += len(t.snippets)
                if t.sampled:
                    assert t.verify_unit and len(t.snippets) <= 2
                    verified[r] += len(t.snippets)
                else:
                    assert t.quorum == 1
    for r in (1, 2):
        assert verified[r] > 0 and abs(verified[r] - work[r] / 8) <= 3, (r, verified[r], work[r])


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
    assert s.workers[1].probing is False and s._probe(s.tasks[10], exclude=set(), plan=s._plan_start(0.0)) is None
    s = Scheduler([1, 2], prefetch=2, max_chunk=16)
    learn(s, {1: 0.1, 2: 4.0})
    s.reprobe_steps = 0
    s.submit([Task(10 + i, 50, (i,), samples=32) for i in range(8)])
    given = simulate(s, {1: 1e-3, 2: 2e-3}, now=50.0)
    assert 2 not in given


# -- disputes under quorum 1 ------------------------------------------------------

def two_copies_out():
    """Redundancy 2, quorum 1: one task, its copies out on ranks 1 and 2."""
    s = Scheduler([1, 2], redundancy=2, quorum=1)
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    return s, t

def test_quorum_1_dispute_replaces_a_wrong_applied_result_while_its_step_is_open():
    """Redundancy 2, quorum 1: rank 1's wrong result is applied first; rank
    2's copy disputes it, the master computes the task and agrees with rank 2.
    With ``replace`` (the step is still open) rank 1's copy becomes rejected,
    the master's copy is the one accepted -- exactly one accepted record --
    and rank 1 gets the strike."""
    s, t = two_copies_out()
    assert s.complete(1, t.task_id, 1.0, fp=fp(scale=2.0)).accept      # wrong, applied
    v = s.complete(2, t.task_id, 2.0, fp=fp())
    assert v.arbitrate and not v.accept and v.state == REJECTED
    assert s.arbitrate(t.task_id, fp(), 3.0, replace=True) is True       # swap it out
    assert {c.rank: c.state for c in t.copies} == {1: REJECTED, 2: REJECTED, 0: ACCEPTED}
    assert s.worker_stats()[1]["strikes"] == 1 and s.worker_stats()[2]["strikes"] == 0
    recs = [e for e in s.drain_events() if e["ev"] == "copy"]
    assert [e["rank"] for e in recs if e["state"] == "accepted"] == [0]
    (r1,) = [e for e in recs if e["rank"] == 1]                          # one record, rewritten
    assert r1["state"] == "rejected" and "replaced by the master" in r1["reason"]


def test_quorum_1_dispute_after_the_step_was_applied_only_strikes():
    """The same dispute once the records were written out (the step's update
    is applied): nothing can be taken back -- strike only, no swap."""
    for replace in (False, True):
        s, t = two_copies_out()
        s.complete(1, t.task_id, 1.0, fp=fp(scale=2.0))
        s.drain_events()                                                 # the step ended
        s.complete(2, t.task_id, 2.0, fp=fp())
        assert s.arbitrate(t.task_id, fp(), 3.0, replace=replace) is False
        assert {c.rank: c.state for c in t.copies} == {1: ACCEPTED, 2: REJECTED}
        assert s.worker_stats()[1]["strikes"] == 1


def test_quorum_1_dispute_by_the_wrong_copy_keeps_the_applied_result():
    s, t = two_copies_out()
    s.complete(1, t.task_id, 1.0, fp=fp())
    assert s.complete(2, t.task_id, 2.0, fp=fp(scale=-1.0)).arbitrate
    assert s.arbitrate(t.task_id, fp(), 3.0, replace=True) is False
    assert {c.rank: c.state for c in t.copies} == {1: ACCEPTED, 2: REJECTED}
    assert s.worker_stats()[2]["strikes"] == 1 and s.worker_stats()[1]["strikes"] == 0
