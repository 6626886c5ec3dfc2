"""CUDA activation and softmax kernels (``kernels/cuda/activations.py``) against the CPU ones."""
from __future__ import annotations

import math

import numpy as np
import pytest

from raven_hpc.kernels import ACTIVATIONS, get_kernel
from raven_hpc.kernels.activations import ACTIVATION_PARAMS, SAVES_INPUT
from tests.gpu.conftest import run_both

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}

#: every activation code the CPU backend knows (aliases such as swish collapse)
CODES = sorted(set(ACTIVATIONS.values()))
NAME = {code: name for name, code in sorted(ACTIVATIONS.items(), reverse=True)}

#: non-default parameters for every parameterised activation
PARAMS = {"leaky_relu": (0.3, math.nan), "elu": (0.4, math.nan),
          "hardtanh": (-0.25, 2.0), "softplus": (3.0, 2.0)}


def sample(rng, n, dtype):
    """Normal values spread over the interesting ranges, plus kinks and
    values past softplus' threshold and sigmoid's saturation."""
    x = rng.standard_normal(n) * 4
    x[:8] = [0.0, -0.0, 1.0, -1.0, 25.0, -25.0, 0.25, 2.0][: min(8, n)]
    return x.astype(dtype)


def saved_of(x, act, dtype, p0=math.nan, p1=math.nan):
    """What the forward of ``act`` keeps for its backward (input or output)."""
    if act in SAVES_INPUT:
        return x
    y = np.empty_like(x)
    get_kernel("act_forward", "cpu")(x, y, act, p0, p1)
    return y


def test_every_parameterised_activation_has_test_parameters():
    assert set(PARAMS) == set(ACTIVATION_PARAMS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", CODES, ids=lambda c: NAME[c])
def test_act_forward_backward(cuda_backend, act, dtype):
    rng = np.random.default_rng(act)
    n = 77  # not a multiple of the block size: the grid-stride loop covers a ragged end
    x = sample(rng, n, dtype)
    run_both(cuda_backend, "act_forward", [x, np.empty_like(x), act], outs=[1], **TOL[dtype])
    s = saved_of(x, act, dtype)
    gy = rng.standard_normal(n).astype(dtype)
    run_both(cuda_backend, "act_backward", [gy, s, np.empty_like(x), act], outs=[2], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_act_parameters(cuda_backend, name, dtype):
    act = ACTIVATIONS[name]
    p0, p1 = PARAMS[name]
    rng = np.random.default_rng(len(name))
    x = sample(rng, 45, dtype)
    _, back, _, _ = run_both(cuda_backend, "act_forward", [x, np.empty_like(x), act, p0, p1], outs=[1],
                             **TOL[dtype])
    default = np.empty_like(x)
    get_kernel("act_forward", "cpu")(x, default, act)
    assert not np.array_equal(back[1], default), "the parameters made no difference"
    s = saved_of(x, act, dtype, p0, p1)
    gy = rng.standard_normal(45).astype(dtype)
    run_both(cuda_backend, "act_backward", [gy, s, np.empty_like(x), act, p0, p1], outs=[2], **TOL[dtype])


@pytest.mark.parametrize("act", [ACTIVATIONS["gelu"], ACTIVATIONS["elu"]], ids=["gelu", "elu"])
def test_act_in_place(cuda_backend, act):
    rng = np.random.default_rng(3)
    x = sample(rng, 40, np.float32)
    want = np.empty_like(x)
    get_kernel("act_forward", "cpu")(x, want, act)
    d = cuda_backend.to_device(x)
    cuda_backend.kernel("act_forward")(d, d, act)
    np.testing.assert_allclose(cuda_backend.to_host(d), want, **TOL[np.float32])

    gy = rng.standard_normal(40).astype(np.float32)
    s = saved_of(x, act, np.float32)
    want_g = np.empty_like(gy)
    get_kernel("act_backward", "cpu")(gy, s, want_g, act)
    dg = cuda_backend.to_device(gy)
    cuda_backend.kernel("act_backward")(dg, cuda_backend.to_device(s), dg, act)
    np.testing.assert_allclose(cuda_backend.to_host(dg), want_g, **TOL[np.float32])


@pytest.fixture(params=[32, 96], ids=["block32", "block96"])
def block(request):
    """Block sizes for the row reductions: one warp, and three warps (a tree
    over a block size that is not a power of two)."""
    from raven_hpc.kernels.cuda import _launch

    old = _launch.threads()
    _launch.set_threads(request.param)
    yield request.param
    _launch.set_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(3, 37), (2, 70), (2, 1)])
def test_softmax(cuda_backend, block, shape, log, dtype):
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    x[0, 0] = 40.0  # a dominant entry: the max shift keeps exp finite
    _, back, _, _ = run_both(cuda_backend, "softmax_forward", [x, np.empty_like(x), log], outs=[1], **TOL[dtype])
    y = back[1]
    gy = rng.standard_normal(shape).astype(dtype)
    run_both(cuda_backend, "softmax_backward", [gy, y, np.empty_like(x), log], outs=[2], **TOL[dtype])


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_in_place(cuda_backend, log):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 37))
    y = np.empty_like(x)
    get_kernel("softmax_forward", "cpu")(x, y, log)
    d = cuda_backend.to_device(x)
    cuda_backend.kernel("softmax_forward")(d, d, log)
    np.testing.assert_allclose(cuda_backend.to_host(d), y, **TOL[np.float64])

    gy = rng.standard_normal(x.shape)
    want = np.empty_like(gy)
    get_kernel("softmax_backward", "cpu")(gy, y, want, log)
    dg = cuda_backend.to_device(gy)
    cuda_backend.kernel("softmax_backward")(dg, cuda_backend.to_device(y), dg, log)
    np.testing.assert_allclose(cuda_backend.to_host(dg), want, **TOL[np.float64])
