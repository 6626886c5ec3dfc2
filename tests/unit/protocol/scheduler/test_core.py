"""The scheduler's state machine (raven_hpc.protocol.scheduler.core),
driven without MPI: assignment, exactly-once acceptance, membership, votes,
strikes, arbitration, sampled verification, credits, and the ledger records
it writes."""
from __future__ import annotations

import collections
import random

import pytest

from raven_hpc import ledger_schema
from raven_hpc.errors import ProtocolError
from raven_hpc.protocol.scheduler import (
    ACCEPTED, ASSIGNED, DUPLICATE, EXCLUDED, HELD, LATE, LOST, REJECTED, SKIPPED, Scheduler, agree,
)

from .scenarios import WRONG, copies_of, fp, learn, pair_scheduler, run_voted_step, simulate, tasks


def test_prefetch_bounds_outstanding_and_balances():
    s = Scheduler([1, 2, 3], prefetch=2)
    s.submit(tasks(10))
    out = s.assign(0.0)
    assert len(out) == 6
    per_rank = {}
    for r, _ in out:
        per_rank[r] = per_rank.get(r, 0) + 1
    assert per_rank == {1: 2, 2: 2, 3: 2}
    assert s.assign(0.0) == []          # no room left
    r, t = out[0]
    assert s.complete(r, t.task_id, 1.0).accept
    again = s.assign(1.0)
    assert len(again) == 1 and again[0][0] == r


def test_each_task_accepted_exactly_once_under_random_completion_order():
    rng = random.Random(7)
    for trial in range(30):
        ranks = list(range(1, rng.randint(2, 6)))
        red = rng.randint(1, len(ranks))
        s = Scheduler(ranks, redundancy=red, prefetch=rng.randint(1, 3))
        ts = tasks(rng.randint(1, 25))
        s.submit(ts)
        accepted = []
        inflight = []
        now = 0.0
        while True:
            inflight += s.assign(now)
            if not inflight:
                break
            rng.shuffle(inflight)
            r, t = inflight.pop()
            now += rng.random()
            v = s.complete(r, t.task_id, now)
            if v.accept:
                accepted.append(t.task_id)
            else:
                assert v.state == DUPLICATE
        assert sorted(accepted) == sorted(t.task_id for t in ts), trial
        assert s.open_tasks() == 0
        # Every copy ended in a final state; the ledger has one record per copy.
        ev = s.drain_events()
        assert len(ev) == sum(len(t.copies) for t in ts)
        assert all(c.state != ASSIGNED for t in ts for c in t.copies)


def test_redundant_copies_go_to_distinct_workers():
    s = Scheduler([1, 2, 3], redundancy=3, prefetch=4)
    s.submit(tasks(2))
    out = s.assign(0.0)
    by_task = {}
    for r, t in out:
        by_task.setdefault(t.task_id, []).append(r)
    assert all(sorted(v) == [1, 2, 3] for v in by_task.values())


def test_duplicates_and_late_results_are_never_accepted():
    s = Scheduler([1, 2], redundancy=2, prefetch=2)
    (t,) = tasks(1)
    s.submit([t])
    out = s.assign(0.0)
    assert {r for r, _ in out} == {1, 2}
    assert s.complete(2, t.task_id, 1.0).accept
    v = s.complete(1, t.task_id, 2.0)
    assert not v.accept and v.state == DUPLICATE
    # A result for a copy that is not outstanding (sent twice) is late.
    assert s.complete(1, t.task_id, 3.0).state == LATE


def test_rejected_result_requeues_to_another_worker():
    s = Scheduler([1, 2], prefetch=1)
    (t,) = tasks(1)
    s.submit([t])
    ((r1, _),) = s.assign(0.0)
    v = s.complete(r1, t.task_id, 1.0, ok=False, reason="non-finite")
    assert not v.accept and v.state == REJECTED
    ((r2, _),) = s.assign(1.0)
    assert s.complete(r2, t.task_id, 2.0).accept


def test_removed_worker_tasks_are_reassigned_and_its_late_result_ignored():
    s = Scheduler([1, 2], prefetch=2)
    ts = tasks(4)
    s.submit(ts)
    out = s.assign(0.0)
    lost = [t.task_id for r, t in out if r == 1]
    assert len(lost) == 2
    requeued = s.remove_worker(1, 1.0, "timeout")
    assert requeued == sorted(lost)
    assert s.live_workers() == [2]
    # Rank 2 finishes its own, then gets the requeued ones.
    accepted = []
    for r, t in out:
        if r == 2:
            accepted.append(t.task_id) if s.complete(2, t.task_id, 2.0).accept else None
    for r, t in s.assign(2.0):
        assert r == 2
        assert s.complete(2, t.task_id, 3.0).accept
        accepted.append(t.task_id)
    assert sorted(accepted) == [t.task_id for t in ts]
    # The removed worker's result arrives anyway: not outstanding, so late.
    assert s.complete(1, lost[0], 4.0).state == LATE
    states = [e["state"] for e in s.drain_events() if e["rank"] == 1 and e["ev"] == "copy"]
    assert states.count(LOST) == 2


def test_losing_the_last_worker_with_open_tasks_raises():
    s = Scheduler([1])
    s.submit(tasks(1))
    s.assign(0.0)
    with pytest.raises(ProtocolError, match="no live workers"):
        s.remove_worker(1, 1.0, "crashed")


def test_readmitted_worker_gets_work_again():
    s = Scheduler([1, 2], prefetch=1)
    s.remove_worker(2, 0.0)
    s.submit(tasks(2))
    assert [r for r, _ in s.assign(0.0)] == [1]
    s.add_worker(2)
    assert [r for r, _ in s.assign(0.0)] == [2]


def test_unknown_task_and_bad_parameters():
    s = Scheduler([1])
    with pytest.raises(ProtocolError):
        s.complete(1, 999, 0.0)
    with pytest.raises(ProtocolError):
        Scheduler([1], redundancy=0)
    with pytest.raises(ProtocolError):
        Scheduler([])
    s.submit(tasks(1))
    with pytest.raises(ProtocolError, match="twice"):
        s.submit(tasks(1))


def test_forget_drops_settled_tasks_only():
    s = Scheduler([1, 2], redundancy=2)
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    s.complete(1, t.task_id, 1.0)
    s.forget([t.task_id])
    assert t.task_id in s.tasks          # copy on rank 2 still out
    s.complete(2, t.task_id, 2.0)
    s.forget([t.task_id])
    assert t.task_id not in s.tasks



def test_a_copy_skipped_after_its_task_was_accepted_settles_it():
    """A redundant copy still queued when the next parameter version reached
    its worker comes back ``skipped``: the accepted task is not reopened,
    the worker has room again, the task can be forgotten, and the ledger
    says why."""
    s = Scheduler([1, 2], redundancy=2, prefetch=1)
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    assert s.complete(1, t.task_id, 1.0).accept
    s.forget([t.task_id])
    assert t.task_id in s.tasks and s.outstanding(2) == {t.task_id}
    assert s.skipped(2, t.task_id, 2.0).state == SKIPPED
    assert s.outstanding(2) == set() and s.assign(2.0) == [] and s.is_done(t)
    s.forget([])
    assert t.task_id not in s.tasks
    (rec,) = [e for e in s.drain_events() if e["ev"] == "copy" and e["rank"] == 2]
    assert rec["state"] == SKIPPED and "replaced" in rec["reason"]

def test_rejected_task_prefers_a_worker_that_has_not_rejected_it():
    s = Scheduler([1, 2], prefetch=2)
    (t,) = tasks(1)
    s.submit([t])
    ((r1, _),) = s.assign(0.0)
    s.complete(r1, t.task_id, 1.0, ok=False)
    ((r2, _),) = s.assign(1.0)
    assert r2 != r1
    s.complete(r2, t.task_id, 2.0, ok=False)
    # Every live worker rejected it: it may go back to either; both now have
    # a strike, so the task is verified: a copy on each.
    assert sorted(r for r, _ in s.assign(2.0)) == [1, 2]



# -- votes, strikes, arbitration, credits -----------------------------------------

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



# -- the ledger records ---------------------------------------------------------------

def test_every_record_the_scheduler_writes_fits_the_ledger_schema():
    """Scripted runs through every kind of record the scheduler writes and
    every final copy state: each record passes ledger_schema.check_record,
    as the scheduler hands it out and with the ``host`` the recorder adds."""
    records = []
    # a wrong pair outvotes rank 3 (strike, exclude; accepted, duplicate,
    # rejected copies); the audit convicts the pair (audit, exclude) and
    # clears rank 3 (exonerate, readmit)
    s = pair_scheduler(max_strikes=1)
    t = run_voted_step(s, 0, 1, {1: WRONG, 2: WRONG, 3: fp()})
    assert s.mark_audit(t.task_id) and not s.audit(t.task_id, fp(), 1.0).ok
    records += s.drain_events()
    # drain, undrain; a skipped copy, a lost one, late ones
    s = Scheduler([1, 2, 3], prefetch=1)
    s.drain(3, 0.0)
    s.undrain(3, 0.1)
    s.submit(tasks(3))
    out = s.assign(0.2)
    assert len(out) == 3
    s.skipped(out[0][0], out[0][1].task_id, 0.3)
    s.remove_worker(out[1][0], 0.4, "process failed")
    s.rollback(1, 0.5)
    records += s.drain_events()
    # no quorum and no worker left: the master computes the task
    s = Scheduler([1, 2], redundancy=2, quorum=2)
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    s.complete(1, t.task_id, 1.0, fp=fp())
    assert s.complete(2, t.task_id, 2.0, fp=fp(scale=2.0)).arbitrate
    assert s.arbitrate(t.task_id, fp(), 3.0)
    records += s.drain_events()

    assert {rec[ledger_schema.EV] for rec in records} == set(ledger_schema.SCHEDULER_KINDS)
    states = {rec["state"] for rec in records if rec[ledger_schema.EV] == ledger_schema.COPY}
    assert states == set(ledger_schema.COPY_STATES)
    for rec in records:
        assert ledger_schema.check_record(rec) == [], rec
        assert ledger_schema.check_record({**rec, "host": "n1"}) == [], rec
