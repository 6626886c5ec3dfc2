"""Convolution kernels (``kernels/conv.py``): im2col/col2im vs NumPy, the bias
and gradient passes around the GEMMs.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.engine.conv import conv_geometry
from raven_hpc.kernels import get_kernel



def _naive_im2col(x, kh, kw, sh, sw, pads):
    """(C*kh*kw, n, OH*OW) patches of zero-padded ``x``; the obvious way."""
    t, b, l, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    N, C, Hp, Wp = xp.shape
    OH, OW = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    col = np.empty((C, kh, kw, N, OH, OW), x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = xp[:, :, i : i + sh * OH : sh, j : j + sw * OW : sw].transpose(1, 0, 2, 3)
    return col.reshape(C * kh * kw, N, OH * OW)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, stride, padding", [
    ((3, 3), 1, 0), ((3, 3), 1, 1), ((5, 5), 1, 2), ((2, 3), (2, 1), (1, 0)), ((3, 2), 2, "same"),
    ((4, 4), 3, 2), ((1, 1), 1, 0),
])
def test_im2col_and_col2im_match_numpy(dtype, k, stride, padding):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 9, 8)).astype(dtype)
    kh, kw = k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    (OH, OW), pads = conv_geometry(x.shape[2:], k, stride, padding)
    ref = _naive_im2col(x, kh, kw, sh, sw, pads)
    assert ref.shape[2] == OH * OW
    geom = (kh, kw, sh, sw, pads[0], pads[2], OH, OW)
    # a block of samples 1..3 into a buffer larger than needed
    col = np.full(ref[:, 1:4].size + 7, np.nan, dtype)
    get_kernel("im2col")(x, 1, 4, *geom, col)
    np.testing.assert_array_equal(col[: ref[:, 1:4].size].reshape(ref[:, 1:4].shape), ref[:, 1:4])
    # col2im is the adjoint: <im2col(x), c> == <x, col2im(c)> for the block
    c = rng.standard_normal(ref[:, 1:4].size).astype(dtype)
    dx = np.full_like(x, np.nan)
    get_kernel("col2im")(c, 1, 4, *geom, dx)
    assert np.isnan(dx[0]).all() and np.isnan(dx[4]).all()  # other samples untouched
    lhs = float(np.dot(ref[:, 1:4].reshape(-1).astype(np.float64), c))
    rhs = float(np.sum(x[1:4].astype(np.float64) * dx[1:4]))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_out_and_grad_in_are_transposes(dtype):
    rng = np.random.default_rng(3)
    N, F, P, n0, nb = 6, 4, 10, 2, 3
    z = rng.standard_normal(F * nb * P).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    y = np.full((N, F, P), np.nan, dtype)
    get_kernel("conv_bias_out")(z, b, y, n0, nb)
    np.testing.assert_allclose(y[n0 : n0 + nb], z.reshape(F, nb, P).transpose(1, 0, 2) + b[:, None], rtol=1e-6)
    assert np.isnan(y[:n0]).all() and np.isnan(y[n0 + nb :]).all()
    get_kernel("conv_bias_out")(z, np.empty(0, dtype), y, n0, nb)
    np.testing.assert_array_equal(y[n0 : n0 + nb], z.reshape(F, nb, P).transpose(1, 0, 2))

    g = rng.standard_normal((N, F, P)).astype(dtype)
    gz = np.empty(F * nb * P, dtype)
    db = np.ones(F, dtype)  # added to
    get_kernel("conv_grad_in")(g, gz, db, n0, nb)
    np.testing.assert_array_equal(gz.reshape(F, nb, P), g[n0 : n0 + nb].transpose(1, 0, 2))
    np.testing.assert_allclose(db, 1 + g[n0 : n0 + nb].sum(axis=(0, 2)), rtol=1e-5)
