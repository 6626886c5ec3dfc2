"""Fused loss kernels (``kernels/losses.py``) vs NumPy references: loss, accuracy,
gradient, labels out of range.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.kernels import get_kernel

from .. import _naive


DTYPES = [np.float32, np.float64]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,scale", [(1, 2, 1.0), (7, 3, 5.0), (128, 10, 3.0), (33, 100, 50.0)])
def test_softmax_xent(dtype, n, c, scale):
    rng = np.random.default_rng(n * c)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    labels = rng.integers(0, c, n).astype(np.int64)
    grad = np.empty_like(logits)
    loss, correct, bad = get_kernel("softmax_xent")(logits, labels, grad, True)
    ref_loss, ref_correct, ref_grad = _naive.softmax_xent(logits, labels)
    assert bad == -1 and correct == ref_correct
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad, ref_grad, **_tol(dtype))
    loss2, correct2, _ = get_kernel("softmax_xent")(logits, labels, np.empty((0, 0), dtype), False)
    assert loss2 == loss and correct2 == correct


def test_softmax_xent_bad_label_row():
    logits = np.zeros((4, 3), np.float32)
    out = get_kernel("softmax_xent")(logits, np.array([0, 1, 3, 0]), np.empty_like(logits), True)
    assert out[2] == 2


def _batch(n=37, c=7, seed=0, scale=3.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c)) * scale).astype(dtype), rng.integers(0, c, n).astype(np.int64)


def _tol_smooth(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.6])
def test_softmax_xent_kernel_with_smoothing(dtype, eps):
    z, y = _batch(dtype=dtype)
    grad = np.empty_like(z)
    loss, correct, bad = get_kernel("softmax_xent")(z, y, grad, True, eps)
    ref_loss, ref_correct, ref_grad = _naive.softmax_xent(z, y, eps)
    assert bad == -1 and correct == ref_correct
    np.testing.assert_allclose(loss, ref_loss, **_tol_smooth(dtype))
    np.testing.assert_allclose(grad, ref_grad, **_tol_smooth(dtype))
    np.testing.assert_allclose(grad.sum(1), 0.0, atol=1e-5)  # targets sum to one


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, kernel, args", [
    ("mse", "mse_onehot", ()),
    ("bce_with_logits", "bce_logits_onehot", ()),
    ("huber", "huber_onehot", (1.0,)),
    ("huber", "huber_onehot", (0.25,)),
])
def test_onehot_loss_kernels(dtype, kind, kernel, args):
    z, y = _batch(scale=1.5, dtype=dtype)
    grad = np.empty_like(z)
    loss, correct, bad = get_kernel(kernel)(z, y, grad, True, *args)
    ref_loss, ref_correct, ref_grad = _naive.onehot_loss(z, y, kind, *args)
    assert bad == -1 and correct == ref_correct
    np.testing.assert_allclose(loss, ref_loss, **_tol_smooth(dtype))
    np.testing.assert_allclose(grad, ref_grad, **_tol_smooth(dtype))
    loss2, correct2, _ = get_kernel(kernel)(z, y, np.empty((0, 0), dtype), False, *args)
    assert loss2 == loss and correct2 == correct
