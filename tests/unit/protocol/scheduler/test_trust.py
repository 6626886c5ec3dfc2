"""Trust in the scheduler (raven_hpc.protocol.scheduler.trust), without
MPI: trusted audits, guilty ranks and the strikes their votes gave, the
rollback point."""
from __future__ import annotations

from raven_hpc.protocol.scheduler import ACCEPTED, EXCLUDED, LATE, Scheduler, Task

from .scenarios import WRONG, fp, pair_scheduler, run_voted_step


def test_audit_that_agrees_proves_the_result():
    s = pair_scheduler()
    t = run_voted_step(s, 0, 1, {1: fp(), 2: fp(), 3: fp()})
    assert s.mark_audit(t.task_id)
    assert s.next_audit() is t
    v = s.audit(t.task_id, fp(), 1.0)
    assert v.ok and set(v.ranks) == {1, 2, 3} and not v.guilty
    s.record_applied([t.task_id], 0)
    assert s.trust_floor() is None          # proven: no rollback could need step 0
    assert s.next_audit() is None


def test_identical_wrong_pair_is_guilty_and_the_honest_strike_is_cleared():
    s = pair_scheduler(max_strikes=1)
    t0 = run_voted_step(s, 0, 1, {1: fp(), 2: fp(), 3: fp()})
    s.record_applied([t0.task_id], 0)
    t1 = run_voted_step(s, 1, 2, {1: WRONG, 2: WRONG, 3: fp()})
    # the pair outvoted rank 3: it is struck out (max_strikes = 1)
    assert next(c for c in t1.copies if c.state == ACCEPTED).rank in (1, 2)
    assert s.workers[3].status == EXCLUDED
    s.record_applied([t1.task_id], 1)
    assert s.distrusted_since() is None     # {1, 2} vouched for step 1; only rank 3 is excluded
    assert s.mark_audit(t1.task_id)
    v = s.audit(t1.task_id, fp(), 2.0)
    assert not v.ok and set(v.guilty) == {1, 2}
    assert v.exonerated == (3,)
    assert s.workers[3].status == "active" and s.workers[3].strikes == 0 and s.workers[3].live
    assert s.workers[1].status == s.workers[2].status == EXCLUDED
    # the first result only guilty ranks vouched for went into step 1
    assert v.rollback_to == 1
    events = [e["ev"] for e in s.drain_events()]
    assert "audit" in events and "exonerate" in events and events.count("exclude") == 3


def test_rollback_point_ignores_results_an_honest_rank_vouched_for():
    s = pair_scheduler()
    a = run_voted_step(s, 0, 1, {1: fp(), 2: fp(), 3: fp()})     # {1, 2, 3}
    s.record_applied([a.task_id], 0)
    b = run_voted_step(s, 1, 2, {1: WRONG, 2: WRONG, 3: fp()})   # {1, 2}
    s.record_applied([b.task_id], 1)
    assert s.rollback_point({1, 2}) == 1
    assert s.rollback_point({1}) is None
    assert s.trust_floor() == 0
    s.guilty.update({1, 2})
    assert s.distrusted_since() == (1, [1, 2])
    s.rollback(1, 3.0)
    assert s.rollback_point({1, 2}) is None and s.trust_floor() == 0
    assert s.step == 1 and not s.tasks


def test_strike_from_a_non_finite_result_is_never_cleared():
    s = pair_scheduler(max_strikes=5)
    t = run_voted_step(s, 0, 1, {1: WRONG, 2: WRONG, 3: fp()})
    s.strike(3, 0.7, "non-finite result")
    assert s.workers[3].strikes == 2
    s.mark_audit(t.task_id)
    s.audit(t.task_id, fp(), 1.0)
    assert s.workers[3].strikes == 1                  # the vote's strike cleared, the other kept


def test_rollback_drops_open_copies_and_workers_skip_nothing_twice():
    s = Scheduler([1, 2], redundancy=1, prefetch=2)
    s.submit([Task(1, 4, (0,), samples=32), Task(2, 4, (1,), samples=32)])
    out = s.assign(0.0)
    assert len(out) == 2
    s.rollback(2, 1.0)
    assert all(not w.outstanding for w in s.workers.values())
    late = [e for e in s.drain_events() if e["ev"] == "copy"]
    assert late and {e["state"] for e in late} == {LATE}
    assert not s.tasks and not s.open_tasks()    # a late result of them is ignored by the master


def test_mark_audit_takes_the_fingerprint_of_an_unverified_result():
    s = Scheduler([1, 2], redundancy=1)
    t = Task(1, 0, (0,), samples=32)
    s.submit([t])
    s.assign(0.0)
    assert s.complete(1, 1, 1.0).accept          # quorum 1: no fingerprint
    assert not s.mark_audit(1)                    # nothing to compare with
    assert s.mark_audit(1, fp())
    assert s.audit(1, fp(), 2.0).ok


def test_master_result_is_not_audited():
    s = Scheduler([1, 2], redundancy=2, quorum=2)
    t = Task(1, 0, (0,), samples=32)
    s.submit([t])
    s.assign(0.0)
    s.complete(1, 1, 1.0, fp=fp())
    v = s.complete(2, 1, 1.0, fp=WRONG)
    assert v.arbitrate
    assert s.arbitrate(1, fp(), 2.0)
    assert not s.mark_audit(1)


def test_a_convicted_rank_readmitted_on_probation_is_judged_anew():
    s = Scheduler([1, 2, 3], redundancy=3, quorum=2, prefetch=4, probation_steps=2)
    t = run_voted_step(s, 0, 1, {1: WRONG, 2: WRONG, 3: fp()})
    s.mark_audit(t.task_id)
    assert not s.audit(t.task_id, fp(), 1.0).ok
    assert s.guilty == {1, 2}
    assert sorted(s.begin_step(2, 2.0)) == [1, 2]       # probation over: back, every result verified
    assert s.guilty == set() and s.workers[1].suspect


def test_a_trusted_rank_computes_the_audit_and_its_word_is_proof():
    s = Scheduler([1, 2, 3, 4], redundancy=2, quorum=2, prefetch=4, trusted=[4])
    s.begin_step(0, 0.0)
    t = Task(1, 0, (0,), samples=32)
    s.submit([t])
    assert sorted(r for r, _ in s.assign(0.0)) == [1, 2]
    for r in (1, 2):
        s.complete(r, 1, 0.5, fp=WRONG)             # identical and wrong: the vote accepts it
    assert t.state == "done" and s.mark_audit(1)
    assert s.assign(0.6) == [(4, t)]
    assert s.audits_out() and s.next_audit() is None   # the trusted rank's, not the master's
    assert s.next_audit(race=True, now=0.61) is t       # speed unknown: raced once the step waits for it alone
    v = s.complete(4, 1, 1.0, fp=fp())
    assert v.audit is not None and not v.audit.ok and set(v.audit.guilty) == {1, 2}
    assert not s.audits_out()
    audit = [e for e in s.drain_events() if e["ev"] == "audit"]
    assert audit[0]["rank"] == 4 and "trusted rank 4" in audit[0]["reason"]


def test_a_result_a_trusted_rank_agreed_with_is_proven():
    s = Scheduler([1, 4], redundancy=2, quorum=2, trusted=[4])
    t = run_voted_step(s, 0, 1, {1: fp(), 4: fp()})
    assert not s.mark_audit(t.task_id)
    s.record_applied([t.task_id], 0)
    assert s.trust_floor() is None


def test_a_lost_trusted_rank_leaves_its_audit_to_the_master():
    s = Scheduler([1, 2, 3], redundancy=1, prefetch=2, trusted=[3])
    t = Task(1, 0, (0,), samples=32)
    s.submit([t])
    (r, _), = s.assign(0.0)
    s.complete(r, 1, 0.5)
    assert s.mark_audit(1, fp())
    assert r == 1 and [x[0] for x in s.assign(0.6)] == [3]
    assert s.next_audit() is None
    s.remove_worker(3, 0.7, "process failed")
    assert s.next_audit() is t


def test_the_slower_of_two_audits_of_one_result_is_late():
    s = Scheduler([1, 2, 3], redundancy=1, prefetch=2, trusted=[3])
    s.submit([Task(1, 0, (0,), samples=32)])
    (r, t), = s.assign(0.0)
    s.complete(r, 1, 0.5)
    s.mark_audit(1, fp())
    assert [x[0] for x in s.assign(0.6)] == [3]
    assert s.audit(1, fp(), 0.7).ok                   # the master won the race
    v = s.complete(3, 1, 0.9, fp=fp())
    assert v.audit is None and v.state == "late" and not s.audits_out()


def test_with_audits_on_the_vote_that_excludes_a_worker_is_audited():
    s = pair_scheduler(max_strikes=1)
    s.audit_exclusions = True
    t = run_voted_step(s, 0, 1, {1: WRONG, 2: WRONG, 3: fp()})
    assert s.workers[3].status == EXCLUDED
    assert s.next_audit() is t                       # the master recomputes the vote that excluded rank 3
    v = s.audit(t.task_id, fp(), 1.0)
    assert set(v.guilty) == {1, 2} and v.exonerated == (3,) and s.workers[3].status == "active"


def test_without_audits_an_exclusion_by_votes_is_not_audited():
    s = pair_scheduler(max_strikes=1)
    run_voted_step(s, 0, 1, {1: WRONG, 2: WRONG, 3: fp()})
    assert s.workers[3].status == EXCLUDED and s.next_audit() is None


def test_a_late_copy_of_an_earlier_step_is_never_audited():
    s = pair_scheduler(max_strikes=1)
    s.audit_exclusions = True
    s.begin_step(0, 0.0)
    t = Task(1, 0, (0,), samples=32)
    s.submit([t])
    t.wanted = 3
    s.assign(0.0)
    s.complete(1, 1, 0.2, fp=fp())
    s.complete(2, 1, 0.3, fp=fp())                   # quorum: accepted
    s.begin_step(1, 1.0)                              # the step moved on; rank 3's copy is late
    s.complete(3, 1, 1.1, fp=WRONG)                   # disagrees with the verified result: excluded
    assert s.workers[3].status == EXCLUDED
    assert s.next_audit() is None                     # step 0's parameters are gone: nothing to recompute


def test_the_master_races_a_trusted_audit_only_once_it_is_overdue():
    s = Scheduler([1, 2, 3], redundancy=1, prefetch=2, trusted=[3])
    for w in s.workers.values():
        w.sec_per_sample = 0.001                      # 32 ms per 32-sample task
    s.submit([Task(1, 0, (0,), samples=32)])
    (r, t), = s.assign(0.0)
    s.complete(r, 1, 0.05, compute_s=0.032)
    s.mark_audit(1, fp())
    assert [x[0] for x in s.assign(0.06)] == [3]
    assert s.next_audit(race=True, now=0.07) is None  # due at 0.092: wait for the trusted rank
    assert s.next_audit(race=True, now=0.10) is t     # overdue: the master computes it too
