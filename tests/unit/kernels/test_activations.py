"""Activation kernels (``kernels/activations.py``) vs the NumPy references in ``_naive.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from raven_hpc.kernels import ACTIVATIONS, get_kernel
from raven_hpc.kernels.activations import SAVES_INPUT

from .. import _naive


DTYPES = [np.float32, np.float64]

ACTS = sorted(ACTIVATIONS.items())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act_name,act", ACTS)
def test_elementwise_act(dtype, act_name, act):
    rng = np.random.default_rng(act)
    x = rng.standard_normal(1000).astype(dtype)
    y = np.empty_like(x)
    get_kernel("act_forward")(x, y, act)
    np.testing.assert_array_equal(y, _naive.act_forward(x, act))
    gy = rng.standard_normal(1000).astype(dtype)
    g = np.empty_like(x)
    get_kernel("act_backward")(gy, y, g, act)
    np.testing.assert_array_equal(g, _naive.act_backward(gy, y, act))


#: non-default parameters for every parameterised activation
PARAMS = {"leaky_relu": {"negative_slope": 0.3}, "elu": {"alpha": 0.4},
          "hardtanh": {"min_val": -0.25, "max_val": 2.0}, "softplus": {"beta": 3.0, "threshold": 2.0}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_kernels_take_parameters(name, dtype):
    act = ACTIVATIONS[name]
    p = list(PARAMS[name].values()) + [math.nan]
    rng = np.random.default_rng(act)
    x = (rng.standard_normal(500) * 3).astype(dtype)
    y = np.empty_like(x)
    get_kernel("act_forward")(x, y, act, p[0], p[1])
    np.testing.assert_array_equal(y, _naive.act_forward(x, act, p[0], p[1]))
    default = np.empty_like(x)
    get_kernel("act_forward")(x, default, act)
    assert not np.array_equal(default, y), "the parameters made no difference"
    saved = x if act in SAVES_INPUT else y
    gy = rng.standard_normal(500).astype(dtype)
    g = np.empty_like(x)
    get_kernel("act_backward")(gy, saved, g, act, p[0], p[1])
    np.testing.assert_array_equal(g, _naive.act_backward(gy, saved, act, p[0], p[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_kernels(dtype, log):
    rng = np.random.default_rng(int(log))
    x = (rng.standard_normal((40, 13)) * 10).astype(dtype)
    x[0] += 1e4  # a row far from zero: stable only from x - max
    y = np.empty_like(x)
    get_kernel("softmax_forward")(x, y, log)
    ref = _naive.softmax(x, log)
    np.testing.assert_allclose(y, ref, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
    gy = rng.standard_normal(x.shape).astype(dtype)
    gx = np.empty_like(x)
    get_kernel("softmax_backward")(gy, y, gx, log)
    g64, p = gy.astype(np.float64), _naive.softmax(x)
    ref_g = g64 - p * g64.sum(1, keepdims=True) if log else p * (g64 - (g64 * p).sum(1, keepdims=True))
    np.testing.assert_allclose(gx, ref_g, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
