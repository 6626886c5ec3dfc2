"""Norm kernels (``kernels/norm.py``): batch norm, layer norm and embedding vs
NumPy.
"""
from __future__ import annotations

import numpy as np
import pytest



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(300, 37, 1), (7, 5, 97), (2, 3, 1)])
def test_batchnorm_kernels_vs_numpy(shape, dtype):
    from raven_hpc.kernels import get_kernel

    rng = np.random.default_rng(sum(shape))
    n, C, L = shape
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    gamma = (rng.standard_normal(C) + 1).astype(dtype)
    mean, var = np.empty(C), np.empty(C)
    get_kernel("batchnorm_stats")(x, mean, var)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean((0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, x64.var((0, 2)), rtol=1e-9)
    invstd = 1 / np.sqrt(var + 1e-5)
    xhat = (x64 - mean[:, None]) * invstd[:, None]
    for training in (True, False):
        dgamma, dbeta, dx = np.empty(C, dtype), np.empty(C, dtype), np.empty(shape, dtype)
        get_kernel("batchnorm_backward")(g, x, mean, invstd, gamma, training, dbeta, dgamma, dx)
        g64 = g.astype(np.float64)
        sg, sgx = g64.sum((0, 2)), (g64 * xhat).sum((0, 2))
        ref = g64 - ((sg[:, None] + xhat * sgx[:, None]) / (n * L) if training else 0)
        ref = ref * (gamma.astype(np.float64) * invstd)[:, None]
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(dbeta, sg, rtol=tol, atol=tol * n * L)
        np.testing.assert_allclose(dgamma, sgx, rtol=tol, atol=tol * n * L)
        np.testing.assert_allclose(dx, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 517), (3, 1), (5, 3)])
def test_layernorm_kernels_vs_numpy(shape, dtype):
    from raven_hpc.kernels import get_kernel

    rng = np.random.default_rng(sum(shape))
    n, D = shape
    x = (rng.standard_normal(shape) * 2 - 30).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    gamma, beta = (rng.standard_normal(D) + 1).astype(dtype), rng.standard_normal(D).astype(dtype)
    y, mean, invstd = np.empty(shape, dtype), np.empty(n), np.empty(n)
    get_kernel("layernorm_forward")(x, gamma, beta, True, 1e-5, y, mean, invstd)
    x64 = x.astype(np.float64)
    xhat = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, xhat * gamma + beta, rtol=tol, atol=tol)
    dx, dgamma, dbeta = np.empty(shape, dtype), np.empty(D, dtype), np.empty(D, dtype)
    get_kernel("layernorm_backward")(g, x, mean, invstd, gamma, True, dx, dgamma, dbeta)
    gg = g.astype(np.float64) * gamma
    ref = (gg - gg.mean(1, keepdims=True) - xhat * (gg * xhat).mean(1, keepdims=True)) * invstd[:, None]
    np.testing.assert_allclose(dx, ref, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(dgamma, (g * xhat).sum(0), rtol=10 * tol, atol=10 * tol * n)
    np.testing.assert_allclose(dbeta, g.astype(np.float64).sum(0), rtol=10 * tol, atol=10 * tol * n)


def test_embedding_kernels_vs_numpy():
    from raven_hpc.kernels import get_kernel

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, 1000)
    idx = np.empty(1000, np.int64)
    assert get_kernel("embedding_indices")(ids.astype(np.float32), 50, idx) == -1
    np.testing.assert_array_equal(idx, ids)
    bad = ids.astype(np.float64)
    bad[700] = 3.25
    assert get_kernel("embedding_indices")(bad, 50, idx) == 700
    g = rng.standard_normal((1000, 8)).astype(np.float32)
    dW = np.full((50, 8), np.nan, np.float32)
    get_kernel("embedding_backward")(ids, g, dW)
    ref = np.zeros((50, 8))
    np.add.at(ref, ids, g.astype(np.float64))
    np.testing.assert_allclose(dW, ref, rtol=1e-5, atol=1e-5)
