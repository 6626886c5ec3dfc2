"""CUDA convolution kernels (im2col, col2im, conv_bias_out, conv_grad_in) against the CPU ones.

Tiny shapes (the simulator runs each thread as a Python thread); the
geometries cover strides that do not divide the input, symmetric and
asymmetric ("same" with an odd total) padding, non-square kernels, and a
block of samples that starts after sample 0, so the arguments the engine
passes (``n0``, ``n1``, ``pt``, ``pl``) all vary.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine.conv import conv_geometry
from tests.gpu.conftest import run_both

DTYPES = [np.float32, np.float64]

# (kernel, stride, padding) on a 6x7 input
GEOMS = [
    ((3, 3), (1, 1), 0),
    ((3, 3), (2, 2), 0),           # stride 2 over 6 rows: the last row is not reached
    ((3, 3), (2, 2), 1),           # padding on every side
    ((2, 3), (2, 1), (1, 0)),      # non-square kernel, stride and padding
    ((3, 2), (2, 2), "same"),      # asymmetric padding: only below / right
    ((1, 1), (2, 3), 0),           # strided 1x1: rows 1, 3, 5 get no gradient
    ((4, 4), (1, 2), "same"),      # asymmetric padding: more below / right than above / left
]

N, C, H, W = 3, 2, 6, 7


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def _geom(kernel, stride, padding):
    (OH, OW), (pt, pb, pl, pr) = conv_geometry((H, W), kernel, stride, padding)
    kh, kw = kernel
    sh, sw = stride
    return (kh, kw, sh, sw, pt, pl, OH, OW)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", GEOMS)
def test_im2col(cuda_backend, dtype, kernel, stride, padding):
    rng = np.random.default_rng(1)
    geom = _geom(kernel, stride, padding)
    kh, kw, _, _, _, _, OH, OW = geom
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    n0, n1 = 1, 3
    used = C * kh * kw * (n1 - n0) * OH * OW
    col = rng.standard_normal(used + 5).astype(dtype)   # the tail must stay as it is
    host, back, _, _ = run_both(cuda_backend, "im2col", [x, n0, n1, *geom, col], outs=(11,), rtol=0, atol=0)
    np.testing.assert_array_equal(back[11][used:], col[used:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,padding", GEOMS)
def test_col2im(cuda_backend, dtype, kernel, stride, padding):
    """Gathered in the CPU's order, so equal bit for bit; samples outside the block untouched."""
    rng = np.random.default_rng(2)
    geom = _geom(kernel, stride, padding)
    kh, kw, _, _, _, _, OH, OW = geom
    n0, n1 = 1, 3
    dcol = rng.standard_normal(C * kh * kw * (n1 - n0) * OH * OW).astype(dtype)
    dx = rng.standard_normal((N, C, H, W)).astype(dtype)
    host, back, _, _ = run_both(cuda_backend, "col2im", [dcol, n0, n1, *geom, dx], outs=(11,), rtol=0, atol=0)
    np.testing.assert_array_equal(back[11][0], dx[0])


@pytest.mark.parametrize("kernel,stride,padding", GEOMS[:3])
def test_col2im_is_adjoint_of_im2col(cuda_backend, kernel, stride, padding):
    """<im2col(x), d> == <x, col2im(d)> on the device alone."""
    rng = np.random.default_rng(3)
    geom = _geom(kernel, stride, padding)
    kh, kw, _, _, _, _, OH, OW = geom
    K = C * kh * kw * N * OH * OW
    x = rng.standard_normal((N, C, H, W))
    d = rng.standard_normal(K)
    be = cuda_backend
    col, dx = be.to_device(np.zeros(K)), be.to_device(np.zeros((N, C, H, W)))
    be.kernel("im2col")(be.to_device(x), 0, N, *geom, col)
    be.kernel("col2im")(be.to_device(d), 0, N, *geom, dx)
    lhs = float(np.dot(be.to_host(col), d))
    rhs = float(np.sum(x * be.to_host(dx)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n0,nb", [(0, 3), (1, 2), (2, 1)])
def test_conv_bias_out(cuda_backend, dtype, bias, n0, nb):
    rng = np.random.default_rng(4)
    F, P = 3, 10
    z = rng.standard_normal(F * nb * P).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if bias else np.empty(0, dtype)
    y = rng.standard_normal((N, F, P)).astype(dtype)   # samples outside the block stay
    run_both(cuda_backend, "conv_bias_out", [z, b, y, n0, nb], outs=(2,), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n0,nb,P", [(0, 3, 10), (1, 2, 7), (2, 1, 1), (0, 3, 300)])
def test_conv_grad_in(cuda_backend, dtype, bias, n0, nb, P):
    """``gz`` is a copy (exact); ``db`` is added to, summed in float64 (P = 300: more than one chunk per filter)."""
    rng = np.random.default_rng(5)
    F = 3
    g = rng.standard_normal((N, F, P)).astype(dtype)
    gz = rng.standard_normal(F * nb * P + 4).astype(dtype)
    db = rng.standard_normal(F).astype(dtype) if bias else np.empty(0, dtype)
    host, back, _, _ = run_both(cuda_backend, "conv_grad_in", [g, gz, db, n0, nb], outs=(2,), **_tol(dtype))
    np.testing.assert_array_equal(back[1], host[1])


def test_conv_grad_in_block_input(cuda_backend):
    """The engine's activation path: ``g`` is a block of ``nb`` samples and ``n0 = 0``."""
    rng = np.random.default_rng(6)
    F, P, nb = 4, 6, 2
    g = rng.standard_normal((nb, F, P)).astype(np.float32)
    gz = np.zeros(F * nb * P, np.float32)
    db = rng.standard_normal(F).astype(np.float32)
    run_both(cuda_backend, "conv_grad_in", [g, gz, db, 0, nb], outs=(1, 2), rtol=1e-5, atol=1e-6)
