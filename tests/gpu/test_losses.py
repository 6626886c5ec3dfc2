"""CUDA loss kernels (kernels/cuda/losses.py) against the CPU ones.

Each case runs the CPU and the CUDA kernel on the same data
(:func:`run_both`) and compares the gradient written in place and the
returned ``(loss_sum, n_correct, bad_row)``.  37 rows: not a multiple of
the block size.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.gpu.conftest import run_both

N, C = 37, 10
DTYPES = (np.float32, np.float64)

#: (op, extra arguments after want_grad)
CASES = [
    ("softmax_xent", ()),
    ("softmax_xent", (0.1,)),
    ("mse_onehot", ()),
    ("bce_logits_onehot", ()),
    ("huber_onehot", (0.5,)),
]


def _data(dtype, seed=0, n=N, scale=2.0):
    rng = np.random.default_rng(seed)
    out = (rng.standard_normal((n, C)) * scale).astype(dtype)
    labels = rng.integers(0, C, n).astype(np.int64)
    labels[::3] = np.argmax(out[::3], axis=1)  # some rows right, so n_correct is tested
    out[5, :] = out[5, 3]                     # a row of ties: the first maximum wins
    return out, labels


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,extra", CASES)
def test_loss_and_grad(cuda_backend, op, extra, dtype):
    out, labels = _data(dtype)
    grad = np.full_like(out, 7.0)
    _, _, r_cpu, r_gpu = run_both(cuda_backend, op, [out, labels, grad, True, *extra], outs=(2,), **_tol(dtype))
    assert r_gpu[2] == -1 and r_cpu[2] == -1
    assert r_gpu[1] == r_cpu[1] and r_gpu[1] >= N // 3
    assert isinstance(r_gpu[0], float) and isinstance(r_gpu[1], int) and isinstance(r_gpu[2], int)


@pytest.mark.parametrize("op,extra", CASES)
def test_loss_without_grad_leaves_grad_alone(cuda_backend, op, extra):
    out, labels = _data(np.float32, seed=1)
    grad = np.full_like(out, 7.0)
    _, back, _, _ = run_both(cuda_backend, op, [out, labels, grad, False, *extra], outs=(2,))
    np.testing.assert_array_equal(back[2], grad)
    # an empty gradient is allowed without want_grad
    run_both(cuda_backend, op, [out, labels, np.empty((0, C), np.float32), False, *extra])


@pytest.mark.parametrize("op,extra", CASES)
@pytest.mark.parametrize("bad_at,bad_label", [(20, C), (0, -1), (36, C + 5)])
def test_bad_label_stops_at_first_bad_row(cuda_backend, op, extra, bad_at, bad_label):
    out, labels = _data(np.float64, seed=2)
    labels[bad_at] = bad_label
    if bad_at + 3 < N:
        labels[bad_at + 3] = -4                # a later bad row does not count
    grad = np.full_like(out, 7.0)
    _, back, r_cpu, r_gpu = run_both(cuda_backend, op, [out, labels, grad, True, *extra], outs=(2,),
                                     **_tol(np.float64))
    assert r_gpu[2] == bad_at == r_cpu[2]
    np.testing.assert_array_equal(back[2][bad_at:], 7.0)   # rows from the bad one on keep their values
    if bad_at == 0:
        assert r_gpu[:2] == (0.0, 0)


def test_large_logits_are_stable(cuda_backend):
    out, labels = _data(np.float32, seed=3, scale=300.0)
    for op, extra in CASES:
        _, _, _, r_gpu = run_both(cuda_backend, op, [out, labels, np.zeros_like(out), True, *extra], outs=(2,),
                                  rtol=1e-5, atol=1e-4)
        assert np.isfinite(r_gpu[0])


def test_huber_both_sides_of_delta(cuda_backend):
    """delta inside the spread of |out - t|: both branches of every element's loss and clip are taken."""
    out, labels = _data(np.float64, seed=4, scale=1.0)
    for delta in (0.05, 0.7, 5.0):
        run_both(cuda_backend, "huber_onehot", [out, labels, np.zeros_like(out), True, delta], outs=(2,),
                 **_tol(np.float64))


def test_strided_grid_and_odd_block_deterministic(cuda_backend, monkeypatch):
    """Threads striding over several rows (grid capped at 2 blocks), a block
    size that is no power of two, and the same bits on a repeat call."""
    from raven_hpc.kernels.cuda import _launch

    monkeypatch.setattr(_launch, "MAX_BLOCKS", 2)
    monkeypatch.setattr(_launch, "_THREADS", 96)
    out, labels = _data(np.float32, seed=5, n=250)
    labels[230] = C
    fn = cuda_backend.kernel("softmax_xent")
    _, _, r_cpu, r_gpu = run_both(cuda_backend, "softmax_xent", [out, labels, np.zeros_like(out), True, 0.05],
                                  outs=(2,))
    assert r_gpu[2] == 230 and r_gpu[1] == r_cpu[1]
    again = fn(cuda_backend.to_device(out), cuda_backend.to_device(labels), cuda_backend.zeros(out.shape), True, 0.05)
    assert again == r_gpu
