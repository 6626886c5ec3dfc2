"""The data plan, the message buffers and the master's reduction kernels."""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.kernels.reduce import accumulate, all_finite
from raven_hpc.protocol.messages import ParamsBuffer, ResultBuffer
from raven_hpc.protocol.plan import eval_tasks, make_plan, snippets_per_step
from raven_hpc.protocol.transport import Backoff


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


def test_params_and_result_buffers_pack_in_one_contiguous_array():
    pb = ParamsBuffer(5)
    pb.pack(42, np.arange(5, dtype=np.float32))
    assert pb.version == 42 and pb.raw.nbytes == ParamsBuffer.nbytes_for(5)
    assert np.array_equal(pb.params, np.arange(5))
    rb = ResultBuffer(3)
    rb.set(step=7, task=9, loss_sum=1.5, samples=32)
    rb.grad[:] = [1, 2, 3]
    same = ResultBuffer.for_nbytes(rb.raw.nbytes)
    same.raw[:] = rb.raw
    assert same.get("task") == 9 and same.get("loss_sum") == 1.5 and same.grad.tolist() == [1, 2, 3]
    assert ResultBuffer.for_nbytes(ResultBuffer.nbytes_for(0)).grad.size == 0
    with pytest.raises(ValueError):
        ResultBuffer.for_nbytes(ResultBuffer.nbytes_for(3) + 1)


def test_reduction_kernels():
    x = np.linspace(-1, 1, 1001).astype(np.float32)
    assert all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[500] = bad
        assert not all_finite(y)
    acc = np.zeros(1001)
    accumulate(acc, x)
    accumulate(acc, x)
    assert np.array_equal((acc / 2).astype(np.float32), x)


def test_backoff_sleeps_only_after_spins_and_is_capped():
    b = Backoff(1e-5, 4e-5, spins=3)
    for _ in range(3):
        b.idle()
    assert b.slept_s == 0.0
    for _ in range(5):
        b.idle()
    assert b.slept_s == pytest.approx(1e-5 + 2e-5 + 4e-5 * 3)
    b.busy()
    b.idle()
    assert b.slept_s == pytest.approx(1e-5 + 2e-5 + 4e-5 * 3)
    # Waiting for short work, the sleep is capped at a fraction of it.
    c = Backoff(1e-5, 1e-3, spins=0, latency_fraction=0.05)
    c.cap_for(4e-4)
    for _ in range(10):
        c.idle()
    assert c.cap_s == pytest.approx(2e-5)
    assert c.slept_s == pytest.approx(1e-5 + 2e-5 * 9)
