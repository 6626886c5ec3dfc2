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


# -- gradient fingerprints (the master compares copies with them) -------------------

def _fingerprint_reference(x, seed):
    """The fingerprint in plain numpy, strict float64 order: the definition."""
    n = x.shape[0]
    blk = np.arange((n + 15) // 16, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + blk * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    i = np.arange(n)
    hb = h[i // 16] >> (np.uint64(4) * (i % 16).astype(np.uint64))
    xs = x.astype(np.float64)
    proj = [float(np.sum(xs * (2.0 * ((hb >> np.uint64(k)) & np.uint64(1)).astype(np.float64) - 1.0)))
            for k in range(4)]
    return np.array(proj + [float(np.sum(xs * xs))])


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 100_003])
def test_fingerprint_matches_its_definition(n):
    from raven_hpc.kernels.reduce import FP_SIZE, fingerprint

    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = np.zeros(FP_SIZE)
    assert fingerprint(x, 12345, out)
    ref = _fingerprint_reference(x, 12345)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9 * np.sqrt(ref[-1]) * np.sqrt(n))


def test_fingerprint_flags_non_finite_and_separates_wrong_copies():
    from raven_hpc.kernels.reduce import FP_SIZE, fingerprint
    from raven_hpc.protocol.scheduler import agree

    rng = np.random.default_rng(0)
    g = rng.standard_normal(50_000).astype(np.float32)
    fp = lambda x: (*(lambda o: (fingerprint(x, 7, o), o)[1])(np.zeros(FP_SIZE)), 1.0, 1.0)   # noqa: E731
    for bad in (np.nan, np.inf, -np.inf):
        y = g.copy()
        y[31_337] = bad
        assert not fingerprint(y, 7, np.zeros(FP_SIZE))
    # an honest copy: the same sum in another order (float32 round-off)
    honest = (g.astype(np.float64) * 3 - g.astype(np.float64) * 2).astype(np.float32)
    assert agree(fp(g), fp(honest), 1e-3)[0]
    flipped = g.copy()
    flipped.view(np.uint32)[123] ^= np.uint32(1 << 30)
    assert not agree(fp(g), fp(flipped), 1e-3)[0]
    assert not agree(fp(g), fp(g * np.float32(1.01)), 1e-3)[0]


def test_outbox_drives_progress_only_for_fresh_large_sends():
    """``transferring(fresh_s)``: a large send counts only in its first
    ``fresh_s`` seconds (a peer busy computing cannot take it sooner, and
    spinning for it would only take CPU from the ranks beside us); small
    sends (no buffer kept alive) never count; completed sends leave."""
    import time as _time

    from raven_hpc.protocol.transport import Outbox

    class Req:
        def __init__(self):
            self.done = False

        def Test(self):
            return self.done

    box = Outbox()
    small, large = Req(), Req()
    box.add(small)
    assert not box.transferring() and not box.transferring(fresh_s=1.0)
    buf = np.zeros(4)
    box.add(large, buf)
    assert box.transferring() and box.transferring(fresh_s=1.0) and box.holds(buf)
    _time.sleep(0.02)
    assert box.transferring() and not box.transferring(fresh_s=0.01)
    large.done = small.done = True
    assert box.progress() == 0 and not box.transferring() and not box.holds(buf)
