"""Dense kernels (``kernels/dense.py``): fused bias + activation, column sums, vs the NumPy
references in ``_naive.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

from raven_hpc.kernels import ACTIVATIONS, get_kernel
from raven_hpc.kernels.activations import SAVES_INPUT

from .. import _naive


DTYPES = [np.float32, np.float64]

SHAPES = [(1, 1), (3, 7), (128, 10), (65, 257)]

ACTS = sorted(ACTIVATIONS.items())


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act_name,act", ACTS)
def test_bias_act(dtype, shape, act_name, act):
    rng = np.random.default_rng(sum(shape) + act)
    z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    out = z.copy()
    get_kernel("bias_act_forward")(out, b, act)
    np.testing.assert_allclose(out, _naive.bias_act_forward(z, b, act), **_tol(dtype))

    gy = rng.standard_normal(shape).astype(dtype)
    gz = np.empty_like(gy)
    db = np.full(shape[1], np.nan, dtype)  # the kernel must overwrite, not add
    get_kernel("bias_act_backward")(gy, out, act, gz, db)
    ref_gz, ref_db = _naive.bias_act_backward(gy, out, act)
    np.testing.assert_allclose(gz, ref_gz, **_tol(dtype))
    np.testing.assert_allclose(db, ref_db, **_tol(dtype))

    gy2 = gy.copy()  # in place: gz is gy
    get_kernel("bias_act_backward")(gy2, out, act, gy2, db)
    np.testing.assert_allclose(gy2, ref_gz, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_col_sum(dtype, shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = np.full(shape[1], np.nan, dtype)
    get_kernel("col_sum")(g, out)
    np.testing.assert_allclose(out, _naive.col_sum(g), **_tol(dtype))


ELEMENTWISE = sorted(n for n in ACTIVATIONS if n not in ("linear",))


def _tol_keep(dtype):
    return dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_bias_act_forward_keep_and_backward_from_pre_activation(name, dtype):
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(act)
    z = rng.standard_normal((33, 17)).astype(dtype)
    b = rng.standard_normal(17).astype(dtype)
    pre, y = z.copy(), np.empty_like(z)
    get_kernel("bias_act_forward_keep")(pre, b, y, act)
    np.testing.assert_array_equal(pre, z + b)
    np.testing.assert_allclose(y, _naive.bias_act_forward(z, b, act), **_tol_keep(dtype))
    inplace = z.copy()
    get_kernel("bias_act_forward")(inplace, b, act)
    np.testing.assert_array_equal(inplace, y)  # both fused forms agree bit for bit

    saved = pre if act in SAVES_INPUT else y
    gy = rng.standard_normal(z.shape).astype(dtype)
    gz, db = np.empty_like(gy), np.full(17, np.nan, dtype)
    get_kernel("bias_act_backward")(gy, saved, act, gz, db)
    ref_gz, ref_db = _naive.bias_act_backward(gy, saved, act)
    np.testing.assert_allclose(gz, ref_gz, **_tol_keep(dtype))
    np.testing.assert_allclose(db, ref_db, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
