"""Optimizer kernels (``kernels/optim.py``) vs NumPy references.

Float64 kernel runs are compared with NumPy references in float64 to
``rtol = 1e-12``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from raven_hpc.kernels import get_kernel, kernel_ops

from .. import _naive


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("grad_dtype", DTYPES)
@pytest.mark.parametrize(
    "momentum,dampening,weight_decay,nesterov",
    [(0.0, 0.0, 0.0, False), (0.0, 0.0, 1e-2, False), (0.9, 0.0, 0.0, False), (0.9, 0.0, 5e-4, True),
     (0.5, 0.3, 1e-3, False)],
)
def test_sgd_step(grad_dtype, momentum, dampening, weight_decay, nesterov):
    rng = np.random.default_rng(7)
    p = rng.standard_normal(1001).astype(np.float32)
    buf = np.zeros(1001 if momentum else 0, np.float32)
    ref_p, ref_buf = p.astype(np.float64), buf.astype(np.float64)
    for step in range(4):
        g = rng.standard_normal(1001).astype(grad_dtype)
        get_kernel("sgd_step")(p, g, buf, 0.1, momentum, dampening, weight_decay, nesterov, step == 0)
        ref_p, ref_buf = _naive.sgd_step(ref_p, g, ref_buf, 0.1, momentum, dampening, weight_decay,
                                         nesterov, step == 0)
        np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)
        if momentum:
            np.testing.assert_allclose(buf, ref_buf, rtol=1e-5, atol=1e-6)


def naive_adam(p, g, m, v, vmax, lr, b1, b2, eps, wd, decoupled, amsgrad, step, scale):
    d = g * scale
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        d = d + wd * p
    m = b1 * m + (1 - b1) * d
    v = b2 * v + (1 - b2) * d * d
    if amsgrad:
        vmax = np.maximum(vmax, v)
    denom = np.sqrt(vmax if amsgrad else v) / math.sqrt(1 - b2 ** step) + eps
    return p - lr / (1 - b1 ** step) * m / denom, m, v, vmax


def naive_rmsprop(p, g, s, a, buf, lr, alpha, eps, wd, momentum, centered, scale):
    d = g * scale + wd * p
    s = alpha * s + (1 - alpha) * d * d
    if centered:
        a = alpha * a + (1 - alpha) * d
        r = np.sqrt(s - a * a) + eps
    else:
        r = np.sqrt(s) + eps
    if momentum > 0:
        buf = momentum * buf + d / r
        return p - lr * buf, s, a, buf
    return p - lr * d / r, s, a, buf


@pytest.mark.parametrize("decoupled,amsgrad", [(False, False), (True, False), (False, True), (True, True)])
def test_adam_kernel_float64(decoupled, amsgrad):
    rng = np.random.default_rng(6)
    n = 37
    p = rng.standard_normal(n)
    m, v, vmax = np.zeros(n), np.zeros(n), np.zeros(n if amsgrad else 0)
    ref = (p.copy(), m.copy(), v.copy(), vmax.copy())
    kern = get_kernel("adam_step")
    for step in range(1, 6):
        g = rng.standard_normal(n) * 3.0
        args = (1e-2, 0.9, 0.99, 1e-8, 0.05, decoupled, amsgrad, step, 1.0 / 3)
        kern(p, g, m, v, vmax, *args)
        ref = naive_adam(ref[0], g, ref[1], ref[2], ref[3], *args)
        for got, want in zip((p, m, v, vmax), ref):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_kernel_float64(centered, momentum):
    rng = np.random.default_rng(7)
    n = 37
    p = rng.standard_normal(n)
    s = np.zeros(n)
    a = np.zeros(n if centered else 0)
    buf = np.zeros(n if momentum else 0)
    ref = (p.copy(), s.copy(), a.copy(), buf.copy())
    kern = get_kernel("rmsprop_step")
    for _ in range(5):
        g = rng.standard_normal(n) * 2.0
        args = (1e-2, 0.9, 1e-8, 1e-3, momentum, centered, 0.5)
        kern(p, g, s, a, buf, *args)
        ref = naive_rmsprop(ref[0], g, ref[1], ref[2], ref[3], *args)
        for got, want in zip((p, s, a, buf), ref):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_kernels_registered():
    assert {"sgd_step", "adam_step", "rmsprop_step", "sum_squares"} <= set(kernel_ops("cpu"))
