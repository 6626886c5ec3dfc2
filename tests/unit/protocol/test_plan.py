"""The data plan (raven_hpc.protocol.plan)."""
from __future__ import annotations

import numpy as np

from raven_hpc.protocol.plan import eval_tasks, make_plan, snippets_per_step


def test_plan_is_a_deterministic_permutation_cut_into_steps_and_tasks():
    p = make_plan(103, 2, seed=5, batch_size=256, snippet_size=32, task_snippets=3)
    q = make_plan(103, 2, seed=5, batch_size=256, snippet_size=32, task_snippets=3)
    assert np.array_equal(p.order, q.order)
    assert sorted(p.order.tolist()) == list(range(103))
    assert p.snippets_per_step == 8
    assert p.num_steps == 13
    seen = []
    for i in range(p.num_steps):
        groups = p.step_tasks(i)
        assert all(1 <= len(g) <= 3 for g in groups)
        flat = [s for g in groups for s in g]
        assert flat == p.step_snippets(i).tolist()
        seen += flat
    assert seen == p.order.tolist()           # every snippet exactly once per epoch
    other = make_plan(103, 3, seed=5, batch_size=256, snippet_size=32, task_snippets=3)
    assert not np.array_equal(p.order, other.order)


def test_snippets_per_step_rounds_and_never_zero():
    assert snippets_per_step(256, 32) == 8
    assert snippets_per_step(250, 32) == 8
    assert snippets_per_step(1, 32) == 1


def test_eval_tasks_cover_the_split():
    groups = eval_tasks(10, 4)
    assert [len(g) for g in groups] == [4, 4, 2]
    assert [s for g in groups for s in g] == list(range(10))
