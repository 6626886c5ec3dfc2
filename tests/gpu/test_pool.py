"""CUDA pooling kernels (max / average, forward / backward) against the CPU ones.

Tiny shapes (the simulator runs each thread as a Python thread).  The
geometries cover the CPU's unrolled 2x2 path, windows that do not divide
the 6x7 input, padding, and overlapping windows (stride below the window),
where the backward passes sum several outputs into one input element.
Max pooling runs on integer-valued data so that ties are frequent: the
CUDA argmax must be the CPU's (first maximum in row-major order), and the
gradients it routes must agree bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine.conv import pool_geometry
from tests.gpu.conftest import run_both

DTYPES = [np.float32, np.float64]

# (window, stride, padding) on a 6x7 input
GEOMS = [
    ((2, 2), (2, 2), (0, 0)),      # the CPU's unrolled path; the last column is not reached
    ((2, 2), (1, 1), (0, 0)),      # unrolled path, overlapping windows
    ((3, 3), (2, 2), (1, 1)),      # padding; 3x3 / 2 does not divide 6x7
    ((3, 2), (1, 2), (1, 1)),      # overlapping rows, padded non-square window
    ((3, 3), (3, 3), (0, 0)),      # the last column is not reached
    ((4, 3), (2, 1), (2, 1)),      # padding of half the window
]

N, C, H, W = 2, 2, 6, 7


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _shape(window, stride, padding):
    (OH, OW), (kh, kw), (sh, sw), (ph, pw) = pool_geometry((H, W), window, stride, padding)
    return (N, C, OH, OW), (kh, kw, sh, sw, ph, pw)


def _tied(rng, dtype):
    """Values from {0, 1, 2}: most windows hold their maximum more than once."""
    return rng.integers(0, 3, size=(N, C, H, W)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,stride,padding", GEOMS)
def test_max_pool_forward(cuda_backend, dtype, window, stride, padding):
    rng = np.random.default_rng(1)
    shape, geom = _shape(window, stride, padding)
    for x in (_tied(rng, dtype), rng.standard_normal((N, C, H, W)).astype(dtype)):
        y = np.zeros(shape, dtype)
        idx = np.full(shape, -1, np.int32)
        run_both(cuda_backend, "max_pool_forward", [x, *geom, y, idx], outs=(7, 8), rtol=0, atol=0)


@pytest.mark.parametrize("window,stride,padding", GEOMS[1:3])
def test_max_pool_forward_nan(cuda_backend, window, stride, padding):
    """A window holding NaN returns the first NaN and its position, as the CPU does."""
    rng = np.random.default_rng(2)
    shape, geom = _shape(window, stride, padding)
    x = _tied(rng, np.float32)
    x[0, 0, 1, 2] = np.nan
    x[1, 1, 3, 3] = np.nan
    x[1, 1, 3, 4] = np.nan
    x[0, 1, 0, 0] = np.inf
    x[0, 1, 0, 1] = -np.inf
    y = np.zeros(shape, np.float32)
    idx = np.full(shape, -1, np.int32)
    host, back, _, _ = run_both(cuda_backend, "max_pool_forward", [x, *geom, y, idx], outs=(7, 8), rtol=0, atol=0)
    assert np.isnan(back[7]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,stride,padding", GEOMS)
def test_max_pool_backward(cuda_backend, dtype, window, stride, padding):
    """Gradients routed through the CPU's argmax; the tied data make overlapping windows share one."""
    rng = np.random.default_rng(3)
    shape, geom = _shape(window, stride, padding)
    from raven_hpc.kernels import get_kernel

    x = _tied(rng, dtype)
    y, idx = np.zeros(shape, dtype), np.zeros(shape, np.int32)
    get_kernel("max_pool_forward", "cpu")(x, *geom, y, idx)
    g = rng.standard_normal(shape).astype(dtype)
    dx = rng.standard_normal((N, C, H, W)).astype(dtype)   # overwritten everywhere
    run_both(cuda_backend, "max_pool_backward", [g, idx, dx], outs=(2,), rtol=0, atol=0)


@pytest.mark.parametrize("window,stride,padding", [GEOMS[1], GEOMS[3]])
def test_max_pool_backward_shared_argmax(cuda_backend, window, stride, padding):
    """Every window holding a peak picks it, so overlapping windows share an argmax; the
    device-only pipeline (CUDA forward, then CUDA backward) matches the CPU's."""
    shape, geom = _shape(window, stride, padding)
    be = cuda_backend
    x = np.zeros((N, C, H, W))
    x[:, :, 2, 3] = 1.0
    x[:, :, 4, 5] = 2.0
    g = np.random.default_rng(4).standard_normal(shape)
    cpu_y, cpu_idx, cpu_dx = np.zeros(shape), np.zeros(shape, np.int32), np.zeros(x.shape)
    from raven_hpc.kernels import get_kernel

    get_kernel("max_pool_forward", "cpu")(x, *geom, cpu_y, cpu_idx)
    get_kernel("max_pool_backward", "cpu")(g, cpu_idx, cpu_dx)
    y, idx, dx = be.zeros(shape, np.float64), be.zeros(shape, np.int32), be.zeros(x.shape, np.float64)
    be.kernel("max_pool_forward")(be.to_device(x), *geom, y, idx)
    be.kernel("max_pool_backward")(be.to_device(g), idx, dx)
    np.testing.assert_array_equal(be.to_host(idx), cpu_idx)
    np.testing.assert_array_equal(be.to_host(dx), cpu_dx)
    assert np.bincount(cpu_idx.reshape(N * C, -1)[0]).max() > 1   # shared argmaxes were exercised


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,stride,padding", GEOMS)
def test_avg_pool_forward(cuda_backend, dtype, window, stride, padding):
    rng = np.random.default_rng(5)
    shape, geom = _shape(window, stride, padding)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    y = np.zeros(shape, dtype)
    run_both(cuda_backend, "avg_pool_forward", [x, *geom, y], outs=(7,), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window,stride,padding", GEOMS)
def test_avg_pool_backward(cuda_backend, dtype, window, stride, padding):
    rng = np.random.default_rng(6)
    shape, geom = _shape(window, stride, padding)
    g = rng.standard_normal(shape).astype(dtype)
    dx = rng.standard_normal((N, C, H, W)).astype(dtype)   # overwritten everywhere
    run_both(cuda_backend, "avg_pool_backward", [g, *geom, dx], outs=(7,), **_tol(dtype))
