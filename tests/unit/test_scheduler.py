"""The scheduler's state machine, driven without MPI."""
from __future__ import annotations

import random

import pytest

from raven_hpc.errors import ProtocolError
from raven_hpc.protocol.scheduler import (
    ACCEPTED, ASSIGNED, COPY_STATES, DUPLICATE, HELD, LATE, LOST, REJECTED, SKIPPED, TRANSITIONS, Scheduler,
    Task,
)


def tasks(n, step=0, start=1, samples=32):
    return [Task(start + i, step, (i,), samples=samples) for i in range(n)]


def test_transition_table_is_closed_and_final_states_are_terminal():
    assert set(TRANSITIONS) == set(COPY_STATES)
    for src, dsts in TRANSITIONS.items():
        assert dsts <= set(COPY_STATES)
    assert TRANSITIONS[ASSIGNED] == {HELD, ACCEPTED, DUPLICATE, LATE, REJECTED, LOST, SKIPPED}
    assert TRANSITIONS[HELD] == {ACCEPTED, DUPLICATE, REJECTED, LATE}
    # the one way out of a final state: the master's arbitration proves an
    # accepted result wrong before its step is applied
    assert TRANSITIONS[ACCEPTED] == {REJECTED}
    for final in (DUPLICATE, LATE, REJECTED, LOST, SKIPPED):
        assert TRANSITIONS[final] == set()


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


def test_faster_worker_preferred_on_ties():
    s = Scheduler([1, 2], prefetch=1)
    s.submit(tasks(2))
    out = dict((r, t) for r, t in s.assign(0.0))
    s.complete(1, out[1].task_id, 10.0)   # slow: 10 s
    s.complete(2, out[2].task_id, 1.0)    # fast: 1 s
    s.submit(tasks(1, start=100))
    ((r, _),) = s.assign(11.0)
    assert r == 2


def test_illegal_transition_is_refused():
    s = Scheduler([1])
    (t,) = tasks(1)
    s.submit([t])
    s.assign(0.0)
    s.complete(1, t.task_id, 1.0)
    with pytest.raises(ProtocolError, match="illegal transition"):
        s._move(t, t.copies[0], LOST, 2.0, "")


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
    assert s.next_expected() == pytest.approx(11.0)
